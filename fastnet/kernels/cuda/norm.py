"""Batch normalisation kernels (CUDA), x viewed as (N, C, L), the CPU kernels' semantics
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

from . import _launch
from ._device import block_sum
from ._launch import THREADS, launch_1d


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
