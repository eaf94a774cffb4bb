"""2-D max / average pooling kernels (CUDA), NCHW, the CPU kernels' semantics.

``kernel_size``, ``stride`` and ``padding`` are (h, w) pairs, output sizes follow
PyTorch's floor convention. Max pooling treats padding as -inf and records the argmax
(int32) as the flat index ih*W + iw within the input plane; ties go to the first element
in row-major window order, a NaN wins (the last NaN of a window), as on the CPU. Average
pooling divides by KH*KW, padding included (``count_include_pad=True``). LP pooling
follows PyTorch's lp_pool2d step by step (the CPU kernels' note in kernels/pool.py).

Forward kernels run one thread per output element. Backward kernels gather, one thread
per input element, summing the output gradients that reach it in the CPU kernels' order
(output row-major): no racy ``+=``, deterministic, and for max pooling bitwise equal to
the CPU. Backward kernels overwrite their outputs.
"""
import math

from numba import cuda

from . import _launch
from ..pool import lp_exponents
from ._launch import launch_1d


@cuda.jit(device=True, inline=True)
def _covering(i, n_out, k, s, p):
    """[first, stop) of the outputs o whose window [o*s - p, o*s - p + k) holds input i."""
    a = i + p - k  # o*s > a
    first = 0 if a < 0 else a // s + 1
    return first, min(n_out, (i + p) // s + 1)


@cuda.jit
def _max_pool2d_forward_kernel(out, argmax, x, h, w, oh_, ow_, kh, kw, sh, sw, ph, pw):
    for o in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        ow = o % ow_
        oh = (o // ow_) % oh_
        xb = (o // (ow_ * oh_)) * h * w
        i0 = oh * sh - ph
        j0 = ow * sw - pw
        i1, j1 = min(i0 + kh, h), min(j0 + kw, w)
        i0, j0 = max(i0, 0), max(j0, 0)
        # NOTE: padding acts as -inf: only in-image elements compete, and a window always
        # holds one (padding <= kernel / 2).
        arg = i0 * w + j0
        best = x[xb + arg]
        for i in range(i0, i1):
            for j in range(j0, j1):
                v = x[xb + i * w + j]
                if v > best or v != v:  # strict >: ties keep the first; a NaN wins
                    best = v
                    arg = i * w + j
        out[o] = best
        argmax[o] = arg


def max_pool2d_forward(out, argmax, x, kernel_size, stride, padding):
    """x (N, C, H, W) -> out (N, C, OH, OW), argmax (N, C, OH, OW) int32"""
    grid, threads = launch_1d(out.size)
    _max_pool2d_forward_kernel[grid, threads](
        _launch.flat(out), _launch.flat(argmax), _launch.flat(x), x.shape[2], x.shape[3],
        out.shape[2], out.shape[3], *map(int, kernel_size), *map(int, stride), *map(int, padding))


@cuda.jit
def _max_pool2d_backward_kernel(dx, dout, argmax, h, w, oh_, ow_, kh, kw, sh, sw, ph, pw):
    # a gather: each input element sums the gradients of the windows that cover it and
    # chose it, in output order (as the CPU scatter adds them: bitwise equal); no atomics
    for e in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        iw = e % w
        ih = (e // w) % h
        a = ih * w + iw
        ob = (e // (w * h)) * oh_ * ow_
        oh0, oh1 = _covering(ih, oh_, kh, sh, ph)
        ow0, ow1 = _covering(iw, ow_, kw, sw, pw)
        s = dx.dtype.type(0)
        for oh in range(oh0, oh1):
            for ow in range(ow0, ow1):
                o = ob + oh * ow_ + ow
                if argmax[o] == a:
                    s += dout[o]
        dx[e] = s


def max_pool2d_backward(dx, dout, argmax, kernel_size, stride, padding):
    """dout (N, C, OH, OW), argmax (N, C, OH, OW) from the forward with this geometry
    -> dx (N, C, H, W)"""
    grid, threads = launch_1d(dx.size)
    _max_pool2d_backward_kernel[grid, threads](
        _launch.flat(dx), _launch.flat(dout), _launch.flat(argmax), dx.shape[2], dx.shape[3],
        dout.shape[2], dout.shape[3], *map(int, kernel_size), *map(int, stride), *map(int, padding))


@cuda.jit
def _avg_pool2d_forward_kernel(out, x, h, w, oh_, ow_, kh, kw, sh, sw, ph, pw, inv):
    for o in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        ow = o % ow_
        oh = (o // ow_) % oh_
        xb = (o // (ow_ * oh_)) * h * w
        i0 = oh * sh - ph
        j0 = ow * sw - pw
        i1, j1 = min(i0 + kh, h), min(j0 + kw, w)
        s = x.dtype.type(0)
        for i in range(max(i0, 0), i1):
            for j in range(max(j0, 0), j1):
                s += x[xb + i * w + j]
        out[o] = s * inv


def _inv_area(kernel_size, dtype):
    """1 / (KH*KW) rounded once in the array's dtype, as the CPU kernels compute it."""
    one = _launch.scalar(1, dtype)
    return one / _launch.scalar(int(kernel_size[0]) * int(kernel_size[1]), dtype)


def avg_pool2d_forward(out, x, kernel_size, stride, padding):
    """x (N, C, H, W) -> out (N, C, OH, OW)"""
    grid, threads = launch_1d(out.size)
    _avg_pool2d_forward_kernel[grid, threads](
        _launch.flat(out), _launch.flat(x), x.shape[2], x.shape[3], out.shape[2], out.shape[3],
        *map(int, kernel_size), *map(int, stride), *map(int, padding),
        _inv_area(kernel_size, x.dtype))


@cuda.jit
def _avg_pool2d_backward_kernel(dx, dout, h, w, oh_, ow_, kh, kw, sh, sw, ph, pw, inv):
    for e in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        iw = e % w
        ih = (e // w) % h
        ob = (e // (w * h)) * oh_ * ow_
        oh0, oh1 = _covering(ih, oh_, kh, sh, ph)
        ow0, ow1 = _covering(iw, ow_, kw, sw, pw)
        s = dx.dtype.type(0)
        for oh in range(oh0, oh1):
            for ow in range(ow0, ow1):
                s += dout[ob + oh * ow_ + ow] * inv
        dx[e] = s


def avg_pool2d_backward(dx, dout, kernel_size, stride, padding):
    """dout (N, C, OH, OW) -> dx (N, C, H, W)"""
    grid, threads = launch_1d(dx.size)
    _avg_pool2d_backward_kernel[grid, threads](
        _launch.flat(dx), _launch.flat(dout), dx.shape[2], dx.shape[3], dout.shape[2],
        dout.shape[3], *map(int, kernel_size), *map(int, stride), *map(int, padding),
        _inv_area(kernel_size, dx.dtype))


@cuda.jit
def _global_avg_pool2d_forward_kernel(out, x, hw, inv):
    # one thread per (n, c) plane, summing it in order: deterministic, as on the CPU
    for nc in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        s = x.dtype.type(0)
        for i in range(nc * hw, (nc + 1) * hw):
            s += x[i]
        out[nc] = s * inv


def global_avg_pool2d_forward(out, x):
    """x (N, C, H, W) -> out (N, C), the mean over H and W"""
    hw = x.shape[2] * x.shape[3]
    grid, threads = launch_1d(out.size)
    _global_avg_pool2d_forward_kernel[grid, threads](
        _launch.flat(out), _launch.flat(x), hw, _inv_area((hw, 1), x.dtype))


@cuda.jit
def _global_avg_pool2d_backward_kernel(dx, dout, hw, inv):
    for e in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        dx[e] = dout[e // hw] * inv


def global_avg_pool2d_backward(dx, dout):
    """dout (N, C) -> dx (N, C, H, W)"""
    hw = dx.shape[2] * dx.shape[3]
    grid, threads = launch_1d(dx.size)
    _global_avg_pool2d_backward_kernel[grid, threads](
        _launch.flat(dx), _launch.flat(dout), hw, _inv_area((hw, 1), dx.dtype))


# ---- power-average (LP) pooling: the CPU kernels' arithmetic (kernels/pool.py's note) -------
# NOTE: numba-cuda compiles without fast math unless asked: IEEE divisions and square
# roots, 1 / sqrt(0) = inf, as the CPU's exact build.

@cuda.jit(device=True, inline=True)
def _lp_pow(v, e, code):
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


@cuda.jit(device=True, inline=True)
def _lp_window_sum(x, xb, w, i0, j0, kh, kw, p, pc):
    s = x.dtype.type(0)
    for i in range(i0, i0 + kh):
        for j in range(j0, j0 + kw):
            s += _lp_pow(x[xb + i * w + j], p, pc)
    return s


@cuda.jit
def _lp_pool2d_forward_kernel(out, x, h, w, oh_, ow_, kh, kw, sh, sw, p, pc, inv_p, ic):
    area = x.dtype.type(kh * kw)
    for o in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        ow = o % ow_
        oh = (o // ow_) % oh_
        xb = (o // (ow_ * oh_)) * h * w
        s = _lp_window_sum(x, xb, w, oh * sh, ow * sw, kh, kw, p, pc)
        out[o] = _lp_pow((s / area) * area, inv_p, ic)


def lp_pool2d_forward(out, x, norm_type, kernel_size, stride):
    """x (N, C, H, W) -> out (N, C, OH, OW) = (sum over the window of x^p)^(1/p), p =
    norm_type > 0, no padding (PyTorch's lp_pool2d, ceil_mode=False)"""
    p, pc, _, _, inv_p, ic, _, _ = lp_exponents(norm_type, x.dtype)
    grid, threads = launch_1d(out.size)
    _lp_pool2d_forward_kernel[grid, threads](
        _launch.flat(out), _launch.flat(x), x.shape[2], x.shape[3], out.shape[2], out.shape[3],
        *map(int, kernel_size), *map(int, stride), p, pc, inv_p, ic)


@cuda.jit
def _lp_pool2d_backward_kernel(dx, dout, x, h, w, oh_, ow_, kh, kw, sh, sw, p, pc, pm1, pm1c,
                               inv_p, e1, e1c):
    # a gather, as avg_pool2d's: each input element sums, in output order, what the windows
    # covering it pass down (each window's sum computed again: no scratch, no atomics)
    area = x.dtype.type(kh * kw)
    zero = x.dtype.type(0)
    for e in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        iw = e % w
        ih = (e // w) % h
        xb = (e // (w * h)) * h * w
        ob = (e // (w * h)) * oh_ * ow_
        oh0, oh1 = _covering(ih, oh_, kh, sh, 0)
        ow0, ow1 = _covering(iw, ow_, kw, sw, 0)
        acc = zero
        for oh in range(oh0, oh1):
            for ow in range(ow0, ow1):
                s = _lp_window_sum(x, xb, w, oh * sh, ow * sw, kh, kw, p, pc)
                a = s / area
                t = a * area
                dt = dout[ob + oh * ow_ + ow] * (inv_p * _lp_pow(t, e1, e1c))
                sg = x.dtype.type(1) if a > zero else (x.dtype.type(-1) if a < zero else zero)
                gr = (dt * area) * sg
                gr = zero if abs(a) <= zero else gr
                acc += (gr * sg) / area
        dx[e] = acc * (p * _lp_pow(x[e], pm1, pm1c))


def lp_pool2d_backward(dx, dout, x, norm_type, kernel_size, stride):
    """dout (N, C, OH, OW), x (N, C, H, W) -> dx (N, C, H, W); takes the input (the window
    sums are computed again)"""
    p, pc, pm1, pm1c, inv_p, _, e1, e1c = lp_exponents(norm_type, x.dtype)
    grid, threads = launch_1d(dx.size)
    _lp_pool2d_backward_kernel[grid, threads](
        _launch.flat(dx), _launch.flat(dout), _launch.flat(x), dx.shape[2], dx.shape[3],
        dout.shape[2], dout.shape[3], *map(int, kernel_size), *map(int, stride),
        p, pc, pm1, pm1c, inv_p, e1, e1c)
