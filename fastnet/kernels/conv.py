"""2-D convolution kernels (CPU) via im2col / col2im, NCHW.

Layout: ``cols`` is (C*KH*KW, N*OH*OW): row k = (c*KH + i)*KW + j, column
(n*OH + oh)*OW + ow, holding x[n, c, oh*sh - ph + i, ow*sw - pw + j] (0 in the padding).
conv2d runs over the batch in chunks of images whose im2col matrix fits in cache
(``CHUNK_BYTES``): per chunk one im2col, one GEMM w (O, C*KH*KW) @ cols through NumPy's
BLAS, and one pass that scatters the (O, nb*OH*OW) result to NCHW adding the bias.
Backward recomputes each chunk's im2col from x rather than keeping the whole matrix from
forward (which for a 32-channel 3x3 conv on a 128x32x32 batch is 151 MB: writing and
re-reading it cost more than the GEMMs). Chunk buffers are per-thread workspaces reused
across calls. Backward kernels overwrite their outputs; pass ``None`` for an output that
is not needed. ``kernel_size``, ``stride`` and ``padding`` are (h, w) pairs.
"""
import threading

import numpy as np
from numba import prange

from ._jit import parallel_kernel
from .activations import ACTIVATIONS, activation_grad, apply_activation

# im2col chunk size: big enough for an efficient GEMM, small enough that the chunk is
# still in cache when the GEMM reads it.
CHUNK_BYTES = 4 << 20
_workspaces = threading.local()


def workspace(name, size, dtype):
    """A per-thread, grow-only 1-D scratch buffer of at least ``size`` elements."""
    bufs = _workspaces.__dict__
    key = (name, np.dtype(dtype))
    buf = bufs.get(key)
    if buf is None or buf.size < size:
        buf = bufs[key] = np.empty(size, dtype)
    return buf[:size]


def conv_output_size(size, kernel, stride, padding):
    """Output length along one axis (PyTorch's floor convention)."""
    return (size + 2 * padding - kernel) // stride + 1


@parallel_kernel
def _im2col(cols, x, kh, kw, sh, sw, ph, pw):
    # NOTE: flat indexing and slice copies: each (k, n, oh) is one run of OW elements,
    # and per-element 2-D indexing cost more than the copy itself.
    n_, c_, h, w = x.shape
    oh_, ow_ = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    plane = oh_ * ow_
    m = n_ * plane
    cf = cols.ravel()
    xf = x.ravel()
    zero = cf.dtype.type(0)
    for k in prange(c_ * kh * kw):
        c = k // (kh * kw)
        i = (k // kw) % kh
        j = k % kw
        # ow range whose input column lies inside the image
        ow_lo = min(max(0, (pw - j + sw - 1) // sw), ow_)
        ow_hi = max(min(ow_, (w + pw - j + sw - 1) // sw), ow_lo)
        for n in range(n_):
            for oh in range(oh_):
                ih = oh * sh - ph + i
                dst = k * m + n * plane + oh * ow_
                if ih < 0 or ih >= h:
                    for ow in range(ow_):
                        cf[dst + ow] = zero
                    continue
                src = ((n * c_ + c) * h + ih) * w + j - pw
                for ow in range(ow_lo):
                    cf[dst + ow] = zero
                # NOTE: stepped slices compute their length in double precision; loop instead
                if sw == 1:
                    # (slice-to-slice assignment would bring a double-precision floor in)
                    d = cf[dst + ow_lo:dst + ow_hi]
                    v = xf[src + ow_lo:src + ow_hi]
                    for t in range(d.size):
                        d[t] = v[t]
                else:
                    for ow in range(ow_lo, ow_hi):
                        cf[dst + ow] = xf[src + ow * sw]
                for ow in range(ow_hi, ow_):
                    cf[dst + ow] = zero


@parallel_kernel
def _col2im(dx, cols, kh, kw, sh, sw, ph, pw):
    # NOTE: parallel over (n, c) planes; each plane gathers from its own KH*KW rows of
    # cols, so overlapping windows add up with no race and no np.add.at.
    n_, c_, h, w = dx.shape
    oh_, ow_ = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    plane = oh_ * ow_
    m = n_ * plane
    cf = cols.ravel()
    dxf = dx.ravel()
    for nc in prange(n_ * c_):
        n = nc // c_
        c = nc % c_
        base = nc * h * w
        dxf[base:base + h * w] = 0
        for i in range(kh):
            for j in range(kw):
                k = (c * kh + i) * kw + j
                ow_lo = min(max(0, (pw - j + sw - 1) // sw), ow_)
                ow_hi = max(min(ow_, (w + pw - j + sw - 1) // sw), ow_lo)
                if ow_hi == ow_lo:
                    continue
                for oh in range(oh_):
                    ih = oh * sh - ph + i
                    if ih < 0 or ih >= h:
                        continue
                    src = k * m + n * plane + oh * ow_
                    dst = base + ih * w + j - pw
                    if sw == 1:  # in place on a view: a vectorised add, no temporary
                        d = dxf[dst + ow_lo:dst + ow_hi]
                        d += cf[src + ow_lo:src + ow_hi]
                    else:
                        for ow in range(ow_lo, ow_hi):
                            dxf[dst + ow * sw] += cf[src + ow]


def im2col(cols, x, kernel_size, stride, padding):
    """x (N, C, H, W) -> cols (C*KH*KW, N*OH*OW)"""
    _im2col(cols, x, *kernel_size, *stride, *padding)


def col2im(dx, cols, kernel_size, stride, padding):
    """cols (C*KH*KW, N*OH*OW) -> dx (N, C, H, W), the adjoint of im2col (sums overlaps)"""
    _col2im(dx, cols, *kernel_size, *stride, *padding)


@parallel_kernel
def _gemm_to_nchw(out, y, b, code):
    # y (O, N*P) -> out (N, O, P) = act(y + b)
    n_, o_, p_ = out.shape
    for no in prange(n_ * o_):
        n = no // o_
        o = no % o_
        for p in range(p_):
            v = y[o, n * p_ + p]
            if b is not None:
                v += b[o]
            out[n, o, p] = apply_activation(v, code)


@parallel_kernel
def _nchw_to_gemm(y, db, dout, out, code, first):
    # g = dout * act'(out) (N, O, P) -> y (O, N*P), and db (+)= its sum over n, p: one
    # pass, parallel over o.
    n_, o_, p_ = dout.shape
    for o in prange(o_):
        s = type(dout[0, 0, 0])(0)
        for n in range(n_):
            for p in range(p_):
                v = dout[n, o, p]
                if code != 0:
                    v *= activation_grad(out[n, o, p], code)
                y[o, n * p_ + p] = v
                s += v
        if db is not None:
            if first:
                db[o] = s
            else:
                db[o] += s


def _chunks(x, w_shape, out_hw):
    """Image ranges [n0, n1) whose im2col matrices fit in CHUNK_BYTES (at least one image)."""
    n = x.shape[0]
    k = w_shape[1] * w_shape[2] * w_shape[3]
    per_image = k * out_hw[0] * out_hw[1] * x.itemsize
    nb = max(1, min(n, CHUNK_BYTES // max(per_image, 1)))
    return [(n0, min(n0 + nb, n)) for n0 in range(0, n, nb)], nb


def conv2d_forward(out, x, w, b, stride, padding, activation=None):
    """x (N, C, H, W), w (O, C, KH, KW), b (O,) | None -> out (N, O, OH, OW)
    = act(conv(x, w) + b); ``activation`` as for dense (None, "relu", ...)."""
    o_, c_, kh, kw = w.shape
    oh, ow = out.shape[2], out.shape[3]
    p = oh * ow
    k = c_ * kh * kw
    code = ACTIVATIONS[activation]
    w2 = w.reshape(o_, k)
    chunks, nb = _chunks(x, w.shape, (oh, ow))
    cols_buf = workspace("cols", k * nb * p, x.dtype)
    y_buf = workspace("y", o_ * nb * p, x.dtype)
    for n0, n1 in chunks:
        m = (n1 - n0) * p
        cols = cols_buf[:k * m].reshape(k, m)
        y = y_buf[:o_ * m].reshape(o_, m)
        im2col(cols, x[n0:n1], (kh, kw), stride, padding)
        np.matmul(w2, cols, out=y)
        _gemm_to_nchw(out[n0:n1].reshape(n1 - n0, o_, p), y, b, code)


def conv2d_backward(dx, dw, db, dout, x, w, out, stride, padding, activation=None):
    """dout (N, O, OH, OW), x (N, C, H, W), w (O, C, KH, KW), out (the forward output;
    None without activation) -> dx (N, C, H, W) | None, dw (O, C, KH, KW), db (O,) | None"""
    o_, c_, kh, kw = w.shape
    code = ACTIVATIONS[activation]
    oh, ow = dout.shape[2], dout.shape[3]
    p = oh * ow
    k = c_ * kh * kw
    w2 = w.reshape(o_, k)
    dw2 = dw.reshape(o_, k)
    chunks, nb = _chunks(x, w.shape, (oh, ow))
    cols_buf = workspace("cols", k * nb * p, x.dtype)
    d_buf = workspace("y", o_ * nb * p, x.dtype)
    dcols_buf = workspace("dcols", k * nb * p, x.dtype) if dx is not None else None
    dw_part = workspace("dw", o_ * k, x.dtype).reshape(o_, k) if len(chunks) > 1 else None
    for i, (n0, n1) in enumerate(chunks):
        m = (n1 - n0) * p
        cols = cols_buf[:k * m].reshape(k, m)
        d = d_buf[:o_ * m].reshape(o_, m)
        dout3 = dout[n0:n1].reshape(n1 - n0, o_, p)
        out3 = dout3 if out is None else out[n0:n1].reshape(n1 - n0, o_, p)
        _nchw_to_gemm(d, db, dout3, out3, code, i == 0)
        im2col(cols, x[n0:n1], (kh, kw), stride, padding)
        if i == 0:
            np.matmul(d, cols.T, out=dw2)
        else:
            np.matmul(d, cols.T, out=dw_part)
            dw2 += dw_part
        if dx is not None:
            dcols = dcols_buf[:k * m].reshape(k, m)
            np.matmul(w2.T, d, out=dcols)
            col2im(dx[n0:n1], dcols, (kh, kw), stride, padding)
