"""Fused optimizer updates (CPU), in place, one pass over each parameter.

Semantics follow torch.optim: SGD with momentum / Nesterov / L2 weight decay and
dampening 0 (a zero-initialised velocity gives PyTorch's first step, buf = g, exactly);
Adam with L2 weight decay added to the gradient, AdamW with decoupled decay
p *= 1 - lr * wd, both bias-corrected. Hyper-parameters arrive as Python floats and are
cast to the parameter's dtype once, so float32 updates stay float32.
All arrays of one call are C-contiguous with the same shape. (``add`` and ``accumulate``
live in ``elementwise.py``; imported here too, where they lived before.)
"""
import math

import numpy as np

from numba import prange

from ._jit import parallel_kernel
from .elementwise import accumulate, add  # noqa: F401  (their old home)


@parallel_kernel
def _sgd(param, velocity, grad, lr, momentum, weight_decay, nesterov):
    t = param.dtype.type
    lr, mu, wd = t(lr), t(momentum), t(weight_decay)
    for i in prange(param.size):
        g = grad[i] + wd * param[i]
        if velocity is not None:
            b = mu * velocity[i] + g
            velocity[i] = b
            g = g + mu * b if nesterov else b
        param[i] -= lr * g


def sgd_step(param, velocity, grad, lr, momentum, weight_decay, nesterov):
    """param (...) -= lr * update(grad (...)); velocity (...) | None (momentum == 0)"""
    v = None if velocity is None else velocity.reshape(-1)
    _sgd(param.reshape(-1), v, grad.reshape(-1), lr, momentum, weight_decay, nesterov)


@parallel_kernel
def _adam(param, m, v, grad, lr, beta1, beta2, eps, weight_decay, decoupled,
          step_size, inv_sqrt_bc2):
    t = param.dtype.type
    b1, b2, epsilon, wd = t(beta1), t(beta2), t(eps), t(weight_decay)
    one = t(1)
    decay = one - t(lr) * wd
    alpha, inv_bc2 = t(step_size), t(inv_sqrt_bc2)
    for i in prange(param.size):
        p = param[i]
        g = grad[i]
        if decoupled:
            p *= decay
        else:
            g += wd * p
        mi = b1 * m[i] + (one - b1) * g
        vi = b2 * v[i] + (one - b2) * g * g
        m[i] = mi
        v[i] = vi
        param[i] = p - alpha * mi / (np.sqrt(vi) * inv_bc2 + epsilon)


def adam_step(param, m, v, grad, lr, beta1, beta2, eps, weight_decay, step, decoupled):
    """param (...) updated with Adam (decoupled=False) or AdamW (True); m, v (...) moment
    buffers; step is the 1-based count of this update"""
    bc1 = 1.0 - beta1 ** step
    bc2 = 1.0 - beta2 ** step
    _adam(param.reshape(-1), m.reshape(-1), v.reshape(-1), grad.reshape(-1), lr, beta1,
          beta2, eps, weight_decay, decoupled, lr / bc1, 1.0 / math.sqrt(bc2))
