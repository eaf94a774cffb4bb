"""2-D convolution kernels (CPU), NCHW.

``im2col`` / ``col2im`` (public, shared with the CUDA twins): ``cols`` is
(C*KH*KW, N*OH*OW): row k = (c*KH + i)*KW + j, column (n*OH + oh)*OW + ow, holding
x[n, c, oh*sh - ph + i, ow*sw - pw + j] (0 in the padding).

The micro-kernel path (the default, any stride and padding): an implicit GEMM with no
im2col, no col2im and no BLAS, on the register-blocked tiles of _microkernel.py.

* The batch is zero-padded once and split into its stride phases (``_pad``): phase
  (a, b) of channel c is the plane xp[n, c, a::SH, b::SW] (Hq x Wq; stride 1: one phase,
  the padded input itself). Output (oh, ow) is column q = oh*Wq + ow of a run of
  L = (OH-1)*Wq + OW columns (the Wq - OW columns at the end of each row are junk), and
  tap (c, i, j) of every output position reads the *contiguous* run that starts at
  ``_tap_offsets``[k] + q: the plane of phase (i % SH, j % SW), row i // SH, column
  j // SW. Forward: per (image, run of NR positions, block of MR output channels) one
  tile, then a row-by-row epilogue (bias, activation, dropping the junk columns).
* dx: per stride phase of the input, a stride-1 conv of the zero-padded gradient with
  the flipped, transposed kernel taps that land on that phase (``_dx_plan``; stride 1:
  one phase, the whole kernel), through the forward kernel (``_mk_conv``), which writes
  each phase's outputs to dx[:, :, y0::SH, x0::SW].
* dw: the gradient is laid out channels-last (N, L, O) with zeros in the junk columns,
  and a tile of (taps x output channels) accumulates, over the positions of a fixed
  group of images, one broadcast input value times one vector of gradients per step: no
  horizontal sums, and the groups are summed in order, so dw does not depend on the
  thread count. With AVX-512 and at most 8 output channels, dw is instead dot products
  over positions (``_mk_dw_dot``): whole vectors of 16 positions of the gradient planes
  (N, O, Lp; zeros in the junk columns and up to Lp, L rounded up to 16) times the input
  run of each tap.
* Contract for non-finite input: the junk columns (and, in the dot-product dw, the
  positions up to Lp) multiply input values that no output reads by a zero gradient, so
  an inf or NaN anywhere in x can make dw NaN even where the exact result is finite.

The other paths (with ``MICROKERNELS`` off, and for dx of a one-channel input at
stride 1, where a micro-kernel tile would use 1 of its rows): at stride 1 the
"shifted planes" layout above, either through the direct kernels
(C*KH*KW <= ``DIRECT_MAX_K``: _direct_forward accumulates w * run for each tap into 4
output channels at a time, _direct_dw takes each tap's dot product of the gradient run
with the input run, _direct_dx gathers dx directly) or through im2col + GEMM (im2col
copies one run of L per (k, n), col2im adds KH*KW such runs into a padded plane per
(n, c) and crops it); other strides through im2col, one GEMM w (O, C*KH*KW) @ cols
through NumPy's BLAS, and one pass that scatters the result to NCHW adding the bias.
These run over the batch in chunks of images whose im2col matrix fits in cache
(``CHUNK_BYTES``), and backward recomputes each chunk's im2col from x rather than
keeping the whole matrix from forward. Workspaces are per-thread buffers reused across
calls. Backward kernels overwrite their outputs; pass ``None`` for an output that is not
needed. ``kernel_size``, ``stride`` and ``padding`` are (h, w) pairs.
"""
import functools
import threading

import numpy as np
from numba import njit, prange

from ._jit import FASTMATH, compute_family, compute_kernel, parallel_family, parallel_kernel
from ._microkernel import (ACCUMULATORS, DOT_MOS, DOT_MT, DW_MAX_NV, DW_TAIL_MRS,
                           FWD_TILE_COST, FWD_TILE_MRS, VEC_BYTES, dot_tile_1, dot_tile_2,
                           dot_tile_4, dot_tile_6, dot_tile_8, dw_tail_0, dw_tail_1, dw_tail_2, dw_tail_3, dw_tail_h0,
                           dw_tail_h1, dw_tail_h2, dw_tail_h3, dw_tile_0,
                           dw_tile_1, dw_tile_2, dw_tile_3, dw_tile_4, fwd_tile_0, fwd_tile_1,
                           fwd_tile_2, fwd_tile_3, fwd_tile_4, lanes)
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
# Convs take the register-blocked micro-kernels (_microkernel.py) when True (any stride
# and padding; not for dx of a one-channel input at stride 1); the direct kernels
# (stride 1, C*KH*KW <= DIRECT_MAX_K) or im2col + BLAS GEMM otherwise (tests run all
# three)
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
def _pad(xs, x, sh, sw, ph, pw, pb):
    # x (N, C, H, W) -> xs (N, C, PA*PB, Hq, Wq), its zero-padded planes split into the
    # stride phases a < PA, b < PB (those a kernel tap lands on: PA = min(SH, KH)):
    # xs[n, c, a*PB + b, i, j] = x[n, c, SH*i + a - ph, SW*j + b - pw], 0 outside x.
    # Stride 1: one phase, the plain zero-padded input.
    # NOTE: flat unsigned indices: a signed index keeps Numba's wraparound check (and a
    # view per row costs more than the copy on small planes), and the strided gather of
    # a stride-2 conv ran 3x slower through views.
    n_, c_, h, w = x.shape
    p_, hq, wq = xs.shape[2], xs.shape[3], xs.shape[4]
    zero = xs.dtype.type(0)
    xf = x.ravel()
    xsf = xs.ravel()
    swu = np.uint64(sw)
    for nc in prange(n_ * c_):
        for p in range(p_):
            a = p // pb
            b = p - a * pb
            # rows i and columns j that land inside x: [ilo, ihi) x [jlo, jhi)
            ilo = (ph - a + sh - 1) // sh if ph > a else 0
            ihi = min(hq, (h - 1 + ph - a) // sh + 1) if h - 1 + ph - a >= 0 else 0
            jlo = (pw - b + sw - 1) // sw if pw > b else 0
            jhi = min(wq, (w - 1 + pw - b) // sw + 1) if w - 1 + pw - b >= 0 else 0
            cnt = max(jhi - jlo, 0)
            for i in range(hq):
                d0 = np.uint64(((nc * p_ + p) * hq + i) * wq)
                if i < ilo or i >= ihi or cnt == 0:
                    for t in range(wq):
                        xsf[d0 + np.uint64(t)] = zero
                    continue
                for t in range(jlo):
                    xsf[d0 + np.uint64(t)] = zero
                for t in range(jhi, wq):
                    xsf[d0 + np.uint64(t)] = zero
                d0 += np.uint64(jlo)
                s0 = np.uint64((nc * h + sh * i + a - ph) * w + sw * jlo + b - pw)
                if sw == 1:
                    for t in range(cnt):
                        xsf[d0 + np.uint64(t)] = xf[s0 + np.uint64(t)]
                else:
                    for t in range(cnt):
                        xsf[d0 + np.uint64(t)] = xf[s0 + swu * np.uint64(t)]


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
# The micro-kernel path (_microkernel.py): an implicit GEMM over the phase-split padded
# input, no im2col, no col2im, no BLAS.
# ---------------------------------------------------------------------------------------


@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _mk_store(out, tile, b, n, o0, on, nr, q0, q1, wp, code):
    # tile rows (``on`` channels x NR positions q0..) -> out[n, o0 + i] = act(tile + b),
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


@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _mk_tile(ti, tile, wf, xf, tab, abase, astep, bbase):
    # the table tile of index ti (MR = FWD_TILE_MRS[ti]), each a compile-time constant
    if ti == 0:
        fwd_tile_0(tile, wf, xf, tab, abase, astep, bbase)
    elif ti == 1:
        fwd_tile_1(tile, wf, xf, tab, abase, astep, bbase)
    elif ti == 2:
        fwd_tile_2(tile, wf, xf, tab, abase, astep, bbase)
    elif ti == 3:
        fwd_tile_3(tile, wf, xf, tab, abase, astep, bbase)
    else:
        fwd_tile_4(tile, wf, xf, tab, abase, astep, bbase)


@compute_family
def _mk_conv(ti, code, strided):
    """The forward kernel for tile ti, activation ``code`` and (``strided``) the phases
    of a strided dx: ``_mk_conv[ti, code, strided](out, xf, img, wt, offs, phases, b, sh,
    sw, wp)``."""
    def kernel(out, xf, img, wt, offs, phases, b, sh, sw, wp):
        # An implicit GEMM over xf, the flat (padded) input: image n at n*img, tap k of
        # output position q (row pitch wp) at n*img + offs[k] + q; wt (K, Opad) packed
        # weights (zero columns past O). out (N, O, ., .) = act(conv + b), in phases p
        # (rows of phases: y0, x0, HV, WV, k0, k1): phase p's outputs are
        # out[:, :, y0::sh, x0::sw] (HV x WV of them), summed over taps k0 <= k < k1. The
        # forward is one phase (0, 0, OH, OW, 0, K) with sh = sw = 1; dx of a strided
        # conv is one phase per stride phase of the input. Per (image, phase, run of NR
        # positions, block of MR channels) one micro-kernel tile of index ti, then the
        # valid columns go out row by row.
        n_, o_ = out.shape[0], out.shape[1]
        opad = wt.shape[1]
        mr = FWD_TILE_MRS[ti]
        nr = (ACCUMULATORS // mr) * (VEC_BYTES // xf.itemsize)
        wf = wt.ravel()
        zero = xf.dtype.type(0)
        for n in prange(n_):
            tile = np.empty(mr * nr, xf.dtype)
            for p in range(phases.shape[0]):
                y0, x0, hv, wv, k0, k1 = phases[p, 0], phases[p, 1], phases[p, 2], phases[p, 3], phases[p, 4], phases[p, 5]
                if hv <= 0 or wv <= 0:
                    continue
                ln = (hv - 1) * wp + wv
                tab = offs[k0:k1]
                for q0 in range(0, ln, nr):
                    q1 = min(q0 + nr, ln)
                    for o0 in range(0, o_, mr):
                        tile[:] = zero
                        _mk_tile(ti, tile, wf, xf, tab, k0 * opad + o0, opad, n * img + q0)
                        on = min(mr, o_ - o0)
                        if strided:
                            _mk_store(out[:, :, y0::sh, x0::sw], tile, b, n, o0, on, nr, q0, q1, wp, code)
                        else:
                            _mk_store(out, tile, b, n, o0, on, nr, q0, q1, wp, code)
    return kernel


@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _grad_planes(gs, dbp, dout, out, n, code):
    # gs[r, o, t] = dout[n, o, r, t] * act'(out[n, o, r, t]); dbp[n, o] = its sum
    o_, oh_, ow_ = dout.shape[1], dout.shape[2], dout.shape[3]
    for o in range(o_):
        s = gs.dtype.type(0)
        for r in range(oh_):
            d = gs[r, o]
            g = dout[n, o, r]
            y = out[n, o, r]
            for t in range(ow_):
                v = g[t]
                if code != 0:
                    v *= activation_grad(y[t], code)
                d[t] = v
                s += v
        if dbp is not None:
            dbp[n, o] = s


@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _channels_last(gtf, gsf, n, ln, wp, oh_, ow_, opad):
    # image n's gradient gs (OH, Opad, OW), flat in gsf -> gt[n] (L, Opad) flat in gtf:
    # position (r, t) at r*wp + t, zeros in the junk columns between rows
    u = np.uint64
    zero = gtf.dtype.type(0)
    for r in range(oh_):
        for t in range(ow_):
            d = u((n * ln + r * wp + t) * opad)
            src = u(r * opad * ow_ + t)
            for o in range(opad):
                gtf[d + u(o)] = gsf[src + u(o * ow_)]
        if r < oh_ - 1:  # the junk columns of the row
            d = u((n * ln + r * wp + ow_) * opad)
            for k in range((wp - ow_) * opad):
                gtf[d + u(k)] = zero


@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _grad_planar(gtf, dbp, dout, out, n, code, opad, lp, wp):
    # gt[n] (Opad, Lp) flat in gtf: g = dout * act'(out) of each channel at r*wp + t,
    # zeros in the junk columns, past L and in the padding channels; dbp[n, o] its sum
    o_, oh_, ow_ = dout.shape[1], dout.shape[2], dout.shape[3]
    u = np.uint64
    zero = gtf.dtype.type(0)
    for o in range(opad):
        d = u((n * opad + o) * lp)
        if o < o_:
            s = zero
            for r in range(oh_):
                g = dout[n, o, r]
                y = out[n, o, r]
                d2 = d + u(r * wp)
                for t in range(ow_):
                    v = g[t]
                    if code != 0:
                        v *= activation_grad(y[t], code)
                    gtf[d2 + u(t)] = v
                    s += v
                end = (r + 1) * wp if r < oh_ - 1 else lp
                for k in range(r * wp + ow_, end):
                    gtf[d + u(k)] = zero
            if dbp is not None:
                dbp[n, o] = s
        else:
            for k in range(lp):
                gtf[d + u(k)] = zero


@parallel_family
def _mk_grad_layouts(planar, code):
    """``_mk_grad_layouts[planar, code](gp, gt, dbp, dout, out, ph2, pw2, wp)``: the
    gradient layouts of the backward kernels for one layout and activation ``code``."""
    def kernel(gp, gt, dbp, dout, out, ph2, pw2, wp):
        # g = dout * act'(out) (N, O, OH, OW) in the two layouts the backward micro-kernels
        # read: gp (N, O, Hg, Wg), zero-padded with g at [ph2:, pw2:], for dx (None when dx
        # is not wanted); gt (N, L, Opad) channels-last with row pitch wp and zeros in the
        # junk and padding columns, for dw; or, with ``planar``, gt (N, Opad, Lp): each
        # channel's positions at row pitch wp, zeros in the junk columns, past L and in the
        # padding channels (the dot-product dw). dbp (N, O): per-image sums (None without
        # bias).
        # NOTE: per image, g is first computed plane by plane (reading a row of every
        # channel in turn instead thrashed L1: the planes of a 32x32 image are exactly 4
        # KiB apart) into a scratch laid out (OH, Opad, OW), whose rows of all channels are
        # close together for the transposition, then copied out of cache into both
        # layouts, with flat unsigned indices (a signed index keeps Numba's wraparound
        # check, and a view per row cost more than the copy on small planes). The planar
        # layout is written directly, with no scratch, and gp copied from it.
        n_, o_, oh_, ow_ = dout.shape
        if planar:
            opad, ln = gt.shape[1], gt.shape[2]
        else:
            ln, opad = gt.shape[1], gt.shape[2]
        zero = gt.dtype.type(0)
        gtf = gt.ravel()
        u = np.uint64
        for n in prange(n_):
            if planar:
                _grad_planar(gtf, dbp, dout, out, n, code, opad, ln, wp)
                srcf = gtf  # where gp's rows come from: gt itself
            else:
                gs = np.empty((oh_, opad, ow_), gt.dtype)
                for r in range(oh_):  # the padding channels: zeros in the channels-last copy
                    for o in range(o_, opad):
                        pad = gs[r, o]
                        for t in range(ow_):
                            pad[t] = zero
                _grad_planes(gs, dbp, dout, out, n, code)
                srcf = gs.ravel()
                # the channel count as a constant for one-vector layouts (LeNet's 6 and 16
                # channels): the copy of a position's channels unrolls into one vector store
                if opad == 8:
                    _channels_last(gtf, srcf, n, ln, wp, oh_, ow_, 8)
                elif opad == 16:
                    _channels_last(gtf, srcf, n, ln, wp, oh_, ow_, 16)
                else:
                    _channels_last(gtf, srcf, n, ln, wp, oh_, ow_, opad)
            if gp is not None:
                hg, wg = gp.shape[2], gp.shape[3]
                gpf = gp.ravel()
                for o in range(o_):
                    d = u((n * o_ + o) * hg * wg)
                    for k in range(ph2 * wg + pw2):
                        gpf[d + u(k)] = zero
                    for r in range(oh_):
                        d2 = d + u((ph2 + r) * wg + pw2)
                        if planar:
                            src = u((n * opad + o) * ln + r * wp)
                        else:
                            src = u((r * opad + o) * ow_)
                        for t in range(ow_):
                            gpf[d2 + u(t)] = srcf[src + u(t)]
                        # the rest of this row and the start of the next, up to its data
                        e = (ph2 + r + 1) * wg + pw2 if r < oh_ - 1 else hg * wg
                        for k in range((ph2 + r) * wg + pw2 + ow_, e):
                            gpf[d + u(k)] = zero
    return kernel


@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _dw_tail(tile, xf, gf, a, xb, gb, opad, ln, half, rem):
    # the last rem taps (rem < ACCUMULATORS) of a one-vector dw tile on the smallest tail
    # tile that covers them (its rows past rem repeat the last tap: computed, never read)
    if half:
        if rem <= DW_TAIL_MRS[3]:
            dw_tail_h3(tile, xf, gf, a, xb, gb, opad, ln)
        elif rem <= DW_TAIL_MRS[2]:
            dw_tail_h2(tile, xf, gf, a, xb, gb, opad, ln)
        elif rem <= DW_TAIL_MRS[1]:
            dw_tail_h1(tile, xf, gf, a, xb, gb, opad, ln)
        elif rem <= DW_TAIL_MRS[0]:
            dw_tail_h0(tile, xf, gf, a, xb, gb, opad, ln)
        else:
            dw_tile_0(tile, xf, gf, a, xb, gb, opad, ln)
    else:
        if rem <= DW_TAIL_MRS[3]:
            dw_tail_3(tile, xf, gf, a, xb, gb, opad, ln)
        elif rem <= DW_TAIL_MRS[2]:
            dw_tail_2(tile, xf, gf, a, xb, gb, opad, ln)
        elif rem <= DW_TAIL_MRS[1]:
            dw_tail_1(tile, xf, gf, a, xb, gb, opad, ln)
        elif rem <= DW_TAIL_MRS[0]:
            dw_tail_0(tile, xf, gf, a, xb, gb, opad, ln)
        else:
            dw_tile_1(tile, xf, gf, a, xb, gb, opad, ln)


@compute_family
def _mk_dw(nv):
    """``_mk_dw[nv](part, gt, xf, img, offs, ln, group, k)``: dw on tiles of nv channel
    vectors (0: one half vector)."""
    def kernel(part, gt, xf, img, offs, ln, group, k):
        # gt (N, L, Opad) channels-last gradient, xf flat padded input (tap k of position q
        # of image n at n*img + offs[k] + q), offs padded to a whole number of tiles ->
        # part (G, Opad / (nv*W), Kpad, nv*W): group g's sum over its images of
        # gt[n, q, o] * x[tap k, q] over q, per block of nv*W output channels. k: the real
        # taps; with one channel vector (nv 0 or 1) the padding past them is not computed
        # (those rows of part stay 0) but for what a tail tile's rows round up to.
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
                        if nv <= 1 and k - k0 < mr:  # the last taps: a shorter tile
                            _dw_tail(tile, xf, gf, a, n * img, gb, opad, ln, nv == 0, k - k0)
                        elif nv == 0:
                            dw_tile_0(tile, xf, gf, a, n * img, gb, opad, ln)
                        elif nv == 1:
                            dw_tile_1(tile, xf, gf, a, n * img, gb, opad, ln)
                        elif nv == 2:
                            dw_tile_2(tile, xf, gf, a, n * img, gb, opad, ln)
                        elif nv == 3:
                            dw_tile_3(tile, xf, gf, a, n * img, gb, opad, ln)
                        else:
                            dw_tile_4(tile, xf, gf, a, n * img, gb, opad, ln)
    return kernel


@compute_family
def _mk_dw_dot(mo):
    """``_mk_dw_dot[mo](part, gq, xf, img, offs, lp, group)``: dw as dot products over
    positions, MO output channels per tile."""
    def kernel(part, gq, xf, img, offs, lp, group):
        # gq (N, MO, Lp) planar gradient (see _mk_grad_layouts), xf flat padded input (tap
        # k of position q of image n at n*img + offs[k] + q), offs padded to whole tiles
        # of MT = DOT_MT[mo] taps -> part (G, Kpad / MT, MO*MT*W): per lane, group g's sum
        # over its images and positions of gq[n, o, q] * x[tap k, q] (the caller sums the
        # lanes). Vectors run over positions, so a layer with few output channels uses
        # whole vectors and reads its gradient planes as they are (no channels-last copy).
        # NOTE: fixed image groups, one task each, as _mk_dw: independent of the thread
        # count.
        g_, ntile, tsize = part.shape
        n_ = gq.shape[0]
        mt = offs.size // ntile
        w = tsize // (mo * mt)
        steps = lp // w
        gf = gq.ravel()
        zero = part.dtype.type(0)
        for g in prange(g_):
            pg = part[g]
            pg[:] = zero
            for n in range(g * group, min(n_, (g + 1) * group)):
                gb, xb = n * mo * lp, n * img
                for tt in range(ntile):
                    tile = pg[tt]
                    a = offs[tt * mt:(tt + 1) * mt]
                    if mo == 1:
                        dot_tile_1(tile, gf, xf, a, gb, lp, xb, steps)
                    elif mo == 2:
                        dot_tile_2(tile, gf, xf, a, gb, lp, xb, steps)
                    elif mo == 4:
                        dot_tile_4(tile, gf, xf, a, gb, lp, xb, steps)
                    elif mo == 6:
                        dot_tile_6(tile, gf, xf, a, gb, lp, xb, steps)
                    else:
                        dot_tile_8(tile, gf, xf, a, gb, lp, xb, steps)
    return kernel


def _phases(stride, kernel):
    """(PA, PB): the stride phases of the input that kernel taps land on."""
    return min(stride[0], kernel[0]), min(stride[1], kernel[1])


@functools.lru_cache(maxsize=256)
def _tap_offsets(c_, kh, kw, stride, hq, wq, pad_to=1):
    """Offset of tap (c, i, j) from an output position in a phase-split padded image
    (``_padded_flat``: C x PA*PB planes of Hq x Wq): the plane of channel c and phase
    (i % SH, j % SW), then row i // SH and column j // SW, for k = (c*KH + i)*KW + j
    (stride 1: c*Hq*Wq + i*Wq + j). Padded with copies of the last offset to a multiple of
    ``pad_to`` taps. Cached per geometry (read-only)."""
    sh, sw = stride
    pa, pb = _phases(stride, (kh, kw))
    i = np.arange(kh, dtype=np.intp)
    j = np.arange(kw, dtype=np.intp)
    plane = (np.arange(c_, dtype=np.intp)[:, None, None] * (pa * pb)
             + (i % sh)[None, :, None] * pb + (j % sw)[None, None, :])
    offs = (plane * (hq * wq) + (i // sh)[None, :, None] * wq + (j // sw)[None, None, :]).ravel()
    k = offs.size
    offs = np.concatenate([offs, np.full(-(-k // pad_to) * pad_to - k, offs[-1], np.intp)])
    offs.flags.writeable = False
    return offs


def _phase_shape(x_shape, stride, padding):
    """(Hq, Wq): the size of each stride phase of the padded input."""
    return (-(-(x_shape[2] + 2 * padding[0]) // stride[0]),
            -(-(x_shape[3] + 2 * padding[1]) // stride[1]))


def _padded_flat(x, stride, padding, kernel, slack=0):
    """x (N, C, H, W) zero-padded and split into the stride phases its taps read,
    (N, C, PA*PB, Hq, Wq) (see ``_pad``; stride 1: the padded input), in a workspace,
    returned flat and followed by ``slack`` zeros that the last partial micro-kernel tile
    may read. The whole batch at once: one parallel pass rather than one per chunk."""
    n_, c_ = x.shape[:2]
    hq, wq = _phase_shape(x.shape, stride, padding)
    pa, pb = _phases(stride, kernel)
    size = n_ * c_ * pa * pb * hq * wq
    flat = workspace("xp", size + slack, x.dtype)
    flat[size:] = 0
    _pad(flat[:size].reshape(n_, c_, pa * pb, hq, wq), np.ascontiguousarray(x),
         stride[0], stride[1], padding[0], padding[1], pb)
    return flat


def _mk_slack(dtype):
    """Values past a buffer that the last tile of a run may read: the widest tile's NR."""
    return ACCUMULATORS * lanes(np.dtype(dtype).itemsize)


def _mk_tile_index(rows):
    """The forward tile for ``rows`` output rows (output channels, or input channels for
    dx): the least ceil(rows / MR) * MR * FWD_TILE_COST, the rows it computes (padding
    included) times its relative cost per row; the taller on a tie."""
    costs = [-(-rows // mr) * mr * c for mr, c in zip(FWD_TILE_MRS, FWD_TILE_COST)]
    return costs.index(min(costs))


def _mk_pack(wmat, mult):
    """(K, O) -> (K, O rounded up to ``mult``), zeros in the extra columns."""
    k, o = wmat.shape
    packed = np.zeros((k, -(-o // mult) * mult), wmat.dtype)
    packed[:, :o] = wmat
    return packed


def _mk_conv2d_forward(out, x, w, b, stride, padding, code):
    o_, c_, kh, kw = w.shape
    oh, ow = out.shape[2], out.shape[3]
    hq, wq = _phase_shape(x.shape, stride, padding)
    xf = _padded_flat(x, stride, padding, (kh, kw), _mk_slack(x.dtype))
    ti = _mk_tile_index(o_)
    wt = _mk_pack(w.reshape(o_, c_ * kh * kw).T, FWD_TILE_MRS[ti])
    offs = _tap_offsets(c_, kh, kw, tuple(stride), hq, wq)
    phases = np.array([[0, 0, oh, ow, 0, offs.size]], np.intp)
    pa, pb = _phases(stride, (kh, kw))
    _mk_conv[ti, code, False](out, xf, c_ * pa * pb * hq * wq, wt, offs, phases, b, 1, 1, wq)


@functools.lru_cache(maxsize=256)
def _dx_plan(o_, kh, kw, stride, padding, h, w, oh, ow):
    """dx of a conv as stride-1 convs of the zero-padded gradient, one per stride phase
    (a, b) of the padded input position (Y, X) = (SH*i + a, SW*j + b): dx[y0::SH, x0::SW]
    gathers the gradient with the kernel taps (a + SH*m, b + SW*m'), m < MH, m' < MW, at
    gradient position (i - m, j - m'). Returns (offs, phases, taps, covered, (Th, Tw,
    Hg, Wg)): the padded gradient is (O, Hg, Wg) per image with the gradient at
    [Th:, Tw:]; offs the taps' offsets in it from an output position, phase by phase
    (tap (o, m, m'), m and m' from MH-1 and MW-1 down to 0: o*Hg*Wg + (Th + i0 - m)*Wg +
    Tw + j0 - m', i0 / j0 the phase's first padded position at or past the padding); phases the rows _mk_conv takes; taps (a, b) per phase, for
    packing the weights in the same order; covered: False when some phase gets no tap
    (a stride larger than the kernel), whose dx is 0. Cached per geometry (read-only)."""
    def axis(k, s, p, size, n_out):
        # per phase a: (a, taps M, first i0 with s*i0 + a >= p, y0 = s*i0 + a - p, count)
        ph = []
        for a in range(s):
            i0 = -(-(p - a) // s) if p > a else 0
            y0 = s * i0 + a - p
            ph.append((a, len(range(a, k, s)), i0, y0, len(range(y0, size, s))))
        live = [(m, i0, v) for _, m, i0, _, v in ph if m and v]
        # leading zeros T: tap m of output i0 reads gradient row T + i0 - m >= 0; length:
        # the gradient itself and the last output's row T + i0 + V - 1
        t = max([m - 1 - i0 for m, i0, _ in live] + [0])
        return ph, t, max([t + n_out] + [t + i0 + v for _, i0, v in live])

    rows, th, hg = axis(kh, stride[0], padding[0], h, oh)
    cols, tw, wg = axis(kw, stride[1], padding[1], w, ow)
    offs, phases, taps = [np.zeros(0, np.intp)], [], []
    k0 = 0
    covered = True
    for a, mh, i0, y0, hv in rows:
        for b, mw, j0, x0, wv in cols:
            # NOTE: taps in flipped order (m = MH-1 .. 0), so that the offsets increase
            # (read backwards, the dx of a 32x32 layer ran 7% slower)
            o = np.arange(o_, dtype=np.intp)[:, None, None] * (hg * wg)
            m = (th + i0 - np.arange(mh - 1, -1, -1, dtype=np.intp))[None, :, None] * wg
            n = (tw + j0 - np.arange(mw - 1, -1, -1, dtype=np.intp))[None, None, :]
            if hv == 0 or wv == 0:
                continue
            if mh == 0 or mw == 0:  # no tap lands here (stride > kernel): dx is 0
                covered = False
                continue
            offs.append((o + m + n).ravel())
            phases.append((y0, x0, hv, wv, k0, k0 + o_ * mh * mw))
            taps.append((a, b))
            k0 += o_ * mh * mw
    offs = np.concatenate(offs)
    phases = np.array(phases, np.intp).reshape(-1, 6)
    offs.flags.writeable = phases.flags.writeable = False
    return offs, phases, tuple(taps), covered, (th, tw, hg, wg)


def _mk_conv2d_backward(dx, dw, db, dout, x, w, out, stride, padding, code):
    o_, c_, kh, kw = w.shape
    n_, _, oh, ow = dout.shape
    k = c_ * kh * kw
    sh, sw = stride
    hq, wq = _phase_shape(x.shape, stride, padding)
    ln = (oh - 1) * wq + ow
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
    # with AVX-512, at most 8 output channels: dot products over positions instead
    # (_mk_dw_dot), MO channels (O rounded up) x MT taps per tile
    dot = VEC_BYTES == 64 and o_ <= DOT_MOS[-1]
    if dot:
        mo = next(m for m in DOT_MOS if m >= o_)
        lp = -(-ln // lanes_) * lanes_
        gt = workspace("gt", n_ * mo * lp, dt).reshape(n_, mo, lp)
    else:
        gt = workspace("gt", n_ * ln * opad, dt).reshape(n_, ln, opad)
    # dx: stride-1 convs of the zero-padded gradient with the flipped, transposed
    # kernel, one per stride phase of the input (see _dx_plan), on the forward kernel
    gpf = gp = None
    th = tw = 0
    if dx is not None:
        offs2, phases, taps, covered, (th, tw, hg, wg) = _dx_plan(o_, kh, kw, tuple(stride),
                                                          tuple(padding), x.shape[2],
                                                          x.shape[3], oh, ow)
        size = n_ * o_ * hg * wg
        gpf = workspace("gp", size + _mk_slack(dt), dt)
        gpf[size:] = 0
        gp = gpf[:size].reshape(n_, o_, hg, wg)
    dbp = None if db is None else workspace("dbp", n_ * o_, dt).reshape(n_, o_)
    _mk_grad_layouts[dot, code](gp, gt, dbp, dout, dout if out is None else out, th, tw, wq)
    if db is not None:
        np.sum(dbp, axis=0, out=db)

    pa, pb = _phases(stride, (kh, kw))
    img = c_ * pa * pb * hq * wq
    groups = -(-n_ // DW_GROUP)
    if dot:
        # a tile's last step reads up to W - 1 values past an image's last position
        xf = _padded_flat(x, stride, padding, (kh, kw), lanes_)
        mt = DOT_MT[mo]
        offs = _tap_offsets(c_, kh, kw, tuple(stride), hq, wq, mt)
        ntile = offs.size // mt
        part = workspace("dw_groups", groups * ntile * mo * mt * lanes_, dt).reshape(
            groups, ntile, mo * mt * lanes_)
        _mk_dw_dot[mo](part, gt, xf, img, offs, lp, DW_GROUP)
        # part (G, tiles, MO*MT*W) -> dw (O, K): the groups, then the lanes
        total = part.sum(axis=0).reshape(ntile, mo, mt, lanes_).sum(axis=3)
        dw.reshape(o_, k)[...] = total.transpose(1, 0, 2).reshape(mo, ntile * mt)[:o_, :k]
    else:
        xf = _padded_flat(x, stride, padding, (kh, kw))
        offs = _tap_offsets(c_, kh, kw, tuple(stride), hq, wq, mr)
        kpad = offs.size
        part = workspace("dw_groups", groups * opad * kpad, dt).reshape(
            groups, opad // ncols, kpad, ncols)
        _mk_dw[nv](part, gt, xf, img, offs, ln, DW_GROUP, k)
        # part (G, blocks, Kpad, ncols) -> dw (O, K)
        total = part.sum(axis=0)
        dw.reshape(o_, k)[...] = total.transpose(0, 2, 1).reshape(opad, kpad)[:o_, :k]

    if dx is None:
        return
    if not covered:
        dx[...] = 0
    ti = _mk_tile_index(c_)
    wt = np.concatenate([np.zeros((0, c_), w.dtype)] + [
        w[:, :, a::sh, b::sw][:, :, ::-1, ::-1].transpose(0, 2, 3, 1).reshape(-1, c_)
        for a, b in taps])
    _mk_conv[ti, 0, sh != 1 or sw != 1](dx, gpf, o_ * hg * wg, _mk_pack(wt, FWD_TILE_MRS[ti]),
                                        offs2, phases, None, sh, sw, wg)


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
    return _padded_flat(x, (1, 1), padding, (1, 1)).reshape(x.shape[0], x.shape[1], hp, wp)


def _direct(stride, w_shape):
    """Whether a conv takes the direct kernels (forward, dw): stride 1 and
    C*KH*KW <= DIRECT_MAX_K."""
    return (stride[0] == 1 and stride[1] == 1
            and w_shape[1] * w_shape[2] * w_shape[3] <= DIRECT_MAX_K)


def _blocked(dx_wanted, stride, w_shape):
    """Whether a conv takes the micro-kernel path: always (any stride, any padding),
    except for dx of a one-channel input that the direct kernel takes (stride 1 and
    KH*KW <= DIRECT_MAX_K): 1.4x faster there than the one-row micro-kernel tile."""
    return MICROKERNELS and not (dx_wanted and w_shape[1] == 1 and _direct(stride, w_shape))


def conv2d_forward(out, x, w, b, stride, padding, activation=None):
    """x (N, C, H, W), w (O, C, KH, KW), b (O,) | None -> out (N, O, OH, OW)
    = act(conv(x, w) + b); ``activation`` as for dense (None, "relu", ...)."""
    o_, c_, kh, kw = w.shape
    oh, ow = out.shape[2], out.shape[3]
    k = c_ * kh * kw
    code = ACTIVATIONS[activation]
    if _blocked(False, stride, w.shape):
        _mk_conv2d_forward(out, x, w, b, stride, padding, code)
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
    if _blocked(dx is not None, stride, w.shape):
        _mk_conv2d_backward(dx, dw, db, dout, x, w, out, stride, padding, code)
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
