"""Activation kernels (CPU).

Elementwise kernels take arrays of any shape (C-contiguous, same shape and dtype);
softmax and log_softmax work on the last axis of a 2-D (N, C) array.
Backward kernels overwrite their outputs; ``dx`` may alias ``dout``.
Where the derivative is a function of the output (relu, sigmoid, tanh, softmax,
log_softmax) backward takes the forward output ``out`` rather than the input.
"""
import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from ._jit import FASTMATH, parallel_family, parallel_kernel, parallel_kernel_exact, parallel_kernel_ordered
from ._simd import lanes
from ._simd.math import fast_exp, fast_tanh, row_max
from ._simd.softmax import row1_max_sum_exp, row1_softmax, row1_softmax_grad
from .codes import ACTIVATIONS, HARDSIGMOID_ONE_SIXTH, RELU, SIGMOID, TANH  # noqa: F401  (ACTIVATIONS re-exported)


@njit(inline="always", fastmath=FASTMATH)
def apply_activation(v, code):
    """act(v) for a scalar, by code (fastnet/kernels/codes.py)."""
    if code == RELU:
        # NOTE: "<= 0 gives 0", not "> 0 keeps v": a NaN stays NaN, as in PyTorch
        return type(v)(0) if v <= 0 else v
    if code == SIGMOID:
        # NOTE: exp(-v) overflows to inf for v << 0 and 1 / inf == 0: no NaN, no branch.
        one = type(v)(1)
        return one / (one + fast_exp(-v))
    if code == TANH:
        return fast_tanh(v)
    return v


@njit(inline="always", fastmath=FASTMATH)
def through_activation(g, y, code):
    """g * d act / d v, expressed through the output y = act(v): the gradient ``g`` of the
    output carried to the activation's input."""
    # NOTE: constants take y's type; a bare 1 or 0.5 would promote float32 to float64.
    one = type(y)(1)
    if code == RELU:
        # NOTE: as PyTorch's threshold_backward, a select, not a product: 0 where y <= 0
        # even when g is NaN or inf, and g where y > 0 or y is NaN
        return type(g)(0) if y <= 0 else g
    if code == SIGMOID:
        return g * (y * (one - y))
    if code == TANH:
        return g * (one - y * y)
    return g


# One kernel per activation (a family keyed on its code): with the code a runtime argument,
# every kernel compiled the sigmoid and tanh paths too (~0.8 s of a first run's ReLU).
@parallel_family
def _activation_forward(code):
    def kernel(out, x):
        for i in prange(x.size):
            out[i] = apply_activation(x[i], code)
    return kernel


@parallel_family
def _activation_backward(code):
    def kernel(dx, dout, out):
        for i in prange(out.size):
            dx[i] = through_activation(dout[i], out[i], code)
    return kernel


def relu_forward(out, x):
    """x (...) -> out (...) = max(x, 0); NaN stays NaN"""
    _activation_forward[RELU](out.reshape(-1), x.reshape(-1))


def relu_backward(dx, dout, out):
    """dout (...), out (...) -> dx (...) = 0 where out <= 0, else dout"""
    _activation_backward[RELU](dx.reshape(-1), dout.reshape(-1), out.reshape(-1))


@parallel_kernel
def _leaky_relu_forward(out, x, negative_slope):
    slope = x.dtype.type(negative_slope)
    for i in prange(x.size):
        v = x[i]
        out[i] = v if v > 0 else v * slope


@parallel_kernel
def _leaky_relu_backward(dx, dout, x, negative_slope):
    slope = x.dtype.type(negative_slope)
    for i in prange(x.size):
        g = dout[i]
        dx[i] = g if x[i] > 0 else g * slope


def leaky_relu_forward(out, x, negative_slope):
    """x (...) -> out (...) = x if x > 0 else negative_slope * x"""
    _leaky_relu_forward(out.reshape(-1), x.reshape(-1), negative_slope)


def leaky_relu_backward(dx, dout, x, negative_slope):
    """dout (...), x (...) -> dx (...); takes the input, since a negative slope makes
    the output's sign ambiguous"""
    _leaky_relu_backward(dx.reshape(-1), dout.reshape(-1), x.reshape(-1), negative_slope)


# NOTE: hardsigmoid follows PyTorch's CPU kernel exactly: min(max(x + 3, 0), 6) / 6 (a
# division, not a product with 1/6), NaN propagating through both clamps; the gradient is
# dout * one_sixth inside the open interval (-3, 3) and 0 outside (x = +-3 and NaN included),
# one_sixth being PyTorch's float32 1.0f / 6.0f for every dtype
# (codes.HARDSIGMOID_ONE_SIXTH). Backward takes the input: near x = 3 the output rounds to
# 1, so the output cannot tell the open interval.


@parallel_kernel_exact
def _hardsigmoid_forward(out, x):
    t = x.dtype.type
    three, zero, six = t(3), t(0), t(6)
    for i in prange(x.size):
        v = x[i] + three
        v = v if v != v or v > zero else zero  # max(v, 0), NaN kept
        v = v if v != v or v < six else six    # min(v, 6), NaN kept
        out[i] = v / six


@parallel_kernel_exact
def _hardsigmoid_backward(dx, dout, x, one_sixth):
    t = x.dtype.type
    three, zero, k = t(3), t(0), t(one_sixth)
    for i in prange(x.size):
        v = x[i]
        # a NaN input fails both comparisons: gradient 0, as in PyTorch
        dx[i] = dout[i] * k if v > -three and v < three else zero


def hardsigmoid_forward(out, x):
    """x (...) -> out (...) = min(max(x + 3, 0), 6) / 6; NaN stays NaN"""
    _hardsigmoid_forward(out.reshape(-1), x.reshape(-1))


def hardsigmoid_backward(dx, dout, x):
    """dout (...), x (...) -> dx (...) = dout / 6 where -3 < x < 3, else 0; takes the
    input (see the note above)"""
    _hardsigmoid_backward(dx.reshape(-1), dout.reshape(-1), x.reshape(-1), HARDSIGMOID_ONE_SIXTH)


def sigmoid_forward(out, x):
    """x (...) -> out (...) = 1 / (1 + exp(-x))"""
    _activation_forward[SIGMOID](out.reshape(-1), x.reshape(-1))


def sigmoid_backward(dx, dout, out):
    """dout (...), out (...) -> dx (...) = dout * out * (1 - out)"""
    _activation_backward[SIGMOID](dx.reshape(-1), dout.reshape(-1), out.reshape(-1))


def tanh_forward(out, x):
    """x (...) -> out (...) = tanh(x)"""
    _activation_forward[TANH](out.reshape(-1), x.reshape(-1))


def tanh_backward(dx, dout, out):
    """dout (...), out (...) -> dx (...) = dout * (1 - out^2)"""
    _activation_backward[TANH](dx.reshape(-1), dout.reshape(-1), out.reshape(-1))


# ---- rows of softmax, log-sum-exp and the cross-entropy loss ------------------------
# A float32 row that fits one vector (10 logits: a classifier's head) runs on the
# one-vector code of _simd/softmax.py: as a loop it was scalar (a vectorised loop needs 16 or
# more values), ~20 ns a row for softmax. Longer rows, float64 and strided rows run the
# loops, which vectorise.
ROW1 = lanes(4)  # float32 values per vector


def _one_vector_rows(*rows):
    return all(r.dtype == types.float32 and r.layout == "C" for r in rows)


@njit(fastmath=FASTMATH, error_model="numpy")
def _exp_shifted(dst, r, m):
    # dst = exp(r - m), returns sum(dst); compiled on its own, with "reassoc", so that
    # the sum vectorises even inside the cross-entropy kernel, which compiles without it
    s = type(m)(0)
    for j in range(r.size):
        e = fast_exp(r[j] - m)
        dst[j] = e
        s += e
    return s


@njit(inline="always", fastmath=FASTMATH)
def _softmax_row_loop(dst, r, k):
    m = row_max(r)
    s = _exp_shifted(dst, r, m)
    scale = k / s
    for j in range(r.size):
        dst[j] *= scale
    return m, s


def softmax_row(dst, r, k):
    """dst = softmax(r) * k over a row; returns (m, s): m = max(r), s = sum(exp(r - m))."""


@overload(softmax_row, inline="always")
def _softmax_row(dst, r, k):
    if not _one_vector_rows(dst, r):
        return lambda dst, r, k: _softmax_row_loop(dst, r, k)

    def impl(dst, r, k):
        if r.size <= ROW1:
            return row1_softmax(dst, r, k)
        return _softmax_row_loop(dst, r, k)
    return impl


@njit(fastmath=FASTMATH, error_model="numpy")
def _sum_exp_shifted(r, m):
    # sum(exp(r - m)); compiled on its own, with "reassoc", so that the sum
    # vectorises even inside the callers of row_max_logsumexp, which compile without it
    s = type(m)(0)
    for j in range(r.size):
        s += fast_exp(r[j] - m)
    return s


@njit(inline="always", fastmath=FASTMATH)
def _max_sum_exp_loop(r):
    m = row_max(r)
    return m, _sum_exp_shifted(r, m)


def max_sum_exp(r):
    """(m, s) for a row r: m = max(r), s = sum(exp(r - m))."""


@overload(max_sum_exp, inline="always")
def _max_sum_exp(r):
    if not _one_vector_rows(r):
        return lambda r: _max_sum_exp_loop(r)

    def impl(r):
        if r.size <= ROW1:
            return row1_max_sum_exp(r)
        return _max_sum_exp_loop(r)
    return impl


@njit(inline="always", fastmath=FASTMATH)
def _softmax_grad_loop(dx, dout, out):
    s = dout[0] * out[0]
    for j in range(1, out.size):
        s += dout[j] * out[j]
    for j in range(out.size):
        dx[j] = out[j] * (dout[j] - s)


def softmax_grad_row(dx, dout, out):
    """dx = out * (dout - sum(dout * out)) over a row."""


@overload(softmax_grad_row, inline="always")
def _softmax_grad_row(dx, dout, out):
    if not (all(r.layout == "C" for r in (dx, dout, out))
            and dx.dtype == dout.dtype == out.dtype):
        return lambda dx, dout, out: _softmax_grad_loop(dx, dout, out)
    one_vector = lanes(out.dtype.bitwidth // 8)

    def impl(dx, dout, out):
        if out.size <= one_vector:
            row1_softmax_grad(dx, dout, out)
        else:
            _softmax_grad_loop(dx, dout, out)
    return impl


@parallel_kernel
def softmax_forward(out, x):
    """x (N, C) -> out (N, C), softmax over C"""
    n, c = x.shape
    for i in prange(n):
        # NOTE: subtracting the row max keeps exp() in range for logits of +-1e4;
        # sums are typed like x so float32 stays float32.
        softmax_row(out[i], x[i], x.dtype.type(1))


@parallel_kernel
def softmax_backward(dx, dout, out):
    """dout (N, C), out (N, C) -> dx (N, C) = out * (dout - sum(dout * out))"""
    for i in prange(out.shape[0]):
        softmax_grad_row(dx[i], dout[i], out[i])


@njit(inline="always", fastmath=FASTMATH)
def row_max_logsumexp(x, i):
    """(m, log(sum(exp(x[i, :] - m)))) with m the row max, in x's dtype.

    NOTE: callers form (x - m) - logsum rather than x - (m + logsum): x - m is exact,
    while m + logsum would round logsum to float32's spacing at m (1e-3 at m = 1e4).
    Callers compile without "reassoc" so that LLVM keeps that order.
    """
    m, s = max_sum_exp(x[i])
    return m, np.log(s)


@parallel_kernel_ordered
def log_softmax_forward(out, x):
    """x (N, C) -> out (N, C) = x - logsumexp(x) over C"""
    n, c = x.shape
    for i in prange(n):
        m, logsum = row_max_logsumexp(x, i)
        for j in range(c):
            out[i, j] = (x[i, j] - m) - logsum


@parallel_kernel
def log_softmax_backward(dx, dout, out):
    """dout (N, C), out (N, C) -> dx (N, C) = dout - exp(out) * sum(dout)"""
    n, c = out.shape
    for i in prange(n):
        s = dout[i, 0]
        for j in range(1, c):
            s += dout[i, j]
        for j in range(c):
            dx[i, j] = dout[i, j] - fast_exp(out[i, j]) * s
