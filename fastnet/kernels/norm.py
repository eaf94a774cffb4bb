"""Normalisation kernels (CPU): batch norm, then layer norm (at the end).

Batch norm: x viewed as (N, C, L): L = H*W for images, 1 for (N, C) features. Parallel
over channels; every per-channel sum runs in a fixed order (row by row,
each row of L summed first), so results do not depend on the thread count.

Semantics follow torch.nn.functional.batch_norm. ``training=True`` normalises with the
batch mean and biased variance and, when ``running_mean`` is given, updates
running = (1 - m) * running + m * batch with the UNBIASED batch variance, where m is
``momentum`` or, for ``momentum=None``, 1 / num_batches_tracked (a cumulative average);
``num_batches_tracked`` (a 0-d int64 array, or None) is incremented first.
``training=False`` normalises with the running statistics. Either way ``save_mean`` and
``save_invstd`` (C,) receive the mean and 1 / sqrt(var + eps) that were used.
``weight`` / ``bias`` are None without affine. Backward kernels overwrite their outputs;
pass ``None`` for an output that is not needed.
"""
import numpy as np
from numba import prange

from ._jit import parallel_kernel


@parallel_kernel
def _batch_stats(save_mean, save_invstd, running_mean, running_var, x, training, update,
                 factor, eps):
    n_, c_, l_ = x.shape
    t = x.dtype.type
    one = t(1)
    count = t(n_ * l_)
    for c in prange(c_):
        if training:
            # NOTE: two passes, the mean then the centred sum of squares: no cancellation
            # (E[x^2] - E[x]^2 loses everything when |mean| >> std). Each row's L values are
            # summed on their own before joining the total, which keeps float32 sums short.
            s = t(0)
            for n in range(n_):
                r = t(0)
                for i in range(l_):
                    r += x[n, c, i]
                s += r
            mean = s / count
            q = t(0)
            for n in range(n_):
                r = t(0)
                for i in range(l_):
                    d = x[n, c, i] - mean
                    r += d * d
                q += r
            var = q / count
            if update:
                m = t(factor)
                running_mean[c] = (one - m) * running_mean[c] + m * mean
                running_var[c] = (one - m) * running_var[c] + m * (q / (count - one))
        else:
            mean = running_mean[c]
            var = running_var[c]
        save_mean[c] = mean
        save_invstd[c] = one / np.sqrt(var + t(eps))


@parallel_kernel
def _normalise(out, x, mean, invstd, weight, bias):
    n_, c_, l_ = x.shape
    for nc in prange(n_ * c_):
        n = nc // c_
        c = nc % c_
        scale = invstd[c]
        shift = -mean[c] * scale
        if weight is not None:
            scale *= weight[c]
            shift = shift * weight[c] + bias[c]
        for i in range(l_):
            out[n, c, i] = x[n, c, i] * scale + shift


def batch_norm_forward(out, save_mean, save_invstd, running_mean, running_var,
                       num_batches_tracked, x, weight, bias, training, momentum, eps):
    """x (N, C, L), weight, bias (C,) | None -> out (N, C, L), save_mean, save_invstd (C,);
    running_mean, running_var (C,) | None and num_batches_tracked () int64 | None updated
    in place when training (momentum=None needs num_batches_tracked)"""
    factor = 0.0
    update = bool(training) and running_mean is not None
    if update:
        if num_batches_tracked is not None:
            num_batches_tracked[...] += 1
        factor = 1.0 / float(num_batches_tracked) if momentum is None else float(momentum)
    if running_mean is None:  # one compiled variant: unused (batch statistics, no update)
        running_mean = running_var = save_mean
    _batch_stats(save_mean, save_invstd, running_mean, running_var, x, bool(training),
                 update, factor, float(eps))
    _normalise(out, x, save_mean, save_invstd, weight, bias)


@parallel_kernel
def _batch_norm_backward(dx, dweight, dbias, dout, x, weight, mean, invstd):
    # With xhat = (x - mean) * invstd over M = N*L values per channel:
    #   dbias = sum(dy), dweight = sum(dy * xhat),
    #   dx = weight * invstd * (dy - dbias / M - xhat * dweight / M)
    # (the batch statistics depend on x: the two sums are their gradient's share).
    n_, c_, l_ = x.shape
    t = x.dtype.type
    inv_count = t(1) / t(n_ * l_)
    for c in prange(c_):
        mu = mean[c]
        s = invstd[c]
        sum_dy = t(0)
        sum_dy_xhat = t(0)
        for n in range(n_):
            a = t(0)
            b = t(0)
            for i in range(l_):
                g = dout[n, c, i]
                a += g
                b += g * (x[n, c, i] - mu)
            sum_dy += a
            sum_dy_xhat += b
        sum_dy_xhat *= s
        if dweight is not None:
            dweight[c] = sum_dy_xhat
            dbias[c] = sum_dy
        if dx is not None:
            k = s
            if weight is not None:
                k = s * weight[c]
            mean_dy = sum_dy * inv_count
            mean_dy_xhat = sum_dy_xhat * inv_count
            for n in range(n_):
                for i in range(l_):
                    xhat = (x[n, c, i] - mu) * s
                    dx[n, c, i] = k * (dout[n, c, i] - mean_dy - xhat * mean_dy_xhat)


def batch_norm_backward(dx, dweight, dbias, dout, x, weight, save_mean, save_invstd):
    """dout (N, C, L), x (N, C, L), weight (C,) | None, save_mean, save_invstd (C,) from a
    training forward -> dx (N, C, L) | None, dweight, dbias (C,) | None"""
    _batch_norm_backward(dx, dweight, dbias, dout, x, weight, save_mean, save_invstd)


# ---- layer normalisation ------------------------------------------------------------------
# x viewed as (M, D): M rows (every leading axis), D = the product of normalized_shape.
# Semantics of torch.nn.functional.layer_norm: per row, the mean and the biased variance,
# out = (x - mean) * rstd * weight + bias with rstd = 1 / sqrt(var + eps); weight and bias
# (D,) are each None when absent (elementwise_affine=False, or bias=False).

# rows per partial sum of dweight / dbias: a fixed grouping (not the thread count), so the
# sums over rows are the same however many threads run them
LAYER_NORM_ROW_BLOCK = 32


@parallel_kernel
def _layer_norm_forward(out, save_mean, save_rstd, x, weight, bias, eps):
    m_, d_ = x.shape
    t = x.dtype.type
    count = t(d_)
    for r in prange(m_):
        # NOTE: two passes, the mean then the centred sum of squares (no cancellation when
        # |mean| >> std), each in column order
        s = t(0)
        for j in range(d_):
            s += x[r, j]
        mean = s / count
        q = t(0)
        for j in range(d_):
            v = x[r, j] - mean
            q += v * v
        rstd = t(1) / np.sqrt(q / count + t(eps))
        save_mean[r] = mean
        save_rstd[r] = rstd
        for j in range(d_):
            v = (x[r, j] - mean) * rstd
            if weight is not None:
                v = v * weight[j]
            if bias is not None:
                v = v + bias[j]
            out[r, j] = v


def layer_norm_forward(out, save_mean, save_rstd, x, weight, bias, eps):
    """x (M, D), weight, bias (D,) | None -> out (M, D), save_mean, save_rstd (M,)"""
    _layer_norm_forward(out, save_mean, save_rstd, x, weight, bias, float(eps))


@parallel_kernel
def _layer_norm_dx(dx, dout, x, weight, mean, rstd):
    # With xhat = (x - mean) * rstd and g = dy * weight over the D values of a row:
    #   dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
    m_, d_ = x.shape
    t = x.dtype.type
    inv_count = t(1) / t(d_)
    for r in prange(m_):
        mu = mean[r]
        s = rstd[r]
        a = t(0)
        b = t(0)
        for j in range(d_):
            g = dout[r, j]
            if weight is not None:
                g = g * weight[j]
            a += g
            b += g * ((x[r, j] - mu) * s)
        a *= inv_count
        b *= inv_count
        for j in range(d_):
            g = dout[r, j]
            if weight is not None:
                g = g * weight[j]
            dx[r, j] = s * (g - a - (x[r, j] - mu) * s * b)


@parallel_kernel
def _layer_norm_partials(part_w, part_b, dout, x, mean, rstd, rows):
    # part_w[k, j] = sum(dy * xhat), part_b[k, j] = sum(dy) over the k-th block of rows
    m_, d_ = x.shape
    t = x.dtype.type
    for k in prange(part_w.shape[0]):
        for j in range(d_):
            part_w[k, j] = t(0)
            part_b[k, j] = t(0)
        for r in range(k * rows, min(m_, (k + 1) * rows)):
            mu = mean[r]
            s = rstd[r]
            for j in range(d_):
                g = dout[r, j]
                part_b[k, j] += g
                part_w[k, j] += g * ((x[r, j] - mu) * s)


@parallel_kernel
def _layer_norm_sum_partials(dweight, dbias, part_w, part_b):
    # the blocks' partial sums added in block order, column by column
    nb, d_ = part_w.shape
    t = part_w.dtype.type
    for j in prange(d_):
        sw = t(0)
        sb = t(0)
        for k in range(nb):
            sw += part_w[k, j]
            sb += part_b[k, j]
        dweight[j] = sw
        dbias[j] = sb


def layer_norm_backward(dx, dweight, dbias, dout, x, weight, save_mean, save_rstd):
    """dout (M, D), x (M, D), weight (D,) | None, save_mean, save_rstd (M,) from the
    forward -> dx (M, D) | None, dweight (D,) | None, dbias (D,) | None"""
    if dx is not None:
        _layer_norm_dx(dx, dout, x, weight, save_mean, save_rstd)
    if dweight is not None or dbias is not None:
        m, d = x.shape
        nb = -(-m // LAYER_NORM_ROW_BLOCK)
        part_w = np.empty((nb, d), x.dtype)
        part_b = np.empty((nb, d), x.dtype)
        _layer_norm_partials(part_w, part_b, dout, x, save_mean, save_rstd,
                             LAYER_NORM_ROW_BLOCK)
        # (one compiled sum for every case: a frozen weight's or bias's goes to scratch,
        # so the other's bits do not depend on it)
        _layer_norm_sum_partials(np.empty(d, x.dtype) if dweight is None else dweight,
                                 np.empty(d, x.dtype) if dbias is None else dbias,
                                 part_w, part_b)
