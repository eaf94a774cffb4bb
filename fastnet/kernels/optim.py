"""Fused optimizer updates (CPU), in place, one pass over each parameter.

Semantics follow torch.optim: SGD with momentum / Nesterov / L2 weight decay and
dampening 0 (a zero-initialised velocity gives PyTorch's first step, buf = g, exactly);
Adam with L2 weight decay added to the gradient, AdamW with decoupled decay
p *= 1 - lr * wd, both bias-corrected. Hyper-parameters arrive as Python floats and are
cast to the parameter's dtype once, so float32 updates stay float32.
Gradient clipping (``fastnet.optim.clip_grad_norm_`` / ``clip_grad_value_``):
``vector_norm`` (one array's p-norm, in blocks of a fixed size summed in order: the same
bits for any thread count), ``scale`` and ``clamp`` (in place).
All arrays of one call are C-contiguous with the same shape. (``add`` and ``accumulate``
live in ``elementwise.py``; imported here too, where they lived before.)
"""
import math

import numpy as np

from numba import njit, prange

from ._jit import parallel_kernel, parallel_kernel_ordered
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


_BLOCK = 4096  # elements per partial sum of vector_norm (fixed: the order of the sum)
NORM_SQUARES, NORM_ABS, NORM_MAX, NORM_POW = 0, 1, 2, 3  # vector_norm's reductions


def norm_mode(norm_type):
    """The reduction of a p-norm: sum of squares (2), of |x| (1), max |x| (inf), of |x|^p."""
    if norm_type == 2:
        return NORM_SQUARES
    if norm_type == 1:
        return NORM_ABS
    if norm_type == math.inf:
        return NORM_MAX
    return NORM_POW


_LANES = 16  # independent partial sums per block: vector code without reassociation


# NOTE: no reassociation (the serial and the parallel build vectorised the sums of |x| and
# |x|^p differently: other float32 bits). Instead, _LANES sums side by side (element i of a
# block into lane i % _LANES), which LLVM vectorises as they are, then the lanes added in
# order: every build gives the same bits, and a sum is not one long chain of dependent adds.
@parallel_kernel_ordered
def _norm_partial(partial, x, p, mode):
    t = x.dtype.type
    pp = t(p)
    for blk in prange(partial.size):
        i0, i1 = blk * _BLOCK, min((blk + 1) * _BLOCK, x.size)
        v = x[i0:i1]
        n = v.size - v.size % _LANES
        lanes = np.zeros(_LANES, x.dtype)
        if mode == NORM_MAX:
            s = t(0)
            for i in range(v.size):
                a = abs(v[i])
                if a > s or a != a:  # NOTE: a NaN is kept (and a later NaN keeps it)
                    s = a
            partial[blk] = s
            continue
        for i0 in range(0, n, _LANES):
            for k in range(_LANES):
                a = v[i0 + k]
                if mode == NORM_SQUARES:
                    lanes[k] += a * a
                elif mode == NORM_ABS:
                    lanes[k] += abs(a)
                else:
                    lanes[k] += abs(a) ** pp
        for i in range(n, v.size):  # the tail, into the first lanes
            a = v[i]
            if mode == NORM_SQUARES:
                lanes[i - n] += a * a
            elif mode == NORM_ABS:
                lanes[i - n] += abs(a)
            else:
                lanes[i - n] += abs(a) ** pp
        s = t(0)
        for k in range(_LANES):
            s += lanes[k]
        partial[blk] = s


@njit(cache=True)
def _norm_finish(out, partial, p, mode):
    t = partial.dtype.type
    s = t(0)
    for i in range(partial.size):  # in order
        if mode == NORM_MAX:
            a = partial[i]
            if a > s or a != a:
                s = a
        else:
            s += partial[i]
    if mode == NORM_SQUARES:
        s = np.sqrt(s)
    elif mode == NORM_POW:
        s = s ** (t(1) / t(p))
    out[0] = s


def vector_norm(out, x, norm_type):
    """x (...) -> out (1,) = ||x||_p (norm_type p > 0, or inf: max |x|), in x's dtype"""
    mode = norm_mode(norm_type)
    p = 2.0 if mode != NORM_POW else float(norm_type)
    partial = np.empty((x.size + _BLOCK - 1) // _BLOCK, dtype=x.dtype)
    flat = x.reshape(-1)
    _norm_partial(partial, flat, p, mode)
    _norm_finish(out.reshape(-1), partial, p, mode)


@parallel_kernel
def _scale(x, alpha):
    a = x.dtype.type(alpha)
    for i in prange(x.size):
        x[i] *= a


def scale(x, alpha):
    """x (...) *= alpha (cast to x's dtype): clip_grad_norm_'s clip coefficient"""
    _scale(x.reshape(-1), alpha)


@parallel_kernel
def _clamp(x, lo, hi):
    t = x.dtype.type
    a, b = t(lo), t(hi)
    for i in prange(x.size):
        v = x[i]
        if v < a:  # NOTE: a NaN stays NaN, as torch.clamp_
            x[i] = a
        elif v > b:
            x[i] = b


def clamp(x, lo, hi):
    """x (...) clamped in place to [lo, hi] (NaN stays NaN): clip_grad_value_"""
    _clamp(x.reshape(-1), lo, hi)
