"""Loss kernels (CUDA), each forward fused with its gradient (the CPU module's ops; the
``*_backward`` of reduction "none" given the upstream gradient).

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


# ---- losses with PyTorch's arguments: reduction "mean" | "sum" | "none" -----------------------
# (see the CPU module: the same formulas; out (the per-element losses) is written unless
# None, grad unless None; "none" returns None, the others a DeviceScalar)

_REDUCTIONS = {"mean": 0, "sum": 1, "none": 2}
_POINTWISE = {"l1": 0, "mse": 1, "smooth_l1": 2, "huber": 3}


@cuda.jit
def _cross_entropy_setup_kernel(buf, labels, weight, ignore_index, c):
    """buf[1] <- the weights of the non-ignored labels summed (mean's divisor), buf[2] <- the
    labels out of range (not ignore_index) counted, buf[3] <- the class weights summed."""
    sh = cuda.shared.array(THREADS, buf.dtype)
    tid = cuda.threadIdx.x
    t = cuda.blockDim.x
    zero = buf.dtype.type(0)
    one = buf.dtype.type(1)
    s = zero
    bad = zero
    for i in range(tid, labels.size, t):
        y = int64(labels[i])
        if y != ignore_index:
            if y < 0 or y >= c:
                bad += one
            elif weight is None:
                s += one
            else:
                s += weight[y]
    wall = zero
    for j in range(tid, c, t):
        wall += one if weight is None else weight[j]
    s = block_sum(sh, tid, tid, t, s)
    bad = block_sum(sh, tid, tid, t, bad)
    wall = block_sum(sh, tid, tid, t, wall)
    if tid == 0:
        buf[1] = s
        buf[2] = bad
        buf[3] = wall


@cuda.jit(device=True, inline=True)
def _weight_of(weight, j, one):
    return one if weight is None else weight[j]


@cuda.jit
def _cross_entropy_kernel(out, grad, row_loss, logits, labels, weight, ignore_index, eps,
                          log_probs, mean, buf, dout, t):
    sh = cuda.shared.array(THREADS, logits.dtype)
    tid, lane, row = row_of_thread(t)
    n, c = logits.shape
    valid = row < n
    zero = logits.dtype.type(0)
    one = logits.dtype.type(1)
    nan = logits.dtype.type(math.nan)
    y = int64(-1)
    ignored = False
    ok = False
    if valid:
        y = int64(labels[row])
        ignored = y == ignore_index
        ok = not ignored and y >= 0 and y < c
    m = zero
    logs = zero
    if not log_probs:
        # NOTE: the stable log_softmax of the fast path: (x - m) - log(s)
        m, s = row_max_sumexp(sh, logits, tid, lane, t, row, valid)
        logs = math.log(s) if valid else zero
    keep = one - eps
    smooth = eps / logits.dtype.type(c)
    sm = zero
    if eps > zero:  # (eps is one value for the whole launch: every thread syncs)
        if valid:
            for j in range(lane, c, t):
                sm -= _weight_of(weight, j, one) * ((logits[row, j] - m) - logs)
        sm = block_sum(sh, tid, lane, t, sm)
    if valid:
        wy = zero
        li = zero
        if ok:
            wy = _weight_of(weight, y, one)
            li = -keep * wy * ((logits[row, y] - m) - logs)
            if eps > zero:
                li += smooth * sm
        elif not ignored:
            li = nan
        if lane == 0:
            row_loss[row] = li
            if out is not None:
                out[row] = li
        if grad is not None:
            g = one
            if dout is not None:
                g = dout[row]
            elif mean and ok:
                g = one / buf[1]
            wall = buf[3]
            for j in range(lane, c, t):
                v = zero
                if ok:
                    if log_probs:
                        v = -g * wy if j == y else zero
                    else:
                        p = math.exp((logits[row, j] - m) - logs)
                        v = p * (g * (keep * wy + smooth * wall)) - g * smooth * _weight_of(
                            weight, j, one)
                        if j == y:
                            v -= g * keep * wy
                elif not ignored:
                    v = nan
                grad[row, j] = v


@cuda.jit
def _cross_entropy_total_kernel(buf, row_loss, mean):
    sh = cuda.shared.array(THREADS, row_loss.dtype)
    tid = cuda.threadIdx.x
    t = cuda.blockDim.x
    s = row_loss.dtype.type(0)
    for i in range(tid, row_loss.size, t):
        s += row_loss[i]
    s = block_sum(sh, tid, tid, t, s)
    if tid == 0:
        # all ignored or of weight 0: NaN, as PyTorch (also where label smoothing's term
        # alone would give s / 0 = inf)
        buf[0] = (s / buf[1] if buf[1] != 0 else row_loss.dtype.type(math.nan)) if mean else s


def _cross_entropy(out, grad, dout, logits, labels, weight, ignore_index, label_smoothing,
                   log_probs, reduction):
    n, c = logits.shape
    dtype = logits.dtype
    row_loss = _launch.empty(n, dtype)
    buf = _launch.empty(4, dtype)
    _cross_entropy_setup_kernel[1, _reduce_threads(max(n, c))](buf, labels, weight,
                                                                int64(ignore_index), c)
    grid, threads, t = launch_rows(n, c)
    mean = reduction == "mean"
    _cross_entropy_kernel[grid, threads](
        out, grad, row_loss, logits, labels, weight, int64(ignore_index),
        _launch.scalar(label_smoothing, dtype), bool(log_probs), mean, buf, dout, t)
    if reduction == "none":
        return None
    _cross_entropy_total_kernel[1, _reduce_threads(n)](buf, row_loss, mean)
    return _launch.DeviceScalar(buf, _IgnoringLabelCheck(c, ignore_index))


class _IgnoringLabelCheck:
    """DeviceScalar check: buf[2] counts the labels out of range that are not ignore_index."""

    __slots__ = ("classes", "ignore_index")

    def __init__(self, classes, ignore_index):
        self.classes, self.ignore_index = classes, ignore_index

    def __call__(self, host):
        bad = int(host[2])
        if bad:
            raise ValueError(f"cross_entropy: {bad} label(s) out of range for {self.classes} "
                             f"classes (labels must be in [0, {self.classes}) or "
                             f"ignore_index={self.ignore_index})")


def cross_entropy_forward(out, grad, logits, labels, weight, ignore_index, label_smoothing,
                          log_probs, reduction):
    """logits (N, C) (log-probabilities when log_probs: NLLLoss), labels (N,), weight (C,) |
    None -> out (N,) | None <- per-row losses; returns the loss (DeviceScalar; "mean" over
    the non-ignored rows' weights, "sum") or None ("none"); grad (N, C) | None <- d loss /
    d logits. A label out of range (not ignore_index) gives NaN rows and raises ValueError
    when the loss is read."""
    return _cross_entropy(out, grad, None, logits, labels, weight, ignore_index,
                          label_smoothing, log_probs, reduction)


def cross_entropy_backward(grad, dout, logits, labels, weight, ignore_index, label_smoothing,
                           log_probs):
    """dout (N,), logits (N, C), labels (N,), weight (C,) | None -> grad (N, C) <- dout[i] *
    d out[i] / d logits[i] (the backward of reduction "none")."""
    _cross_entropy(None, grad, dout, logits, labels, weight, ignore_index, label_smoothing,
                   log_probs, "none")


@cuda.jit
def _bce_with_logits_kernel(out, grad, partial, x, target, weight, pos_weight, scale, dout):
    sh = cuda.shared.array(THREADS, x.dtype)
    tid = cuda.threadIdx.x
    c = pos_weight.size if pos_weight is not None else 1
    zero = x.dtype.type(0)
    one = x.dtype.type(1)
    s = zero
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = x[i]
        y = target[i]
        e = math.exp(-abs(v))
        lw = one
        pw = one
        if pos_weight is not None:
            pw = pos_weight[i % c]
            lw = one + (pw - one) * y
        # NOTE: log_sigmoid(x) = min(x, 0) - log1p(exp(-|x|)): exact at x = +-1e4
        logsig = min(v, zero) - math.log1p(e)
        if v != v:
            logsig = v
        w = one
        if weight is not None:
            w = weight[i]
        li = ((one - y) * v - lw * logsig) * w
        if out is not None:
            out[i] = li
        s += li
        if grad is not None:
            sig = one / (one + e) if v >= zero else e / (one + e)
            if v != v:
                sig = v
            g = scale
            if dout is not None:
                g = dout[i]
            grad[i] = (lw * sig - pw * y) * (w * g)
    s = block_sum(sh, tid, tid, cuda.blockDim.x, s)
    if tid == 0:
        partial[cuda.blockIdx.x] = s


def _flat(a):
    return None if a is None else _launch.flat(a)


def bce_with_logits_forward(out, grad, x, target, weight, pos_weight, reduction):
    """x (M, C) logits, target (M, C) in [0, 1], weight (M, C) | None, pos_weight (C,) | None
    -> out (M, C) | None <- per-element losses; returns the loss (DeviceScalar; "mean"
    over M*C, "sum") or None ("none"); grad (M, C) | None <- d loss / d x"""
    dtype = x.dtype
    size = _launch.scalar(x.size, dtype)
    one = _launch.scalar(1, dtype)
    grid, threads = launch_1d(x.size)
    partial = _launch.empty(grid, dtype)
    _bce_with_logits_kernel[grid, threads](
        _flat(out), _flat(grad), partial, _launch.flat(x), _launch.flat(target), _flat(weight),
        pos_weight, one / size if reduction == "mean" else one, None)
    if reduction == "none":
        return None
    buf = _launch.empty(1, dtype)
    _mean_kernel[1, _reduce_threads(grid)](buf, partial, size if reduction == "mean" else one)
    return _launch.DeviceScalar(buf)


def bce_with_logits_backward(grad, dout, x, target, weight, pos_weight):
    """dout (M, C), x (M, C), target (M, C), weight (M, C) | None, pos_weight (C,) | None ->
    grad (M, C) <- dout * d out / d x (the backward of reduction "none")"""
    grid, threads = launch_1d(x.size)
    partial = _launch.empty(grid, x.dtype)
    _bce_with_logits_kernel[grid, threads](
        None, _launch.flat(grad), partial, _launch.flat(x), _launch.flat(target), _flat(weight),
        pos_weight, _launch.scalar(1, x.dtype), _launch.flat(dout))


@cuda.jit
def _pointwise_kernel(out, grad, partial, pred, target, code, beta, scale, dout):
    sh = cuda.shared.array(THREADS, pred.dtype)
    tid = cuda.threadIdx.x
    zero = pred.dtype.type(0)
    one = pred.dtype.type(1)
    half = pred.dtype.type(0.5)
    s = zero
    for i in range(cuda.grid(1), pred.size, cuda.gridsize(1)):
        d = pred[i] - target[i]
        z = abs(d)
        if code == 0:  # l1
            li = z
        elif code == 1:  # mse
            li = d * d
        elif code == 2:  # smooth_l1
            li = half * z * z / beta if z < beta else z - half * beta
        else:  # huber
            li = half * z * z if z < beta else beta * (z - half * beta)
        if out is not None:
            out[i] = li
        s += li
        if grad is not None:
            g = scale
            if dout is not None:
                g = dout[i]
            # NOTE: PyTorch's gradients at the kinks (see the CPU kernel)
            if code == 0:
                r = one if d > zero else (-one if d < zero else zero)
            elif code == 1:
                r = (one + one) * d
            elif code == 2:
                r = -one if d < -beta else (one if d > beta else d / beta)
            else:
                r = -beta if d < -beta else (beta if d > beta else d)
            grad[i] = r * g
    s = block_sum(sh, tid, tid, cuda.blockDim.x, s)
    if tid == 0:
        partial[cuda.blockIdx.x] = s


def pointwise_loss_forward(out, grad, pred, target, loss, beta, reduction):
    """pred (...), target (...) -> out (...) | None <- loss(pred - target) elementwise
    (loss: "l1", "mse", "smooth_l1" with beta > 0, "huber" with delta = beta > 0); returns
    the loss (DeviceScalar; "mean" over the elements, "sum") or None ("none"); grad (...) |
    None <- d loss / d pred"""
    dtype = pred.dtype
    size = _launch.scalar(pred.size, dtype)
    one = _launch.scalar(1, dtype)
    grid, threads = launch_1d(pred.size)
    partial = _launch.empty(grid, dtype)
    _pointwise_kernel[grid, threads](
        _flat(out), _flat(grad), partial, _launch.flat(pred), _launch.flat(target),
        int64(_POINTWISE[loss]), _launch.scalar(beta, dtype),
        one / size if reduction == "mean" else one, None)
    if reduction == "none":
        return None
    buf = _launch.empty(1, dtype)
    _mean_kernel[1, _reduce_threads(grid)](buf, partial, size if reduction == "mean" else one)
    return _launch.DeviceScalar(buf)


def pointwise_loss_backward(grad, dout, pred, target, loss, beta):
    """dout (...), pred (...), target (...) -> grad (...) <- dout * d out / d pred (the
    backward of reduction "none")"""
    dtype = pred.dtype
    grid, threads = launch_1d(pred.size)
    partial = _launch.empty(grid, dtype)
    _pointwise_kernel[grid, threads](
        None, _launch.flat(grad), partial, _launch.flat(pred), _launch.flat(target),
        int64(_POINTWISE[loss]), _launch.scalar(beta, dtype), _launch.scalar(1, dtype),
        _launch.flat(dout))
