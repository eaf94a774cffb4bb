"""Normalisation kernels (CUDA): batch norm, then layer norm (at the end).

Batch norm: x viewed as (N, C, L), the CPU kernels' semantics
(see fastnet/kernels/norm.py): batch mean and biased variance for normalising, running
statistics updated in the same kernel with the unbiased variance, ``momentum=None`` a
cumulative average over ``num_batches_tracked``.

Per-channel statistics and gradient sums run one block per channel: each thread sums a
fixed strided share of the channel's N*L values, then a shared-memory tree
(``_device.block_sum``) adds the shares. No atomics: deterministic for a given launch
geometry. The mean comes first, then the centred sum of squares (two passes, no
cancellation). Elementwise passes (normalise, dx) are grid-stride loops. Optional arrays
(running statistics, affine weight) are replaced by placeholders and a flag, so each raw
kernel has one signature per dtype. Backward kernels overwrite their outputs.
"""
import math

from numba import cuda

from ..norm import LAYER_NORM_ROW_BLOCK
from . import _launch
from ._device import block_sum, row_of_thread
from ._launch import THREADS, launch_1d, launch_rows


@cuda.jit
def _count_batch_kernel(num_batches_tracked):
    if cuda.grid(1) == 0:
        num_batches_tracked[0] += 1


@cuda.jit
def _batch_stats_kernel(save_mean, save_invstd, running_mean, running_var, num_batches_tracked,
                        x, training, update, momentum, eps):
    # one block per channel; momentum < 0 means a cumulative average (momentum=None)
    sh = cuda.shared.array(THREADS, x.dtype)
    c = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    n_, c_, l_ = x.shape
    t = x.dtype.type
    one = t(1)
    if training:
        m_ = n_ * l_
        count = t(m_)
        s = t(0)
        for k in range(tid, m_, THREADS):
            s += x[k // l_, c, k % l_]
        mean = block_sum(sh, tid, tid, THREADS, s) / count
        q = t(0)
        for k in range(tid, m_, THREADS):
            d = x[k // l_, c, k % l_] - mean
            q += d * d
        q = block_sum(sh, tid, tid, THREADS, q)
        var = q / count
        if tid == 0 and update:
            f = momentum
            if momentum < 0:
                f = one / t(num_batches_tracked[0])
            running_mean[c] = (one - f) * running_mean[c] + f * mean
            running_var[c] = (one - f) * running_var[c] + f * (q / (count - one))
    else:
        mean = running_mean[c]
        var = running_var[c]
    if tid == 0:
        save_mean[c] = mean
        save_invstd[c] = one / math.sqrt(var + eps)


@cuda.jit
def _normalise_kernel(out, x, mean, invstd, weight, bias, affine):
    n_, c_, l_ = x.shape
    for e in range(cuda.grid(1), n_ * c_ * l_, cuda.gridsize(1)):
        c = (e // l_) % c_
        n = e // (l_ * c_)
        i = e % l_
        scale = invstd[c]
        shift = -mean[c] * scale
        if affine:
            scale *= weight[c]
            shift = shift * weight[c] + bias[c]
        out[n, c, i] = x[n, c, i] * scale + shift


def batch_norm_forward(out, save_mean, save_invstd, running_mean, running_var,
                       num_batches_tracked, x, weight, bias, training, momentum, eps):
    """x (N, C, L), weight, bias (C,) | None -> out (N, C, L), save_mean, save_invstd (C,);
    running_mean, running_var (C,) | None and num_batches_tracked () int64 | None updated
    in place when training (momentum=None needs num_batches_tracked)"""
    dtype = x.dtype
    update = bool(training) and running_mean is not None
    counter = None
    if num_batches_tracked is not None:
        counter = num_batches_tracked.reshape(1)
    if update and counter is not None:
        _count_batch_kernel[1, 1](counter)  # queued before the statistics that read it
    if counter is None:
        counter = _launch.zeros(1, "int64")
    if running_mean is None:  # placeholders, neither read nor written
        running_mean = running_var = save_mean
    m = -1.0 if momentum is None else float(momentum)
    _batch_stats_kernel[x.shape[1], THREADS](
        save_mean, save_invstd, running_mean, running_var, counter, x, bool(training), update,
        _launch.scalar(m, dtype), _launch.scalar(eps, dtype))
    affine = weight is not None
    grid, threads = launch_1d(x.size)
    _normalise_kernel[grid, threads](out, x, save_mean, save_invstd,
                                     weight if affine else save_mean,
                                     bias if affine else save_mean, affine)


@cuda.jit
def _batch_norm_sums_kernel(sums, dweight, dbias, dout, x, mean, invstd, affine):
    # sums[0, c] = sum(dy) (= dbias), sums[1, c] = sum(dy * xhat) (= dweight):
    # one block per channel
    sh = cuda.shared.array(THREADS, x.dtype)
    c = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    n_, c_, l_ = x.shape
    mu = mean[c]
    a = x.dtype.type(0)
    b = x.dtype.type(0)
    for k in range(tid, n_ * l_, THREADS):
        g = dout[k // l_, c, k % l_]
        a += g
        b += g * (x[k // l_, c, k % l_] - mu)
    a = block_sum(sh, tid, tid, THREADS, a)
    b = block_sum(sh, tid, tid, THREADS, b) * invstd[c]
    if tid == 0:
        sums[0, c] = a
        sums[1, c] = b
        if affine:
            dbias[c] = a
            dweight[c] = b


@cuda.jit
def _batch_norm_dx_kernel(dx, dout, x, mean, invstd, weight, sums, affine):
    n_, c_, l_ = x.shape
    inv_count = x.dtype.type(1) / x.dtype.type(n_ * l_)
    for e in range(cuda.grid(1), n_ * c_ * l_, cuda.gridsize(1)):
        c = (e // l_) % c_
        n = e // (l_ * c_)
        i = e % l_
        s = invstd[c]
        k = s * weight[c] if affine else s
        xhat = (x[n, c, i] - mean[c]) * s
        dx[n, c, i] = k * (dout[n, c, i] - sums[0, c] * inv_count - xhat * sums[1, c] * inv_count)


def batch_norm_backward(dx, dweight, dbias, dout, x, weight, save_mean, save_invstd):
    """dout (N, C, L), x (N, C, L), weight (C,) | None, save_mean, save_invstd (C,) from a
    training forward -> dx (N, C, L) | None, dweight, dbias (C,) | None"""
    c = x.shape[1]
    sums = _launch.empty((2, c), x.dtype)
    affine = dweight is not None
    _batch_norm_sums_kernel[c, THREADS](sums, dweight if affine else save_mean,
                                        dbias if affine else save_mean, dout, x, save_mean,
                                        save_invstd, affine)
    if dx is not None:
        affine = weight is not None
        grid, threads = launch_1d(x.size)
        _batch_norm_dx_kernel[grid, threads](dx, dout, x, save_mean, save_invstd,
                                             weight if affine else save_mean, sums, affine)


# ---- layer normalisation ------------------------------------------------------------------
# x viewed as (M, D), the CPU kernels' semantics (fastnet/kernels/norm.py). Row statistics
# and the dx sums run t threads per row (launch_rows), each a fixed strided share of the
# row, added by a fixed shared-memory tree; dweight / dbias are summed over fixed blocks
# of rows (one thread per (block, column), rows in order), then over the blocks in order:
# no atomics, the same result for any GPU.


@cuda.jit
def _layer_norm_forward_kernel(out, save_mean, save_rstd, x, weight, bias, has_weight,
                               has_bias, eps, t):
    sh = cuda.shared.array(THREADS, x.dtype)
    tid, lane, row = row_of_thread(t)
    m_, d_ = x.shape
    valid = row < m_
    ty = x.dtype.type
    count = ty(d_)
    s = ty(0)
    if valid:
        for j in range(lane, d_, t):
            s += x[row, j]
    mean = block_sum(sh, tid, lane, t, s) / count
    q = ty(0)
    if valid:
        for j in range(lane, d_, t):
            v = x[row, j] - mean
            q += v * v
    q = block_sum(sh, tid, lane, t, q)
    if valid:
        rstd = ty(1) / math.sqrt(q / count + eps)
        if lane == 0:
            save_mean[row] = mean
            save_rstd[row] = rstd
        for j in range(lane, d_, t):
            v = (x[row, j] - mean) * rstd
            if has_weight:
                v = v * weight[j]
            if has_bias:
                v = v + bias[j]
            out[row, j] = v


def layer_norm_forward(out, save_mean, save_rstd, x, weight, bias, eps):
    """x (M, D), weight, bias (D,) | None -> out (M, D), save_mean, save_rstd (M,)"""
    grid, threads, t = launch_rows(*x.shape)
    has_w, has_b = weight is not None, bias is not None
    _layer_norm_forward_kernel[grid, threads](
        out, save_mean, save_rstd, x, weight if has_w else save_mean,
        bias if has_b else save_mean, has_w, has_b, _launch.scalar(eps, x.dtype), t)


@cuda.jit
def _layer_norm_dx_kernel(dx, dout, x, weight, has_weight, mean, rstd, t):
    sh = cuda.shared.array(THREADS, x.dtype)
    tid, lane, row = row_of_thread(t)
    m_, d_ = x.shape
    valid = row < m_
    ty = x.dtype.type
    a = ty(0)
    b = ty(0)
    mu = ty(0)
    s = ty(0)
    if valid:
        mu = mean[row]
        s = rstd[row]
        for j in range(lane, d_, t):
            g = dout[row, j]
            if has_weight:
                g = g * weight[j]
            a += g
            b += g * ((x[row, j] - mu) * s)
    inv_count = ty(1) / ty(d_)
    a = block_sum(sh, tid, lane, t, a) * inv_count
    b = block_sum(sh, tid, lane, t, b) * inv_count
    if valid:
        for j in range(lane, d_, t):
            g = dout[row, j]
            if has_weight:
                g = g * weight[j]
            dx[row, j] = s * (g - a - (x[row, j] - mu) * s * b)


@cuda.jit
def _layer_norm_partials_kernel(part_w, part_b, dout, x, mean, rstd, rows):
    # part_w[k, j] = sum(dy * xhat), part_b[k, j] = sum(dy) over the k-th block of rows
    m_, d_ = x.shape
    nb = part_w.shape[0]
    ty = x.dtype.type
    for e in range(cuda.grid(1), nb * d_, cuda.gridsize(1)):
        k = e // d_
        j = e % d_
        sw = ty(0)
        sb = ty(0)
        for r in range(k * rows, min(m_, (k + 1) * rows)):
            g = dout[r, j]
            sb += g
            sw += g * ((x[r, j] - mean[r]) * rstd[r])
        part_w[k, j] = sw
        part_b[k, j] = sb


@cuda.jit
def _layer_norm_sum_partials_kernel(dweight, dbias, part_w, part_b, has_dweight, has_dbias):
    nb, d_ = part_w.shape
    for j in range(cuda.grid(1), d_, cuda.gridsize(1)):
        sw = part_w.dtype.type(0)
        sb = part_w.dtype.type(0)
        for k in range(nb):
            sw += part_w[k, j]
            sb += part_b[k, j]
        if has_dweight:
            dweight[j] = sw
        if has_dbias:
            dbias[j] = sb


def layer_norm_backward(dx, dweight, dbias, dout, x, weight, save_mean, save_rstd):
    """dout (M, D), x (M, D), weight (D,) | None, save_mean, save_rstd (M,) from the
    forward -> dx (M, D) | None, dweight (D,) | None, dbias (D,) | None"""
    m, d = x.shape
    if dx is not None:
        grid, threads, t = launch_rows(m, d)
        has_w = weight is not None
        _layer_norm_dx_kernel[grid, threads](dx, dout, x, weight if has_w else save_mean,
                                             has_w, save_mean, save_rstd, t)
    if dweight is not None or dbias is not None:
        nb = -(-m // LAYER_NORM_ROW_BLOCK)
        part_w = _launch.empty((nb, d), x.dtype)
        part_b = _launch.empty((nb, d), x.dtype)
        grid, threads = launch_1d(nb * d)
        _layer_norm_partials_kernel[grid, threads](part_w, part_b, dout, x, save_mean,
                                                   save_rstd, LAYER_NORM_ROW_BLOCK)
        has_dw, has_db = dweight is not None, dbias is not None
        grid, threads = launch_1d(d)
        _layer_norm_sum_partials_kernel[grid, threads](
            dweight if has_dw else part_w[0], dbias if has_db else part_w[0], part_w, part_b,
            has_dw, has_db)
