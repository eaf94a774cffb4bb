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
"""
from numba import cuda

from ..codes import ACTIVATIONS
from ._device import through_activation, block_sum
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


def conv2d_forward(out, x, w, b, stride, padding, activation=None):
    """x (N, C, H, W), w (O, C, KH, KW), b (O,) | None -> out (N, O, OH, OW) =
    act(conv(x, w) + b)"""
    o, c, kh, kw = w.shape
    n, _, oh, ow = out.shape
    p = oh * ow
    cols = empty((c * kh * kw, n * p), x.dtype)
    im2col(cols, x, (kh, kw), stride, padding)
    gemm(flat(out), w.reshape(o, c * kh * kw), cols, bias=b,
         bias_mode=NO_BIAS if b is None else BIAS_PER_ROW, code=ACTIVATIONS[activation],
         p=p, chunk_stride=o * p, row_stride=p)


def conv2d_backward(dx, dw, db, dout, x, w, out, stride, padding, activation=None):
    """dout (N, O, OH, OW), x (N, C, H, W), w (O, C, KH, KW), out (the forward output,
    may be None without activation) -> dx (N, C, H, W) | None, dw (O, C, KH, KW) | None,
    db (O,) | None"""
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
    cols = empty((ckk, n * p), x.dtype)
    w2 = w.reshape(o, ckk)
    if dw is not None:                           # (None: a frozen weight)
        im2col(cols, x, (kh, kw), stride, padding)
        gemm(flat(dw), g, cols, tb=True)         # (O, N*P) @ (N*P, CKK)
    if dx is not None:
        gemm(flat(cols), w2, g, ta=True)         # dcols (CKK, N*P), into cols' memory
        col2im(dx, cols, (kh, kw), stride, padding)
