"""im2col / col2im (CPU): the public layout ops that the CUDA convolution is built on
(fastnet/kernels/cuda/conv.py has their twins). The CPU convolutions themselves never
build this matrix (see implicit_gemm.py).

``cols`` is (C*KH*KW, N*OH*OW): row k = (c*KH + i)*KW + j, column (n*OH + oh)*OW + ow,
holding x[n, c, oh*sh - ph + i, ow*sw - pw + j] (0 in the padding).
"""
from numba import prange

from .._jit import parallel_kernel


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
