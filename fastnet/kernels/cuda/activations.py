"""Activation kernels (CUDA).

Elementwise kernels take device arrays of any shape (C-contiguous, same shape and
dtype), one thread per element; softmax and log_softmax work on the last axis of a 2-D
(N, C) array, ``t`` threads per row (a power of two, about C / ROW_ITEMS, at most
THREADS) and up to THREADS // t rows per block, reduced in shared memory.
Backward kernels overwrite their outputs; ``dx`` may alias ``dout``. As on the CPU,
backward takes the forward output ``out`` where the derivative is a function of it, and
leaky_relu takes the input.
"""
import math

from numba import cuda

from . import _launch
from ..codes import HARDSIGMOID_ONE_SIXTH, RELU, SIGMOID, TANH
from ._device import through_activation, apply_activation, block_sum, row_max_sumexp, row_of_thread
from ._launch import THREADS, launch_1d, launch_rows

# ---- elementwise ---------------------------------------------------------------------------

@cuda.jit
def _activation_forward_kernel(out, x, code, one):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        out[i] = apply_activation(x[i], code, one)


@cuda.jit
def _activation_backward_kernel(dx, dout, out, code, one):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        dx[i] = through_activation(dout[i], out[i], code, one)


def _forward(out, x, code):
    out, x = _launch.flat(out), _launch.flat(x)
    grid, threads = launch_1d(x.size)
    _activation_forward_kernel[grid, threads](out, x, code, _launch.scalar(1, x.dtype))


def _backward(dx, dout, out, code):
    dx, dout, out = _launch.flat(dx), _launch.flat(dout), _launch.flat(out)
    grid, threads = launch_1d(out.size)
    _activation_backward_kernel[grid, threads](dx, dout, out, code, _launch.scalar(1, out.dtype))


def relu_forward(out, x):
    """x (...) -> out (...) = max(x, 0)"""
    _forward(out, x, RELU)


def relu_backward(dx, dout, out):
    """dout (...), out (...) -> dx (...) = 0 where out <= 0, else dout"""
    _backward(dx, dout, out, RELU)


@cuda.jit
def _leaky_relu_forward_kernel(out, x, slope):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = x[i]
        out[i] = v if v > 0 else v * slope


@cuda.jit
def _leaky_relu_backward_kernel(dx, dout, x, slope):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        g = dout[i]
        dx[i] = g if x[i] > 0 else g * slope


def leaky_relu_forward(out, x, negative_slope):
    """x (...) -> out (...) = x if x > 0 else negative_slope * x"""
    out, x = _launch.flat(out), _launch.flat(x)
    grid, threads = launch_1d(x.size)
    _leaky_relu_forward_kernel[grid, threads](out, x, _launch.scalar(negative_slope, x.dtype))


def leaky_relu_backward(dx, dout, x, negative_slope):
    """dout (...), x (...) -> dx (...); takes the input, since a negative slope makes
    the output's sign ambiguous"""
    dx, dout, x = _launch.flat(dx), _launch.flat(dout), _launch.flat(x)
    grid, threads = launch_1d(x.size)
    _leaky_relu_backward_kernel[grid, threads](dx, dout, x, _launch.scalar(negative_slope, x.dtype))


@cuda.jit
def _hardsigmoid_forward_kernel(out, x, three, zero, six):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = x[i] + three
        v = v if v != v or v > zero else zero  # max(v, 0), NaN kept
        v = v if v != v or v < six else six    # min(v, 6), NaN kept
        out[i] = v / six


@cuda.jit
def _hardsigmoid_backward_kernel(dx, dout, x, three, zero, one_sixth):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = x[i]
        dx[i] = dout[i] * one_sixth if v > -three and v < three else zero


def hardsigmoid_forward(out, x):
    """x (...) -> out (...) = min(max(x + 3, 0), 6) / 6; NaN stays NaN"""
    out, x = _launch.flat(out), _launch.flat(x)
    grid, threads = launch_1d(x.size)
    s = _launch.scalar
    _hardsigmoid_forward_kernel[grid, threads](out, x, s(3, x.dtype), s(0, x.dtype), s(6, x.dtype))


def hardsigmoid_backward(dx, dout, x):
    """dout (...), x (...) -> dx (...) = dout / 6 where -3 < x < 3, else 0; takes the
    input (the CPU kernel's note: PyTorch's float32 1/6 for every dtype)"""
    dx, dout, x = _launch.flat(dx), _launch.flat(dout), _launch.flat(x)
    grid, threads = launch_1d(x.size)
    s = _launch.scalar
    _hardsigmoid_backward_kernel[grid, threads](
        dx, dout, x, s(3, x.dtype), s(0, x.dtype), s(HARDSIGMOID_ONE_SIXTH, x.dtype))


def sigmoid_forward(out, x):
    """x (...) -> out (...) = 1 / (1 + exp(-x))"""
    _forward(out, x, SIGMOID)


def sigmoid_backward(dx, dout, out):
    """dout (...), out (...) -> dx (...) = dout * out * (1 - out)"""
    _backward(dx, dout, out, SIGMOID)


def tanh_forward(out, x):
    """x (...) -> out (...) = tanh(x)"""
    _forward(out, x, TANH)


def tanh_backward(dx, dout, out):
    """dout (...), out (...) -> dx (...) = dout * (1 - out^2)"""
    _backward(dx, dout, out, TANH)


# ---- row-wise: softmax, log_softmax --------------------------------------------------------

@cuda.jit
def _softmax_forward_kernel(out, x, t):
    sh = cuda.shared.array(THREADS, x.dtype)
    tid, lane, row = row_of_thread(t)
    valid = row < x.shape[0]
    # NOTE: the row max is subtracted before exp(): finite for logits of +-1e4.
    m, s = row_max_sumexp(sh, x, tid, lane, t, row, valid)
    if valid:
        inv = x.dtype.type(1) / s
        for j in range(lane, x.shape[1], t):
            out[row, j] = math.exp(x[row, j] - m) * inv


@cuda.jit
def _softmax_backward_kernel(dx, dout, out, t):
    sh = cuda.shared.array(THREADS, out.dtype)
    tid, lane, row = row_of_thread(t)
    valid = row < out.shape[0]
    s = out.dtype.type(0)
    if valid:
        for j in range(lane, out.shape[1], t):
            s += dout[row, j] * out[row, j]
    s = block_sum(sh, tid, lane, t, s)
    if valid:  # each thread rewrites only the columns it read: dx may alias dout
        for j in range(lane, out.shape[1], t):
            dx[row, j] = out[row, j] * (dout[row, j] - s)


def softmax_forward(out, x):
    """x (N, C) -> out (N, C), softmax over C"""
    grid, threads, t = launch_rows(*x.shape)
    _softmax_forward_kernel[grid, threads](out, x, t)


def softmax_backward(dx, dout, out):
    """dout (N, C), out (N, C) -> dx (N, C) = out * (dout - sum(dout * out))"""
    grid, threads, t = launch_rows(*out.shape)
    _softmax_backward_kernel[grid, threads](dx, dout, out, t)


@cuda.jit
def _log_softmax_forward_kernel(out, x, t):
    sh = cuda.shared.array(THREADS, x.dtype)
    tid, lane, row = row_of_thread(t)
    valid = row < x.shape[0]
    m, s = row_max_sumexp(sh, x, tid, lane, t, row, valid)
    if valid:
        logsum = math.log(s)
        for j in range(lane, x.shape[1], t):
            # NOTE: (x - m) - logsum, not x - (m + logsum): x - m is exact, while
            # m + logsum would round logsum to float32's spacing at m (1e-3 at m = 1e4).
            out[row, j] = (x[row, j] - m) - logsum


@cuda.jit
def _log_softmax_backward_kernel(dx, dout, out, t):
    sh = cuda.shared.array(THREADS, out.dtype)
    tid, lane, row = row_of_thread(t)
    valid = row < out.shape[0]
    s = out.dtype.type(0)
    if valid:
        for j in range(lane, out.shape[1], t):
            s += dout[row, j]
    s = block_sum(sh, tid, lane, t, s)
    if valid:
        for j in range(lane, out.shape[1], t):
            dx[row, j] = dout[row, j] - math.exp(out[row, j]) * s


def log_softmax_forward(out, x):
    """x (N, C) -> out (N, C) = x - logsumexp(x) over C"""
    grid, threads, t = launch_rows(*x.shape)
    _log_softmax_forward_kernel[grid, threads](out, x, t)


def log_softmax_backward(dx, dout, out):
    """dout (N, C), out (N, C) -> dx (N, C) = dout - exp(out) * sum(dout)"""
    grid, threads, t = launch_rows(*out.shape)
    _log_softmax_backward_kernel[grid, threads](dx, dout, out, t)
