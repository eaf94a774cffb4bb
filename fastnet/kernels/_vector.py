"""Explicit vector code for copies LLVM leaves scalar, written in LLVM IR (as the
micro-kernels in _microkernel.py are).

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
