"""Explicit vector code for the 2x2 pooling passes that LLVM leaves scalar, written in
LLVM IR (as the micro-kernels in tiles.py are).

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
from numba import njit, types
from numba.extending import intrinsic

from ._ir import I32, Rows, check_arrays, shuffle_mask, splat


@intrinsic
def upsample2(typingctx, dst, src, d0, d1, s0, n, scale):
    """dst[d + 2i] = dst[d + 2i + 1] = src[s0 + i] * scale for d in (d0, d1), i < n."""
    check_arrays("upsample2", (dst, src))
    sig = types.void(dst, src, types.intp, types.intp, types.intp, types.intp, dst.dtype)

    def codegen(context, builder, signature, args):
        e = Rows(context, builder, signature, args, 2)
        d0, d1, s0, n, scale = args[2:]
        h = e.lanes // 2
        dup = shuffle_mask([k // 2 for k in range(e.lanes)])
        sv = splat(builder, scale, h)
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
    check_arrays("max_pool2x2_row", (out, x), (argmax,))
    sig = types.void(out, argmax, x, types.intp, types.intp, types.intp, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        e = Rows(context, builder, signature, args, 3)
        o0, x0, w, n, base = args[3:]
        lw = e.lanes
        evens, odds = shuffle_mask(range(0, 2 * lw, 2)), shuffle_mask(range(1, 2 * lw, 2))
        vk = e.vec(lw, I32)
        w32 = builder.trunc(w, I32)
        offsets = (ir.Constant(vk, [1] * lw), splat(builder, w32, lw),
                   splat(builder, builder.add(w32, ir.Constant(I32, 1)), lw))
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
            first = builder.trunc(builder.add(base, e.twice(i)), I32)
            lane2 = ir.Constant(vk, list(range(0, 2 * lw, 2)))
            e.store(builder.add(builder.add(splat(builder, first, lw), lane2), k), 1, dst, left)
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def max_unpool2x2_row(typingctx, dx, dout, argmax, d0, w, s0, n, base):
    """The backward of one output row, W/2 outputs per step: for i < n with
    a = argmax[s0 + i] - (base + 2i) (0, 1, w or w + 1: the forward's pick),
    dx[d0 + 2i + j] = dout[s0 + i] if a == j else 0 for j in (0, 1), and
    dx[d0 + w + 2i + j] likewise for a == w + j: every element of the two dx rows written
    once, zeros included (the windows do not overlap)."""
    check_arrays("max_unpool2x2_row", (dx, dout), (argmax,))
    sig = types.void(dx, dout, argmax, types.intp, types.intp, types.intp, types.intp,
                     types.intp)

    def codegen(context, builder, signature, args):
        e = Rows(context, builder, signature, args, 3)
        d0, w, s0, n, base = args[3:]
        h = e.lanes // 2
        hk = e.vec(h, I32)
        zip_ = shuffle_mask([k // 2 + (k % 2) * h for k in range(e.lanes)])
        zero = ir.Constant(e.vec(h), [0.0] * h)
        w32 = builder.trunc(w, I32)
        picks = [ir.Constant(hk, [0] * h), ir.Constant(hk, [1] * h), splat(builder, w32, h),
                 splat(builder, builder.add(w32, ir.Constant(I32, 1)), h)]
        for i, left in e.steps(n, h):
            src = builder.add(s0, i)
            g = e.load(1, src, e.vec(h), left)
            first = builder.trunc(builder.add(base, e.twice(i)), I32)
            lane2 = ir.Constant(hk, list(range(0, 2 * h, 2)))
            rel = builder.sub(e.load(2, src, hk, left),
                              builder.add(splat(builder, first, h), lane2))
            vals = [builder.select(builder.icmp_signed("==", rel, p), g, zero) for p in picks]
            dst = builder.add(d0, e.twice(i))
            for at, even, odd in ((dst, vals[0], vals[1]), (builder.add(dst, w), vals[2], vals[3])):
                e.store(builder.shuffle_vector(even, odd, zip_), 0, at, e.twice(left))
        return context.get_dummy_value()
    return sig, codegen


# ---- plain-Numba twins: the test references of the intrinsics (tests/kernels/_simd/) ---

@njit(cache=True)
def upsample2_reference(dst, src, d0, d1, s0, n, scale):
    for i in range(n):
        v = src[s0 + i] * scale
        for d in (d0, d1):
            dst[d + 2 * i] = v
            dst[d + 2 * i + 1] = v


@njit(cache=True)
def max_pool2x2_row_reference(out, argmax, x, o0, x0, w, n, base):
    for i in range(n):
        s = x0 + 2 * i
        best, k = x[s], 0
        for off in (1, w, w + 1):
            v = x[s + off]
            if v > best or v != v:
                best, k = v, off
        out[o0 + i] = best
        argmax[o0 + i] = base + 2 * i + k


@njit(cache=True)
def max_unpool2x2_row_reference(dx, dout, argmax, d0, w, s0, n, base):
    zero = dx.dtype.type(0)
    for i in range(n):
        g = dout[s0 + i]
        a = argmax[s0 + i] - (base + 2 * i)
        for off in (0, 1, w, w + 1):
            dx[d0 + 2 * i + off] = g if a == off else zero
