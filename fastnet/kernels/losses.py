"""Loss kernels (CPU), each forward fused with its gradient.

``*_forward(grad, ...)`` returns the loss as a Python float and, unless ``grad`` is
None, overwrites ``grad`` with d loss / d input in the same pass: the gradient of a
loss is what training needs next, and computing it from values already in registers
is nearly free. ``softmax_cross_entropy_forward`` and ``mse_forward`` are the mean
reduction's fast paths; ``cross_entropy``, ``bce_with_logits`` and ``pointwise_loss`` take
PyTorch's options and reductions, and their ``*_backward`` is the gradient of reduction
"none" given the upstream gradient (see below).
Sums are taken over fixed blocks, then the blocks in order, so the loss does not
depend on the thread count.
"""
import numpy as np
from numba import njit, prange

from ._jit import parallel_family, parallel_family_ordered, parallel_kernel
from ._simd.math import fast_exp, fast_log1p_unit
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


# ---- losses with PyTorch's arguments: reduction "mean" | "sum" | "none" -----------------------
#
# ``*_forward(out, grad, ..., reduction)`` writes the per-element (per-sample) losses into
# ``out`` unless it is None (reduction "none" needs it) and returns the reduced loss as a
# Python float ("mean" / "sum"; None for "none"); unless ``grad`` is None (it must be for
# "none") it overwrites grad with d loss / d input in the same pass. ``*_backward(grad,
# dout, ...)`` is the "none" reduction's backward: grad <- dout * d out / d input.
#
# NOTE: compile cost. Each loss is one family keyed on (with_grad, with_out) (NLLLoss's
# log_probs a runtime flag): the forward of "mean" / "sum" and the backward are the same
# member, the upstream gradient an array read with a step (0: the reduction's one scale,
# 1: "none"'s dout), and a missing weight is an array of ones, so that a loss compiles two
# members per dtype, not one per combination of None arguments. The four elementwise losses
# share one kernel, switched on a runtime code (a few instructions each).

REDUCTIONS = ("mean", "sum", "none")
POINTWISE = {"l1": 0, "mse": 1, "smooth_l1": 2, "huber": 3}


@njit(cache=True, nogil=True)
def _labels_and_weights(labels, weight, ignore_index):
    """(the index of the first label outside [0, C) that is not ignore_index, or -1; the sum
    of the weights of the labels that are not ignore_index (mean's divisor), in label order;
    the sum of all class weights)."""
    c = weight.size
    s = weight.dtype.type(0)
    for i in range(labels.size):
        y = labels[i]
        if y != ignore_index:
            if y < 0 or y >= c:
                return i, s, s
            s += weight[y]
    wall = weight.dtype.type(0)
    for j in range(c):
        wall += weight[j]
    return -1, s, wall


# NOTE: NLLLoss's rows (log_probs) are the log-probabilities themselves, CrossEntropyLoss's
# a stable log_softmax ((x - m) - log s, as the fast path). With label smoothing eps and
# class weights w (PyTorch's formula):
#   out_i = (1 - eps) w[y] (-logp[y]) + eps / C * sum_c w[c] (-logp[c]),
#   d out_i / d x_ij = p_j ((1 - eps) w[y] + eps / C * sum_c w[c]) - (1 - eps) w[y] [j = y]
#                      - eps / C * w[j];
# an ignored row gives 0 and a gradient of 0 (written, not multiplied: "mean" over
# all-ignored rows is 0 / 0 = NaN, its gradient 0, as PyTorch).
@parallel_family_ordered
def _cross_entropy(with_grad, with_out):
    def kernel(out, grad, partial, logits, labels, weight, ignore_index, eps, wall, dout,
               dstep, log_probs):
        n, c = logits.shape
        zero = logits.dtype.type(0)
        keep = logits.dtype.type(1) - eps
        smooth = eps / logits.dtype.type(c)
        for blk in prange(partial.size):
            t = zero
            for i in range(blk * _ROWS, min((blk + 1) * _ROWS, n)):
                y = labels[i]
                x = logits[i]
                li = zero
                if y == ignore_index:
                    if with_grad:
                        for j in range(c):
                            grad[i, j] = zero
                else:
                    wy = weight[y]
                    g = dout[i * dstep]
                    if log_probs:
                        li = -wy * x[y]
                        if with_grad:
                            for j in range(c):
                                grad[i, j] = zero
                            grad[i, y] = -wy * g
                    else:
                        m, s = max_sum_exp(x)
                        logs = np.log(s)
                        li = -keep * wy * ((x[y] - m) - logs)
                        if eps > zero:
                            sm = zero
                            for j in range(c):
                                sm -= weight[j] * ((x[j] - m) - logs)
                            li += smooth * sm
                        if with_grad:
                            a = g * (keep * wy + smooth * wall)
                            b = g * smooth
                            for j in range(c):
                                grad[i, j] = np.exp((x[j] - m) - logs) * a - b * weight[j]
                            grad[i, y] -= g * keep * wy
                if with_out:
                    out[i] = li
                t += li
            partial[blk] = t
        total = zero
        for blk in range(partial.size):
            total += partial[blk]
        return total
    return kernel


def _weights(labels, weight, ignore_index, c, dtype):
    """(weight or ones, mean's divisor, the sum of the class weights); a label out of range
    raises ValueError."""
    if weight is None:
        weight = np.ones(c, dtype=dtype)
    bad, wsum, wall = _labels_and_weights(labels, weight, ignore_index)
    if bad >= 0:
        raise ValueError(f"label {labels[bad]} is out of range for {c} classes [0, {c}) "
                         f"(and is not ignore_index={ignore_index})")
    return weight, dtype.type(wsum), dtype.type(wall)


def cross_entropy_forward(out, grad, logits, labels, weight, ignore_index, label_smoothing,
                          log_probs, reduction):
    """logits (N, C) (log-probabilities when log_probs: NLLLoss), labels (N,) int in [0, C)
    or ignore_index, weight (C,) | None -> out (N,) | None <- per-row losses; returns the
    loss ("mean": sum(out) / sum of the non-ignored rows' weights, "sum") or None ("none");
    grad (N, C) | None <- d loss / d logits. A label outside [0, C) (not ignore_index)
    raises ValueError before anything is written."""
    n, c = logits.shape
    dtype = logits.dtype.type
    weight, wsum, wall = _weights(labels, weight, ignore_index, c, logits.dtype)
    scale = dtype(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        if reduction == "mean":
            scale = dtype(1) / wsum  # all ignored: inf (the gradient is 0 there)
        partial = np.empty((n + _ROWS - 1) // _ROWS, dtype=logits.dtype)
        total = _cross_entropy[grad is not None, out is not None](
            out, grad, partial, logits, labels, weight, ignore_index, dtype(label_smoothing),
            dtype(wall), np.full(1, scale, logits.dtype), 0, bool(log_probs))
        if reduction == "none":
            return None
        if reduction == "mean":
            # no weight to divide by (all ignored, or all their weights 0): NaN, as PyTorch
            # (its mean is (1 - eps) * 0 / 0 + eps / C * smooth / 0, NaN also when the
            # smoothing term alone would give inf)
            return float(dtype(total) / wsum) if wsum != 0 else float("nan")
        return float(total)


def cross_entropy_backward(grad, dout, logits, labels, weight, ignore_index, label_smoothing,
                           log_probs):
    """dout (N,), logits (N, C), labels (N,), weight (C,) | None -> grad (N, C) <- dout[i] *
    d out[i] / d logits[i] (the backward of reduction "none")."""
    n, c = logits.shape
    dtype = logits.dtype.type
    weight, _, wall = _weights(labels, weight, ignore_index, c, logits.dtype)
    partial = np.empty((n + _ROWS - 1) // _ROWS, dtype=logits.dtype)
    _cross_entropy[True, False](
        None, grad, partial, logits, labels, weight, ignore_index, dtype(label_smoothing),
        dtype(wall), dout, 1, bool(log_probs))


# NOTE: PyTorch's stable forms: loss = (1 - y) x - lw * log_sigmoid(x) with
# lw = 1 + (pos_weight - 1) y and log_sigmoid(x) = min(x, 0) - log1p(exp(-|x|)) (without
# pos_weight, lw = 1: max(x, 0) - x y + log1p(exp(-|x|))), exact at x = +-1e4; the
# gradient lw sigmoid(x) - pos_weight y, sigmoid(x) from exp(-|x|) on either side. A
# missing weight / pos_weight is a one-element array of ones read with step 0.
@parallel_family
def _bce_with_logits(with_grad, with_out):
    def kernel(out, grad, partial, x, target, weight, wstep, pos_weight, pstep, dout, dstep):
        m, c = x.shape
        zero = x.dtype.type(0)
        one = x.dtype.type(1)
        for blk in prange(partial.size):
            t = zero
            for i in range(blk * _ROWS, min((blk + 1) * _ROWS, m)):
                for j in range(c):
                    v = x[i, j]
                    y = target[i, j]
                    e = fast_exp(-np.abs(v))
                    pw = pos_weight[j * pstep]
                    lw = one + (pw - one) * y
                    logsig = min(v, zero) - fast_log1p_unit(e)
                    if v != v:
                        logsig = v
                    w = weight[(i * c + j) * wstep]
                    li = ((one - y) * v - lw * logsig) * w
                    if with_out:
                        out[i, j] = li
                    t += li
                    if with_grad:
                        sig = one / (one + e) if v >= zero else e / (one + e)
                        if v != v:
                            sig = v
                        grad[i, j] = (lw * sig - pw * y) * (w * dout[(i * c + j) * dstep])
            partial[blk] = t
        total = zero
        for blk in range(partial.size):
            total += partial[blk]
        return total
    return kernel


def _bce(out, grad, x, target, weight, pos_weight, dout, dstep):
    one = np.ones(1, dtype=x.dtype)
    partial = np.empty((x.shape[0] + _ROWS - 1) // _ROWS, dtype=x.dtype)
    return _bce_with_logits[grad is not None, out is not None](
        out, grad, partial, x, target, one if weight is None else weight.reshape(-1),
        0 if weight is None else 1, one if pos_weight is None else pos_weight,
        0 if pos_weight is None else 1, dout, dstep)


def bce_with_logits_forward(out, grad, x, target, weight, pos_weight, reduction):
    """x (M, C) logits, target (M, C) in [0, 1], weight (M, C) | None, pos_weight (C,) | None
    -> out (M, C) | None <- per-element losses; returns the loss ("mean" over M*C, "sum")
    or None ("none"); grad (M, C) | None <- d loss / d x"""
    dtype = x.dtype.type
    scale = dtype(1) / dtype(x.size) if reduction == "mean" else dtype(1)
    total = _bce(out, grad, x, target, weight, pos_weight, np.full(1, scale, x.dtype), 0)
    if reduction == "none":
        return None
    return float(dtype(total) / dtype(x.size)) if reduction == "mean" else float(total)


def bce_with_logits_backward(grad, dout, x, target, weight, pos_weight):
    """dout (M, C), x (M, C), target (M, C), weight (M, C) | None, pos_weight (C,) | None ->
    grad (M, C) <- dout * d out / d x (the backward of reduction "none")"""
    _bce(None, grad, x, target, weight, pos_weight, dout.reshape(-1), 1)


# NOTE: PyTorch's values and gradients at the kinks: L1's gradient sign(d), 0 at d = 0 (and
# at NaN: PyTorch's sgn gives 0 there; the loss is NaN); SmoothL1 (beta > 0; beta = 0 is
# L1, the layer's choice, as PyTorch's) 0.5 d^2 / beta below beta, |d| - beta / 2 from
# beta on, gradient clamp(d / beta, -1, 1); Huber 0.5 d^2 below delta, delta (|d| - delta
# / 2) from delta on, gradient clamp(d, -delta, delta).
@parallel_family
def _pointwise(with_grad, with_out):
    def kernel(out, grad, partial, pred, target, code, beta, dout, dstep):
        size = pred.size
        zero = pred.dtype.type(0)
        one = pred.dtype.type(1)
        half = pred.dtype.type(0.5)
        two = pred.dtype.type(2)
        for blk in prange(partial.size):
            s = zero
            for i in range(blk * _BLOCK, min((blk + 1) * _BLOCK, size)):
                d = pred[i] - target[i]
                z = np.abs(d)
                if code == 0:  # l1
                    li = z
                elif code == 1:  # mse
                    li = d * d
                elif code == 2:  # smooth_l1
                    li = half * z * z / beta if z < beta else z - half * beta
                else:  # huber
                    li = half * z * z if z < beta else beta * (z - half * beta)
                if with_out:
                    out[i] = li
                s += li
                if with_grad:
                    if code == 0:
                        r = one if d > zero else (-one if d < zero else zero)
                    elif code == 1:
                        r = two * d
                    elif code == 2:
                        r = -one if d < -beta else (one if d > beta else d / beta)
                    else:
                        r = -beta if d < -beta else (beta if d > beta else d)
                    grad[i] = r * dout[i * dstep]
            partial[blk] = s
        total = zero
        for blk in range(partial.size):
            total += partial[blk]
        return total
    return kernel


def _flat(a):
    return None if a is None else a.reshape(-1)


def pointwise_loss_forward(out, grad, pred, target, loss, beta, reduction):
    """pred (...), target (...) -> out (...) | None <- loss(pred - target) elementwise
    (loss: "l1", "mse", "smooth_l1" with beta > 0, "huber" with delta = beta > 0); returns
    the loss ("mean" over the elements, "sum") or None ("none"); grad (...) | None <-
    d loss / d pred"""
    dtype = pred.dtype.type
    size = pred.size
    scale = dtype(1) / dtype(size) if reduction == "mean" else dtype(1)
    partial = np.empty((size + _BLOCK - 1) // _BLOCK, dtype=pred.dtype)
    total = _pointwise[grad is not None, out is not None](
        _flat(out), _flat(grad), partial, pred.reshape(-1), target.reshape(-1),
        POINTWISE[loss], dtype(beta), np.full(1, scale, pred.dtype), 0)
    if reduction == "none":
        return None
    return float(dtype(total) / dtype(size)) if reduction == "mean" else float(total)


def pointwise_loss_backward(grad, dout, pred, target, loss, beta):
    """dout (...), pred (...), target (...) -> grad (...) <- dout * d out / d pred (the
    backward of reduction "none")"""
    partial = np.empty((pred.size + _BLOCK - 1) // _BLOCK, dtype=pred.dtype)
    _pointwise[True, False](
        None, grad.reshape(-1), partial, pred.reshape(-1), target.reshape(-1), POINTWISE[loss],
        pred.dtype.type(beta), dout.reshape(-1), 1)
