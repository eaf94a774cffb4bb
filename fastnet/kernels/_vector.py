"""Explicit vector code for the pooling passes LLVM leaves scalar, written in LLVM IR (as
the micro-kernels in _microkernel.py are).

``upsample2`` writes every source value twice in a row, into two destination rows: the
backward of 2x2 average pooling. As a Numba loop (``r[2*j] = r[2*j + 1] = g``) LLVM
emitted scalar stores, and the rows are short (14 or 16 values in the benchmark layers),
so a vectorised loop with a scalar remainder did not help either. Here each step loads
W/2 values, scales them, duplicates each lane with one shuffle and stores W values to
each row; the last step of a row uses masked loads and stores (AVX-512 has them in
hardware; AVX2 uses vmaskmov), so a 14-value row is one step.
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._microkernel import _float_type, lanes


def _splat(builder, value, n):
    vty = ir.VectorType(value.type, n)
    undef = ir.Constant(vty, ir.Undefined)
    i32 = ir.IntType(32)
    return builder.shuffle_vector(builder.insert_element(undef, value, ir.Constant(i32, 0)),
                                  undef, ir.Constant(ir.VectorType(i32, n), [0] * n))


def _masked(builder, op, vty, bits):
    i1, i32 = ir.IntType(1), ir.IntType(32)
    mask = ir.VectorType(i1, vty.count)
    if op == "load":
        fnty = ir.FunctionType(vty, [vty.as_pointer(), i32, mask, vty])
    else:
        fnty = ir.FunctionType(ir.VoidType(), [vty, vty.as_pointer(), i32, mask])
    return cgutils.get_or_insert_function(builder.module, fnty,
                                          f"llvm.masked.{op}.v{vty.count}f{bits}.p0")


@intrinsic
def upsample2(typingctx, dst, src, d0, d1, s0, n, scale):
    """dst[d + 2i] = dst[d + 2i + 1] = src[s0 + i] * scale for d in (d0, d1), i < n
    (dst and src 1-D contiguous float arrays of one dtype; the caller keeps every index
    inside them; n >= 0)."""
    if not (isinstance(dst, types.Array) and isinstance(src, types.Array)
            and dst.dtype == src.dtype and dst.dtype in (types.float32, types.float64)):
        raise TypeError(f"upsample2 takes two float arrays of one dtype, not {dst}, {src}")
    sig = types.void(dst, src, types.intp, types.intp, types.intp, types.intp, dst.dtype)

    def codegen(context, builder, signature, args):
        dst_a = context.make_array(signature.args[0])(context, builder, args[0])
        src_a = context.make_array(signature.args[1])(context, builder, args[1])
        d0, d1, s0, n, scale = args[2:]
        bits = signature.args[0].dtype.bitwidth
        w = lanes(bits // 8)
        h = w // 2
        ft = _float_type(signature.args[0].dtype)
        hv, wv = ir.VectorType(ft, h), ir.VectorType(ft, w)
        i32, i64 = ir.IntType(32), ir.IntType(64)
        align = ir.Constant(i32, bits // 8)
        mload, mstore = _masked(builder, "load", hv, bits), _masked(builder, "store", wv, bits)
        lane_h = ir.Constant(ir.VectorType(i64, h), list(range(h)))
        lane_w = ir.Constant(ir.VectorType(i64, w), list(range(w)))
        dup = ir.Constant(ir.VectorType(i32, w), [k // 2 for k in range(w)])
        undef = ir.Constant(hv, ir.Undefined)
        sv = _splat(builder, scale, h)
        steps = builder.udiv(builder.add(n, ir.Constant(i64, h - 1)), ir.Constant(i64, h))
        with cgutils.for_range(builder, steps) as loop:
            i = builder.mul(loop.index, ir.Constant(i64, h))
            left = builder.sub(n, i)  # values still to write, > 0: all lanes but in the last step
            mh = builder.icmp_unsigned("<", lane_h, _splat(builder, left, h))
            mw = builder.icmp_unsigned("<", lane_w, _splat(builder, builder.add(left, left), w))
            sp = builder.bitcast(builder.gep(src_a.data, [builder.add(s0, i)]), hv.as_pointer())
            v = builder.fmul(builder.call(mload, [sp, align, mh, undef]), sv)
            pairs = builder.shuffle_vector(v, undef, dup)
            for d in (d0, d1):
                dp = builder.gep(dst_a.data, [builder.add(d, builder.add(i, i))])
                builder.call(mstore, [pairs, builder.bitcast(dp, wv.as_pointer()), align, mw])
        return context.get_dummy_value()
    return sig, codegen



@intrinsic
def max_pool2x2_row(typingctx, out, argmax, x, o0, x0, w, n, base):
    """One output row of 2x2 / stride-2 max pooling, W outputs per step: for i < n,
    out[o0 + i] = the largest of x[x0 + 2i], x[x0 + 2i + 1], x[x0 + w + 2i],
    x[x0 + w + 2i + 1], compared in that order (strict >: a tie keeps the first; a NaN
    wins), and argmax[o0 + i] = base + 2i + its offset 0, 1, w or w + 1. out and x are
    1-D contiguous float arrays of one dtype, argmax 1-D contiguous int32; the caller
    keeps every index inside them. The input pairs are split into even and odd lanes
    with shuffles (as a Numba loop over rows of 14 or 16 outputs it ran at 13-23 GB/s)."""
    if not (isinstance(out, types.Array) and isinstance(x, types.Array)
            and out.dtype == x.dtype and x.dtype in (types.float32, types.float64)
            and isinstance(argmax, types.Array) and argmax.dtype == types.int32):
        raise TypeError(f"max_pool2x2_row takes float out and x of one dtype and int32 "
                        f"argmax, not {out}, {argmax}, {x}")
    sig = types.void(out, argmax, x, types.intp, types.intp, types.intp, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        out_a = context.make_array(signature.args[0])(context, builder, args[0])
        am_a = context.make_array(signature.args[1])(context, builder, args[1])
        x_a = context.make_array(signature.args[2])(context, builder, args[2])
        o0, x0, w, n, base = args[3:]
        bits = signature.args[0].dtype.bitwidth
        lw = lanes(bits // 8)
        ft = _float_type(signature.args[0].dtype)
        vo, vi = ir.VectorType(ft, lw), ir.VectorType(ft, 2 * lw)
        i32, i64 = ir.IntType(32), ir.IntType(64)
        vk = ir.VectorType(i32, lw)
        align = ir.Constant(i32, bits // 8)
        load_in, store_out = _masked(builder, "load", vi, bits), _masked(builder, "store", vo, bits)
        store_idx = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [vk, vk.as_pointer(), i32,
                                                            ir.VectorType(ir.IntType(1), lw)]),
            f"llvm.masked.store.v{lw}i32.p0")
        lane_o = ir.Constant(ir.VectorType(i64, lw), list(range(lw)))
        lane_i = ir.Constant(ir.VectorType(i64, 2 * lw), list(range(2 * lw)))
        evens = ir.Constant(ir.VectorType(i32, lw), [2 * k for k in range(lw)])
        odds = ir.Constant(ir.VectorType(i32, lw), [2 * k + 1 for k in range(lw)])
        twice_lane = ir.Constant(vk, [2 * k for k in range(lw)])
        zero_in = ir.Constant(vi, [0.0] * (2 * lw))
        w32 = builder.trunc(w, i32)
        offsets = (ir.Constant(vk, [1] * lw), _splat(builder, w32, lw),
                   _splat(builder, builder.add(w32, ir.Constant(i32, 1)), lw))
        steps = builder.udiv(builder.add(n, ir.Constant(i64, lw - 1)), ir.Constant(i64, lw))
        with cgutils.for_range(builder, steps) as loop:
            i = builder.mul(loop.index, ir.Constant(i64, lw))
            left = builder.sub(n, i)  # outputs still to write, > 0
            mo = builder.icmp_unsigned("<", lane_o, _splat(builder, left, lw))
            mi = builder.icmp_unsigned("<", lane_i, _splat(builder, builder.add(left, left), 2 * lw))
            src = builder.add(x0, builder.add(i, i))
            rows = []
            for start in (src, builder.add(src, w)):
                p = builder.bitcast(builder.gep(x_a.data, [start]), vi.as_pointer())
                v = builder.call(load_in, [p, align, mi, zero_in])
                rows.append((builder.shuffle_vector(v, v, evens), builder.shuffle_vector(v, v, odds)))
            best = rows[0][0]
            k = ir.Constant(vk, [0] * lw)
            for v, kv in zip((rows[0][1], rows[1][0], rows[1][1]), offsets):
                take = builder.or_(builder.fcmp_ordered(">", v, best),
                                   builder.fcmp_unordered("!=", v, v))
                best = builder.select(take, v, best)
                k = builder.select(take, kv, k)
            dst = builder.add(o0, i)
            po = builder.bitcast(builder.gep(out_a.data, [dst]), vo.as_pointer())
            builder.call(store_out, [best, po, align, mo])
            first = builder.trunc(builder.add(base, builder.add(i, i)), i32)
            idx = builder.add(builder.add(_splat(builder, first, lw), twice_lane), k)
            pa = builder.bitcast(builder.gep(am_a.data, [dst]), vk.as_pointer())
            builder.call(store_idx, [idx, pa, ir.Constant(i32, 4), mo])
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def max_unpool2x2_row(typingctx, dx, dout, argmax, d0, w, s0, n, base):
    """The backward of one output row of 2x2 / stride-2 max pooling, W/2 outputs per step:
    for i < n with a = argmax[s0 + i] - (base + 2i) (0, 1, w or w + 1: the forward's
    pick), dx[d0 + 2i + j] = dout[s0 + i] if a == j else 0 for j in (0, 1), and
    dx[d0 + w + 2i + j] likewise for a == w + j. Every element of the two dx rows is
    written once (zeros included); each output's gradient goes to one place, as the
    windows do not overlap. dx and dout 1-D contiguous float arrays of one dtype, argmax
    1-D contiguous int32; the caller keeps every index inside them."""
    if not (isinstance(dx, types.Array) and isinstance(dout, types.Array)
            and dx.dtype == dout.dtype and dx.dtype in (types.float32, types.float64)
            and isinstance(argmax, types.Array) and argmax.dtype == types.int32):
        raise TypeError(f"max_unpool2x2_row takes float dx and dout of one dtype and int32 "
                        f"argmax, not {dx}, {dout}, {argmax}")
    sig = types.void(dx, dout, argmax, types.intp, types.intp, types.intp, types.intp,
                     types.intp)

    def codegen(context, builder, signature, args):
        dx_a = context.make_array(signature.args[0])(context, builder, args[0])
        g_a = context.make_array(signature.args[1])(context, builder, args[1])
        am_a = context.make_array(signature.args[2])(context, builder, args[2])
        d0, w, s0, n, base = args[3:]
        bits = signature.args[0].dtype.bitwidth
        lw = lanes(bits // 8)
        h = lw // 2
        ft = _float_type(signature.args[0].dtype)
        hv, wv = ir.VectorType(ft, h), ir.VectorType(ft, lw)
        i1, i32, i64 = ir.IntType(1), ir.IntType(32), ir.IntType(64)
        hk = ir.VectorType(i32, h)
        align = ir.Constant(i32, bits // 8)
        load_g, store_dx = _masked(builder, "load", hv, bits), _masked(builder, "store", wv, bits)
        load_k = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(hk, [hk.as_pointer(), i32, ir.VectorType(i1, h), hk]),
            f"llvm.masked.load.v{h}i32.p0")
        lane_h = ir.Constant(ir.VectorType(i64, h), list(range(h)))
        lane_w = ir.Constant(ir.VectorType(i64, lw), list(range(lw)))
        twice_lane = ir.Constant(hk, [2 * k for k in range(h)])
        zip_ = ir.Constant(ir.VectorType(i32, lw), [k // 2 + (k % 2) * h for k in range(lw)])
        zero_g = ir.Constant(hv, [0.0] * h)
        zero_k = ir.Constant(hk, [0] * h)
        w32 = builder.trunc(w, i32)
        picks = [ir.Constant(hk, [0] * h), ir.Constant(hk, [1] * h), _splat(builder, w32, h),
                 _splat(builder, builder.add(w32, ir.Constant(i32, 1)), h)]
        steps = builder.udiv(builder.add(n, ir.Constant(i64, h - 1)), ir.Constant(i64, h))
        with cgutils.for_range(builder, steps) as loop:
            i = builder.mul(loop.index, ir.Constant(i64, h))
            left = builder.sub(n, i)  # outputs still to read, > 0
            mh = builder.icmp_unsigned("<", lane_h, _splat(builder, left, h))
            mw = builder.icmp_unsigned("<", lane_w, _splat(builder, builder.add(left, left), lw))
            src = builder.add(s0, i)
            g = builder.call(load_g, [builder.bitcast(builder.gep(g_a.data, [src]), hv.as_pointer()),
                                      align, mh, zero_g])
            k = builder.call(load_k, [builder.bitcast(builder.gep(am_a.data, [src]), hk.as_pointer()),
                                      ir.Constant(i32, 4), mh, zero_k])
            first = builder.trunc(builder.add(base, builder.add(i, i)), i32)
            rel = builder.sub(k, builder.add(_splat(builder, first, h), twice_lane))
            vals = [builder.select(builder.icmp_signed("==", rel, p), g, zero_g) for p in picks]
            dst = builder.add(d0, builder.add(i, i))
            for row, (even, odd) in enumerate(((vals[0], vals[1]), (vals[2], vals[3]))):
                pairs = builder.shuffle_vector(even, odd, zip_)
                at = dst if row == 0 else builder.add(dst, w)
                p = builder.bitcast(builder.gep(dx_a.data, [at]), wv.as_pointer())
                builder.call(store_dx, [pairs, p, align, mw])
        return context.get_dummy_value()
    return sig, codegen
