"""Fused optimizer updates (CUDA), in place, one thread per element, the CPU kernels'
maths (torch.optim semantics: SGD with momentum / Nesterov / L2 weight decay and
dampening 0; Adam with L2 decay in the gradient, AdamW with decoupled decay).
Hyper-parameters are cast to the parameter's dtype on the host, and Adam's bias
corrections computed there in float64, so float32 updates stay float32.
All arrays of one call are C-contiguous device arrays with the same shape.
"""
import math

from numba import cuda

from . import _launch
from ._launch import launch_1d


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
