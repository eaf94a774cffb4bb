"""2-D max / average pooling kernels (CUDA), NCHW, the CPU kernels' semantics.

``kernel_size``, ``stride`` and ``padding`` are (h, w) pairs, output sizes follow
PyTorch's floor convention. Max pooling treats padding as -inf and records the argmax
(int32) as the flat index ih*W + iw within the input plane; ties go to the first element
in row-major window order, a NaN wins (the last NaN of a window), as on the CPU. Average
pooling divides by KH*KW, padding included (``count_include_pad=True``).

Forward kernels run one thread per output element. Backward kernels gather, one thread
per input element, summing the output gradients that reach it in the CPU kernels' order
(output row-major): no racy ``+=``, deterministic, and for max pooling bitwise equal to
the CPU. Backward kernels overwrite their outputs.
"""
from numba import cuda, float32, int32, int64

from . import _launch
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


# NOTE: max_pool2d_backward gets no window geometry (the CPU signature), yet a gather needs
# to know which outputs can select an input element. A first pass records, per input
# element, the bounding box of the outputs whose argmax it is, as four integer atomic
# maxima (order-independent, hence deterministic) into zeroed scratch:
# box = (OH - min oh, max oh + 1, OW - min ow, max ow + 1), 0 = selected by no output.
# The gather then scans that box, at most the windows that overlap the element.

@cuda.jit
def _max_pool2d_argmax_box_kernel(box, argmax, hw, oh_, ow_):
    for o in range(cuda.grid(1), argmax.size, cuda.gridsize(1)):
        ow = o % ow_
        oh = (o // ow_) % oh_
        e = 4 * ((o // (ow_ * oh_)) * hw + argmax[o])
        cuda.atomic.max(box, e, int32(oh_ - oh))
        cuda.atomic.max(box, e + 1, int32(oh + 1))
        cuda.atomic.max(box, e + 2, int32(ow_ - ow))
        cuda.atomic.max(box, e + 3, int32(ow + 1))


@cuda.jit
def _max_pool2d_backward_kernel(dx, dout, argmax, box, hw, oh_, ow_):
    for e in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        a = e % hw
        ob = (e // hw) * oh_ * ow_
        s = dx.dtype.type(0)
        for oh in range(oh_ - box[4 * e], box[4 * e + 1]):
            for ow in range(ow_ - box[4 * e + 2], box[4 * e + 3]):
                o = ob + oh * ow_ + ow
                if argmax[o] == a:
                    s += dout[o]
        dx[e] = s


def max_pool2d_backward(dx, dout, argmax):
    """dout (N, C, OH, OW), argmax (N, C, OH, OW) -> dx (N, C, H, W)"""
    hw = dx.shape[2] * dx.shape[3]
    oh_, ow_ = dout.shape[2], dout.shape[3]
    box = _launch.zeros(4 * dx.size, "int32")
    flat_argmax = _launch.flat(argmax)
    grid, threads = launch_1d(argmax.size)
    _max_pool2d_argmax_box_kernel[grid, threads](box, flat_argmax, hw, oh_, ow_)
    grid, threads = launch_1d(dx.size)
    _max_pool2d_backward_kernel[grid, threads](
        _launch.flat(dx), _launch.flat(dout), flat_argmax, box, hw, oh_, ow_)


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


_F1, _I1 = float32[::1], int32[::1]
_GEOMETRY = (int64,) * 10  # h, w, oh, ow, kh, kw, sh, sw, ph, pw
PTX_SIGNATURES = {
    _max_pool2d_forward_kernel: [(_F1, _I1, _F1) + _GEOMETRY],
    _max_pool2d_argmax_box_kernel: [(_I1, _I1, int64, int64, int64)],
    _max_pool2d_backward_kernel: [(_F1, _F1, _I1, _I1, int64, int64, int64)],
    _avg_pool2d_forward_kernel: [(_F1, _F1) + _GEOMETRY + (float32,)],
    _avg_pool2d_backward_kernel: [(_F1, _F1) + _GEOMETRY + (float32,)],
    _global_avg_pool2d_forward_kernel: [(_F1, _F1, int64, float32)],
    _global_avg_pool2d_backward_kernel: [(_F1, _F1, int64, float32)],
}
