"""2-D max / average pooling kernels (CPU), NCHW, parallel over (n, c) planes.

``kernel_size``, ``stride`` and ``padding`` are (h, w) pairs, output sizes follow
PyTorch's floor convention. Max pooling treats padding as -inf and records the argmax
as the flat index ih*W + iw within the input plane (PyTorch's ``return_indices``);
ties go to the first element in row-major window order; NaN propagates, as in PyTorch. Average pooling divides by
KH*KW, padding included (PyTorch's default ``count_include_pad=True``). Power-average
(LP) pooling has no padding and computes what PyTorch's ``lp_pool2d`` does (see its note).
Backward kernels overwrite their outputs.
"""
import math

import numpy as np
from numba import njit, prange

from . import _jit
from ._jit import parallel_kernel, parallel_kernel_exact
from ._simd.pooling import max_pool2x2_row, max_unpool2x2_row, upsample2


@njit(inline="always")
def window(o, stride, pad, k, size):
    """[start, stop) of output position o's window, clipped to the input."""
    start = o * stride - pad
    return max(start, 0), min(start + k, size)


@parallel_kernel
def _max_pool2d_forward(out, argmax, x, kh, kw, sh, sw, ph, pw):
    n_, c_, oh_, ow_ = out.shape
    h, w = x.shape[2], x.shape[3]
    xf, of, af = x.ravel(), out.ravel(), argmax.ravel()
    for nc in prange(n_ * c_):
        xb = nc * h * w
        ob = nc * oh_ * ow_
        for oh in range(oh_):
            i0, i1 = window(oh, sh, ph, kh, h)
            for ow in range(ow_):
                j0, j1 = window(ow, sw, pw, kw, w)
                # NOTE: padding acts as -inf (PyTorch): only in-image elements compete, and
                # a window always holds at least one (padding <= kernel / 2).
                arg = i0 * w + j0
                best = xf[xb + arg]
                for i in range(i0, i1):
                    row = xb + i * w
                    for j in range(j0, j1):
                        v = xf[row + j]
                        # strict >: ties keep the first index; a NaN wins (PyTorch)
                        if v > best or v != v:
                            best = v
                            arg = i * w + j
                of[ob + oh * ow_ + ow] = best
                af[ob + oh * ow_ + ow] = arg


@njit(inline="always")
def _zero_odd_edges(dxf, nc, h, w, oh_, ow_):
    # plane nc of a 2x2 / stride-2 backward: an odd last column and an odd last row of dx
    # belong to no window
    zero = dxf.dtype.type(0)
    if w > 2 * ow_:
        for r in range(2 * oh_):
            dxf[(nc * h + r) * w + w - 1] = zero
    if h > 2 * oh_:
        last = dxf[(nc * h + h - 1) * w:(nc * h + h) * w]
        for t in range(last.size):
            last[t] = zero


@parallel_kernel
def _max_pool2x2_backward(dx, dout, argmax):
    # each output row's gradient into its two dx rows, every dx element written once, on
    # explicit vector code (see _simd/pooling.py)
    n_, c_, oh_, ow_ = dout.shape
    h, w = dx.shape[2], dx.shape[3]
    dxf, gf, af = dx.ravel(), dout.ravel(), argmax.ravel()  # C-contiguous (see the wrapper)
    for nc in prange(n_ * c_):
        for oh in range(oh_):
            d0 = (nc * h + 2 * oh) * w
            max_unpool2x2_row(dxf, gf, af, d0, w, (nc * oh_ + oh) * ow_, ow_, 2 * oh * w)
        _zero_odd_edges(dxf, nc, h, w, oh_, ow_)


@parallel_kernel
def _max_pool2d_backward(dx, dout, argmax):
    # zero the plane, then add each output's gradient at its argmax, in output order
    # (which the CUDA gather follows where windows overlap: the sums are bitwise equal)
    # NOTE: flat planes and explicit loops: the (a // w, a % w) indexing and a Numba
    # slice assignment per plane made it 3.5x slower
    n_, c_, oh_, ow_ = dout.shape
    plane = dx.shape[2] * dx.shape[3]
    op = oh_ * ow_
    dxf, gf, af = dx.ravel(), dout.ravel(), argmax.ravel()
    zero = dx.dtype.type(0)
    for nc in prange(n_ * c_):
        p = dxf[nc * plane:(nc + 1) * plane]
        for i in range(plane):
            p[i] = zero
        g = gf[nc * op:(nc + 1) * op]
        a = af[nc * op:(nc + 1) * op]
        for i in range(op):
            p[a[i]] += g[i]


@parallel_kernel
def _avg_pool2d_forward(out, x, kh, kw, sh, sw, ph, pw):
    n_, c_, oh_, ow_ = out.shape
    h, w = x.shape[2], x.shape[3]
    inv = x.dtype.type(1) / x.dtype.type(kh * kw)
    for nc in prange(n_ * c_):
        n = nc // c_
        c = nc % c_
        for oh in range(oh_):
            i0, i1 = window(oh, sh, ph, kh, h)
            for ow in range(ow_):
                j0, j1 = window(ow, sw, pw, kw, w)
                s = x.dtype.type(0)
                for i in range(i0, i1):
                    for j in range(j0, j1):
                        s += x[n, c, i, j]
                out[n, c, oh, ow] = s * inv


@parallel_kernel
def _avg_pool2d_backward(dx, dout, kh, kw, sh, sw, ph, pw):
    n_, c_, oh_, ow_ = dout.shape
    h, w = dx.shape[2], dx.shape[3]
    inv = dx.dtype.type(1) / dx.dtype.type(kh * kw)
    for nc in prange(n_ * c_):
        n = nc // c_
        c = nc % c_
        dx[n, c] = 0
        for oh in range(oh_):
            i0, i1 = window(oh, sh, ph, kh, h)
            for ow in range(ow_):
                j0, j1 = window(ow, sw, pw, kw, w)
                g = dout[n, c, oh, ow] * inv
                for i in range(i0, i1):
                    for j in range(j0, j1):
                        dx[n, c, i, j] += g


# NOTE: 2x2 windows with stride 2 and no padding are nearly every CNN's pooling: they get
# kernels with fixed windows and branch-free selects. On real activations the max
# comparison is a coin flip, and mispredicted branches made the general kernel 5x slower.
@parallel_kernel
def _max_pool2x2_forward(out, argmax, x):
    # NOTE: each output row on explicit vector code (see _simd/pooling.py): the Numba loop, one
    # select per value, vectorised but ran at 13-23 GB/s on rows of 14 or 16 outputs
    n_, c_, oh_, ow_ = out.shape
    h, w = x.shape[2], x.shape[3]
    of, af, xf = out.ravel(), argmax.ravel(), x.ravel()  # C-contiguous (see the wrapper)
    for nc in prange(n_ * c_):
        for oh in range(oh_):
            max_pool2x2_row(of, af, xf, (nc * oh_ + oh) * ow_, (nc * h + 2 * oh) * w, w, ow_,
                            2 * oh * w)


@parallel_kernel
def _avg_pool2x2_forward(out, x):
    n_, c_, oh_, ow_ = out.shape
    q = x.dtype.type(0.25)
    for nc in prange(n_ * c_):
        n = nc // c_
        c = nc % c_
        for oh in range(oh_):
            for ow in range(ow_):
                out[n, c, oh, ow] = (x[n, c, 2 * oh, 2 * ow] + x[n, c, 2 * oh, 2 * ow + 1]
                                     + x[n, c, 2 * oh + 1, 2 * ow]
                                     + x[n, c, 2 * oh + 1, 2 * ow + 1]) * q


@parallel_kernel
def _avg_pool2x2_backward(dx, dout):
    # NOTE: each dout row goes to its two dx rows through explicit vector code (see
    # _simd/pooling.py): as a loop of r[2 * j] = r[2 * j + 1] = g it stayed scalar, 3.7x slower
    n_, c_, oh_, ow_ = dout.shape
    h, w = dx.shape[2], dx.shape[3]
    q = dx.dtype.type(0.25)
    dxf, df = dx.ravel(), dout.ravel()  # C-contiguous (see the wrapper)
    for nc in prange(n_ * c_):
        for oh in range(oh_):
            d0 = (nc * h + 2 * oh) * w
            upsample2(dxf, df, d0, d0 + w, (nc * oh_ + oh) * ow_, ow_, q)
        _zero_odd_edges(dxf, nc, h, w, oh_, ow_)


def _is_2x2(kernel_size, stride, padding):
    return tuple(kernel_size) == (2, 2) and tuple(stride) == (2, 2) and tuple(padding) == (0, 0)


def _vector_ok(floats, argmax=None):
    """Whether the 2x2 vector code (_simd/pooling.py) takes these arrays: float32 or float64 of
    one dtype (and int32 argmax); the general kernels take the rest."""
    dt = floats[0].dtype
    return (dt in (np.float32, np.float64) and all(a.dtype == dt for a in floats)
            and (argmax is None or argmax.dtype == np.int32))


def max_pool2d_forward(out, argmax, x, kernel_size, stride, padding):
    """x (N, C, H, W) -> out (N, C, OH, OW), argmax (N, C, OH, OW) int32"""
    # the kernels work on flat C-contiguous buffers: other arrays go through copies (a
    # strided view would be raveled into a copy, and the result lost)
    if not (out.flags.c_contiguous and argmax.flags.c_contiguous):
        o, a = np.empty(out.shape, out.dtype), np.empty(argmax.shape, np.int32)
        max_pool2d_forward(o, a, x, kernel_size, stride, padding)
        out[...], argmax[...] = o, a
        return
    x = np.ascontiguousarray(x)
    if _is_2x2(kernel_size, stride, padding) and _vector_ok((out, x), argmax):
        _max_pool2x2_forward(out, argmax, x)
    else:
        _max_pool2d_forward(out, argmax, x, *kernel_size, *stride, *padding)


def max_pool2d_backward(dx, dout, argmax, kernel_size, stride, padding):
    """dout (N, C, OH, OW), argmax (N, C, OH, OW) from the forward with this geometry
    -> dx (N, C, H, W)"""
    # NOTE: in general the CPU scatters through argmax and needs no geometry (the CUDA
    # gather does). 2x2 / stride 2 windows do not overlap, and their backward writes each
    # dx element once on explicit vector code (as a Numba loop, that one-pass form had
    # measured 1.5x slower than zeroing plus the scatter). Both work on flat C-contiguous
    # buffers: other arrays go through copies.
    if not dx.flags.c_contiguous:
        d = np.empty(dx.shape, dx.dtype)
        max_pool2d_backward(d, dout, argmax, kernel_size, stride, padding)
        dx[...] = d
        return
    dout, argmax = np.ascontiguousarray(dout), np.ascontiguousarray(argmax)
    if _is_2x2(kernel_size, stride, padding) and _vector_ok((dx, dout), argmax):
        _max_pool2x2_backward(dx, dout, argmax)
    else:
        _max_pool2d_backward(dx, dout, argmax)


def max_pool2d_forward_plan(x_shape, dtype, kernel_size, stride, padding):
    """max_pool2d_forward with the path chosen once (an inference plan's step): returns
    ``run(out, argmax, x)`` for C-contiguous arrays (the caller's buffers) of ``x_shape``
    and ``dtype``, bitwise what max_pool2d_forward computes (each output is its window's
    alone: either build gives the same bytes).

    Its build is the parallel one from the compute kernels' threshold (_jit: a
    convolution with an output this large runs parallel), not from the memory-bound
    kernels' 8x larger one: in a plan the pool reads a convolution's output, right after
    it, with the pool's threads awake and each thread's images in its own cache (LeNet-5's
    second conv + pool at batch 64: 231 -> 194 us). Picked again when the threshold
    changes (a forked child runs serial builds)."""
    if _is_2x2(kernel_size, stride, padding) and np.dtype(dtype) in (np.float32, np.float64):
        kernel, geometry = _max_pool2x2_forward, ()
    else:
        kernel, geometry = _max_pool2d_forward, (*kernel_size, *stride, *padding)
    size = math.prod(x_shape)
    picked = []

    def run(out, argmax, x):
        if not picked or picked[0] != _jit.PARALLEL_MIN_WORK:
            t = _jit.PARALLEL_MIN_WORK
            picked[:] = [t, kernel.parallel if size >= t // _jit.COMPUTE_FACTOR else kernel.serial]
        picked[1](out, argmax, x, *geometry)
    return run


def avg_pool2d_forward(out, x, kernel_size, stride, padding):
    """x (N, C, H, W) -> out (N, C, OH, OW)"""
    if _is_2x2(kernel_size, stride, padding):
        _avg_pool2x2_forward(out, x)
    else:
        _avg_pool2d_forward(out, x, *kernel_size, *stride, *padding)


def avg_pool2d_backward(dx, dout, kernel_size, stride, padding):
    """dout (N, C, OH, OW) -> dx (N, C, H, W)"""
    # the 2x2 kernel works on flat C-contiguous buffers of one dtype (a strided view would
    # be raveled into a copy, and the result lost); the general kernel takes any strides
    if (_is_2x2(kernel_size, stride, padding) and dx.flags.c_contiguous
            and dout.flags.c_contiguous and _vector_ok((dx, dout))):
        _avg_pool2x2_backward(dx, dout)
    else:
        _avg_pool2d_backward(dx, dout, *kernel_size, *stride, *padding)


@parallel_kernel
def _global_avg_pool2d_forward(out, x):
    n_, c_ = out.shape
    hw = x.shape[2] * x.shape[3]
    xf = x.ravel()
    inv = x.dtype.type(1) / x.dtype.type(hw)
    for nc in prange(n_ * c_):
        s = x.dtype.type(0)
        p = xf[nc * hw:(nc + 1) * hw]  # a view, looped from 0: vectorises (see recurrent.py)
        for i in range(p.size):
            s += p[i]
        out[nc // c_, nc % c_] = s * inv


@parallel_kernel
def _global_avg_pool2d_backward(dx, dout):
    n_, c_ = dout.shape
    hw = dx.shape[2] * dx.shape[3]
    dxf = dx.ravel()
    inv = dx.dtype.type(1) / dx.dtype.type(hw)
    for nc in prange(n_ * c_):
        g = dout[nc // c_, nc % c_] * inv
        p = dxf[nc * hw:(nc + 1) * hw]
        for i in range(p.size):
            p[i] = g


def global_avg_pool2d_forward(out, x):
    """x (N, C, H, W) -> out (N, C), the mean over H and W"""
    # NOTE: a strided x is copied here: the kernel's ravel of one would reshape through
    # Numba's double-precision size check (the float32 purity scan flags it)
    _global_avg_pool2d_forward(out, np.ascontiguousarray(x))


def global_avg_pool2d_backward(dx, dout):
    """dout (N, C) -> dx (N, C, H, W)"""
    _global_avg_pool2d_backward(dx, dout)


# ---- power-average (LP) pooling -------------------------------------------------------------
# NOTE: PyTorch's lp_pool2d is a composite, and these kernels compute it step by step, in its
# dtype, so that NaN, inf, zero windows and negative sums come out as there:
#     a = avg_pool2d(x.pow(p))          the window's sum of x^p (row-major) / (KH*KW)
#     t = (sign(a) * relu(abs(a))) * (KH*KW)     (a * K, not the sum: rounding as PyTorch)
#     out = t.pow(1 / p)                NaN where t < 0 (odd p, negative inputs) but p = 1
# and backward is its autograd chain: dt = dout * ((1/p) * t^(1/p - 1)) (inf at t = 0),
# times K, times sign(a), 0 where |a| <= 0 (relu's select: a zero window's gradient is 0
# even though dt is inf), times sign(a) again (sign(NaN) = 0, as torch.sign), / K to every
# element of the window (output order), and the sum times p * x^(p - 1).
# Exponents are passed in the array's dtype, each with its pow code: PyTorch's pow with a
# scalar exponent computes 0, 1, 2, 3, 0.5, -0.5, -1 and -2 by fill, copy, products and
# square roots (chosen on the double exponent), other exponents by pow.
POW_SPECIAL = (0.0, 1.0, 2.0, 3.0, 0.5, -0.5, -1.0, -2.0)
POW_GENERAL = len(POW_SPECIAL)


def pow_code(e):
    """The code of the double exponent ``e`` for lp_pow: its index in POW_SPECIAL, else
    POW_GENERAL."""
    return POW_SPECIAL.index(e) if e in POW_SPECIAL else POW_GENERAL


def lp_exponents(norm_type, dtype):
    """(p, p code, p - 1, its code, 1/p, its code, 1/p - 1, its code): the exponents of
    lp_pool2d's forward and backward, each in ``dtype`` (computed in double first, as
    PyTorch's Python-side 1.0 / norm_type and pow_backward's exponent - 1)."""
    t = np.dtype(dtype).type
    p = float(norm_type)
    inv = 1.0 / p
    return (t(p), pow_code(p), t(p - 1.0), pow_code(p - 1.0), t(inv), pow_code(inv),
            t(inv - 1.0), pow_code(inv - 1.0))


@njit(inline="always")
def lp_pow(v, e, code):
    """v ** e, e in v's dtype with its pow_code, as PyTorch's pow(tensor, scalar)."""
    one = type(v)(1)
    if code == 0:
        return one
    if code == 1:
        return v
    if code == 2:
        return v * v
    if code == 3:
        return v * v * v
    if code == 4:
        return math.sqrt(v)
    if code == 5:
        return one / math.sqrt(v)
    if code == 6:
        return one / v
    if code == 7:
        return one / (v * v)
    return v ** e


@njit(inline="always")
def lp_window_sum(x, n, c, i0, j0, kh, kw, p, pc):
    """The sum of x^p over the window at (i0, j0) of plane (n, c), row-major."""
    s = x.dtype.type(0)
    for i in range(i0, i0 + kh):
        for j in range(j0, j0 + kw):
            s += lp_pow(x[n, c, i, j], p, pc)
    return s


@njit(inline="always")
def lp_window_grad(g, s, area, inv_p, e1, e1c):
    """The gradient that each element's x^p receives from an output with window sum ``s``
    and output gradient ``g`` (PyTorch's autograd chain, see the note above)."""
    zero = type(s)(0)
    a = s / area
    t = a * area
    dt = g * (inv_p * lp_pow(t, e1, e1c))
    sg = type(s)(1) if a > zero else (type(s)(-1) if a < zero else zero)  # sign(NaN) = 0
    gr = (dt * area) * sg
    gr = zero if abs(a) <= zero else gr  # relu's select on |a|: NaN passes
    return (gr * sg) / area


@parallel_kernel_exact
def _lp_pool2d_forward(out, x, p, pc, inv_p, ic, kh, kw, sh, sw):
    n_, c_, oh_, ow_ = out.shape
    area = x.dtype.type(kh * kw)
    for nc in prange(n_ * c_):
        n = nc // c_
        c = nc % c_
        for oh in range(oh_):
            for ow in range(ow_):
                s = lp_window_sum(x, n, c, oh * sh, ow * sw, kh, kw, p, pc)
                out[n, c, oh, ow] = lp_pow((s / area) * area, inv_p, ic)


@parallel_kernel_exact
def _lp_pool2d_backward(dx, dout, x, p, pc, pm1, pm1c, inv_p, ic, e1, e1c, kh, kw, sh, sw):
    n_, c_, oh_, ow_ = dout.shape
    h, w = dx.shape[2], dx.shape[3]
    area = x.dtype.type(kh * kw)
    zero = dx.dtype.type(0)
    for nc in prange(n_ * c_):
        n = nc // c_
        c = nc % c_
        for i in range(h):
            for j in range(w):
                dx[n, c, i, j] = zero
        for oh in range(oh_):
            for ow in range(ow_):
                i0, j0 = oh * sh, ow * sw
                s = lp_window_sum(x, n, c, i0, j0, kh, kw, p, pc)
                gd = lp_window_grad(dout[n, c, oh, ow], s, area, inv_p, e1, e1c)
                for i in range(i0, i0 + kh):
                    for j in range(j0, j0 + kw):
                        dx[n, c, i, j] += gd
        for i in range(h):
            for j in range(w):
                dx[n, c, i, j] = dx[n, c, i, j] * (p * lp_pow(x[n, c, i, j], pm1, pm1c))


def lp_pool2d_forward(out, x, norm_type, kernel_size, stride):
    """x (N, C, H, W) -> out (N, C, OH, OW) = (sum over the window of x^p)^(1/p), p =
    norm_type > 0, no padding (PyTorch's lp_pool2d, ceil_mode=False)"""
    p, pc, _, _, inv_p, ic, _, _ = lp_exponents(norm_type, x.dtype)
    _lp_pool2d_forward(out, x, p, pc, inv_p, ic, *map(int, kernel_size), *map(int, stride))


def lp_pool2d_backward(dx, dout, x, norm_type, kernel_size, stride):
    """dout (N, C, OH, OW), x (N, C, H, W) -> dx (N, C, H, W); takes the input (the window
    sums are computed again)"""
    _lp_pool2d_backward(dx, dout, x, *lp_exponents(norm_type, x.dtype),
                        *map(int, kernel_size), *map(int, stride))
