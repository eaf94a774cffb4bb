"""Loss kernels (CPU), mean reduction, each fused with its backward.

``*_forward(grad, ...)`` returns the loss as a Python float and, unless ``grad`` is
None, overwrites ``grad`` with d loss / d input in the same pass: the gradient of a
loss is what training needs next, and computing it from values already in registers
is nearly free. There is no separate ``*_backward`` kernel for that reason.
Sums are taken over fixed blocks, then the blocks in order, so the loss does not
depend on the thread count.
"""
import numpy as np
from numba import prange

from ._jit import parallel_kernel, parallel_kernel_ordered
from ._math import fast_exp
from .activations import row_max_logsumexp

_BLOCK = 4096


@parallel_kernel_ordered
def _softmax_cross_entropy(grad, row_loss, logits, labels):
    n, c = logits.shape
    inv_n = logits.dtype.type(1) / logits.dtype.type(n)
    for i in prange(n):
        # NOTE: log-sum-exp with the row max subtracted: finite and accurate for logits
        # of +-1e4 (see row_max_logsumexp).
        m, logsum = row_max_logsumexp(logits, i)
        y = labels[i]
        row_loss[i] = logsum - (logits[i, y] - m)
        if grad is not None:
            for j in range(c):
                grad[i, j] = fast_exp((logits[i, j] - m) - logsum) * inv_n
            grad[i, y] -= inv_n


def softmax_cross_entropy_forward(grad, logits, labels):
    """logits (N, C), labels (N,) int in [0, C) -> loss = mean(logsumexp(logits) -
    logits[label]); grad (N, C) | None <- (softmax(logits) - onehot(labels)) / N"""
    row_loss = np.empty(logits.shape[0], dtype=logits.dtype)
    _softmax_cross_entropy(grad, row_loss, logits, labels)
    return float(row_loss.sum() / logits.shape[0])


@parallel_kernel
def _mse(grad, partial, pred, target):
    size = pred.size
    scale = pred.dtype.type(2) / pred.dtype.type(size)
    for blk in prange(partial.size):
        s = pred.dtype.type(0)
        # views looped from 0: vectorises (see recurrent.py's _lstm_step)
        i0, i1 = blk * _BLOCK, min((blk + 1) * _BLOCK, size)
        p, q = pred[i0:i1], target[i0:i1]
        for i in range(p.size):
            d = p[i] - q[i]
            s += d * d
        if grad is not None:
            g = grad[i0:i1]
            for i in range(p.size):
                g[i] = (p[i] - q[i]) * scale
        partial[blk] = s


def mse_forward(grad, pred, target):
    """pred (...), target (...) -> loss = mean((pred - target)^2);
    grad (...) | None <- 2 (pred - target) / pred.size"""
    partial = np.empty((pred.size + _BLOCK - 1) // _BLOCK, dtype=pred.dtype)
    g = None if grad is None else grad.reshape(-1)
    _mse(g, partial, pred.reshape(-1), target.reshape(-1))
    return float(partial.sum() / pred.size)
