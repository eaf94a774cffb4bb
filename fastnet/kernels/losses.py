"""Loss kernels (CPU), mean reduction, each fused with its backward.

``*_forward(grad, ...)`` returns the loss as a Python float and, unless ``grad`` is
None, overwrites ``grad`` with d loss / d input in the same pass: the gradient of a
loss is what training needs next, and computing it from values already in registers
is nearly free. There is no separate ``*_backward`` kernel for that reason.
Sums are taken over fixed blocks, then the blocks in order, so the loss does not
depend on the thread count.
"""
import numpy as np
from numba import njit, prange

from ._jit import parallel_family_ordered, parallel_kernel
from .activations import max_sum_exp, softmax_row

_BLOCK = 4096
_ROWS = 16  # rows of the cross-entropy loss summed per block (a parallel task)


@njit(inline="always")
def _first_bad_label(labels, c):
    """The index of the first label outside [0, c), or -1."""
    for i in range(labels.size):
        if labels[i] < 0 or labels[i] >= c:
            return i
    return -1


# NOTE: a family keyed on whether grad is given: an `if grad is not None` on the argument
# typed and compiled both row paths (Numba prunes such a test only on a constant), ~0.5 s
# of a first run; the closure's constant is pruned before typing.
@parallel_family_ordered
def _softmax_cross_entropy(with_grad):
    def kernel(grad, logits, labels):
        n, c = logits.shape
        bad = _first_bad_label(labels, c)
        if bad >= 0:
            return logits.dtype.type(0), bad  # before any output is written
        inv_n = logits.dtype.type(1) / logits.dtype.type(n)
        partial = np.empty((n + _ROWS - 1) // _ROWS, dtype=logits.dtype)
        for blk in prange(partial.size):
            t = logits.dtype.type(0)
            for i in range(blk * _ROWS, min((blk + 1) * _ROWS, n)):
                # NOTE: log-sum-exp with the row max subtracted: finite and accurate for
                # logits of +-1e4 (see row_max_logsumexp); the gradient is exp(x - m) / s / N.
                y = labels[i]
                if with_grad:
                    m, s = softmax_row(grad[i], logits[i], inv_n)
                    grad[i, y] -= inv_n
                else:
                    m, s = max_sum_exp(logits[i])
                t += np.log(s) - (logits[i, y] - m)
            partial[blk] = t
        total = logits.dtype.type(0)
        for blk in range(partial.size):
            total += partial[blk]
        return total / logits.dtype.type(n), -1
    return kernel


def softmax_cross_entropy_forward(grad, logits, labels):
    """logits (N, C), labels (N,) int in [0, C) -> loss = mean(logsumexp(logits) -
    logits[label]); grad (N, C) | None <- (softmax(logits) - onehot(labels)) / N.
    A label outside [0, C) raises ValueError before grad is written."""
    loss, bad = _softmax_cross_entropy[grad is not None](grad, logits, labels)
    if bad >= 0:
        c = logits.shape[1]
        raise ValueError(f"label {labels[bad]} is out of range for {c} classes [0, {c})")
    return loss


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
