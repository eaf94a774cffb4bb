"""The weight gradient of the implicit-GEMM convolution (implicit_gemm.py): the layouts
of the output gradient its kernels read, and dw on register-blocked tiles.

* dw: the gradient is laid out channels-last (N, L, O) with zeros in the junk columns
  (layout.py), and a tile of (taps x output channels) accumulates, over the positions of a
  fixed group of images, one broadcast input value times one vector of gradients per
  step (``tiled_dw``): no horizontal sums, and the groups are summed in order, so dw does
  not depend on the thread count.
* With AVX-512 and at most 8 output channels, dw is instead dot products over positions
  (``dot_product_dw``): whole vectors of 16 positions of the gradient planes (N, O, Lp;
  zeros in the junk columns and up to Lp, L rounded up to 16) times the input run of each
  tap.
* Contract for non-finite input: the junk columns (and, in the dot-product dw, the
  positions up to Lp) multiply input values that no output reads by a zero gradient, so
  an inf or NaN anywhere in x can make dw NaN even where the exact result is finite;
  conv2d_backward then recomputes dw from the valid products (exact_dw.py).
"""
import collections

import numpy as np
from numba import njit, prange

from .._jit import FASTMATH, compute_family, parallel_family
from .._simd import ACCUMULATORS, VEC_BYTES, lanes
from .._simd.tiles import DOT_MOS, DOT_MT, DW_MAX_NV, dot_tile, dw_tail_tile, dw_tile
from ..activations import through_activation
from .layout import padded_phases, tap_offsets, workspace

# images per partial dw sum (the groups are summed afterwards, in order)
DW_GROUP = 8

DwLayout = collections.namedtuple("DwLayout", "planar vectors cols o_padded taps_per_tile mo lp gt")
DwLayout.__doc__ = """How dw of one layer runs: ``planar`` (dot products over positions,
``mo`` channels per tile, positions padded to ``lp``) or on tiles of ``vectors`` channel
vectors (``cols`` channels, output channels padded to ``o_padded``, ``taps_per_tile``);
``gt``: the gradient buffer in that layout."""


def dw_layout(o_, n_, ln, dt):
    """The DwLayout for o_ output channels, n_ images, runs of ln positions, dtype dt."""
    width = lanes(dt.itemsize)
    # output channels in vectors of W (``vectors`` of them per tile), taps_per_tile taps at
    # a time; a layer with at most W/2 output channels (LeNet's first) in one half-width
    # vector
    vectors = min(DW_MAX_NV, -(-o_ // width))
    cols = vectors * width
    if 2 * o_ <= width:
        vectors, cols = 0, width // 2
    o_padded = -(-o_ // cols) * cols
    taps_per_tile = ACCUMULATORS // max(vectors, 1)
    # with AVX-512, at most 8 output channels: dot products over positions instead
    # (dot_product_dw), MO channels (O rounded up) x MT taps per tile
    if VEC_BYTES == 64 and o_ <= DOT_MOS[-1]:
        mo = next(m for m in DOT_MOS if m >= o_)
        lp = -(-ln // width) * width
        gt = workspace("gt", n_ * mo * lp, dt).reshape(n_, mo, lp)
        return DwLayout(True, vectors, cols, o_padded, taps_per_tile, mo, lp, gt)
    gt = workspace("gt", n_ * ln * o_padded, dt).reshape(n_, ln, o_padded)
    return DwLayout(False, vectors, cols, o_padded, taps_per_tile, 0, 0, gt)


def channels_key(layout):
    """gradient_layouts' ``channels`` for a DwLayout: Opad when the channels-last copy of
    a position is one vector store (8 or 16 channels), else 0."""
    return layout.o_padded if not layout.planar and layout.o_padded in (8, 16) else 0


def weight_grad(dw, layout, x, stride, padding, kernel, img, hq, wq, ln):
    """dw (O, C, KH, KW) from the gradient in ``layout.gt`` (filled by gradient_layouts)
    and x; img: the size of one image's padded phases."""
    o_, c_ = dw.shape[0], dw.shape[1]
    kh, kw = kernel
    k = c_ * kh * kw
    dt = x.dtype
    width = lanes(dt.itemsize)
    n_ = x.shape[0]
    groups = -(-n_ // DW_GROUP)
    if layout.planar:
        mo = layout.mo
        # a tile's last step reads up to W - 1 values past an image's last position
        xf = padded_phases(x, stride, padding, kernel, width)
        mt = DOT_MT[mo]
        offs = tap_offsets(c_, kh, kw, tuple(stride), hq, wq, mt)
        ntile = offs.size // mt
        part = workspace("dw_groups", groups * ntile * mo * mt * width, dt).reshape(
            groups, ntile, mo * mt * width)
        dot_product_dw[mo](part, layout.gt, xf, img, offs, layout.lp, DW_GROUP)
        # part (G, tiles, MO*MT*W) -> dw (O, K): the groups, then the lanes
        total = part.sum(axis=0).reshape(ntile, mo, mt, width).sum(axis=3)
        dw.reshape(o_, k)[...] = total.transpose(1, 0, 2).reshape(mo, ntile * mt)[:o_, :k]
    else:
        xf = padded_phases(x, stride, padding, kernel)
        offs = tap_offsets(c_, kh, kw, tuple(stride), hq, wq, layout.taps_per_tile)
        kpad = offs.size
        part = workspace("dw_groups", groups * layout.o_padded * kpad, dt).reshape(
            groups, layout.o_padded // layout.cols, kpad, layout.cols)
        tiled_dw[layout.vectors](part, layout.gt, xf, img, offs, ln, DW_GROUP, k)
        # part (G, blocks, Kpad, cols) -> dw (O, K)
        total = part.sum(axis=0)
        dw.reshape(o_, k)[...] = total.transpose(0, 2, 1).reshape(layout.o_padded, kpad)[:o_, :k]


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
                    v = through_activation(v, y[t], code)
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
                        v = through_activation(v, y[t], code)
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
def gradient_layouts(planar, code, channels):
    """``gradient_layouts[planar, code, channels](gp, gt, dbp, dout, out, ph2, pw2, wp)``:
    the gradient layouts of the backward kernels for one layout and activation ``code``;
    ``channels``: the channels-last layout's Opad as a constant (``channels_key``), 0 when
    it is a runtime value."""
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
                # (a key of the family: a runtime switch compiled all three copies)
                if channels:
                    _channels_last(gtf, srcf, n, ln, wp, oh_, ow_, channels)
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


@compute_family
def tiled_dw(vectors):
    """``tiled_dw[vectors](part, gt, xf, img, offs, ln, group, k)``: dw on tiles of
    ``vectors`` vectors of output channels (0: one half-width vector)."""
    def kernel(part, gt, xf, img, offs, ln, group, k):
        # gt (N, L, Opad) channels-last gradient, xf flat padded input (tap k of position q
        # of image n at n*img + offs[k] + q), offs padded to a whole number of tiles ->
        # part (G, Opad / (nv*W), Kpad, nv*W): group g's sum over its images of
        # gt[n, q, o] * x[tap k, q] over q, per block of vectors*W output channels. k: the real
        # taps; with one channel vector (``vectors`` 0 or 1) the padding past them is not computed
        # (those rows of part stay 0) but for what a tail tile's rows round up to.
        # NOTE: fixed image groups (summed afterwards in group order), each group one task
        # that owns its slice of part: race-free, and independent of the thread count.
        g_, nob, kpad, ncols = part.shape
        n_ = gt.shape[0]
        opad = gt.shape[2]
        mr = ACCUMULATORS // max(vectors, 1)
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
                        if vectors <= 1 and k - k0 < mr:  # the last taps: a shorter tile
                            dw_tail_tile(vectors, k - k0, tile, xf, gf, a, n * img, gb, opad, ln)
                        else:
                            dw_tile(vectors, tile, xf, gf, a, n * img, gb, opad, ln)
    return kernel


@compute_family
def dot_product_dw(mo):
    """``dot_product_dw[mo](part, gq, xf, img, offs, lp, group)``: dw as dot products over
    positions, MO output channels per tile."""
    def kernel(part, gq, xf, img, offs, lp, group):
        # gq (N, MO, Lp) planar gradient (see gradient_layouts), xf flat padded input (tap
        # k of position q of image n at n*img + offs[k] + q), offs padded to whole tiles
        # of MT = DOT_MT[mo] taps -> part (G, Kpad / MT, MO*MT*W): per lane, group g's sum
        # over its images and positions of gq[n, o, q] * x[tap k, q] (the caller sums the
        # lanes). Vectors run over positions, so a layer with few output channels uses
        # whole vectors and reads its gradient planes as they are (no channels-last copy).
        # NOTE: fixed image groups, one task each, as tiled_dw: independent of the thread
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
                    dot_tile(mo, tile, gf, xf, a, gb, lp, xb, steps)
    return kernel
