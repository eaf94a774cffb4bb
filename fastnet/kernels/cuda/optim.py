"""Fused optimizer updates (CUDA), in place, one thread per element, the CPU kernels'
maths (torch.optim semantics: SGD with momentum / Nesterov / L2 weight decay and
dampening 0; Adam with L2 decay in the gradient, AdamW with decoupled decay).
Hyper-parameters are cast to the parameter's dtype on the host, and Adam's bias
corrections computed there in float64, so float32 updates stay float32.
Gradient clipping: ``vector_norm`` (per-block partial sums or maxima, then one block
reducing them in a fixed tree: deterministic, no atomics), ``scale`` and ``clamp``.
All arrays of one call are C-contiguous device arrays with the same shape.
"""
import math

from numba import cuda

from . import _launch
from ._device import block_max, block_sum
from ._launch import THREADS, launch_1d, pow2
from ..optim import NORM_ABS, NORM_MAX, NORM_POW, NORM_SQUARES, norm_mode


@cuda.jit
def _sgd_step_kernel(param, velocity, grad, lr, mu, wd, nesterov):
    for i in range(cuda.grid(1), param.size, cuda.gridsize(1)):
        g = grad[i] + wd * param[i]
        if velocity is not None:
            b = mu * velocity[i] + g
            velocity[i] = b
            g = g + mu * b if nesterov else b
        param[i] -= lr * g


def sgd_step(param, velocity, grad, lr, momentum, weight_decay, nesterov):
    """param (...) -= lr * update(grad (...)); velocity (...) | None (momentum == 0)"""
    t = param.dtype
    v = None if velocity is None else _launch.flat(velocity)
    grid, threads = launch_1d(param.size)
    _sgd_step_kernel[grid, threads](_launch.flat(param), v, _launch.flat(grad),
                                    _launch.scalar(lr, t), _launch.scalar(momentum, t),
                                    _launch.scalar(weight_decay, t), bool(nesterov))


@cuda.jit
def _adam_step_kernel(param, m, v, grad, b1, b2, one_minus_b1, one_minus_b2, eps, wd,
                      decay, alpha, inv_sqrt_bc2, decoupled):
    for i in range(cuda.grid(1), param.size, cuda.gridsize(1)):
        p = param[i]
        g = grad[i]
        if decoupled:
            p *= decay
        else:
            g += wd * p
        mi = b1 * m[i] + one_minus_b1 * g
        vi = b2 * v[i] + one_minus_b2 * g * g
        m[i] = mi
        v[i] = vi
        param[i] = p - alpha * mi / (math.sqrt(vi) * inv_sqrt_bc2 + eps)


def adam_step(param, m, v, grad, lr, beta1, beta2, eps, weight_decay, step, decoupled):
    """param (...) updated with Adam (decoupled=False) or AdamW (True); m, v (...) moment
    buffers; step is the 1-based count of this update"""
    t = param.dtype
    one, b1, b2 = _launch.scalar(1, t), _launch.scalar(beta1, t), _launch.scalar(beta2, t)
    wd = _launch.scalar(weight_decay, t)
    bc1 = 1.0 - beta1 ** step  # float64 on the host, as on the CPU
    bc2 = 1.0 - beta2 ** step
    grid, threads = launch_1d(param.size)
    _adam_step_kernel[grid, threads](
        _launch.flat(param), _launch.flat(m), _launch.flat(v), _launch.flat(grad), b1, b2,
        one - b1, one - b2, _launch.scalar(eps, t), wd, one - _launch.scalar(lr, t) * wd,
        _launch.scalar(lr / bc1, t), _launch.scalar(1.0 / math.sqrt(bc2), t), bool(decoupled))


@cuda.jit
def _norm_partial_kernel(partial, x, p, mode):
    sh = cuda.shared.array(THREADS, x.dtype)
    tid = cuda.threadIdx.x
    s = x.dtype.type(0)
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = x[i]
        if mode == NORM_SQUARES:
            s += v * v
        elif mode == NORM_ABS:
            s += abs(v)
        elif mode == NORM_MAX:
            a = abs(v)
            if a > s or a != a:  # a NaN is kept, as on the CPU
                s = a
        else:
            s += abs(v) ** p
    if mode == NORM_MAX:
        s = block_max(sh, tid, tid, cuda.blockDim.x, s)
    else:
        s = block_sum(sh, tid, tid, cuda.blockDim.x, s)
    if tid == 0:
        partial[cuda.blockIdx.x] = s


@cuda.jit
def _norm_finish_kernel(out, partial, p, mode):
    sh = cuda.shared.array(THREADS, partial.dtype)
    tid = cuda.threadIdx.x
    t = cuda.blockDim.x
    s = partial.dtype.type(0)
    for i in range(tid, partial.size, t):
        a = partial[i]
        if mode == NORM_MAX:
            if a > s or a != a:
                s = a
        else:
            s += a
    if mode == NORM_MAX:
        s = block_max(sh, tid, tid, t, s)
    else:
        s = block_sum(sh, tid, tid, t, s)
    if tid == 0:
        one = partial.dtype.type(1)
        if mode == NORM_SQUARES:
            s = math.sqrt(s)
        elif mode == NORM_POW:
            s = s ** (one / p)
        out[0] = s


def vector_norm(out, x, norm_type):
    """x (...) -> out (1,) = ||x||_p (norm_type p > 0, or inf: max |x|), in x's dtype"""
    mode = norm_mode(norm_type)
    p = _launch.scalar(2.0 if mode != NORM_POW else norm_type, x.dtype)
    grid, threads = launch_1d(x.size)  # the partial count depends on the size only
    partial = _launch.empty(grid, x.dtype)
    _norm_partial_kernel[grid, threads](partial, _launch.flat(x), p, mode)
    _norm_finish_kernel[1, min(THREADS, pow2(grid))](_launch.flat(out), partial, p, mode)


@cuda.jit
def _scale_kernel(x, alpha):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        x[i] *= alpha


def scale(x, alpha):
    """x (...) *= alpha (cast to x's dtype): clip_grad_norm_'s clip coefficient"""
    grid, threads = launch_1d(x.size)
    _scale_kernel[grid, threads](_launch.flat(x), _launch.scalar(alpha, x.dtype))


@cuda.jit
def _clamp_kernel(x, lo, hi):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = x[i]
        if v < lo:  # a NaN stays NaN, as torch.clamp_
            x[i] = lo
        elif v > hi:
            x[i] = hi


def clamp(x, lo, hi):
    """x (...) clamped in place to [lo, hi] (NaN stays NaN): clip_grad_value_"""
    grid, threads = launch_1d(x.size)
    _clamp_kernel[grid, threads](_launch.flat(x), _launch.scalar(lo, x.dtype),
                                 _launch.scalar(hi, x.dtype))
