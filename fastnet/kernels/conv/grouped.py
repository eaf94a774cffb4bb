"""A direct convolution for dilation > 1 or groups > 1 (torch.nn.Conv2d's ``dilation`` and
``groups``), the depthwise convolution (groups == C, O a multiple of C) its fast case.

Output (oh, ow) of channel o reads input channels [g*CG, (g+1)*CG) of its group
g = o // (O / groups), at rows oh*SH - PH + i*DH and columns ow*SW - PW + j*DW. Every
kernel works on whole rows: the inner loop runs over the output columns that a tap
(i, j) reads inside the input (no padded copy, no junk columns: only the valid products,
so NaN / inf propagate as in PyTorch), contiguous at stride 1 and vectorised.

* forward: parallel over (image, output channel); per output row, the taps of the
  group's CG input channels accumulated into the row, then bias and activation.
* dx: parallel over (image, input channel), each thread owning its plane of dx: the
  gradient rows of the group's output channels scattered through the taps.
* dw: parallel over (output channel, input channel of its group), each a serial sum
  over the images in order (and rows and taps): the result does not depend on the
  thread count. db: parallel over output channels, the same order.
* the depthwise backward (one input channel per group) is one pass instead of these
  three: per (image, input channel), each gradient row read once for dx (the taps'
  scatter), dw (the products added per output column into one row per tap, summed over
  the columns at the end of the plane) and db; the per-image partial sums of dw and db
  are then added over the images in order (``_sum_images``). On the bench case it runs
  1.4x the three passes (reading the gradient and the input once, not twice).

Measured on the depthwise 3x3 bench case (``fastnet/bench/cases.py``); the general
grouped / dilated conv is correct but has no register blocking (a lead for the speed
work: per-group implicit GEMMs).
"""
import numpy as np
from numba import prange

from .._jit import compute_family, compute_kernel, parallel_family
from ..activations import apply_activation, through_activation
from ..codes import RELU
from .implicit_gemm import act_key
from .layout import workspace


def takes(dilation, groups):
    """Whether a conv goes here rather than to the implicit GEMM (which takes neither)."""
    return groups != 1 or dilation[0] != 1 or dilation[1] != 1


def out_size(size, k, s, p, d):
    """PyTorch's output size: (size + 2p - d*(k-1) - 1) // s + 1."""
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


@compute_family
def _forward(act):
    """out = act(conv(x, w) + b) for activation key ``act`` (implicit_gemm.act_key: -1
    serves no activation and ReLU, picked by ``relu``):
    ``_forward[act](out, x, w, b, sh, sw, ph, pw, dh, dw, groups, relu)``."""
    def kernel(out, x, w, b, sh, sw, ph, pw, dh, dw, groups, relu):
        # NOTE: flat unsigned indices, no views per row and tap: a view per (row, tap)
        # cost more than the products on 56-wide rows, and a signed index keeps Numba's
        # wraparound check in the vector loop
        n_, o_, oh_, ow_ = out.shape
        c_, h_, w_ = x.shape[1], x.shape[2], x.shape[3]
        cg, kh, kw = w.shape[1], w.shape[2], w.shape[3]
        opg = o_ // groups
        zero = out.dtype.type(0)
        of = out.ravel()
        xf = x.ravel()
        for t in prange(n_ * o_):
            n = t // o_
            o = t - n * o_
            c0 = (o // opg) * cg
            bo = b[o]
            for r in range(oh_):
                row = of[(t * oh_ + r) * ow_:(t * oh_ + r + 1) * ow_]
                r0 = np.uint64((t * oh_ + r) * ow_)
                for u in range(ow_):
                    of[r0 + np.uint64(u)] = zero
                for c in range(cg):
                    for i in range(kh):
                        iy = r * sh - ph + i * dh
                        if iy < 0 or iy >= h_:
                            continue
                        x0 = ((n * c_ + c0 + c) * h_ + iy) * w_
                        for j in range(kw):
                            wv = w[o, c, i, j]
                            off = j * dw - pw
                            # the output columns u with 0 <= u*sw + off < W
                            lo = (-off + sw - 1) // sw if off < 0 else 0
                            hi = min(ow_, (w_ - 1 - off) // sw + 1) if w_ - 1 - off >= 0 else 0
                            if hi <= lo:
                                continue
                            d0 = r0 + np.uint64(lo)
                            s0 = np.uint64(x0 + lo * sw + off)
                            if sw == 1:
                                for u in range(hi - lo):
                                    of[d0 + np.uint64(u)] += wv * xf[s0 + np.uint64(u)]
                            else:
                                swu = np.uint64(sw)
                                for u in range(hi - lo):
                                    of[d0 + np.uint64(u)] += wv * xf[s0 + swu * np.uint64(u)]
                if act == -1:
                    for u in range(ow_):
                        v = row[u] + bo
                        # NOTE: "<= 0 gives 0": a NaN stays NaN, as in PyTorch
                        row[u] = (zero if v <= 0 else v) if relu else v
                else:
                    for u in range(ow_):
                        row[u] = apply_activation(row[u] + bo, act)
    return kernel


@parallel_family
def _gradient(code):
    """g = dout * act'(out) (N, O, OH, OW), for one activation ``code`` (not 0)."""
    def kernel(g, dout, out):
        gf, df, yf = g.ravel(), dout.ravel(), out.ravel()
        for k in prange(gf.size):
            gf[k] = through_activation(df[k], yf[k], code)
    return kernel


@compute_kernel
def _dx(dx, g, w, sh, sw, ph, pw, dh, dw, groups):
    # g (N, O, OH, OW), w (O, CG, KH, KW) -> dx (N, C, H, W): per (image, input channel),
    # the gradient rows of its group's output channels scattered through the taps
    n_, c_, h_, w_ = dx.shape
    o_, oh_, ow_ = g.shape[1], g.shape[2], g.shape[3]
    cg, kh, kw = w.shape[1], w.shape[2], w.shape[3]
    opg = o_ // groups
    zero = dx.dtype.type(0)
    df = dx.ravel()  # flat unsigned indices, as in the forward
    gf = g.ravel()
    for t in prange(n_ * c_):
        n = t // c_
        c = t - n * c_
        grp = c // cg
        cl = c - grp * cg
        p0 = np.uint64(t * h_ * w_)
        for u in range(h_ * w_):
            df[p0 + np.uint64(u)] = zero
        for o in range(grp * opg, (grp + 1) * opg):
            for r in range(oh_):
                g0 = np.uint64(((n * o_ + o) * oh_ + r) * ow_)
                for i in range(kh):
                    iy = r * sh - ph + i * dh
                    if iy < 0 or iy >= h_:
                        continue
                    x0 = (t * h_ + iy) * w_
                    for j in range(kw):
                        wv = w[o, cl, i, j]
                        off = j * dw - pw
                        lo = (-off + sw - 1) // sw if off < 0 else 0
                        hi = min(ow_, (w_ - 1 - off) // sw + 1) if w_ - 1 - off >= 0 else 0
                        if hi <= lo:
                            continue
                        s0 = g0 + np.uint64(lo)
                        d0 = np.uint64(x0 + lo * sw + off)
                        if sw == 1:
                            for u in range(hi - lo):
                                df[d0 + np.uint64(u)] += wv * gf[s0 + np.uint64(u)]
                        else:
                            swu = np.uint64(sw)
                            for u in range(hi - lo):
                                df[d0 + swu * np.uint64(u)] += wv * gf[s0 + np.uint64(u)]


@compute_kernel
def _dw(dwt, g, x, sh, sw, ph, pw, dh, dw, groups):
    # g (N, O, OH, OW), x (N, C, H, W) -> dwt (O, CG, KH, KW): per (output channel, input
    # channel of its group), a serial sum over images, rows and taps.
    # NOTE: each weight's sum runs in one thread in a fixed order (images, then rows):
    # the result does not depend on the thread count.
    o_, cg, kh, kw = dwt.shape
    n_, oh_, ow_ = g.shape[0], g.shape[2], g.shape[3]
    c_, h_, w_ = x.shape[1], x.shape[2], x.shape[3]
    opg = o_ // groups
    zero = dwt.dtype.type(0)
    gf = g.ravel()  # flat unsigned indices, as in the forward
    xf = x.ravel()
    for t in prange(o_ * cg):
        o = t // cg
        cl = t - o * cg
        c = (o // opg) * cg + cl
        acc = np.zeros(kh * kw, dwt.dtype)
        for n in range(n_):
            for r in range(oh_):
                g0 = np.uint64(((n * o_ + o) * oh_ + r) * ow_)
                for i in range(kh):
                    iy = r * sh - ph + i * dh
                    if iy < 0 or iy >= h_:
                        continue
                    x0 = ((n * c_ + c) * h_ + iy) * w_
                    for j in range(kw):
                        off = j * dw - pw
                        lo = (-off + sw - 1) // sw if off < 0 else 0
                        hi = min(ow_, (w_ - 1 - off) // sw + 1) if w_ - 1 - off >= 0 else 0
                        if hi <= lo:
                            continue
                        a0 = g0 + np.uint64(lo)
                        b0 = np.uint64(x0 + lo * sw + off)
                        s = zero
                        if sw == 1:
                            for u in range(hi - lo):
                                s += gf[a0 + np.uint64(u)] * xf[b0 + np.uint64(u)]
                        else:
                            swu = np.uint64(sw)
                            for u in range(hi - lo):
                                s += gf[a0 + np.uint64(u)] * xf[b0 + swu * np.uint64(u)]
                        acc[i * kw + j] += s
        for i in range(kh):
            for j in range(kw):
                dwt[o, cl, i, j] = acc[i * kw + j]


@compute_kernel
def _depthwise_backward(dx, part, bpart, g, x, w, sh, sw, ph, pw, dh, dw, want_dx, want_dw,
                        want_db):
    # The depthwise case (one input channel per group, O = m * C): per (image, input
    # channel), one pass over the gradient rows of its m output channels gives both dx
    # (if want_dx), the per-image partial sums of dw, part (N, O, KH*KW) (if want_dw), and
    # of db, bpart (N, O) (if want_db). One kernel for every combination: freezing the
    # weight leaves db's and dx's bits as they were.
    # NOTE: the weight gradient's products accumulate per output column into acc (a
    # vector add per tap, no horizontal sum per row), summed over the columns in order at
    # the end of the plane; _sum_images then adds the images in order: the result does not
    # depend on the thread count. One pass reads g and x once for both gradients.
    n_, o_, oh_, ow_ = g.shape
    c_, h_, w_ = x.shape[1], x.shape[2], x.shape[3]
    kh, kw = w.shape[2], w.shape[3]
    kk = kh * kw
    opg = o_ // c_
    zero = part.dtype.type(0)
    df = dx.ravel()  # flat unsigned indices, as in the forward
    gf = g.ravel()
    xf = x.ravel()
    for t in prange(n_ * c_):
        n = t // c_
        c = t - n * c_
        if want_dx:
            p0 = np.uint64(t * h_ * w_)
            for u in range(h_ * w_):
                df[p0 + np.uint64(u)] = zero
        acc = np.empty((kk + 1) * ow_, part.dtype)  # (the last row: db's)
        b0 = np.uint64(kk * ow_)
        for o in range(c * opg, (c + 1) * opg):
            for u in range((kk + 1) * ow_):
                acc[u] = zero
            for r in range(oh_):
                g0 = np.uint64(((n * o_ + o) * oh_ + r) * ow_)
                if want_db:
                    for u in range(ow_):
                        acc[b0 + np.uint64(u)] += gf[g0 + np.uint64(u)]
                for i in range(kh):
                    iy = r * sh - ph + i * dh
                    if iy < 0 or iy >= h_:
                        continue
                    x0 = (t * h_ + iy) * w_
                    for j in range(kw):
                        wv = w[o, 0, i, j]
                        off = j * dw - pw
                        lo = (-off + sw - 1) // sw if off < 0 else 0
                        hi = min(ow_, (w_ - 1 - off) // sw + 1) if w_ - 1 - off >= 0 else 0
                        if hi <= lo:
                            continue
                        a0 = np.uint64((i * kw + j) * ow_ + lo)
                        s0 = g0 + np.uint64(lo)
                        d0 = np.uint64(x0 + lo * sw + off)
                        swu = np.uint64(sw)
                        if not want_dw:
                            if want_dx:
                                for u in range(hi - lo):
                                    df[d0 + swu * np.uint64(u)] += wv * gf[s0 + np.uint64(u)]
                        elif sw == 1:
                            if want_dx:
                                for u in range(hi - lo):
                                    gv = gf[s0 + np.uint64(u)]
                                    acc[a0 + np.uint64(u)] += gv * xf[d0 + np.uint64(u)]
                                    df[d0 + np.uint64(u)] += wv * gv
                            else:
                                for u in range(hi - lo):
                                    acc[a0 + np.uint64(u)] += (gf[s0 + np.uint64(u)]
                                                               * xf[d0 + np.uint64(u)])
                        else:
                            for u in range(hi - lo):
                                gv = gf[s0 + np.uint64(u)]
                                acc[a0 + np.uint64(u)] += gv * xf[d0 + swu * np.uint64(u)]
                                if want_dx:
                                    df[d0 + swu * np.uint64(u)] += wv * gv
            for k in range(kk if want_dw else 0):
                s = zero
                for u in range(ow_):
                    s += acc[k * ow_ + u]
                part[n, o, k] = s
            if want_db:
                s = zero
                for u in range(ow_):
                    s += acc[b0 + np.uint64(u)]
                bpart[n, o] = s


@compute_kernel
def _sum_images(out, part):
    # part (N, M) -> out (M,): the images summed in order
    n_, m = part.shape
    for t in prange(m):
        s = part[0, t]
        for n in range(1, n_):
            s += part[n, t]
        out[t] = s


@compute_kernel
def _db(db, g):
    # g (N, O, OH, OW) -> db (O,): per channel, images then rows in order
    n_, o_, oh_, ow_ = g.shape
    for o in prange(o_):
        s = db.dtype.type(0)
        for n in range(n_):
            for r in range(oh_):
                gr = g[n, o, r]
                t = db.dtype.type(0)
                for u in range(ow_):
                    t += gr[u]
                s += t
        db[o] = s


def forward(out, x, w, b, stride, padding, dilation, groups, code):
    """out = act(conv(x, w) + b), w (O, C/groups, KH, KW) (conv2d_forward)."""
    # a zero bias, not None: one compiled kernel for both
    _forward[act_key(code)](out, np.ascontiguousarray(x), w, _bias(b, w), stride[0], stride[1],
                            padding[0], padding[1], dilation[0], dilation[1], groups,
                            code == RELU)


def _bias(b, w):
    return np.zeros(w.shape[0], w.dtype) if b is None else b


# dx when it is not wanted: one compiled kernel for both cases
_NO_DX = {np.dtype(t).num: np.empty((0, 0, 0, 0), t) for t in (np.float32, np.float64)}


def backward(dx, dw, db, dout, x, w, out, stride, padding, dilation, groups, code):
    """dx (None: not wanted), dw (None: a frozen weight), db (None: no bias) of ``forward``
    (conv2d_backward)."""
    g = dout
    if code != 0:
        g = workspace("gg", dout.size, dout.dtype).reshape(dout.shape)
        _gradient[code](g, dout, out)
    geo = (stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1], groups)
    if w.shape[1] == 1:  # depthwise: dx, dw and db in one pass over g
        n, o = dout.shape[0], w.shape[0]
        part = np.empty((n, o, w.shape[2] * w.shape[3]) if dw is not None else (0, 0, 0),
                        w.dtype)
        bpart = np.empty((n, o) if db is not None else (0, 0), w.dtype)
        _depthwise_backward(dx if dx is not None else _NO_DX[dout.dtype.num], part, bpart, g,
                            np.ascontiguousarray(x), w, *geo[:-1], dx is not None,
                            dw is not None, db is not None)
        if dw is not None:
            _sum_images(dw.reshape(dw.size), part.reshape(n, part[0].size))
        if db is not None:
            _sum_images(db, bpart)
        return
    if db is not None:
        _db(db, g)
    if dw is not None:
        _dw(dw, g, np.ascontiguousarray(x), *geo)
    if dx is not None:
        _dx(dx, g, w, *geo)
