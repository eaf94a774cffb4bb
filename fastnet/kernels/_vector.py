"""Explicit vector code for the 2x2 pooling passes that LLVM leaves scalar, written in
LLVM IR (as the micro-kernels in _microkernel.py are).

2x2 / stride-2 pooling works on pairs of neighbours in two rows, and the rows of CNN
layers are short (14 or 16 outputs in the benchmark layers). As Numba loops, pairs were
stored or loaded one value at a time, and a vectorised loop with a scalar remainder did
not pay on such rows. Here each step splits pairs into even and odd lanes, or zips them
back, with one shuffle, and the last step of a row uses masked loads and stores (AVX-512
has them in hardware; AVX2 uses vmaskmov), so a 14-output row is one or two steps:

* ``upsample2``: the average-pooling backward (each value, scaled, into a 2x2 block);
* ``max_pool2x2_row``: the max-pooling forward, values and argmax;
* ``max_unpool2x2_row``: the max-pooling backward (the gradient into its argmax, zeros
  elsewhere; every element written once).

Arrays are 1-D and contiguous (the kernels pass ``ravel()`` of C-contiguous arrays);
the callers keep every index inside them.
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._microkernel import _float_type, lanes

_I1, _I32, _I64 = ir.IntType(1), ir.IntType(32), ir.IntType(64)


def _splat(builder, value, n):
    """<n x T> with every lane ``value``."""
    vty = ir.VectorType(value.type, n)
    undef = ir.Constant(vty, ir.Undefined)
    return builder.shuffle_vector(builder.insert_element(undef, value, ir.Constant(_I32, 0)),
                                  undef, ir.Constant(ir.VectorType(_I32, n), [0] * n))


def _masked(builder, op, vty):
    """llvm.masked.load / llvm.masked.store for vectors of float, double or i32."""
    elem = {"float": "f32", "double": "f64", "i32": "i32"}[str(vty.element)]
    mask = ir.VectorType(_I1, vty.count)
    if op == "load":
        fnty = ir.FunctionType(vty, [vty.as_pointer(), _I32, mask, vty])
    else:
        fnty = ir.FunctionType(ir.VoidType(), [vty, vty.as_pointer(), _I32, mask])
    return cgutils.get_or_insert_function(builder.module, fnty,
                                          f"llvm.masked.{op}.v{vty.count}{elem}.p0")


class _Emitter:
    """What the three intrinsics share: their arrays' data pointers, the vector types of
    their float dtype, masks of the lanes still to do, and masked loads and stores."""

    def __init__(self, context, builder, signature, args, narrays):
        self.b = builder
        self.data = [context.make_array(t)(context, builder, a).data
                     for t, a in zip(signature.args[:narrays], args[:narrays])]
        dtype = signature.args[0].dtype
        self.bits = dtype.bitwidth
        self.lanes = lanes(self.bits // 8)  # floats per vector register
        self.ft = _float_type(dtype)

    def vec(self, n, elem=None):
        return ir.VectorType(self.ft if elem is None else elem, n)

    def mask(self, left, n):
        """<n x i1>: lane < left (all lanes but in a row's last step)."""
        lane = ir.Constant(ir.VectorType(_I64, n), list(range(n)))
        return self.b.icmp_unsigned("<", lane, _splat(self.b, left, n))

    def _ptr(self, array, index, vty):
        return self.b.bitcast(self.b.gep(self.data[array], [index]), vty.as_pointer())

    def load(self, array, index, vty, left):
        """vty's lanes from data[array][index:], those past ``left`` zero (not read)."""
        align = ir.Constant(_I32, vty.element.width // 8 if isinstance(vty.element, ir.IntType)
                            else self.bits // 8)
        zero = ir.Constant(vty, [0] * vty.count if isinstance(vty.element, ir.IntType)
                           else [0.0] * vty.count)
        return self.b.call(_masked(self.b, "load", vty),
                           [self._ptr(array, index, vty), align, self.mask(left, vty.count), zero])

    def store(self, value, array, index, left):
        """value's lanes below ``left`` to data[array][index:]."""
        vty = value.type
        align = ir.Constant(_I32, vty.element.width // 8 if isinstance(vty.element, ir.IntType)
                            else self.bits // 8)
        self.b.call(_masked(self.b, "store", vty),
                    [value, self._ptr(array, index, vty), align, self.mask(left, vty.count)])

    def steps(self, n, per):
        """for each step of ``per`` outputs of n: (first output i, outputs left from i)."""
        count = self.b.udiv(self.b.add(n, ir.Constant(_I64, per - 1)), ir.Constant(_I64, per))
        with cgutils.for_range(self.b, count) as loop:
            i = self.b.mul(loop.index, ir.Constant(_I64, per))
            yield i, self.b.sub(n, i)

    def twice(self, value):
        return self.b.add(value, value)


def _shuffle_mask(values):
    return ir.Constant(ir.VectorType(_I32, len(values)), list(values))


def _check(name, floats, ints=()):
    if not (all(isinstance(a, types.Array) for a in floats + ints)
            and floats[0].dtype in (types.float32, types.float64)
            and all(a.dtype == floats[0].dtype for a in floats)
            and all(a.dtype == types.int32 for a in ints)):
        raise TypeError(f"{name} takes float arrays of one dtype"
                        f"{' and int32 argmax' if ints else ''}, not {floats + ints}")


@intrinsic
def upsample2(typingctx, dst, src, d0, d1, s0, n, scale):
    """dst[d + 2i] = dst[d + 2i + 1] = src[s0 + i] * scale for d in (d0, d1), i < n."""
    _check("upsample2", (dst, src))
    sig = types.void(dst, src, types.intp, types.intp, types.intp, types.intp, dst.dtype)

    def codegen(context, builder, signature, args):
        e = _Emitter(context, builder, signature, args, 2)
        d0, d1, s0, n, scale = args[2:]
        h = e.lanes // 2
        dup = _shuffle_mask([k // 2 for k in range(e.lanes)])
        sv = _splat(builder, scale, h)
        for i, left in e.steps(n, h):
            v = builder.fmul(e.load(1, builder.add(s0, i), e.vec(h), left), sv)
            pairs = builder.shuffle_vector(v, v, dup)
            for d in (d0, d1):
                e.store(pairs, 0, builder.add(d, e.twice(i)), e.twice(left))
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def max_pool2x2_row(typingctx, out, argmax, x, o0, x0, w, n, base):
    """One output row, W outputs per step: for i < n, out[o0 + i] = the largest of
    x[x0 + 2i], x[x0 + 2i + 1], x[x0 + w + 2i], x[x0 + w + 2i + 1], compared in that
    order (strict >: a tie keeps the first; a NaN wins), and argmax[o0 + i] =
    base + 2i + its offset 0, 1, w or w + 1."""
    _check("max_pool2x2_row", (out, x), (argmax,))
    sig = types.void(out, argmax, x, types.intp, types.intp, types.intp, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        e = _Emitter(context, builder, signature, args, 3)
        o0, x0, w, n, base = args[3:]
        lw = e.lanes
        evens, odds = _shuffle_mask(range(0, 2 * lw, 2)), _shuffle_mask(range(1, 2 * lw, 2))
        vk = e.vec(lw, _I32)
        w32 = builder.trunc(w, _I32)
        offsets = (ir.Constant(vk, [1] * lw), _splat(builder, w32, lw),
                   _splat(builder, builder.add(w32, ir.Constant(_I32, 1)), lw))
        for i, left in e.steps(n, lw):
            src = builder.add(x0, e.twice(i))
            rows = []
            for start in (src, builder.add(src, w)):
                v = e.load(2, start, e.vec(2 * lw), e.twice(left))
                rows += [builder.shuffle_vector(v, v, evens), builder.shuffle_vector(v, v, odds)]
            best, k = rows[0], ir.Constant(vk, [0] * lw)
            for v, kv in zip(rows[1:], offsets):
                take = builder.or_(builder.fcmp_ordered(">", v, best),
                                   builder.fcmp_unordered("!=", v, v))
                best = builder.select(take, v, best)
                k = builder.select(take, kv, k)
            dst = builder.add(o0, i)
            e.store(best, 0, dst, left)
            first = builder.trunc(builder.add(base, e.twice(i)), _I32)
            lane2 = ir.Constant(vk, list(range(0, 2 * lw, 2)))
            e.store(builder.add(builder.add(_splat(builder, first, lw), lane2), k), 1, dst, left)
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def max_unpool2x2_row(typingctx, dx, dout, argmax, d0, w, s0, n, base):
    """The backward of one output row, W/2 outputs per step: for i < n with
    a = argmax[s0 + i] - (base + 2i) (0, 1, w or w + 1: the forward's pick),
    dx[d0 + 2i + j] = dout[s0 + i] if a == j else 0 for j in (0, 1), and
    dx[d0 + w + 2i + j] likewise for a == w + j: every element of the two dx rows written
    once, zeros included (the windows do not overlap)."""
    _check("max_unpool2x2_row", (dx, dout), (argmax,))
    sig = types.void(dx, dout, argmax, types.intp, types.intp, types.intp, types.intp,
                     types.intp)

    def codegen(context, builder, signature, args):
        e = _Emitter(context, builder, signature, args, 3)
        d0, w, s0, n, base = args[3:]
        h = e.lanes // 2
        hk = e.vec(h, _I32)
        zip_ = _shuffle_mask([k // 2 + (k % 2) * h for k in range(e.lanes)])
        zero = ir.Constant(e.vec(h), [0.0] * h)
        w32 = builder.trunc(w, _I32)
        picks = [ir.Constant(hk, [0] * h), ir.Constant(hk, [1] * h), _splat(builder, w32, h),
                 _splat(builder, builder.add(w32, ir.Constant(_I32, 1)), h)]
        for i, left in e.steps(n, h):
            src = builder.add(s0, i)
            g = e.load(1, src, e.vec(h), left)
            first = builder.trunc(builder.add(base, e.twice(i)), _I32)
            lane2 = ir.Constant(hk, list(range(0, 2 * h, 2)))
            rel = builder.sub(e.load(2, src, hk, left),
                              builder.add(_splat(builder, first, h), lane2))
            vals = [builder.select(builder.icmp_signed("==", rel, p), g, zero) for p in picks]
            dst = builder.add(d0, e.twice(i))
            for at, even, odd in ((dst, vals[0], vals[1]), (builder.add(dst, w), vals[2], vals[3])):
                e.store(builder.shuffle_vector(even, odd, zip_), 0, at, e.twice(left))
        return context.get_dummy_value()
    return sig, codegen
