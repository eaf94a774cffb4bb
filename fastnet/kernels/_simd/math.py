"""exp, tanh and log1p on [0, 1] for the CPU kernels, written in plain arithmetic so that LLVM vectorises
the loops that call them, on three one-instruction LLVM intrinsics (fma, maxnum, a
bitcast), each with its plain-Numba twin at the end of this file.

Numba lowers ``np.exp`` / ``np.tanh`` on a scalar to a libm call per element (the pip
builds of llvmlite have no SVML), which keeps every loop around them scalar: libm's
``tanhf`` alone made tanh 30x slower than NumPy's SIMD version. For float32 these
functions use range reduction and polynomials instead (within 2.5 ulp of the exact
value over the whole range; tested against float64 in tests/kernels/_simd/test_math.py);
float64 keeps libm, whose accuracy float64 users expect.

Special values behave as libm's: NaN stays NaN, exp(+inf) = inf, exp(-inf) = 0,
tanh(+-inf) = +-1, and exp overflows to inf above log(FLT_MAX) (the stable sigmoid
relies on 1 / inf == 0). Results below the smallest normal float32 (exp(x) for
x < -87.34) flush to 0.
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from .._jit import FASTMATH


@intrinsic
def float32_from_bits(typingctx, bits):
    """The float32 whose IEEE-754 bit pattern is the int32 ``bits``."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@intrinsic
def fma32(typingctx, a, b, c):
    """a * b + c rounded once (llvm.fma): an intrinsic call that fast-math
    reassociation cannot rewrite, unlike the separate multiply and add."""
    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        fn = builder.module.declare_intrinsic("llvm.fma", [f32], ir.FunctionType(f32, [f32] * 3))
        return builder.call(fn, args)
    return types.float32(types.float32, types.float32, types.float32), codegen


@intrinsic
def maxnum(typingctx, a, b):
    """llvm.maxnum: the larger of two floats, or the one that is not NaN. Unlike Python's
    max (a compare and a select, which LLVM leaves scalar in a reduction: one value per
    ~1.7 cycles), a loop of these vectorises."""
    if not (isinstance(a, types.Float) and a == b):
        return None

    def codegen(context, builder, signature, args):
        t = context.get_value_type(signature.return_type)
        fn = builder.module.declare_intrinsic("llvm.maxnum", [t], ir.FunctionType(t, [t, t]))
        return builder.call(fn, args)
    return a(a, a), codegen


@njit(inline="always", fastmath=FASTMATH)
def row_max(r):
    """The largest value of a non-empty 1-D array, vectorised. NaNs are skipped (the
    max of an all-NaN row is NaN): callers (softmax, log-sum-exp) still give NaN for a
    row with a NaN, through exp(NaN - m)."""
    m = r[0]
    for j in range(r.size):
        m = maxnum(m, r[j])
    return m


# float32 exp(x) = 2^k e^r (see exp32 below; softmax.py's vector exp uses the same)
EXP_LO, EXP_HI = -87.33654, 88.7229  # x is clamped to these first
LOG2E = 1.44269504
LN2_HI, LN2_LO = 0.693359375, -2.12194440e-4  # ln 2 split in two
EXP_TAYLOR = (1.0 / 5040, 1.0 / 720, 1.0 / 120, 1.0 / 24, 1.0 / 6, 0.5, 1.0, 1.0)  # r^7 .. r^0


def fast_exp(x):
    """exp(x); vectorisable for float32 (see the module docstring)."""
    return np.exp(x)


def fast_tanh(x):
    """tanh(x); vectorisable for float32 (see the module docstring)."""
    return np.tanh(x)


@overload(fast_exp, inline="always", fastmath=FASTMATH)
def _fast_exp(x):
    if x != types.float32:
        return lambda x: np.exp(x)

    def exp32(x):
        f = np.float32
        # NOTE: exp(x) = 2^k e^r with k = round(x / ln 2) and r = x - k ln 2 in
        # [-ln2/2, ln2/2], reduced in two fused multiply-adds with ln 2 split in two (so
        # that the callers' fast-math reassociation cannot fold them into one rounded
        # x - k ln 2, which cost 4 ulp at |x| = 87). e^r by its Taylor series to r^7
        # (truncation error < 1.2e-8 relative); 2^k is written into the exponent bits.
        # Branch-free so that callers vectorise (and no if/else: Numba's IR inliner
        # warns on those two levels deep): x is clamped first (max/min keep a NaN),
        # so that k lies in [-126, 128]; 2^k = 2 * 2^(k-1), where 2^(k-1) is 0 for
        # k = -126 (results below 2e-38 flush to 0, exp(-inf) = 0) and the product
        # overflows to inf above log(FLT_MAX) (exp(+inf) = inf).
        x = min(max(x, f(EXP_LO)), f(EXP_HI))
        k = np.floor(x * f(LOG2E) + f(0.5))
        r = fma32(-k, f(LN2_HI), x)
        r = fma32(-k, f(LN2_LO), r)
        p = f(EXP_TAYLOR[0])
        p = p * r + f(EXP_TAYLOR[1])
        p = p * r + f(EXP_TAYLOR[2])
        p = p * r + f(EXP_TAYLOR[3])
        p = p * r + f(EXP_TAYLOR[4])
        p = p * r + f(EXP_TAYLOR[5])
        p = p * r + f(EXP_TAYLOR[6])
        p = p * r + f(EXP_TAYLOR[7])
        return (p * f(2.0)) * float32_from_bits((np.int32(k) + np.int32(126)) << np.int32(23))
    return exp32


def fast_log1p_unit(e):
    """log(1 + e) for e in [0, 1] (or NaN); vectorisable for float32, within 3 ulp there
    (tests/kernels/_simd/test_math.py); float64 keeps libm."""
    return np.log1p(e)


# log1p(e) = 2 atanh(s), s = e / (2 + e) in [0, 1/3]: 2 (s + s^3/3 + ... + s^17/17),
# truncation error below (1/9)^9 / 19 < 2e-10 relative
LOG1P_ATANH = tuple(1.0 / k for k in range(17, 0, -2))  # 1/17 .. 1/1


@overload(fast_log1p_unit, inline="always", fastmath=FASTMATH)
def _fast_log1p_unit(e):
    if e != types.float32:
        return lambda e: np.log1p(e)

    def log1p32(e):
        # NOTE: for e in [0, 1], what the stable log-sigmoid needs (e = exp(-|x|)):
        # s = e / (2 + e) is exact to an ulp, and the odd series of 2 atanh(s) in s^2
        # has only positive terms, so there is no cancellation; small e keeps its
        # relative accuracy (log1p(e) ~ e), which log(1 + e) would lose. NaN stays NaN.
        f = np.float32
        s = e / (f(2.0) + e)
        z = s * s
        p = f(LOG1P_ATANH[0])
        p = p * z + f(LOG1P_ATANH[1])
        p = p * z + f(LOG1P_ATANH[2])
        p = p * z + f(LOG1P_ATANH[3])
        p = p * z + f(LOG1P_ATANH[4])
        p = p * z + f(LOG1P_ATANH[5])
        p = p * z + f(LOG1P_ATANH[6])
        p = p * z + f(LOG1P_ATANH[7])
        p = p * z + f(LOG1P_ATANH[8])
        return f(2.0) * s * p
    return log1p32


@overload(fast_tanh, inline="always", fastmath=FASTMATH)
def _fast_tanh(x):
    if x != types.float32:
        return lambda x: np.tanh(x)

    def tanh32(x):
        f = np.float32
        # NOTE: near 0, 1 - 2 / (e^2|x| + 1) cancels (relative error 6e-3 at 1e-3), so
        # |x| < 0.625 uses x * P(x^2), a least-squares fit of tanh(x)/x in relative error
        # (max 1.1e-7 on that interval). Both sides are computed and blended with a 0/1
        # weight, branch-free so that the loop vectorises; the polynomial side sees x
        # clamped to its interval so that it stays finite.
        a = abs(x)
        s = min(max(x, f(-0.625)), f(0.625))
        u = s * s
        p = f(-0.00566074)
        p = p * u + f(0.02059167)
        p = p * u + f(-0.05372128)
        p = p * u + f(0.1333113)
        p = p * u + f(-0.33333261)
        p = p * u + f(1.0)
        big = np.copysign(f(1.0) - f(2.0) / (fast_exp(f(2.0) * a) + f(1.0)), x)
        w = f(a < f(0.625))
        return w * (s * p) + (f(1.0) - w) * big
    return tanh32


# ---- plain-Numba twins: the test references of the intrinsics (tests/kernels/_simd/) ---

@njit(cache=True)
def float32_from_bits_reference(bits):
    return np.array([bits], np.int32).view(np.float32)[0]


@njit(cache=True)
def fma32_reference(a, b, c):
    """a * b + c in float64 (the product of two float32 is exact there), then float32."""
    return np.float32(np.float64(a) * np.float64(b) + np.float64(c))


@njit(cache=True)
def maxnum_reference(a, b):
    if a != a:
        return b
    if b != b:
        return a
    return a if a >= b else b
