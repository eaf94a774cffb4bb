"""A direct stride-1 convolution backward for one input channel: the layer that takes
an image (LeNet's first), when its input gradient is wanted.

dx of a one-channel input would use 1 of the implicit GEMM's 8 tile rows. Measured
against the implicit GEMM in 2026-12 (see conv/__init__.py), this path is 1.37x faster on
8x8 images and 1.02-1.45x slower on 28x28 and larger. Training never needs it (the
first layer's input is data: ``backward(..., input_grad=False)``); input attributions
and adversarial examples do.

The layout is the "shifted planes" one of layout.py at stride 1: the gradient as (O, N*L)
runs of L = (OH-1)*Wp + OW columns with row pitch Wp (the padded width), zeros in the
junk columns, so that tap (i, j) of every position is one contiguous run.
"""
import numpy as np
from numba import prange

from .._jit import compute_kernel, parallel_kernel
from ..activations import through_activation
from .layout import padded_phases, workspace

# the most inputs per output (C*KH*KW) this path takes: LeNet's first layer has 25
DIRECT_MAX_K = 150
# images per partial dw sum (summed afterwards in order: independent of the thread count)
DW_GROUP = 8


def takes_dx(stride, w_shape):
    """Whether backward with dx goes here: one input channel, stride 1, and at most
    DIRECT_MAX_K taps."""
    return (w_shape[1] == 1 and stride[0] == 1 and stride[1] == 1
            and w_shape[2] * w_shape[3] <= DIRECT_MAX_K)


def _stride1_geometry(x, w, out_hw, padding):
    """(Hp, Wp, L) of the shifted-plane layout: padded input size and columns per image."""
    hp, wp = x.shape[2] + 2 * padding[0], x.shape[3] + 2 * padding[1]
    return hp, wp, (out_hw[0] - 1) * wp + out_hw[1]


def _padded(x, hp, wp, padding):
    """x zero-padded to (N, C, Hp, Wp) in a workspace (x itself if no padding)."""
    if padding[0] == 0 and padding[1] == 0:
        return np.ascontiguousarray(x)
    return padded_phases(x, (1, 1), padding, (1, 1)).reshape(x.shape[0], x.shape[1], hp, wp)


@parallel_kernel
def _shifted_gradient(y, db, dout, out, code, first, wp, ln):
    # g = dout * act'(out) (N, O, OH, OW) -> y (O, N*L) with row pitch Wp, zeros in the
    # Wp - OW pitch columns; db (+)= the sum of g over n, oh, ow. Parallel over o.
    n_, o_, oh_, ow_ = dout.shape
    zero = y.dtype.type(0)
    for o in prange(o_):
        s = zero
        for n in range(n_):
            for r in range(oh_):
                dst = n * ln + r * wp
                for t in range(ow_):
                    v = dout[n, o, r, t]
                    if code != 0:
                        v = through_activation(v, out[n, o, r, t], code)
                    y[o, dst + t] = v
                    s += v
                if r < oh_ - 1:
                    for t in range(ow_, wp):
                        y[o, dst + t] = zero
        if db is not None:
            if first:
                db[o] = s
            else:
                db[o] += s


@compute_kernel
def _dw(part, d, xp, kh, kw, ln, group):
    # d (O, N*L) in the shifted layout, xp (N, C, Hp, Wp) -> part (G, O, C*KH*KW): the dw
    # sums over images [g*group, (g+1)*group), each tap a dot product of two runs of L.
    # NOTE: fixed image groups, summed afterwards in group order: the result does not
    # depend on the thread count.
    n_, c_, hp, wp = xp.shape
    o_ = d.shape[0]
    zero = part.dtype.type(0)
    xf = xp.ravel()
    for g in prange(part.shape[0]):
        pg = part[g]
        pg[:] = 0
        for n in range(g * group, min(n_, (g + 1) * group)):
            e = n * ln
            for c in range(c_):
                for i in range(kh):
                    for j in range(kw):
                        k = (c * kh + i) * kw + j
                        src = (n * c_ + c) * hp * wp + i * wp + j
                        v = xf[src:src + ln]
                        o = 0
                        while o + 4 <= o_:
                            d0, d1 = d[o, e:e + ln], d[o + 1, e:e + ln]
                            d2, d3 = d[o + 2, e:e + ln], d[o + 3, e:e + ln]
                            s0 = s1 = s2 = s3 = zero
                            for q in range(ln):
                                xv = v[q]
                                s0 += d0[q] * xv
                                s1 += d1[q] * xv
                                s2 += d2[q] * xv
                                s3 += d3[q] * xv
                            pg[o, k] += s0
                            pg[o + 1, k] += s1
                            pg[o + 2, k] += s2
                            pg[o + 3, k] += s3
                            o += 4
                        while o < o_:
                            d0 = d[o, e:e + ln]
                            s0 = zero
                            for q in range(ln):
                                s0 += d0[q] * v[q]
                            pg[o, k] += s0
                            o += 1


@compute_kernel
def _dx(dx, d, w, hp, wp, ph, pw, ln):
    # d (O, N*L) in the shifted layout -> dx (N, C, H, W), stride 1: the transpose of
    # the forward conv. Per (image, block of 4 input channels): 4 padded (Hp*Wp) planes,
    # each tap (o, i, j) adds w * the gradient run of output channel o at offset (i, j);
    # then the interior is copied out.
    n_, c_, h, w_ = dx.shape
    o_, _, kh, kw = w.shape
    nblk = (c_ + 3) // 4
    for ncb in prange(n_ * nblk):
        n = ncb // nblk
        c0 = (ncb % nblk) * 4
        cn = min(4, c_ - c0)
        acc = np.zeros((4, hp * wp), dx.dtype)
        a0, a1, a2, a3 = acc[0], acc[1], acc[2], acc[3]
        for o in range(o_):
            v = d[o, n * ln:(n + 1) * ln]
            for i in range(kh):
                for j in range(kw):
                    s = i * wp + j
                    if cn == 4:
                        w0, w1 = w[o, c0, i, j], w[o, c0 + 1, i, j]
                        w2, w3 = w[o, c0 + 2, i, j], w[o, c0 + 3, i, j]
                        b0, b1 = a0[s:s + ln], a1[s:s + ln]
                        b2, b3 = a2[s:s + ln], a3[s:s + ln]
                        for q in range(ln):
                            dv = v[q]
                            b0[q] += w0 * dv
                            b1[q] += w1 * dv
                            b2[q] += w2 * dv
                            b3[q] += w3 * dv
                    else:
                        for u in range(cn):
                            wu = w[o, c0 + u, i, j]
                            bu = acc[u, s:s + ln]
                            for q in range(ln):
                                bu[q] += wu * v[q]
        for u in range(cn):
            a = acc[u]
            for r in range(h):
                for t in range(w_):
                    dx[n, c0 + u, r, t] = a[(r + ph) * wp + pw + t]


def backward(dx, dw, db, dout, x, w, out, padding, code):
    """dx, dw (None: frozen), db (None: no bias) of a stride-1 conv2d_forward of a
    one-channel input."""
    o_, c_, kh, kw = w.shape
    oh, ow = dout.shape[2], dout.shape[3]
    k = c_ * kh * kw
    hp, wp, ln = _stride1_geometry(x, w, (oh, ow), padding)
    xp = _padded(x, hp, wp, padding)
    n_ = x.shape[0]
    d = workspace("y", o_ * n_ * ln, x.dtype).reshape(o_, n_ * ln)
    _shifted_gradient(d, db, dout, dout if out is None else out, code, True, wp, ln)
    if dw is not None:  # (None: a frozen weight)
        groups = -(-n_ // DW_GROUP)
        part = workspace("dw_groups", groups * o_ * k, x.dtype).reshape(groups, o_, k)
        _dw(part, d, xp, kh, kw, ln, DW_GROUP)
        np.sum(part, axis=0, out=dw.reshape(o_, k))
    _dx(dx, d, w, hp, wp, padding[0], padding[1], ln)
