"""2-D convolution kernels (CUDA) via im2col / col2im, NCHW.

Layout as on the CPU: ``cols`` is (C*KH*KW, N*OH*OW), row (c*KH + i)*KW + j, column
(n*OH + oh)*OW + ow. Forward: im2col of the whole batch, then one GEMM
w (O, C*KH*KW) @ cols whose epilogue adds the bias, applies the activation and writes
NCHW directly. Backward: g = dout * act'(y) gathered into (O, N*OH*OW); db = its row sums
(one block per channel, a tree reduction: deterministic); dw = g @ cols.T with cols
recomputed; dcols = w.T @ g and col2im, which gathers for each input pixel the columns
that read it (no scattered ``+=``, so no races). Scratch matrices come from fastnet's
pool and are reused across steps. Backward kernels overwrite their outputs; pass
``None`` for an output that is not needed.

Dilation > 1 or groups > 1 (w (O, C/groups, KH, KW); the depthwise conv is groups == C)
take direct kernels instead, each deterministic: the forward one thread per output
element, dx one thread per input element gathering the outputs that read it, dw one
block per weight element (a strided sum over images and positions, then a tree), db the
row sums above. With the defaults (dilation (1, 1), groups 1) nothing changes.
"""
from numba import cuda

from ..codes import ACTIVATIONS
from ._device import apply_activation, block_sum, through_activation
from ._launch import THREADS, blocks, empty, flat
from .gemm import BIAS_PER_ROW, NO_BIAS, gemm


@cuda.jit
def _im2col_kernel(cols, x, kh, kw, sh, sw, ph, pw, oh, ow):
    idx = cuda.grid(1)
    rows, ncols = cols.shape
    if idx >= rows * ncols:
        return
    r = idx // ncols
    q = idx % ncols
    j = r % kw
    i = (r // kw) % kh
    c = r // (kw * kh)
    p = q % (oh * ow)
    n = q // (oh * ow)
    h = (p // ow) * sh - ph + i
    w = (p % ow) * sw - pw + j
    v = x.dtype.type(0)
    if 0 <= h < x.shape[2] and 0 <= w < x.shape[3]:
        v = x[n, c, h, w]
    cols[r, q] = v


@cuda.jit
def _col2im_kernel(dx, cols, kh, kw, sh, sw, ph, pw, oh, ow):
    idx = cuda.grid(1)
    n_, c_, hh, ww = dx.shape
    if idx >= n_ * c_ * hh * ww:
        return
    w = idx % ww
    h = (idx // ww) % hh
    c = (idx // (ww * hh)) % c_
    n = idx // (ww * hh * c_)
    s = dx.dtype.type(0)
    for i in range(kh):
        t = h + ph - i
        if t < 0 or t % sh != 0 or t // sh >= oh:
            continue
        for j in range(kw):
            u = w + pw - j
            if u < 0 or u % sw != 0 or u // sw >= ow:
                continue
            s += cols[(c * kh + i) * kw + j, (n * oh + t // sh) * ow + u // sw]
    dx[n, c, h, w] = s


@cuda.jit
def _nchw_to_gemm_kernel(g, dout, y, code):
    # g (O, N*P)[o, n*P + p] = dout[n, o, p] * act'(y[n, o, p])
    idx = cuda.grid(1)
    n_, o_, p_ = dout.shape
    if idx >= n_ * o_ * p_:
        return
    p = idx % p_
    o = (idx // p_) % o_
    n = idx // (p_ * o_)
    v = dout[n, o, p]
    if code != 0:
        v = through_activation(v, y[n, o, p], code, dout.dtype.type(1))
    g[o, n * p_ + p] = v


@cuda.jit
def _row_sum_kernel(out, a):
    # out[r] = sum(a[r, :]): one block per row, strided partial sums, then a tree
    sh = cuda.shared.array(THREADS, a.dtype)
    t = cuda.threadIdx.x
    s = a.dtype.type(0)
    for q in range(t, a.shape[1], THREADS):
        s += a[cuda.blockIdx.x, q]
    s = block_sum(sh, t, t, THREADS, s)
    if t == 0:
        out[cuda.blockIdx.x] = s


@cuda.jit
def _grouped_forward_kernel(out, x, w, b, has_bias, sh, sw, ph, pw, dh, dw, groups, code):
    # out[n, o, r, u] = act(sum over the group's channels c and taps (i, j) of
    # x[n, g*CG + c, r*SH - PH + i*DH, u*SW - PW + j*DW] * w[o, c, i, j] + b[o])
    idx = cuda.grid(1)
    n_, o_, oh_, ow_ = out.shape
    if idx >= n_ * o_ * oh_ * ow_:
        return
    u = idx % ow_
    r = (idx // ow_) % oh_
    o = (idx // (ow_ * oh_)) % o_
    n = idx // (ow_ * oh_ * o_)
    h_, w_ = x.shape[2], x.shape[3]
    cg, kh, kw = w.shape[1], w.shape[2], w.shape[3]
    c0 = (o // (o_ // groups)) * cg
    s = out.dtype.type(0)
    for c in range(cg):
        for i in range(kh):
            iy = r * sh - ph + i * dh
            if iy < 0 or iy >= h_:
                continue
            for j in range(kw):
                ix = u * sw - pw + j * dw
                if 0 <= ix < w_:
                    s += x[n, c0 + c, iy, ix] * w[o, c, i, j]
    if has_bias:
        s += b[o]
    out[n, o, r, u] = apply_activation(s, code, out.dtype.type(1))


@cuda.jit
def _grouped_dx_kernel(dx, g, w, oh_, ow_, sh, sw, ph, pw, dh, dw, groups):
    # dx[n, c, y, v] = sum over the group's output channels o and taps (i, j) whose
    # output (r, u) reads (y, v) of g[o, (n*OH + r)*OW + u] * w[o, c - g*CG, i, j]: a
    # gather (no scattered +=, no races)
    idx = cuda.grid(1)
    n_, c_, h_, w_ = dx.shape
    if idx >= n_ * c_ * h_ * w_:
        return
    v = idx % w_
    y = (idx // w_) % h_
    c = (idx // (w_ * h_)) % c_
    n = idx // (w_ * h_ * c_)
    o_, cg, kh, kw = w.shape
    opg = o_ // groups
    grp = c // cg
    cl = c - grp * cg
    s = dx.dtype.type(0)
    for o in range(grp * opg, (grp + 1) * opg):
        for i in range(kh):
            t = y + ph - i * dh
            if t < 0 or t % sh != 0 or t // sh >= oh_:
                continue
            for j in range(kw):
                q = v + pw - j * dw
                if q < 0 or q % sw != 0 or q // sw >= ow_:
                    continue
                s += g[o, (n * oh_ + t // sh) * ow_ + q // sw] * w[o, cl, i, j]
    dx[n, c, y, v] = s


@cuda.jit
def _grouped_dw_kernel(dwt, g, x, oh_, ow_, sh, sw, ph, pw, dh, dw, groups):
    # one block per weight element (o, c, i, j): the sum over images and output positions
    # of g[o, n*P + p] * x[n, g*CG + c, ...], strided partial sums in a fixed order, then
    # a tree (deterministic)
    sm = cuda.shared.array(THREADS, dwt.dtype)
    t = cuda.threadIdx.x
    e = cuda.blockIdx.x
    o_, cg, kh, kw = dwt.shape
    j = e % kw
    i = (e // kw) % kh
    cl = (e // (kw * kh)) % cg
    o = e // (kw * kh * cg)
    c = (o // (o_ // groups)) * cg + cl
    h_, w_ = x.shape[2], x.shape[3]
    p_ = oh_ * ow_
    s = dwt.dtype.type(0)
    for q in range(t, g.shape[1], THREADS):
        n = q // p_
        p = q - n * p_
        iy = (p // ow_) * sh - ph + i * dh
        ix = (p % ow_) * sw - pw + j * dw
        if 0 <= iy < h_ and 0 <= ix < w_:
            s += g[o, q] * x[n, c, iy, ix]
    s = block_sum(sm, t, t, THREADS, s)
    if t == 0:
        dwt[o, cl, i, j] = s


def _geometry(x_shape, kernel_size, stride, padding):
    kh, kw = kernel_size
    oh = (x_shape[2] + 2 * padding[0] - kh) // stride[0] + 1
    ow = (x_shape[3] + 2 * padding[1] - kw) // stride[1] + 1
    return kh, kw, stride[0], stride[1], padding[0], padding[1], oh, ow


def im2col(cols, x, kernel_size, stride, padding):
    """x (N, C, H, W) -> cols (C*KH*KW, N*OH*OW)"""
    _im2col_kernel[blocks(cols.size), THREADS](cols, x, *_geometry(x.shape, kernel_size,
                                                                     stride, padding))


def col2im(dx, cols, kernel_size, stride, padding):
    """cols (C*KH*KW, N*OH*OW) -> dx (N, C, H, W), overlapping windows summed"""
    _col2im_kernel[blocks(dx.size), THREADS](dx, cols, *_geometry(dx.shape, kernel_size,
                                                                    stride, padding))


def _takes_grouped(dilation, groups):
    return groups != 1 or dilation[0] != 1 or dilation[1] != 1


def conv2d_forward(out, x, w, b, stride, padding, activation=None, dilation=(1, 1), groups=1):
    """x (N, C, H, W), w (O, C/groups, KH, KW), b (O,) | None -> out (N, O, OH, OW) =
    act(conv(x, w) + b)"""
    if _takes_grouped(dilation, groups):
        _grouped_forward_kernel[blocks(out.size), THREADS](
            out, x, w, flat(out) if b is None else b, b is not None, stride[0], stride[1],
            padding[0], padding[1], dilation[0], dilation[1], groups, ACTIVATIONS[activation])
        return
    o, c, kh, kw = w.shape
    n, _, oh, ow = out.shape
    p = oh * ow
    cols = empty((c * kh * kw, n * p), x.dtype)
    im2col(cols, x, (kh, kw), stride, padding)
    gemm(flat(out), w.reshape(o, c * kh * kw), cols, bias=b,
         bias_mode=NO_BIAS if b is None else BIAS_PER_ROW, code=ACTIVATIONS[activation],
         p=p, chunk_stride=o * p, row_stride=p)


def conv2d_backward(dx, dw, db, dout, x, w, out, stride, padding, activation=None,
                    dilation=(1, 1), groups=1):
    """dout (N, O, OH, OW), x (N, C, H, W), w (O, C/groups, KH, KW), out (the forward
    output, may be None without activation) -> dx (N, C, H, W) | None,
    dw (O, C/groups, KH, KW) | None, db (O,) | None"""
    o, c, kh, kw = w.shape
    n, _, oh, ow = dout.shape
    p = oh * ow
    ckk = c * kh * kw
    code = ACTIVATIONS[activation]
    g = empty((o, n * p), dout.dtype)
    d3 = dout.reshape(n, o, p)
    _nchw_to_gemm_kernel[blocks(dout.size), THREADS](
        g, d3, d3 if out is None else out.reshape(n, o, p), code)
    if db is not None:
        _row_sum_kernel[o, THREADS](db, g)
    if _takes_grouped(dilation, groups):
        geo = (oh, ow, stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
               groups)
        if dw is not None:  # (None: a frozen weight)
            _grouped_dw_kernel[dw.size, THREADS](dw, g, x, *geo)
        if dx is not None:
            _grouped_dx_kernel[blocks(dx.size), THREADS](dx, g, w, *geo)
        return
    cols = empty((ckk, n * p), x.dtype)
    w2 = w.reshape(o, ckk)
    if dw is not None:                           # (None: a frozen weight)
        im2col(cols, x, (kh, kw), stride, padding)
        gemm(flat(dw), g, cols, tb=True)         # (O, N*P) @ (N*P, CKK)
    if dx is not None:
        gemm(flat(cols), w2, g, ta=True)         # dcols (CKK, N*P), into cols' memory
        col2im(dx, cols, (kh, kw), stride, padding)
