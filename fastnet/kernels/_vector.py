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

from ._math import EXP_HI, EXP_LO, EXP_TAYLOR, LN2_HI, LN2_LO, LOG2E
from ._microkernel import _float_type, lanes

_I1, _I32, _I64 = ir.IntType(1), ir.IntType(32), ir.IntType(64)


def _splat(builder, value, n):
    """<n x T> with every lane ``value``."""
    vty = ir.VectorType(value.type, n)
    undef = ir.Constant(vty, ir.Undefined)
    return builder.shuffle_vector(builder.insert_element(undef, value, ir.Constant(_I32, 0)),
                                  undef, ir.Constant(ir.VectorType(_I32, n), [0] * n))


def _suffix(vty):
    """An intrinsic's type suffix: v16f32, v8f64, v8i32 ..."""
    return f"v{vty.count}" + {"float": "f32", "double": "f64", "i32": "i32"}[str(vty.element)]


def _masked(builder, op, vty):
    """llvm.masked.load / llvm.masked.store for vectors of float, double or i32."""
    mask = ir.VectorType(_I1, vty.count)
    if op == "load":
        fnty = ir.FunctionType(vty, [vty.as_pointer(), _I32, mask, vty])
    else:
        fnty = ir.FunctionType(ir.VoidType(), [vty, vty.as_pointer(), _I32, mask])
    return cgutils.get_or_insert_function(builder.module, fnty,
                                          f"llvm.masked.{op}.{_suffix(vty)}.p0")


class _Emitter:
    """What the three intrinsics share: their arrays' data pointers, the vector types of
    their float dtype, masks of the lanes still to do, and masked loads and stores."""

    def __init__(self, context, builder, signature, args, narrays):
        self.b = builder
        self.arrays = [context.make_array(t)(context, builder, a)
                       for t, a in zip(signature.args[:narrays], args[:narrays])]
        self.data = [a.data for a in self.arrays]
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

    def load(self, array, index, vty, left, fill=None):
        """vty's lanes from data[array][index:], those past ``left`` ``fill`` (zero by
        default; not read)."""
        align = ir.Constant(_I32, vty.element.width // 8 if isinstance(vty.element, ir.IntType)
                            else self.bits // 8)
        if fill is None:
            fill = ir.Constant(vty, [0] * vty.count if isinstance(vty.element, ir.IntType)
                               else [0.0] * vty.count)
        return self.b.call(_masked(self.b, "load", vty),
                           [self._ptr(array, index, vty), align, self.mask(left, vty.count), fill])

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

    def size(self, array):
        return self.arrays[array].nitems

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


# ---- rows of softmax, log-sum-exp and cross-entropy ---------------------------------
# A row of 10 logits was a scalar loop in Numba (a vectorised loop needs 16 or more
# values before its scalar remainder): ~60 ns a row for the loss. Here a row is one
# masked vector, or a few, with the float32 exp of _math.py on whole vectors.

def _declare(builder, name, vty, nargs):
    """The intrinsic ``name`` on vectors of type vty (llvm.fma.v16f32 ...)."""
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty] * nargs),
                                          f"{name}.{_suffix(vty)}")


def _vexp32(builder, x):
    """exp of a <n x float>, as _math.fast_exp computes it for one float32."""
    vty, n = x.type, x.type.count

    def c(v):
        return ir.Constant(vty, [float(v)] * n)

    fma = _declare(builder, "llvm.fma", vty, 3)
    lo, hi = c(EXP_LO), c(EXP_HI)
    x = builder.select(builder.fcmp_ordered("<", x, lo), lo, x)  # a NaN stays
    x = builder.select(builder.fcmp_ordered(">", x, hi), hi, x)
    k = builder.call(_declare(builder, "llvm.floor", vty, 1),
                     [builder.call(fma, [x, c(LOG2E), c(0.5)])])
    nk = builder.fneg(k)
    r = builder.call(fma, [nk, c(LN2_HI), x])
    r = builder.call(fma, [nk, c(LN2_LO), r])
    p = c(EXP_TAYLOR[0])
    for t in EXP_TAYLOR[1:]:
        p = builder.call(fma, [p, r, c(t)])
    # 2^k in the exponent bits (k of a NaN is NaN, which has no int: 0 instead)
    ki = builder.fptosi(builder.select(builder.fcmp_unordered("uno", k, k), c(0), k),
                        ir.VectorType(_I32, n))
    two_k = builder.shl(builder.add(ki, ir.Constant(ki.type, [126] * n)),
                        ir.Constant(ki.type, [23] * n))
    return builder.fmul(builder.fmul(p, c(2.0)), builder.bitcast(two_k, vty))


def _reduce(builder, v, op):
    """op over the lanes of v, halving: a fixed order."""
    n = v.type.count
    while n > 1:
        n //= 2
        v = op(builder.shuffle_vector(v, v, _shuffle_mask(range(n))),
               builder.shuffle_vector(v, v, _shuffle_mask(range(n, 2 * n))))
    return builder.extract_element(v, ir.Constant(_I32, 0))


def _check_rows(name, arrays, float32=False):
    if not all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C"
               for a in arrays):
        raise TypeError(f"{name} takes 1-D C-contiguous arrays, not {arrays}")
    _check(name, arrays)
    if float32 and arrays[0].dtype != types.float32:
        raise TypeError(f"{name} takes float32 arrays, not {arrays}")


def _max_exp(e, row):
    """For the row in array ``row`` (1 to ``lanes`` float32 values): its max m, the
    vector exp(row - m) (zeros past the row) and their sum, added in a fixed order.
    With a NaN in the row m may or may not be NaN: the exp of the NaN is NaN either way."""
    b, n, zero = e.b, e.size(row), ir.Constant(_I64, 0)
    first = _splat(b, b.load(e.data[row]), e.lanes)  # fills the lanes past n
    v = e.load(row, zero, e.vec(e.lanes), n, first)
    m = _reduce(b, v, lambda x, y: b.select(b.fcmp_ordered(">", x, y), x, y))
    ex = _vexp32(b, b.fsub(v, _splat(b, m, e.lanes)))
    ex = b.select(e.mask(n, e.lanes), ex, ir.Constant(ex.type, [0.0] * e.lanes))
    return m, ex, _reduce(b, ex, b.fadd)


def _pair(context, builder, signature, m, s):
    return context.make_tuple(builder, signature.return_type, [m, s])


@intrinsic
def row1_softmax(typingctx, dst, src, k):
    """dst[j] = exp(src[j] - m) * k / s over a float32 row of 1 to ``lanes`` values, with
    m = max(src) and s = sum(exp(src - m)); returns (m, s)."""
    _check_rows("row1_softmax", (dst, src), float32=True)

    def codegen(context, builder, signature, args):
        e = _Emitter(context, builder, signature, args, 2)
        m, ex, s = _max_exp(e, 1)
        scale = _splat(builder, builder.fdiv(args[2], s), e.lanes)
        e.store(builder.fmul(ex, scale), 0, ir.Constant(_I64, 0), e.size(0))
        return _pair(context, builder, signature, m, s)
    return types.UniTuple(src.dtype, 2)(dst, src, src.dtype), codegen


@intrinsic
def row1_max_sum_exp(typingctx, src):
    """(m, sum(exp(src - m))) with m = max(src), for a float32 row of 1 to ``lanes``
    values."""
    _check_rows("row1_max_sum_exp", (src,), float32=True)

    def codegen(context, builder, signature, args):
        m, _, s = _max_exp(_Emitter(context, builder, signature, args, 1), 0)
        return _pair(context, builder, signature, m, s)
    return types.UniTuple(src.dtype, 2)(src), codegen


@intrinsic
def row1_softmax_grad(typingctx, dx, dout, out):
    """dx[j] = out[j] * (dout[j] - sum(dout * out)) over a row of 1 to ``lanes`` values
    (dx may be dout)."""
    _check_rows("row1_softmax_grad", (dx, dout, out))

    def codegen(context, builder, signature, args):
        e = _Emitter(context, builder, signature, args, 3)
        zero, n, vty = ir.Constant(_I64, 0), e.size(0), e.vec(e.lanes)
        g, y = e.load(1, zero, vty, n), e.load(2, zero, vty, n)  # zeros past n
        s = _reduce(builder, builder.fmul(g, y), builder.fadd)
        e.store(builder.fmul(y, builder.fsub(g, _splat(builder, s, e.lanes))), 0, zero, n)
        return context.get_dummy_value()
    return types.void(dx, dout, out), codegen
