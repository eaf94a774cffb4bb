"""2-D convolution kernels (CPU), NCHW.

``im2col`` / ``col2im`` (public, shared with the CUDA twins): ``cols`` is
(C*KH*KW, N*OH*OW): row k = (c*KH + i)*KW + j, column (n*OH + oh)*OW + ow, holding
x[n, c, oh*sh - ph + i, ow*sw - pw + j] (0 in the padding). conv2d with a stride > 1
uses them: per chunk of images one im2col, one GEMM w (O, C*KH*KW) @ cols through
NumPy's BLAS, and one pass that scatters the (O, nb*OH*OW) result to NCHW adding the bias.

Stride 1 ("shifted planes"): the batch is zero-padded once to xp (N, C, Hp, Wp), and
outputs are laid out with row pitch Wp instead of OW: output (oh, ow) of image n is column
q = oh*Wp + ow of a run of L = (OH-1)*Wp + OW columns (the Wp - OW columns at the end of
each row are junk). Tap (c, i, j) then reads the *contiguous* run xp[n, c].flat[i*Wp + j :
i*Wp + j + L]. Three implementations use this layout:

* The micro-kernels (the default where padding <= KH-1, KW-1): an implicit GEMM with no
  im2col and no BLAS. Forward: per (image, run of NR positions, block of FWD_MR output
  channels) one register-blocked tile (_microkernel.py) that reads the NR-wide run of each
  tap straight from xp, then a row-by-row epilogue (bias, activation, dropping the junk
  columns). dx is the stride-1 conv of the gradient zero-padded by (KH-1-ph, KW-1-pw)
  with the flipped, transposed kernel: the same forward kernel. dw: the gradient is laid
  out channels-last (N, L, O) with zeros in the junk columns, and a tile of (taps x
  output channels) accumulates, over the positions of a fixed group of images, one
  broadcast input value times one vector of gradients per step: no horizontal sums, and
  the groups are summed in order, so dw does not depend on the thread count.
* The direct kernels (C*KH*KW <= ``DIRECT_MAX_K`` where the micro-kernels do not apply,
  and dx of a one-channel input, where a micro-kernel tile would use 1 row of 8):
  _direct_forward accumulates w * run for each tap into 4 output channels at a time,
  _direct_dw takes each tap's dot product of the gradient run with the input run,
  _direct_dx gathers dx directly.
* im2col + GEMM otherwise: im2col copies one run of L per (k, n), col2im adds KH*KW such
  runs into a padded plane per (n, c) and crops it. The junk columns are dropped by the
  scatter to NCHW and are 0 in the gradient, so they add nothing to dw or dx.

The im2col paths run over the batch in chunks of images whose im2col matrix fits in
cache (``CHUNK_BYTES``; the direct and micro-kernels take the whole batch at once).
Backward recomputes each chunk's im2col from x rather than keeping the
whole matrix from forward (which for a 32-channel 3x3 conv on a 128x32x32 batch is 151 MB:
writing and re-reading it cost more than the GEMMs). Chunk buffers are per-thread
workspaces reused across calls. Backward kernels overwrite their outputs; pass ``None``
for an output that is not needed. ``kernel_size``, ``stride`` and ``padding`` are (h, w)
pairs.
"""
import functools
import threading

import numpy as np
from numba import njit, prange

from ._jit import FASTMATH, compute_kernel, parallel_kernel
from ._microkernel import (ACCUMULATORS, DW_MAX_NV, FWD_MR, FWD_NV, VEC_BYTES, dw_tile_0,
                           dw_tile_1, dw_tile_2, dw_tile_3, dw_tile_4, fwd_tile, lanes)
from .activations import ACTIVATIONS, activation_grad, apply_activation

# im2col chunk size: big enough for an efficient GEMM, small enough that the chunk is
# still in cache when the GEMM reads it.
CHUNK_BYTES = 4 << 20
# Stride-1 convs with at most this many inputs per output (C*KH*KW: LeNet's layers, first
# layers) skip im2col in forward and for dw: OpenBLAS is slow on GEMMs with so short an
# inner dimension (forward) or so small an output (dw).
DIRECT_MAX_K = 150
# images per partial dw sum of the direct and micro-kernel dw kernels
DW_GROUP = 8
# Stride-1 convs take the register-blocked micro-kernels (_microkernel.py) when True
# (padding at most KH-1, KW-1; not for dx of a one-channel input); the direct kernels
# (C*KH*KW <= DIRECT_MAX_K) or im2col + BLAS GEMM otherwise (tests run all three)
MICROKERNELS = True
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


# ---------------------------------------------------------------------------------------
# Stride-1 path: "shifted planes" over the padded input.
# ---------------------------------------------------------------------------------------


@parallel_kernel
def _pad(xp, x, ph, pw):
    # x (N, C, H, W) -> xp (N, C, H + 2*ph, W + 2*pw), zeros around
    n_, c_, h, w = x.shape
    hp, wp = xp.shape[2], xp.shape[3]
    zero = xp.dtype.type(0)
    for nc in prange(n_ * c_):
        n = nc // c_
        c = nc % c_
        for r in range(hp):
            ih = r - ph
            if ih < 0 or ih >= h:
                for t in range(wp):
                    xp[n, c, r, t] = zero
                continue
            for t in range(pw):
                xp[n, c, r, t] = zero
            d = xp[n, c, r, pw:pw + w]
            v = x[n, c, ih]
            for t in range(w):
                d[t] = v[t]
            for t in range(pw + w, wp):
                xp[n, c, r, t] = zero


@parallel_kernel
def _im2col_s1(cols, xp, kh, kw, ln):
    # xp (N, C, Hp, Wp) -> cols (C*KH*KW, N*L): row k, image n is one run of L elements
    # starting at xp[n, c, i, j]
    n_, c_, hp, wp = xp.shape
    cf = cols.ravel()
    xf = xp.ravel()
    m = n_ * ln
    for kn in prange(c_ * kh * kw * n_):
        k = kn // n_
        n = kn % n_
        c = k // (kh * kw)
        i = (k // kw) % kh
        j = k % kw
        d = cf[k * m + n * ln:k * m + n * ln + ln]
        src = ((n * c_ + c) * hp + i) * wp + j
        v = xf[src:src + ln]
        for t in range(ln):
            d[t] = v[t]


@parallel_kernel
def _col2im_s1(dx, dxp, cols, kh, kw, ph, pw, ln):
    # NOTE: the junk columns of cols (see the module docstring) must be exactly 0: they
    # land on real positions of the next row. They are, being w^T @ a gradient that is 0
    # there (with an inf or NaN in w, dx is not finite either way).
    # cols (C*KH*KW, N*L) -> dx (N, C, H, W): per (n, c) plane, the KH*KW runs are added
    # into the padded plane dxp[n, c] at offset (i, j) (zero-padding rows/columns of
    # dxp catch the padding), then its interior is copied to dx. dxp may be dx itself
    # when there is no padding.
    n_, c_, h, w = dx.shape
    wp = dxp.shape[3]
    cf = cols.ravel()
    m = n_ * ln
    for nc in prange(n_ * c_):
        n = nc // c_
        c = nc % c_
        pf = dxp[n, c].ravel()
        pf[:] = 0
        for i in range(kh):
            for j in range(kw):
                k = (c * kh + i) * kw + j
                d = pf[i * wp + j:i * wp + j + ln]
                d += cf[k * m + n * ln:k * m + n * ln + ln]
        if ph != 0 or pw != 0:
            for r in range(h):
                d = dx[n, c, r]
                v = dxp[n, c, r + ph, pw:pw + w]
                for t in range(w):
                    d[t] = v[t]


@parallel_kernel
def _ext_to_nchw(out, y, b, code, wp, ln):
    # y (O, N*L) with row pitch Wp -> out (N, O, OH, OW) = act(y + b)
    n_, o_, oh_, ow_ = out.shape
    for no in prange(n_ * o_):
        n = no // o_
        o = no % o_
        for r in range(oh_):
            src = n * ln + r * wp
            for t in range(ow_):
                v = y[o, src + t]
                if b is not None:
                    v += b[o]
                out[n, o, r, t] = apply_activation(v, code)


@parallel_kernel
def _nchw_to_ext(y, db, dout, out, code, first, wp, ln):
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
                        v *= activation_grad(out[n, o, r, t], code)
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
def _direct_forward(out, xp, w, b, code):
    # xp (N, C, Hp, Wp) padded input -> out (N, O, OH, OW) = act(conv + b), stride 1.
    # Per (image, block of 4 output channels): 4 accumulator runs of L = (OH-1)*Wp + OW
    # (row pitch Wp), each tap (c, i, j) adds w * the shifted run xp[n, c] from (i, j).
    n_, c_, hp, wp = xp.shape
    o_, _, kh, kw = w.shape
    oh_, ow_ = out.shape[2], out.shape[3]
    ln = (oh_ - 1) * wp + ow_
    xf = xp.ravel()  # (a reshape would bring a double-precision size check in)
    nblk = (o_ + 3) // 4
    for nob in prange(n_ * nblk):
        n = nob // nblk
        o0 = (nob % nblk) * 4
        on = min(4, o_ - o0)
        acc = np.zeros((4, ln), xp.dtype)
        a0, a1, a2, a3 = acc[0], acc[1], acc[2], acc[3]
        for c in range(c_):
            for i in range(kh):
                for j in range(kw):
                    src = (n * c_ + c) * hp * wp + i * wp + j
                    v = xf[src:src + ln]
                    if on == 4:
                        w0, w1 = w[o0, c, i, j], w[o0 + 1, c, i, j]
                        w2, w3 = w[o0 + 2, c, i, j], w[o0 + 3, c, i, j]
                        for q in range(ln):
                            xv = v[q]
                            a0[q] += w0 * xv
                            a1[q] += w1 * xv
                            a2[q] += w2 * xv
                            a3[q] += w3 * xv
                    else:
                        for u in range(on):
                            wu = w[o0 + u, c, i, j]
                            a = acc[u]
                            for q in range(ln):
                                a[q] += wu * v[q]
        for u in range(on):
            o = o0 + u
            a = acc[u]
            for r in range(oh_):
                for t in range(ow_):
                    v = a[r * wp + t]
                    if b is not None:
                        v += b[o]
                    out[n, o, r, t] = apply_activation(v, code)


@compute_kernel
def _direct_dw(part, d, xp, kh, kw, ln, group):
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
def _direct_dx(dx, d, w, hp, wp, ph, pw, ln):
    # d (O, N*L) in the shifted layout -> dx (N, C, H, W), stride 1: the transpose of
    # _direct_forward. Per (image, block of 4 input channels): 4 padded (Hp*Wp) planes,
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


# ---------------------------------------------------------------------------------------
# Stride-1 path through the register-blocked micro-kernels (_microkernel.py): an implicit
# GEMM over the padded input, no im2col, no col2im, no BLAS.
# ---------------------------------------------------------------------------------------


@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _mk_store(out, tile, b, n, o0, on, nr, q0, q1, wp, code):
    # tile rows (FWD_MR channels x NR positions q0..) -> out[n, o0 + i] = act(tile + b),
    # the valid columns (t < OW) of each output row the run covers
    ow_ = out.shape[3]
    q = q0
    while q < q1:
        r = q // wp
        t = q - r * wp
        e = min(q1 - q, ow_ - t)
        for i in range(on):
            src = tile[i * nr + q - q0:i * nr + q - q0 + max(e, 0)]
            d = out[n, o0 + i, r, t:t + max(e, 0)]
            bo = b[o0 + i] if b is not None else src.dtype.type(0)
            for u in range(src.size):
                d[u] = apply_activation(src[u] + bo, code)
        q = (r + 1) * wp


@compute_kernel
def _mk_forward(out, xf, img, wt, offs, b, code, wp, ln):
    # xf: flat padded input, image n at n*img, tap k of output position q (row pitch wp)
    # at n*img + offs[k] + q; wt (K, Opad) packed weights (zero columns past O) ->
    # out (N, O, OH, OW) = act(conv + b). Per (image, run of NR positions, block of
    # FWD_MR channels) one micro-kernel tile, then the valid columns go out row by row.
    n_, o_, oh_, ow_ = out.shape
    opad = wt.shape[1]
    nr = FWD_NV * (VEC_BYTES // xf.itemsize)
    nq = (ln + nr - 1) // nr
    zero = xf.dtype.type(0)
    for n in prange(n_):
        tile = np.empty(FWD_MR * nr, xf.dtype)
        for qt in range(nq):
            q0 = qt * nr
            q1 = min(q0 + nr, ln)
            for o0 in range(0, o_, FWD_MR):
                tile[:] = zero
                fwd_tile(tile, wt, xf, offs, o0, opad, n * img + q0)
                on = min(FWD_MR, o_ - o0)
                # NOTE: the activation as a constant in each branch, so that the copy
                # loops vectorise (a runtime switch inside them kept them scalar)
                if code == 0:
                    _mk_store(out, tile, b, n, o0, on, nr, q0, q1, wp, 0)
                elif code == 1:
                    _mk_store(out, tile, b, n, o0, on, nr, q0, q1, wp, 1)
                else:
                    _mk_store(out, tile, b, n, o0, on, nr, q0, q1, wp, code)


@parallel_kernel
def _mk_grad_layouts(gp, gt, dbp, dout, out, code, ph2, pw2, wp):
    # g = dout * act'(out) (N, O, OH, OW) in the two layouts the backward micro-kernels
    # read: gp (N, O, Hq, Wq), zero-padded by (ph2, pw2), for dx (None when dx is not
    # wanted); gt (N, L, Opad) channels-last with row pitch wp and zeros in the junk and
    # padding columns, for dw. dbp (N, O): per-image sums (None without bias).
    # NOTE: per image, g is first computed plane by plane (reading a row of every
    # channel in turn instead thrashed L1: the planes of a 32x32 image are exactly 4 KiB
    # apart) into a scratch laid out (OH, O, OW), whose rows of all channels are close
    # together for the transposition, then copied out of cache into both layouts.
    n_, o_, oh_, ow_ = dout.shape
    zero = gt.dtype.type(0)
    for n in prange(n_):
        gs = np.empty((oh_, o_, ow_), gt.dtype)
        for o in range(o_):
            s = zero
            for r in range(oh_):
                for t in range(ow_):
                    v = dout[n, o, r, t]
                    if code != 0:
                        v *= activation_grad(out[n, o, r, t], code)
                    gs[r, o, t] = v
                    s += v
            if dbp is not None:
                dbp[n, o] = s
        # NOTE: inner loops from 0 over views: with an index like r * wp + t LLVM cannot
        # prove it non-negative and keeps Numba's wraparound check in the loop
        gt[n] = zero
        for r in range(oh_):
            for t in range(ow_):
                dst = gt[n, r * wp + t]
                for o in range(o_):
                    dst[o] = gs[r, o, t]
        if gp is not None:
            gp[n] = zero
            for o in range(o_):
                for r in range(oh_):
                    dst = gp[n, o, r + ph2, pw2:pw2 + ow_]
                    src = gs[r, o]
                    for t in range(ow_):
                        dst[t] = src[t]


@compute_kernel
def _mk_dw(part, gt, xf, img, offs, ln, group, nv):
    # gt (N, L, Opad) channels-last gradient, xf flat padded input (tap k of position q of
    # image n at n*img + offs[k] + q), offs padded to a whole number of tiles ->
    # part (G, Opad / (nv*W), Kpad, nv*W): group g's sum over its images of
    # gt[n, q, o] * x[tap k, q] over q, per block of nv*W output channels.
    # NOTE: fixed image groups (summed afterwards in group order), each group one task
    # that owns its slice of part: race-free, and independent of the thread count.
    g_, nob, kpad, ncols = part.shape
    n_ = gt.shape[0]
    opad = gt.shape[2]
    mr = ACCUMULATORS // max(nv, 1)
    gf = gt.ravel()
    zero = part.dtype.type(0)
    for g in prange(g_):
        pg = part[g]
        pg[:] = zero
        for n in range(g * group, min(n_, (g + 1) * group)):
            for ob in range(nob):
                blk = pg[ob].ravel()
                for k0 in range(0, kpad, mr):
                    tile = blk[k0 * ncols:(k0 + mr) * ncols]
                    a = offs[k0:k0 + mr]
                    gb = n * ln * opad + ob * ncols
                    if nv == 0:
                        dw_tile_0(tile, xf, gf, a, n * img, gb, opad, ln)
                    elif nv == 1:
                        dw_tile_1(tile, xf, gf, a, n * img, gb, opad, ln)
                    elif nv == 2:
                        dw_tile_2(tile, xf, gf, a, n * img, gb, opad, ln)
                    elif nv == 3:
                        dw_tile_3(tile, xf, gf, a, n * img, gb, opad, ln)
                    else:
                        dw_tile_4(tile, xf, gf, a, n * img, gb, opad, ln)


@functools.lru_cache(maxsize=256)
def _tap_offsets(c_, kh, kw, plane, wp, pad_to=1):
    """Offset of tap (c, i, j) from an output position in a padded image: c*plane +
    i*Wp + j, for k = (c*KH + i)*KW + j; padded with copies of the last offset to a
    multiple of ``pad_to`` taps. Cached per geometry (read-only)."""
    c = np.arange(c_, dtype=np.intp)[:, None, None] * plane
    i = np.arange(kh, dtype=np.intp)[None, :, None] * wp
    j = np.arange(kw, dtype=np.intp)[None, None, :]
    offs = (c + i + j).ravel()
    k = offs.size
    offs = np.concatenate([offs, np.full(-(-k // pad_to) * pad_to - k, offs[-1], np.intp)])
    offs.flags.writeable = False
    return offs


def _padded_flat(x, ph, pw, slack=0):
    """x (N, C, H, W) zero-padded to (N, C, H + 2*ph, W + 2*pw) in a workspace, returned
    flat and followed by ``slack`` zeros that the last partial micro-kernel tile may
    read. The whole batch at once: one parallel pass rather than one per chunk."""
    n_, c_, h, w = x.shape
    hp, wp = h + 2 * ph, w + 2 * pw
    size = n_ * c_ * hp * wp
    flat = workspace("xp", size + slack, x.dtype)
    flat[size:] = 0
    _pad(flat[:size].reshape(n_, c_, hp, wp), np.ascontiguousarray(x), ph, pw)
    return flat


def _mk_slack(dtype):
    return FWD_NV * lanes(np.dtype(dtype).itemsize)


def _mk_pack(wmat, mult):
    """(K, O) -> (K, O rounded up to ``mult``), zeros in the extra columns."""
    k, o = wmat.shape
    packed = np.zeros((k, -(-o // mult) * mult), wmat.dtype)
    packed[:, :o] = wmat
    return packed


def _mk_conv2d_forward(out, x, w, b, padding, code):
    o_, c_, kh, kw = w.shape
    oh, ow = out.shape[2], out.shape[3]
    hp, wp = x.shape[2] + 2 * padding[0], x.shape[3] + 2 * padding[1]
    xf = _padded_flat(x, padding[0], padding[1], _mk_slack(x.dtype))
    wt = _mk_pack(w.reshape(o_, c_ * kh * kw).T, FWD_MR)
    offs = _tap_offsets(c_, kh, kw, hp * wp, wp)
    _mk_forward(out, xf, c_ * hp * wp, wt, offs, b, code, wp, (oh - 1) * wp + ow)


def _mk_conv2d_backward(dx, dw, db, dout, x, w, out, padding, code):
    o_, c_, kh, kw = w.shape
    n_, _, oh, ow = dout.shape
    k = c_ * kh * kw
    ph, pw = padding
    hp, wp = x.shape[2] + 2 * ph, x.shape[3] + 2 * pw
    ln = (oh - 1) * wp + ow
    dt = x.dtype
    lanes_ = lanes(dt.itemsize)
    # dw: output channels in vectors of W (nv of them per tile), taps mr at a time; a
    # layer with at most W/2 output channels (LeNet's first) in one half-width vector
    nv = min(DW_MAX_NV, -(-o_ // lanes_))
    ncols = nv * lanes_
    if 2 * o_ <= lanes_:
        nv, ncols = 0, lanes_ // 2
    opad = -(-o_ // ncols) * ncols
    mr = ACCUMULATORS // max(nv, 1)
    gt = workspace("gt", n_ * ln * opad, dt).reshape(n_, ln, opad)
    # dx is the stride-1 conv of g padded by (KH-1-ph, KW-1-pw) with the flipped,
    # transposed kernel: the forward micro-kernel computes it
    ph2, pw2 = kh - 1 - ph, kw - 1 - pw
    hq, wq = oh + 2 * ph2, ow + 2 * pw2
    gp = gpf = None
    if dx is not None:
        size = n_ * o_ * hq * wq
        gpf = workspace("gp", size + _mk_slack(dt), dt)
        gpf[size:] = 0
        gp = gpf[:size].reshape(n_, o_, hq, wq)
    dbp = None if db is None else workspace("dbp", n_ * o_, dt).reshape(n_, o_)
    _mk_grad_layouts(gp, gt, dbp, dout, dout if out is None else out, code, ph2, pw2, wp)
    if db is not None:
        np.sum(dbp, axis=0, out=db)

    xf = _padded_flat(x, ph, pw)
    offs = _tap_offsets(c_, kh, kw, hp * wp, wp, mr)
    kpad = offs.size
    groups = -(-n_ // DW_GROUP)
    part = workspace("dw_groups", groups * opad * kpad, dt).reshape(
        groups, opad // ncols, kpad, ncols)
    _mk_dw(part, gt, xf, c_ * hp * wp, offs, ln, DW_GROUP, nv)
    # part (G, blocks, Kpad, ncols) -> dw (O, K)
    total = part.sum(axis=0)
    dw.reshape(o_, k)[...] = total.transpose(0, 2, 1).reshape(opad, kpad)[:o_, :k]

    if dx is not None:
        wt = _mk_pack(w[:, :, ::-1, ::-1].transpose(0, 2, 3, 1).reshape(o_ * kh * kw, c_),
                      FWD_MR)
        offs2 = _tap_offsets(o_, kh, kw, hq * wq, wq)
        _mk_forward(dx, gpf, o_ * hq * wq, wt, offs2, None, 0, wq,
                    (x.shape[2] - 1) * wq + x.shape[3])


def _chunks(x, w_shape, out_hw, run=None):
    """Image ranges [n0, n1) whose im2col matrices fit in CHUNK_BYTES (at least one image);
    ``run``: columns per image (OH*OW unless given)."""
    n = x.shape[0]
    k = w_shape[1] * w_shape[2] * w_shape[3]
    per_image = k * (out_hw[0] * out_hw[1] if run is None else run) * x.itemsize
    nb = max(1, min(n, CHUNK_BYTES // max(per_image, 1)))
    return [(n0, min(n0 + nb, n)) for n0 in range(0, n, nb)], nb


def _stride1_geometry(x, w, out_hw, padding):
    """(Hp, Wp, L) of the shifted-plane layout: padded input size and columns per image."""
    hp, wp = x.shape[2] + 2 * padding[0], x.shape[3] + 2 * padding[1]
    return hp, wp, (out_hw[0] - 1) * wp + out_hw[1]


def _padded(x, hp, wp, padding):
    """x zero-padded to (N, C, Hp, Wp) in a workspace (x itself if no padding)."""
    if padding[0] == 0 and padding[1] == 0:
        return np.ascontiguousarray(x)
    return _padded_flat(x, padding[0], padding[1]).reshape(x.shape[0], x.shape[1], hp, wp)


def _direct(stride, w_shape):
    """Whether a conv takes the direct kernels (forward, dw): stride 1 and
    C*KH*KW <= DIRECT_MAX_K."""
    return (stride[0] == 1 and stride[1] == 1
            and w_shape[1] * w_shape[2] * w_shape[3] <= DIRECT_MAX_K)


def _blocked(stride, padding, w_shape):
    """Whether a conv takes the micro-kernel path: stride 1 and padding at most KH-1 /
    KW-1 (so that dx is a stride-1 conv of the padded gradient)."""
    return (MICROKERNELS and stride[0] == 1 and stride[1] == 1
            and padding[0] <= w_shape[2] - 1 and padding[1] <= w_shape[3] - 1)


def conv2d_forward(out, x, w, b, stride, padding, activation=None):
    """x (N, C, H, W), w (O, C, KH, KW), b (O,) | None -> out (N, O, OH, OW)
    = act(conv(x, w) + b); ``activation`` as for dense (None, "relu", ...)."""
    o_, c_, kh, kw = w.shape
    oh, ow = out.shape[2], out.shape[3]
    k = c_ * kh * kw
    code = ACTIVATIONS[activation]
    if _blocked(stride, padding, w.shape):
        _mk_conv2d_forward(out, x, w, b, padding, code)
        return
    w2 = w.reshape(o_, k)
    stride1 = stride[0] == 1 and stride[1] == 1
    direct = _direct(stride, w.shape)
    if stride1:
        hp, wp, ln = _stride1_geometry(x, w, (oh, ow), padding)
    else:
        ln = oh * ow
    # the direct kernels keep no im2col matrix: one chunk, fewer parallel passes
    chunks, nb = ([(0, x.shape[0])], x.shape[0]) if direct else _chunks(x, w.shape, (oh, ow), ln)
    if stride1:
        xp = _padded(x, hp, wp, padding)
    if not direct:
        cols_buf = workspace("cols", k * nb * ln, x.dtype)
        y_buf = workspace("y", o_ * nb * ln, x.dtype)
    for n0, n1 in chunks:
        if direct:
            _direct_forward(out[n0:n1], xp[n0:n1], w, b, code)
            continue
        m = (n1 - n0) * ln
        cols = cols_buf[:k * m].reshape(k, m)
        y = y_buf[:o_ * m].reshape(o_, m)
        if stride1:
            _im2col_s1(cols, xp[n0:n1], kh, kw, ln)
            np.matmul(w2, cols, out=y)
            _ext_to_nchw(out[n0:n1], y, b, code, wp, ln)
        else:
            im2col(cols, x[n0:n1], (kh, kw), stride, padding)
            np.matmul(w2, cols, out=y)
            _gemm_to_nchw(out[n0:n1].reshape(n1 - n0, o_, ln), y, b, code)


def conv2d_backward(dx, dw, db, dout, x, w, out, stride, padding, activation=None):
    """dout (N, O, OH, OW), x (N, C, H, W), w (O, C, KH, KW), out (the forward output;
    None without activation) -> dx (N, C, H, W) | None, dw (O, C, KH, KW), db (O,) | None"""
    o_, c_, kh, kw = w.shape
    code = ACTIVATIONS[activation]
    # NOTE: dx of a one-channel input would use 1 of the micro-kernel's 8 tile rows; the
    # direct kernel is 1.4x faster there (LeNet's first layer needs no dx at all).
    if _blocked(stride, padding, w.shape) and (dx is None or c_ > 1):
        _mk_conv2d_backward(dx, dw, db, dout, x, w, out, padding, code)
        return
    oh, ow = dout.shape[2], dout.shape[3]
    k = c_ * kh * kw
    w2 = w.reshape(o_, k)
    dw2 = dw.reshape(o_, k)
    stride1 = stride[0] == 1 and stride[1] == 1
    direct = _direct(stride, w.shape)
    # NOTE: the direct dx kernel beats GEMM + col2im only for one input channel (1.6x on
    # 1->6 5x5); from 6 channels on it is ~10% slower, so those take the GEMM path.
    direct_dx = direct and c_ == 1
    padded = padding[0] != 0 or padding[1] != 0
    if stride1:
        hp, wp, ln = _stride1_geometry(x, w, (oh, ow), padding)
    else:
        ln = oh * ow
    # the direct kernels keep no im2col matrix: one chunk, fewer parallel passes
    chunks, nb = ([(0, x.shape[0])], x.shape[0]) if direct else _chunks(x, w.shape, (oh, ow), ln)
    if stride1:
        xp = _padded(x, hp, wp, padding)
    d_buf = workspace("y", o_ * nb * ln, x.dtype)
    if direct:
        groups = -(-nb // DW_GROUP)
        dw_groups = workspace("dw_groups", groups * o_ * k, x.dtype)
    else:
        cols_buf = workspace("cols", k * nb * ln, x.dtype)
    dcols_buf = workspace("dcols", k * nb * ln, x.dtype) if dx is not None and not direct_dx else None
    dw_part = workspace("dw", o_ * k, x.dtype).reshape(o_, k) if len(chunks) > 1 else None
    dxp_buf = workspace("dxp", nb * c_ * hp * wp, x.dtype) if (
        stride1 and dx is not None and padded and not direct_dx) else None
    for i, (n0, n1) in enumerate(chunks):
        m = (n1 - n0) * ln
        d = d_buf[:o_ * m].reshape(o_, m)
        outc = dout[n0:n1] if out is None else out[n0:n1]
        target = dw2 if i == 0 else dw_part
        if stride1:
            _nchw_to_ext(d, db, dout[n0:n1], outc, code, i == 0, wp, ln)
            if direct:
                g = -(-(n1 - n0) // DW_GROUP)
                part = dw_groups[:g * o_ * k].reshape(g, o_, k)
                _direct_dw(part, d, xp[n0:n1], kh, kw, ln, DW_GROUP)
                np.sum(part, axis=0, out=target)
            else:
                cols = cols_buf[:k * m].reshape(k, m)
                _im2col_s1(cols, xp[n0:n1], kh, kw, ln)
                np.matmul(d, cols.T, out=target)
        else:
            dout3 = dout[n0:n1].reshape(n1 - n0, o_, ln)
            _nchw_to_gemm(d, db, dout3, outc.reshape(n1 - n0, o_, ln), code, i == 0)
            cols = cols_buf[:k * m].reshape(k, m)
            im2col(cols, x[n0:n1], (kh, kw), stride, padding)
            np.matmul(d, cols.T, out=target)
        if i > 0:
            dw2 += dw_part
        if dx is not None and direct_dx:
            _direct_dx(dx[n0:n1], d, w, hp, wp, padding[0], padding[1], ln)
        elif dx is not None:
            dcols = dcols_buf[:k * m].reshape(k, m)
            np.matmul(w2.T, d, out=dcols)
            if stride1:
                dxc = dx[n0:n1]
                dxp = dxc if not padded else dxp_buf[:(n1 - n0) * c_ * hp * wp].reshape(
                    n1 - n0, c_, hp, wp)
                _col2im_s1(dxc, dxp, dcols, kh, kw, padding[0], padding[1], ln)
            else:
                col2im(dx[n0:n1], dcols, (kh, kw), stride, padding)
