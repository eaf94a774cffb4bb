"""Loss kernels (CUDA), mean reduction, each fused with its backward.

``*_forward(grad, ...)`` returns the loss as a ``DeviceScalar``: it stays on the device
(a training step makes no host round trip) until it is read (``float(loss)``), which
waits for the kernels. Unless ``grad`` is None, it overwrites ``grad`` with d loss / d
input in the same pass. The sums are deterministic: per-row (or per-block) partial sums,
then one block tree-reducing them in a fixed order; no float atomics.

A cross-entropy label outside [0, C) is never used as an index: its row's loss and
gradient are NaN and the label is counted on the device; reading the loss then raises
``ValueError``.
"""
import math

from numba import cuda, int64

from . import _launch
from ._device import block_sum, row_max_sumexp, row_of_thread
from ._launch import THREADS, launch_1d, launch_rows, pow2


def _reduce_threads(n):
    """Threads of the single block that reduces n partial values."""
    return min(THREADS, pow2(n))


@cuda.jit
def _softmax_cross_entropy_kernel(grad, row_loss, logits, labels, t, inv_n):
    sh = cuda.shared.array(THREADS, logits.dtype)
    tid, lane, row = row_of_thread(t)
    n, c = logits.shape
    valid = row < n
    # NOTE: log-sum-exp with the row max subtracted: finite and accurate for logits of
    # +-1e4; (x - m) - logsum keeps x - m exact (see log_softmax).
    m, s = row_max_sumexp(sh, logits, tid, lane, t, row, valid)
    if valid:
        logsum = math.log(s)
        y = int64(labels[row])  # any integer dtype; a huge unsigned label turns negative
        nan = logits.dtype.type(math.nan)
        ok = y >= 0 and y < c
        if lane == 0:
            row_loss[row] = logsum - (logits[row, y] - m) if ok else nan
        if grad is not None:
            for j in range(lane, c, t):
                g = math.exp((logits[row, j] - m) - logsum) * inv_n
                if j == y:
                    g -= inv_n
                grad[row, j] = g if ok else nan


@cuda.jit
def _cross_entropy_mean_kernel(buf, row_loss, labels, c):
    sh = cuda.shared.array(THREADS, row_loss.dtype)
    tid = cuda.threadIdx.x
    t = cuda.blockDim.x
    n = row_loss.size
    zero = row_loss.dtype.type(0)
    s = zero
    bad = zero
    for i in range(tid, n, t):
        s += row_loss[i]
        y = int64(labels[i])
        if y < 0 or y >= c:
            bad += row_loss.dtype.type(1)
    s = block_sum(sh, tid, tid, t, s)
    bad = block_sum(sh, tid, tid, t, bad)
    if tid == 0:
        buf[0] = s / row_loss.dtype.type(n)
        buf[1] = bad


class _LabelCheck:
    """DeviceScalar check: the second slot of the loss buffer counts bad labels."""

    __slots__ = ("classes",)

    def __init__(self, classes):
        self.classes = classes

    def __call__(self, host):
        bad = int(host[1])
        if bad:
            raise ValueError(f"softmax_cross_entropy: {bad} label(s) out of range for "
                             f"{self.classes} classes (labels must be in [0, {self.classes}))")


def softmax_cross_entropy_forward(grad, logits, labels):
    """logits (N, C), labels (N,) int in [0, C) -> loss = mean(logsumexp(logits) -
    logits[label]) (DeviceScalar); grad (N, C) | None <- (softmax(logits) - onehot(labels)) / N"""
    n, c = logits.shape
    row_loss = _launch.empty(n, logits.dtype)
    buf = _launch.empty(2, logits.dtype)
    grid, threads, t = launch_rows(n, c)
    inv_n = _launch.scalar(1, logits.dtype) / _launch.scalar(max(n, 1), logits.dtype)
    _softmax_cross_entropy_kernel[grid, threads](grad, row_loss, logits, labels, t, inv_n)
    _cross_entropy_mean_kernel[1, _reduce_threads(n)](buf, row_loss, labels, c)
    return _launch.DeviceScalar(buf, _LabelCheck(c))


@cuda.jit
def _mse_kernel(grad, partial, pred, target, scale):
    sh = cuda.shared.array(THREADS, pred.dtype)
    tid = cuda.threadIdx.x
    s = pred.dtype.type(0)
    for i in range(cuda.grid(1), pred.size, cuda.gridsize(1)):
        d = pred[i] - target[i]
        s += d * d
        if grad is not None:
            grad[i] = d * scale
    s = block_sum(sh, tid, tid, cuda.blockDim.x, s)
    if tid == 0:
        partial[cuda.blockIdx.x] = s


@cuda.jit
def _mean_kernel(buf, partial, count):
    sh = cuda.shared.array(THREADS, partial.dtype)
    tid = cuda.threadIdx.x
    t = cuda.blockDim.x
    s = partial.dtype.type(0)
    for i in range(tid, partial.size, t):
        s += partial[i]
    s = block_sum(sh, tid, tid, t, s)
    if tid == 0:
        buf[0] = s / count


def mse_forward(grad, pred, target):
    """pred (...), target (...) -> loss = mean((pred - target)^2) (DeviceScalar);
    grad (...) | None <- 2 (pred - target) / pred.size"""
    dtype = pred.dtype
    size = _launch.scalar(pred.size, dtype)
    grid, threads = launch_1d(pred.size)  # the partial count depends on the size only
    partial = _launch.empty(grid, dtype)
    buf = _launch.empty(1, dtype)
    g = None if grad is None else _launch.flat(grad)
    _mse_kernel[grid, threads](g, partial, _launch.flat(pred), _launch.flat(target),
                               _launch.scalar(2, dtype) / size)
    _mean_kernel[1, _reduce_threads(grid)](buf, partial, size)
    return _launch.DeviceScalar(buf)
