"""Rows of softmax, log-sum-exp and the softmax gradient on explicit vector code, written
in LLVM IR (as the micro-kernels in tiles.py are).

A row of 10 logits was a scalar loop in Numba (a vectorised loop needs 16 or more values
before its scalar remainder): ~60 ns a row for the loss. Here a row of 1 to W values
(one vector register) is one masked vector, with the float32 exp of math.py on whole
vectors; kernels/activations.py and kernels/losses.py call these for such rows.
"""
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from ._ir import I32, I64, Rows, check_arrays, declare, shuffle_mask, splat
from .math import EXP_HI, EXP_LO, EXP_TAYLOR, LN2_HI, LN2_LO, LOG2E, fast_exp


def _vexp32(builder, x):
    """exp of a <n x float>, as math.fast_exp computes it for one float32."""
    vty, n = x.type, x.type.count

    def c(v):
        return ir.Constant(vty, [float(v)] * n)

    fma = declare(builder, "llvm.fma", vty, 3)
    lo, hi = c(EXP_LO), c(EXP_HI)
    x = builder.select(builder.fcmp_ordered("<", x, lo), lo, x)  # a NaN stays
    x = builder.select(builder.fcmp_ordered(">", x, hi), hi, x)
    k = builder.call(declare(builder, "llvm.floor", vty, 1),
                     [builder.call(fma, [x, c(LOG2E), c(0.5)])])
    nk = builder.fneg(k)
    r = builder.call(fma, [nk, c(LN2_HI), x])
    r = builder.call(fma, [nk, c(LN2_LO), r])
    p = c(EXP_TAYLOR[0])
    for t in EXP_TAYLOR[1:]:
        p = builder.call(fma, [p, r, c(t)])
    # 2^k in the exponent bits (k of a NaN is NaN, which has no int: 0 instead)
    ki = builder.fptosi(builder.select(builder.fcmp_unordered("uno", k, k), c(0), k),
                        ir.VectorType(I32, n))
    two_k = builder.shl(builder.add(ki, ir.Constant(ki.type, [126] * n)),
                        ir.Constant(ki.type, [23] * n))
    return builder.fmul(builder.fmul(p, c(2.0)), builder.bitcast(two_k, vty))


def _reduce(builder, v, op):
    """op over the lanes of v, halving: a fixed order."""
    n = v.type.count
    while n > 1:
        n //= 2
        v = op(builder.shuffle_vector(v, v, shuffle_mask(range(n))),
               builder.shuffle_vector(v, v, shuffle_mask(range(n, 2 * n))))
    return builder.extract_element(v, ir.Constant(I32, 0))


def _check_rows(name, arrays, float32=False):
    if not all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C"
               for a in arrays):
        raise TypeError(f"{name} takes 1-D C-contiguous arrays, not {arrays}")
    check_arrays(name, arrays)
    if float32 and arrays[0].dtype != types.float32:
        raise TypeError(f"{name} takes float32 arrays, not {arrays}")


def _max_exp(e, row):
    """For the row in array ``row`` (1 to ``lanes`` float32 values): its max m, the
    vector exp(row - m) (zeros past the row) and their sum, added in a fixed order.
    With a NaN in the row m may or may not be NaN: the exp of the NaN is NaN either way."""
    b, n, zero = e.b, e.size(row), ir.Constant(I64, 0)
    first = splat(b, b.load(e.data[row]), e.lanes)  # fills the lanes past n
    v = e.load(row, zero, e.vec(e.lanes), n, first)
    m = _reduce(b, v, lambda x, y: b.select(b.fcmp_ordered(">", x, y), x, y))
    ex = _vexp32(b, b.fsub(v, splat(b, m, e.lanes)))
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
        e = Rows(context, builder, signature, args, 2)
        m, ex, s = _max_exp(e, 1)
        scale = splat(builder, builder.fdiv(args[2], s), e.lanes)
        e.store(builder.fmul(ex, scale), 0, ir.Constant(I64, 0), e.size(0))
        return _pair(context, builder, signature, m, s)
    return types.UniTuple(src.dtype, 2)(dst, src, src.dtype), codegen


@intrinsic
def row1_max_sum_exp(typingctx, src):
    """(m, sum(exp(src - m))) with m = max(src), for a float32 row of 1 to ``lanes``
    values."""
    _check_rows("row1_max_sum_exp", (src,), float32=True)

    def codegen(context, builder, signature, args):
        m, _, s = _max_exp(Rows(context, builder, signature, args, 1), 0)
        return _pair(context, builder, signature, m, s)
    return types.UniTuple(src.dtype, 2)(src), codegen


@intrinsic
def row1_softmax_grad(typingctx, dx, dout, out):
    """dx[j] = out[j] * (dout[j] - sum(dout * out)) over a row of 1 to ``lanes`` values
    (dx may be dout)."""
    _check_rows("row1_softmax_grad", (dx, dout, out))

    def codegen(context, builder, signature, args):
        e = Rows(context, builder, signature, args, 3)
        zero, n, vty = ir.Constant(I64, 0), e.size(0), e.vec(e.lanes)
        g, y = e.load(1, zero, vty, n), e.load(2, zero, vty, n)  # zeros past n
        s = _reduce(builder, builder.fmul(g, y), builder.fadd)
        e.store(builder.fmul(y, builder.fsub(g, splat(builder, s, e.lanes))), 0, zero, n)
        return context.get_dummy_value()
    return types.void(dx, dout, out), codegen


# ---- plain-Numba twins: the test references of the intrinsics (tests/kernels/_simd/) ---
# The same formulas one value at a time (sums in index order, not the vector code's
# halving order: equal to rounding).

@njit(cache=True)
def _max_sum_exp_reference(src):
    m = src[0]
    for j in range(1, src.size):
        if src[j] > m:
            m = src[j]
    s = src.dtype.type(0)
    for j in range(src.size):
        s += fast_exp(src[j] - m)
    return m, s


@njit(cache=True)
def row1_softmax_reference(dst, src, k):
    m, s = _max_sum_exp_reference(src)
    scale = k / s
    for j in range(src.size):
        dst[j] = fast_exp(src[j] - m) * scale
    return m, s


@njit(cache=True)
def row1_max_sum_exp_reference(src):
    return _max_sum_exp_reference(src)


@njit(cache=True)
def row1_softmax_grad_reference(dx, dout, out):
    s = dout.dtype.type(0)
    for j in range(out.size):
        s += dout[j] * out[j]
    for j in range(out.size):
        dx[j] = out[j] * (dout[j] - s)
