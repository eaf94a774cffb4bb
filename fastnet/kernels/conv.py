"""2-D convolution kernels (CPU) via im2col / col2im, NCHW.

Layout: ``cols`` is (C*KH*KW, N*OH*OW): row k = (c*KH + i)*KW + j, column
(n*OH + oh)*OW + ow, holding x[n, c, oh*sh - ph + i, ow*sw - pw + j] (0 in the padding).
The whole batch is then one GEMM, w (O, C*KH*KW) @ cols, whose (O, N*OH*OW) result is
scattered back to NCHW in the same pass that adds the bias. Backward kernels overwrite
their outputs; pass ``None`` for an output that is not needed.
``kernel_size``, ``stride`` and ``padding`` are (h, w) pairs.
"""
import numpy as np
from numba import prange

from ._jit import parallel_kernel


def conv_output_size(size, kernel, stride, padding):
    """Output length along one axis (PyTorch's floor convention)."""
    return (size + 2 * padding - kernel) // stride + 1


@parallel_kernel
def _im2col(cols, x, kh, kw, sh, sw, ph, pw):
    n_, c_, h, w = x.shape
    oh_, ow_ = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    plane = oh_ * ow_
    for k in prange(c_ * kh * kw):
        c = k // (kh * kw)
        i = (k // kw) % kh
        j = k % kw
        # ow range whose input column lies inside the image: no branch in the inner loop
        ow_lo = min(max(0, (pw - j + sw - 1) // sw), ow_)
        ow_hi = max(min(ow_, (w + pw - j + sw - 1) // sw), ow_lo)
        for n in range(n_):
            base = n * plane
            for oh in range(oh_):
                ih = oh * sh - ph + i
                col = base + oh * ow_
                if ih < 0 or ih >= h:
                    for ow in range(ow_):
                        cols[k, col + ow] = 0
                    continue
                for ow in range(ow_lo):
                    cols[k, col + ow] = 0
                for ow in range(ow_lo, ow_hi):
                    cols[k, col + ow] = x[n, c, ih, ow * sw - pw + j]
                for ow in range(ow_hi, ow_):
                    cols[k, col + ow] = 0


@parallel_kernel
def _col2im(dx, cols, kh, kw, sh, sw, ph, pw):
    # NOTE: parallel over (n, c) planes; each plane gathers from its own KH*KW rows of
    # cols, so overlapping windows add up with no race and no np.add.at.
    n_, c_, h, w = dx.shape
    oh_, ow_ = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    plane = oh_ * ow_
    for nc in prange(n_ * c_):
        n = nc // c_
        c = nc % c_
        dx[n, c] = 0
        base = n * plane
        for i in range(kh):
            for j in range(kw):
                k = (c * kh + i) * kw + j
                ow_lo = min(max(0, (pw - j + sw - 1) // sw), ow_)
                ow_hi = max(min(ow_, (w + pw - j + sw - 1) // sw), ow_lo)
                for oh in range(oh_):
                    ih = oh * sh - ph + i
                    if ih < 0 or ih >= h:
                        continue
                    col = base + oh * ow_
                    for ow in range(ow_lo, ow_hi):
                        dx[n, c, ih, ow * sw - pw + j] += cols[k, col + ow]


def im2col(cols, x, kernel_size, stride, padding):
    """x (N, C, H, W) -> cols (C*KH*KW, N*OH*OW)"""
    _im2col(cols, x, *kernel_size, *stride, *padding)


def col2im(dx, cols, kernel_size, stride, padding):
    """cols (C*KH*KW, N*OH*OW) -> dx (N, C, H, W), the adjoint of im2col (sums overlaps)"""
    _col2im(dx, cols, *kernel_size, *stride, *padding)


@parallel_kernel
def _gemm_to_nchw(out, y, b):
    # y (O, N*P) -> out (N, O, P) + b
    n_, o_, p_ = out.shape
    for no in prange(n_ * o_):
        n = no // o_
        o = no % o_
        for p in range(p_):
            v = y[o, n * p_ + p]
            if b is not None:
                v += b[o]
            out[n, o, p] = v


@parallel_kernel
def _nchw_to_gemm(y, db, dout):
    # dout (N, O, P) -> y (O, N*P) and db = sum over n, p: one pass, parallel over o.
    n_, o_, p_ = dout.shape
    for o in prange(o_):
        s = type(dout[0, 0, 0])(0)
        for n in range(n_):
            for p in range(p_):
                v = dout[n, o, p]
                y[o, n * p_ + p] = v
                s += v
        if db is not None:
            db[o] = s


def conv2d_forward(out, cols, x, w, b, stride, padding):
    """x (N, C, H, W), w (O, C, KH, KW), b (O,) | None -> out (N, O, OH, OW);
    cols (C*KH*KW, N*OH*OW) is workspace, left holding im2col(x) for backward"""
    o_, c_, kh, kw = w.shape
    n_ = x.shape[0]
    im2col(cols, x, (kh, kw), stride, padding)
    y = np.matmul(w.reshape(o_, c_ * kh * kw), cols)
    _gemm_to_nchw(out.reshape(n_, o_, -1), y, b)


def conv2d_backward(dx, dw, db, dout, cols, w, stride, padding):
    """dout (N, O, OH, OW), cols = im2col(x), w (O, C, KH, KW) -> dx (N, C, H, W) | None,
    dw (O, C, KH, KW), db (O,) | None"""
    o_, c_, kh, kw = w.shape
    n_ = dout.shape[0]
    dout2 = np.empty((o_, cols.shape[1]), dtype=dout.dtype)
    _nchw_to_gemm(dout2, db, dout.reshape(n_, o_, -1))
    np.matmul(dout2, cols.T, out=dw.reshape(o_, c_ * kh * kw))
    if dx is not None:
        dcols = np.matmul(w.reshape(o_, c_ * kh * kw).T, dout2)
        col2im(dx, dcols, (kh, kw), stride, padding)
