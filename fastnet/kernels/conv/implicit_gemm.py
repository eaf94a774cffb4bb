"""The CPU convolution as an implicit GEMM on register-blocked tiles (_simd/tiles.py):
no im2col, no col2im, no BLAS; any stride and padding.

* Forward: the batch is zero-padded once and split into its stride phases
  (layout.padded_phases), and per (image, run of NR output positions, block of MR output
  channels) one tile multiplies the packed weights by the tap runs (layout.tap_offsets);
  then a row-by-row epilogue adds the bias, applies the activation and drops the junk
  columns (without activation or with ReLU on the vector rows of _simd/epilogue.py).
* ``forward_plan``: the forward for one geometry, prepared once (inference plans).
* dx: per stride phase of the input, a stride-1 conv of the zero-padded gradient with
  the flipped, transposed kernel taps that land on that phase (``_dx_plan``; stride 1:
  one phase, the whole kernel), through the forward kernel, which writes each phase's
  outputs to dx[:, :, y0::SH, x0::SW].
* dw: implicit_gemm_dw.py.

Backward kernels overwrite their outputs; pass ``None`` for dx when it is not needed.
"""
import functools
import threading

import numpy as np
from numba import njit, prange

from .. import _jit
from .._jit import FASTMATH, compute_family
from .._simd import ACCUMULATORS, VEC_BYTES, lanes
from .._simd.epilogue import bias_relu_row, bias_row
from .._simd.tiles import FWD_TILE_COST, FWD_TILE_MRS, fwd_tile
from ..activations import apply_activation
from ..codes import RELU
from .implicit_gemm_dw import channels_key, dw_layout, gradient_layouts, weight_grad
from .layout import _pad_phases, padded_phases, phase_shape, phases_of, tap_offsets, workspace


@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _store_rows(out, tile, b, n, o0, on, nr, q0, q1, wp, code):
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
def _store_rows_vector(of, tile, b, n, o0, on, nr, q0, q1, wp, o_, oh_, ow_, relu):
    # _store_rows for a C-contiguous out (``of``: flat) and no activation or ReLU, each run
    # of an output row on the vector code of _simd/epilogue.py (bitwise the same values)
    q = q0
    while q < q1:
        r = q // wp
        t = q - r * wp
        e = min(q1 - q, ow_ - t)
        if e > 0:
            for i in range(on):
                bo = b[o0 + i] if b is not None else tile.dtype.type(0)
                d0 = ((n * o_ + o0 + i) * oh_ + r) * ow_ + t
                if relu:
                    bias_relu_row(of, tile, d0, i * nr + q - q0, e, bo)
                else:
                    bias_row(of, tile, d0, i * nr + q - q0, e, bo)
        q = (r + 1) * wp


def act_key(code):
    """conv_tiles' activation key for an activation code: one member serves no activation
    and ReLU, picked per call by its ``relu`` argument (a first LeNet-5 run compiled a
    member for its ReLU forwards and another for its dx, ~0.6 s each); others by code."""
    return -1 if code == 0 or code == RELU else code


@compute_family
def conv_tiles(tile_index, act, strided):
    """The forward kernel on the tile FWD_TILES[tile_index], with activation key ``act``
    (``act_key``) and (``strided``) the phases of a strided dx: ``conv_tiles[tile_index,
    act, strided](out, xf, img, wt, offs, phases, b, sh, sw, wp, relu)``; ``relu`` picks
    ReLU or no activation when ``act`` is -1 (a strided dx has none: relu False)."""
    def kernel(out, xf, img, wt, offs, phases, b, sh, sw, wp, relu):
        # An implicit GEMM over xf, the flat (padded) input: image n at n*img, tap k of
        # output position q (row pitch wp) at n*img + offs[k] + q; wt (K, Opad) packed
        # weights (zero columns past O). out (N, O, ., .) = act(conv + b), in phases p
        # (rows of phases: y0, x0, HV, WV, k0, k1): phase p's outputs are
        # out[:, :, y0::sh, x0::sw] (HV x WV of them), summed over taps k0 <= k < k1. The
        # forward is one phase (0, 0, OH, OW, 0, K) with sh = sw = 1; dx of a strided
        # conv is one phase per stride phase of the input. Per (image, phase, run of NR
        # positions, block of MR channels) one micro-kernel tile, then the
        # valid columns go out row by row.
        n_, o_ = out.shape[0], out.shape[1]
        oh_, ow_ = out.shape[2], out.shape[3]
        # flat out for the vector epilogue (not strided: out is C-contiguous, the view is
        # its buffer; a reshape compiled Numba's double-precision size check in here)
        of = out.ravel()
        opad = wt.shape[1]
        mr = FWD_TILE_MRS[tile_index]
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
                        fwd_tile(tile_index, tile, wf, xf, tab, k0 * opad + o0, opad, n * img + q0)
                        on = min(mr, o_ - o0)
                        if strided:
                            _store_rows(out[:, :, y0::sh, x0::sw], tile, b, n, o0, on, nr, q0, q1, wp, code)
                        elif vector_epilogue:
                            _store_rows_vector(of, tile, b, n, o0, on, nr, q0, q1, wp, o_, oh_, ow_, relu)
                        else:
                            _store_rows(out, tile, b, n, o0, on, nr, q0, q1, wp, code)
    vector_epilogue = act == -1
    code = 0 if act == -1 else act  # the strided (dx) and the other activations' stores
    return kernel


def _slack(dtype):
    """Values past a buffer that the last tile of a run may read: the widest tile's NR."""
    return ACCUMULATORS * lanes(np.dtype(dtype).itemsize)


def tile_index(rows):
    """The forward tile for ``rows`` output rows (output channels, or input channels for
    dx): the least ceil(rows / MR) * MR * FWD_TILE_COST, the rows it computes (padding
    included) times its relative cost per row; the taller on a tie."""
    costs = [-(-rows // mr) * mr * c for mr, c in zip(FWD_TILE_MRS, FWD_TILE_COST)]
    return costs.index(min(costs))


def _pack(wmat, mult):
    """(K, O) -> (K, O rounded up to ``mult``), zeros in the extra columns."""
    k, o = wmat.shape
    packed = np.zeros((k, -(-o // mult) * mult), wmat.dtype)
    packed[:, :o] = wmat
    return packed


def forward(out, x, w, b, stride, padding, code):
    """out = act(conv(x, w) + b) (conv2d_forward, ``code`` the activation's)."""
    o_, c_, kh, kw = w.shape
    oh, ow = out.shape[2], out.shape[3]
    hq, wq = phase_shape(x.shape, stride, padding)
    xf = padded_phases(x, stride, padding, (kh, kw), _slack(x.dtype))
    tile = tile_index(o_)
    wt = _pack(w.reshape(o_, c_ * kh * kw).T, FWD_TILE_MRS[tile])
    offs = tap_offsets(c_, kh, kw, tuple(stride), hq, wq)
    phases = np.array([[0, 0, oh, ow, 0, offs.size]], np.intp)
    pa, pb = phases_of(stride, (kh, kw))
    conv_tiles[tile, act_key(code), False](out, xf, c_ * pa * pb * hq * wq, wt, offs, phases, b,
                                           1, 1, wq, code == RELU)


@functools.lru_cache(maxsize=256)
def _dx_plan(o_, kh, kw, stride, padding, h, w, oh, ow):
    """dx of a conv as stride-1 convs of the zero-padded gradient, one per stride phase
    (a, b) of the padded input position (Y, X) = (SH*i + a, SW*j + b): dx[y0::SH, x0::SW]
    gathers the gradient with the kernel taps (a + SH*m, b + SW*m'), m < MH, m' < MW, at
    gradient position (i - m, j - m'). Returns (offs, phases, taps, covered, (Th, Tw,
    Hg, Wg)): the padded gradient is (O, Hg, Wg) per image with the gradient at
    [Th:, Tw:]; offs the taps' offsets in it from an output position, phase by phase
    (tap (o, m, m'), m and m' from MH-1 and MW-1 down to 0: o*Hg*Wg + (Th + i0 - m)*Wg +
    Tw + j0 - m', i0 / j0 the phase's first padded position at or past the padding); phases the rows conv_tiles takes; taps (a, b) per phase, for
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


def backward(dx, dw, db, dout, x, w, out, stride, padding, code):
    """dx (None: not wanted), dw (None: frozen), db (None: no bias) of conv2d_forward
    (conv2d_backward)."""
    o_, c_, kh, kw = w.shape
    n_, _, oh, ow = dout.shape
    sh, sw = stride
    hq, wq = phase_shape(x.shape, stride, padding)
    ln = (oh - 1) * wq + ow
    dt = x.dtype
    layout = dw_layout(o_, n_, ln, dt)
    # dx: stride-1 convs of the zero-padded gradient with the flipped, transposed
    # kernel, one per stride phase of the input (see _dx_plan), on the forward kernel
    gpf = gp = None
    th = tw = 0
    if dx is not None:
        offs2, phases, taps, covered, (th, tw, hg, wg) = _dx_plan(o_, kh, kw, tuple(stride),
                                                                  tuple(padding), x.shape[2],
                                                                  x.shape[3], oh, ow)
        size = n_ * o_ * hg * wg
        gpf = workspace("gp", size + _slack(dt), dt)
        gpf[size:] = 0
        gp = gpf[:size].reshape(n_, o_, hg, wg)
    dbp = None if db is None else workspace("dbp", n_ * o_, dt).reshape(n_, o_)
    gradient_layouts[layout.planar, code, channels_key(layout)](
        gp, layout.gt, dbp, dout, dout if out is None else out, th, tw, wq)
    if db is not None:
        np.sum(dbp, axis=0, out=db)
    pa, pb = phases_of(stride, (kh, kw))
    if dw is not None:  # (None: a frozen weight)
        weight_grad(dw, layout, x, stride, padding, (kh, kw), c_ * pa * pb * hq * wq, hq, wq,
                    ln)

    if dx is None:
        return
    if not covered:
        dx[...] = 0
    tile = tile_index(c_)
    wt = np.concatenate([np.zeros((0, c_), w.dtype)] + [
        w[:, :, a::sh, b::sw][:, :, ::-1, ::-1].transpose(0, 2, 3, 1).reshape(-1, c_)
        for a, b in taps])
    # NOTE: a zero bias, not None: the same compiled kernel as a forward with a bias (a
    # first LeNet-5 run compiled one for its conv1 forward and one for its conv2 dx), and
    # the same values (the stores added a zero for None too)
    conv_tiles[tile, -1, sh != 1 or sw != 1](dx, gpf, o_ * hg * wg, _pack(wt, FWD_TILE_MRS[tile]),
                                            offs2, phases, np.zeros(c_, dt), sh, sw, wg, False)


def forward_plan(x_shape, w_shape, dtype, stride, padding, code):
    """``forward`` for one geometry, prepared once: returns ``run(out, x, w, b)``, which
    computes exactly what ``forward(out, x, w, b, stride, padding, code)`` computes (the
    same kernels on the same values) without recomputing the geometry per call, into
    per-thread buffers of its own (the padded input with its zero slack, the packed
    weights with their zero columns) that are allocated on a thread's first call and
    then only overwritten. ``x`` must be C-contiguous of ``x_shape`` and ``dtype``; the
    weights are packed on every call, so in-place edits of ``w`` are seen."""
    dtype = np.dtype(dtype)
    o_, c_, kh, kw = w_shape
    n_ = x_shape[0]
    stride, padding = tuple(stride), tuple(padding)
    hq, wq = phase_shape(x_shape, stride, padding)
    pa, pb = phases_of(stride, (kh, kw))
    oh = (x_shape[2] + 2 * padding[0] - kh) // stride[0] + 1
    ow = (x_shape[3] + 2 * padding[1] - kw) // stride[1] + 1
    size = n_ * c_ * pa * pb * hq * wq
    slack = _slack(dtype)
    tile = tile_index(o_)
    mult = FWD_TILE_MRS[tile]
    k_ = c_ * kh * kw
    opad = -(-o_ // mult) * mult
    offs = tap_offsets(c_, kh, kw, stride, hq, wq)
    phases = np.array([[0, 0, oh, ow, 0, offs.size]], np.intp)
    phases.flags.writeable = False
    kern = conv_tiles[tile, act_key(code), False]
    relu = code == RELU
    pad = _pad_phases
    img = c_ * pa * pb * hq * wq
    sh, sw = stride
    ph, pw = padding
    local = threading.local()
    # the build (serial / parallel) of the tiles that their wrapper would call for arrays
    # of these sizes (the largest against _jit.PARALLEL_MIN_WORK / COMPUTE_FACTOR), picked
    # again when the threshold changes: the wrappers' loops over the arguments cost ~0.9 us
    # per batch-1 call. The padding (a copy: either build gives the same bytes) runs
    # parallel when the tiles do, as the pool's threads are awake for them anyway
    # (LeNet-5's at batch 64: 13 and 23 us serial)
    tiles_largest = max(n_ * o_ * oh * ow, size + slack, k_ * opad, offs.size, phases.size, o_)
    picked = []

    def builds():
        t = _jit.PARALLEL_MIN_WORK
        parallel = tiles_largest >= t // _jit.COMPUTE_FACTOR
        picked[:] = [t, pad.parallel if parallel else pad.serial,
                     kern.parallel if parallel else kern.serial]
        return picked

    def buffers():
        flat = np.zeros(size + slack, dtype)  # the slack stays zero: pad writes [:size]
        wt = np.zeros((k_, opad), dtype)      # so do the packed columns past O
        b = local.b = (flat, flat[:size].reshape(n_, c_, pa * pb, hq, wq), wt, wt[:, :o_])
        return b

    def run(out, x, w, b):
        try:
            flat, xs, wt, wcols = local.b
        except AttributeError:
            flat, xs, wt, wcols = buffers()
        threshold, pad_build, tiles_build = picked if picked else builds()
        if threshold != _jit.PARALLEL_MIN_WORK:
            threshold, pad_build, tiles_build = builds()
        pad_build(xs, x, sh, sw, ph, pw, pb)
        wcols[...] = w.reshape(o_, k_).T
        tiles_build(out, flat, img, wt, offs, phases, b, 1, 1, wq, relu)

    return run
