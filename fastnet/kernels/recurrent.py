"""Recurrent kernels (CPU): single-layer, unidirectional RNN (tanh / relu), LSTM and GRU,
batch first, with PyTorch's equations and gate order (LSTM i, f, g, o; GRU r, z, n).

Shapes: x (N, T, F), out (N, T, H), h0 / c0 / h_n / c_n (N, H), w_ih (G*H, F),
w_hh (G*H, H), b_ih / b_hh (G*H,) or None, with G = 1 (RNN), 4 (LSTM), 3 (GRU).

Forward: the input projection of every timestep is one GEMM,
x (N*T, F) @ w_ih.T (kernels/gemm.py), written into ``gates`` (N, T, G*H) (into ``out`` for
the RNN).
The recurrence runs in one parallel kernel per sequence: batch rows are independent
across time, so each block of ROWS_MR rows runs every step on its own, its h @ w_hh.T on
a register-blocked micro-kernel (_simd/tiles.py; w_hh packed once, in cache all along)
and then one fused pass per row that adds both biases, applies every gate
nonlinearity, updates the cell and writes h_t. That pass overwrites gates[:, t] with the
activated gates, which are what backward needs: ``gates`` is the projection's workspace
and the saved activations at once. ``cells`` (LSTM) keeps c_t and ``hn`` (GRU) keeps
W_hn h_{t-1} + b_hn. ``h_n`` (and ``c_n``) serve as the running state.

Backward through time, block by block as well: per step one fused pass per row forms
the pre-activation gate gradients dG[:, t], and the block's dG_t @ w_hh carries dh back
to t-1. After the loop dw_ih = dG.T @ x, dw_hh = dG.T @ h_prev and dx = dG @ w_ih are one
GEMM each over all timesteps, and the bias gradients are column sums in a fixed order
(deterministic: no sum depends on the blocking or the thread count).
Backward kernels overwrite their outputs; pass ``None`` for an output that is not
needed (dx, dh0 / dc0 without an initial state, db_* without bias). ``h0`` / ``c0`` /
``dout`` / ``dh_n`` / ``dc_n`` may be None, meaning zeros (``dout`` None: only the final
state is used downstream).

``sequence_copy`` moves a window of features between (N, T, C) / (T, N, C) arrays, in or
against time order: what stacked and bidirectional layers need around these kernels
(layouts, time-reversed copies, concatenated directions).
"""
import numba
import numpy as np
from numba import njit, prange

from ._jit import FASTMATH, compute_kernel, parallel_kernel
from ._simd import VEC_BYTES, lanes
from ._simd.tiles import (ROWS_MR, ROWS_NC_VECTORS, WIDE_MR, WIDE_NC_VECTORS, rows_tile,
                          wide_rows_tile)
from .activations import ACTIVATIONS, through_activation, apply_activation
from .dense import sum_rows
from .gemm import matmul_nn, matmul_nt, matmul_tn

_SIGMOID, _TANH = ACTIVATIONS["sigmoid"], ACTIVATIONS["tanh"]


def rows_columns(itemsize):
    """Columns per _group_times tile for an element size: the packing multiple."""
    return ROWS_NC_VECTORS * lanes(itemsize)


# NOTE: apply_activation's float32 sigmoid and tanh (kernels/_simd/math.py) are plain
# arithmetic, so the row loops over the gates vectorise.


def _state(h_n, h0):
    """Start the running state h_n at h0 (zeros for None)."""
    if h0 is None:
        h_n.fill(0)
    else:
        np.copyto(h_n, h0)


def _running_state(h_n, h0):
    """The array the sequence kernel runs its state in, started at h0: h_n itself, or a
    C-contiguous copy when h_n is a strided view (the micro-kernel reads h as flat rows);
    _finish_state copies the copy back."""
    h = h_n if h_n.flags.c_contiguous else np.empty(h_n.shape, h_n.dtype)
    _state(h, h0)
    return h


def _finish_state(h_n, h):
    if h is not h_n:
        np.copyto(h_n, h)


def _zeros_like_state(a, n, h, dtype):
    return np.zeros((n, h), dtype) if a is None else a


@parallel_kernel
def _column_sums(out, a):
    # out (M,) = a (N, M) summed over rows, deterministically (see dense.sum_rows)
    sum_rows(out, a)


def _weight_grads(dx, dw_ih, dw_hh, db_ih, db_hh, dgx, dgh, x, h_prev, w_ih):
    """The GEMMs over all timesteps after the BPTT loop; dgx / dgh (N, T, G*H) the
    gradients of the input-side and hidden-side pre-activations (the same array except
    for the GRU)."""
    n, t, f = x.shape
    gh = dgx.shape[2]
    gx2 = dgx.reshape(n * t, gh)
    gh2 = dgh.reshape(n * t, gh)
    if dw_ih is not None:  # (None: a frozen weight)
        matmul_tn(dw_ih, gx2, x.reshape(n * t, f))
    if dw_hh is not None:
        matmul_tn(dw_hh, gh2, h_prev.reshape(n * t, h_prev.shape[2]))
    if db_ih is not None:
        _column_sums(db_ih, gx2)
    if db_hh is not None:
        if dgh is dgx and db_ih is not None:
            db_hh[:] = db_ih
        else:
            _column_sums(db_hh, gh2)
    if dx is not None:
        matmul_nn(dx.reshape(n * t, f), gx2, w_ih)


def _shifted(out, h0):
    """h_prev (N, T, H): h0 (or zeros) then out[:, :-1]."""
    h_prev = np.empty_like(out)
    if h0 is None:
        h_prev[:, 0] = 0
    else:
        h_prev[:, 0] = h0
    h_prev[:, 1:] = out[:, :-1]
    return h_prev


# ---- the recurrence, block of batch rows by block ------------------------------------------
# Rows are independent across time, so each task takes a run of whole blocks of batch rows
# through all T steps on its own: one parallel region per
# sequence instead of two per step (a GEMM through OpenBLAS and a step kernel, each
# waking its thread pool), and the recurrent GEMM of its blocks, their rows times the
# packed w_hh, on the shift micro-kernel.
# NOTE: one task per block read all of w_hh (1 MB for 4 x 256 x 256 float32) from L2 per
# block and step; with weights that large a task per thread runs each chunk of a panel
# of w_hh through all of its blocks while the chunk is in L1 (_group_times, _groups). The LSTM's forward recurrence at
# batch 64, 100 steps, hidden 256, went from 24.1 to 21.2 ms (2-core development
# machine); chunks of 128 rows of w_hh measured best (64: 21.4, 256: 22.3 ms).
SEQUENCE_KC = 128
GROUP_MIN_BYTES = 1 << 19

def _wide(n, c, itemsize):
    """Whether the sequence kernel over n batch rows and c output columns (4H for the
    LSTM's forward, H for its backward) takes the wide tile (WIDE_MR rows x WIDE_NC_VECTORS
    vectors) rather than ROWS_MR x ROWS_NC_VECTORS: the one that computes fewer padded
    rows and columns (the narrow one on a tie).

    NOTE: with the narrow tile only (48 float32 columns with AVX-512), a hidden size of 256
    padded the backward's H columns to 288 and one of 64 to 96; the wide tile (64 columns,
    6 rows) fits both exactly, at 66 rows for a batch of 64."""
    w = VEC_BYTES // itemsize

    def work(mr, nv):
        return -(-n // mr) * mr * (-(-c // (nv * w)) * nv * w)

    return work(WIDE_MR, WIDE_NC_VECTORS) < work(ROWS_MR, ROWS_NC_VECTORS)


@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _rows(wide):
    # the rows of a block: the tile's
    return WIDE_MR if wide else ROWS_MR


def _packed(w, dtype, wide):
    """w (K, C) -> flat (K, Cpad) copy, C rounded up to a whole number of _group_times
    tiles (of the wide or narrow tile), zeros in the extra columns."""
    k, c = w.shape
    lanes_ = VEC_BYTES // np.dtype(dtype).itemsize
    mult = (WIDE_NC_VECTORS if wide else ROWS_NC_VECTORS) * lanes_
    p = np.zeros((k, -(-c // mult) * mult), dtype)
    p[:, :c] = w
    return p.ravel()


def _groups(n, wide, wf):
    """Tasks of a sequence kernel over n batch rows with the packed weights wf: each a run
    of whole blocks of rows, one per thread where wf is larger than GROUP_MIN_BYTES (see
    the section's note), else one per block (in L2 either way: more tasks balance the
    threads better; a GRU of hidden size 128, whose w_hh is 196 KB, ran its forward
    recurrence 4% faster so)."""
    nblk = -(-n // (WIDE_MR if wide else ROWS_MR))
    if wf.nbytes <= GROUP_MIN_BYTES:
        return nblk
    return max(1, min(nblk, numba.get_num_threads()))


@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _group(g, groups, n, mr):
    # task g of ``groups`` over blocks of mr rows: (its first block, its number of blocks,
    # scratch for the offsets of their rows)
    nblk = (n + mr - 1) // mr
    b0 = g * nblk // groups
    nb = (g + 1) * nblk // groups - b0
    return b0, nb, np.empty((nb, ROWS_MR), np.intp)


@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _block_rows(b0, bi, n, mr):
    # (first row, rows) of block b0 + bi
    r0 = (b0 + bi) * mr
    return r0, min(mr, n - r0)


@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _group_offsets(aofs, b0, n, stride, base, mr):
    # flat offset of each row of the task's blocks (row r at r*stride + base); the tile's
    # rows past a block repeat its last row (computed, never stored)
    for bi in range(aofs.shape[0]):
        r0, rows = _block_rows(b0, bi, n, mr)
        for i in range(aofs.shape[1]):
            aofs[bi, i] = (r0 + min(i, rows - 1)) * stride + base


@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _group_times(res, a, aofs, wf, k, cpad, wide):
    # res (blocks, >= rows of the tile, cpad): for each block bi, the rows
    # a[aofs[bi, i]:... + k] @ W, W (k, cpad) packed in wf (cpad a multiple of the tile's
    # columns), on the shift micro-kernel (the wide or the narrow tile). Per panel of
    # columns, K in chunks of SEQUENCE_KC, each chunk through every block while it is in
    # L1; every sum still runs over K in order, whatever the blocking or the tile
    mr = _rows(wide)
    ncol = (WIDE_NC_VECTORS if wide else ROWS_NC_VECTORS) * (VEC_BYTES // res.itemsize)
    nb = aofs.shape[0]
    tile = np.empty((nb, mr * ncol), res.dtype)
    for q0 in range(0, cpad, ncol):
        tile[:] = 0
        for k0 in range(0, k, SEQUENCE_KC):
            for bi in range(nb):
                if wide:
                    wide_rows_tile(tile[bi], a, wf, aofs[bi], k0, q0 + k0 * cpad, cpad,
                                   min(SEQUENCE_KC, k - k0))
                else:
                    rows_tile(tile[bi], a, wf, aofs[bi], k0, q0 + k0 * cpad, cpad,
                              min(SEQUENCE_KC, k - k0))
        for bi in range(nb):
            for i in range(mr):
                src = tile[bi, i * ncol:(i + 1) * ncol]
                dst = res[bi, i, q0:q0 + ncol]
                for j in range(ncol):
                    dst[j] = src[j]


@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _copy_group(dst, res, b0, n, mr):
    # dst[r0 + i] = the first dst.shape[1] columns of res[bi, i], for the task's rows
    for bi in range(res.shape[0]):
        r0, rows = _block_rows(b0, bi, n, mr)
        for i in range(rows):
            d = dst[r0 + i]
            src = res[bi, i]
            for j in range(d.size):
                d[j] = src[j]


# ---- RNN: h_t = act(x_t @ w_ih.T + b_ih + h_{t-1} @ w_hh.T + b_hh) ---------------------------

@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _rnn_row(out, h, a, b_ih, b_hh, i, t, code):
    # row i of step t: out[i, t] (input projection) + a (h_{t-1} @ w_hh.T) + biases ->
    # h_t, into out[i, t] and h[i].
    # NOTE: the row functions work on 1-D views, one simple loop per stage: a loop that
    # stores to several arrays needs more runtime alias checks than LLVM allows and
    # stays scalar.
    o = out[i, t]
    for j in range(o.size):
        v = o[j] + a[j]
        if b_ih is not None:
            v += b_ih[j]
        if b_hh is not None:
            v += b_hh[j]
        o[j] = apply_activation(v, code)
    hi = h[i]
    for j in range(o.size):
        hi[j] = o[j]


@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _rnn_row_backward(dg, dh, dout, out, i, t, code):
    # row i of step t: (dh[i] + dout[i, t]) * act'(out[i, t]) -> dg[i, t]
    d = dg[i, t]
    dhi = dh[i]
    y = out[i, t]
    if dout is not None:
        do = dout[i, t]
        for j in range(d.size):
            dhi[j] += do[j]
    for j in range(d.size):
        d[j] = through_activation(dhi[j], y[j], code)


@compute_kernel
def _rnn_sequence(out, h, wf, b_ih, b_hh, code, groups, wide):
    # the whole recurrence, block of rows by block (see _lstm_sequence)
    mr = _rows(wide)
    n, hs = h.shape
    cpad = wf.size // hs
    hf = h.ravel()
    for g in prange(groups):
        b0, nb, aofs = _group(g, groups, n, mr)
        _group_offsets(aofs, b0, n, hs, 0, mr)
        gh = np.empty((nb, ROWS_MR, cpad), h.dtype)
        for t in range(out.shape[1]):
            _group_times(gh, hf, aofs, wf, hs, cpad, wide)
            for bi in range(nb):
                r0, rows = _block_rows(b0, bi, n, mr)
                for i in range(rows):
                    _rnn_row(out, h, gh[bi, i], b_ih, b_hh, r0 + i, t, code)


@compute_kernel
def _rnn_sequence_backward(dg, dh, dout, out, wf, last, code, groups, wide):
    # backward through time, block of rows by block (see _lstm_sequence_backward)
    mr = _rows(wide)
    n, hs = dh.shape
    t_ = dg.shape[1]
    hpad = wf.size // hs
    dgf = dg.ravel()
    for g in prange(groups):
        b0, nb, aofs = _group(g, groups, n, mr)
        res = np.empty((nb, ROWS_MR, hpad), dh.dtype)
        for s in range(t_ - 1, -1, -1):
            for bi in range(nb):
                r0, rows = _block_rows(b0, bi, n, mr)
                for i in range(rows):
                    _rnn_row_backward(dg, dh, dout, out, r0 + i, s, code)
            if s >= last:
                _group_offsets(aofs, b0, n, t_ * hs, s * hs, mr)
                _group_times(res, dgf, aofs, wf, hs, hpad, wide)
                _copy_group(dh, res, b0, n, mr)


def rnn_forward(out, h_n, x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity):
    """x (N, T, F), h0 (N, H) | None, w_ih (H, F), w_hh (H, H), b_ih, b_hh (H,) | None
    -> out (N, T, H), h_n (N, H); nonlinearity "tanh" or "relu\""""
    n, t, f = x.shape
    hs = h_n.shape[1]
    matmul_nt(out.reshape(n * t, hs), x.reshape(n * t, f), w_ih)
    h = _running_state(h_n, h0)
    wide = _wide(n, hs, out.itemsize)
    wf = _packed(w_hh.T, out.dtype, wide)
    _rnn_sequence(out, h, wf, b_ih, b_hh, ACTIVATIONS[nonlinearity], _groups(n, wide, wf),
                  wide)
    _finish_state(h_n, h)


def rnn_backward(dx, dh0, dw_ih, dw_hh, db_ih, db_hh, dout, dh_n, x, h0, w_ih, w_hh, out,
                 nonlinearity):
    """dout (N, T, H) | None, dh_n (N, H) | None, x, h0, w_ih, w_hh, out as in forward ->
    dx (N, T, F) | None, dh0 (N, H) | None, dw_ih | None, dw_hh | None, db_ih | None,
    db_hh | None"""
    n, t, f = x.shape
    hs = out.shape[2]
    dg = np.empty(out.shape, out.dtype)  # C order: the micro-kernel reads flat rows
    dh = np.zeros((n, hs), out.dtype) if dh_n is None else dh_n.copy()
    wide = _wide(n, hs, out.itemsize)
    wf = _packed(w_hh, out.dtype, wide)
    _rnn_sequence_backward(dg, dh, dout, out, wf, 0 if dh0 is not None else 1,
                           ACTIVATIONS[nonlinearity], _groups(n, wide, wf), wide)
    if dh0 is not None:
        dh0[:] = dh
    _weight_grads(dx, dw_ih, dw_hh, db_ih, db_hh, dg, dg, x, _shifted(out, h0), w_ih)


# ---- LSTM (gates i, f, g, o): c_t = f*c_{t-1} + i*g, h_t = o*tanh(c_t) ----------------------

@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _lstm_row(out, h, c, cells, gates, a, b_ih, b_hh, i, t):
    # row i of step t: gates[i, t] (input projection) + a (h_{t-1} @ w_hh.T) + biases ->
    # activated gates, c_t, h_t.
    # NOTE: every loop runs from 0 over a view (the gate's slice of the row): with
    # g[2 * hs + j] or range(2 * hs, 3 * hs), LLVM cannot prove the index non-negative,
    # keeps Numba's negative-index wraparound in the loop, and it stays scalar (10x
    # slower). Likewise in the other step kernels.
    hs = h.shape[1]
    g = gates[i, t]
    for j in range(g.size):
        v = g[j] + a[j]
        if b_ih is not None:
            v += b_ih[j]
        if b_hh is not None:
            v += b_hh[j]
        g[j] = v
    gif, gg, go = g[:2 * hs], g[2 * hs:3 * hs], g[3 * hs:]
    for j in range(gif.size):          # i, f
        gif[j] = apply_activation(gif[j], _SIGMOID)
    for j in range(gg.size):           # g
        gg[j] = apply_activation(gg[j], _TANH)
    for j in range(go.size):           # o
        go[j] = apply_activation(go[j], _SIGMOID)
    gi, gf = g[:hs], g[hs:2 * hs]
    ci = c[i]
    for j in range(hs):
        ci[j] = gf[j] * ci[j] + gi[j] * gg[j]
    o = out[i, t]
    for j in range(hs):
        o[j] = go[j] * apply_activation(ci[j], _TANH)
    cr = cells[i, t]
    hi = h[i]
    for j in range(hs):  # loops: an array assignment brings Numba's broadcasting code
        cr[j] = ci[j]
        hi[j] = o[j]


@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _lstm_row_backward(dg, dh, dc, dout, gates, cells, c0, i, t):
    # row i of step t: dh[i] (+ dout[i, t]), dc[i] -> dg[i, t] (pre-activation gate
    # gradients), dc[i] = dc_{t-1}; dh[i] is left for the GEMM to overwrite
    hs = dh.shape[1]
    one = type(dh[i, 0])(1)
    g = gates[i, t]
    gi, gf, gg, go = g[:hs], g[hs:2 * hs], g[2 * hs:3 * hs], g[3 * hs:]
    d = dg[i, t]
    di, df, dgg, do_ = d[:hs], d[hs:2 * hs], d[2 * hs:3 * hs], d[3 * hs:]
    dhi = dh[i]
    dci = dc[i]
    ct = cells[i, t]
    cp = c0[i] if t == 0 else cells[i, t - 1]
    if dout is not None:
        do = dout[i, t]
        for j in range(hs):
            dhi[j] += do[j]
    for j in range(hs):                # dc_t and the o gate
        og = go[j]
        tc = apply_activation(ct[j], _TANH)
        dci[j] += dhi[j] * og * (one - tc * tc)
        do_[j] = dhi[j] * tc * og * (one - og)
    for j in range(hs):                # i, f, g
        ig = gi[j]
        fg = gf[j]
        g_ = gg[j]
        dct = dci[j]
        di[j] = dct * g_ * ig * (one - ig)
        df[j] = dct * cp[j] * fg * (one - fg)
        dgg[j] = dct * ig * (one - g_ * g_)
    for j in range(hs):                # dc_{t-1}
        dci[j] *= gf[j]


@compute_kernel
def _lstm_sequence(out, h, c, cells, gates, wf, b_ih, b_hh, groups, wide):
    # the whole recurrence, block of rows by block: per step the block's h @ w_hh.T
    # (w_hh.T packed (H, Cpad) in wf), then its rows' gates, c_t and h_t
    mr = _rows(wide)
    n, hs = h.shape
    cpad = wf.size // hs
    hf = h.ravel()
    for g in prange(groups):
        b0, nb, aofs = _group(g, groups, n, mr)
        _group_offsets(aofs, b0, n, hs, 0, mr)
        gh = np.empty((nb, ROWS_MR, cpad), h.dtype)
        for t in range(gates.shape[1]):
            _group_times(gh, hf, aofs, wf, hs, cpad, wide)
            for bi in range(nb):
                r0, rows = _block_rows(b0, bi, n, mr)
                for i in range(rows):
                    _lstm_row(out, h, c, cells, gates, gh[bi, i], b_ih, b_hh, r0 + i, t)


@compute_kernel
def _lstm_sequence_backward(dg, dh, dc, dout, gates, cells, c0, wf, last, groups, wide):
    # backward through time, block of rows by block: per step the rows' gate gradients,
    # then dh = dg[:, t] @ w_hh (packed (4H, Hpad) in wf), down to step ``last`` (0: dh
    # then holds dh0; 1: the last GEMM is not needed)
    mr = _rows(wide)
    n, hs = dh.shape
    t_, g4 = dg.shape[1], dg.shape[2]
    hpad = wf.size // g4
    dgf = dg.ravel()
    for g in prange(groups):
        b0, nb, aofs = _group(g, groups, n, mr)
        res = np.empty((nb, ROWS_MR, hpad), dh.dtype)
        for s in range(t_ - 1, -1, -1):
            for bi in range(nb):
                r0, rows = _block_rows(b0, bi, n, mr)
                for i in range(rows):
                    _lstm_row_backward(dg, dh, dc, dout, gates, cells, c0, r0 + i, s)
            if s >= last:
                _group_offsets(aofs, b0, n, t_ * g4, s * g4, mr)
                _group_times(res, dgf, aofs, wf, g4, hpad, wide)
                _copy_group(dh, res, b0, n, mr)


def lstm_forward(out, h_n, c_n, gates, cells, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    """x (N, T, F), h0, c0 (N, H) | None, w_ih (4H, F), w_hh (4H, H), b_ih, b_hh (4H,) |
    None -> out (N, T, H), h_n, c_n (N, H), gates (N, T, 4H) activated i, f, g, o,
    cells (N, T, H) c_t"""
    n, t, f = x.shape
    hs = h_n.shape[1]
    matmul_nt(gates.reshape(n * t, 4 * hs), x.reshape(n * t, f), w_ih)
    h = _running_state(h_n, h0)
    _state(c_n, c0)
    wide = _wide(n, 4 * hs, out.itemsize)
    wf = _packed(w_hh.T, out.dtype, wide)
    _lstm_sequence(out, h, c_n, cells, gates, wf, b_ih, b_hh, _groups(n, wide, wf), wide)
    _finish_state(h_n, h)


def lstm_backward(dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dout, dh_n, dc_n, x, h0, c0,
                  w_ih, w_hh, out, gates, cells):
    """dout (N, T, H) | None, dh_n, dc_n (N, H) | None, the rest as in forward -> dx (N, T, F) |
    None, dh0, dc0 (N, H) | None, dw_ih | None, dw_hh | None, db_ih | None, db_hh | None"""
    n, t, f = x.shape
    hs = out.shape[2]
    dg = np.empty(gates.shape, gates.dtype)  # C order: the micro-kernel reads flat rows
    dh = np.zeros((n, hs), out.dtype) if dh_n is None else dh_n.copy()
    dc = np.zeros((n, hs), out.dtype) if dc_n is None else dc_n.copy()
    c0 = _zeros_like_state(c0, n, hs, out.dtype)
    wide = _wide(n, hs, out.itemsize)
    wf = _packed(w_hh, out.dtype, wide)
    _lstm_sequence_backward(dg, dh, dc, dout, gates, cells, c0, wf,
                            0 if dh0 is not None else 1, _groups(n, wide, wf), wide)
    if dh0 is not None:
        dh0[:] = dh
    if dc0 is not None:
        dc0[:] = dc
    _weight_grads(dx, dw_ih, dw_hh, db_ih, db_hh, dg, dg, x, _shifted(out, h0), w_ih)


# ---- GRU (gates r, z, n): n = tanh(W_in x + b_in + r*(W_hn h + b_hn)), h' = (1-z)*n + z*h ----

@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _gru_row(out, h, gates, hn, a, b_ih, b_hh, i, t):
    # row i of step t: gates[i, t] (input projection) + a (h_{t-1} @ w_hh.T) + biases ->
    # activated r, z, n (in gates[i, t]), hn[i, t] = W_hn h + b_hn, h_t
    hs = h.shape[1]
    one = type(h[i, 0])(1)
    g = gates[i, t]
    hr = hn[i, t]
    grz, ar = g[:2 * hs], a[:2 * hs]
    for j in range(2 * hs):            # r, z
        v = grz[j] + ar[j]
        if b_ih is not None:
            v += b_ih[j]
        if b_hh is not None:
            v += b_hh[j]
        grz[j] = apply_activation(v, _SIGMOID)
    gr, gz, gn, an = g[:hs], g[hs:2 * hs], g[2 * hs:3 * hs], a[2 * hs:3 * hs]
    for j in range(hs):                # W_hn h + b_hn
        v = an[j]
        if b_hh is not None:
            v += b_hh[2 * hs:][j]
        hr[j] = v
    for j in range(hs):                # n
        v = gn[j] + gr[j] * hr[j]
        if b_ih is not None:
            v += b_ih[2 * hs:][j]
        gn[j] = apply_activation(v, _TANH)
    o = out[i, t]
    hi = h[i]
    for j in range(hs):
        z = gz[j]
        o[j] = (one - z) * gn[j] + z * hi[j]
    for j in range(hs):
        hi[j] = o[j]


@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _gru_row_backward(dgx, dgh, dh, dhz, dout, gates, hn, out, h0, i, t):
    # row i of step t. dh[i]: dG_{t+1}^h @ w_hh (from the GEMM), dhz[i]: dh_{t+1} *
    # z_{t+1} (the direct path) -> dgx[i, t], dgh[i, t] (the input- and hidden-side
    # pre-activation gradients), dhz[i] = dh_t * z_t; dh[i] is left for the GEMM.
    # NOTE: views looped from 0 (see _lstm_row), one array stored per loop
    hs = dh.shape[1]
    one = type(dh[i, 0])(1)
    g = gates[i, t]
    gr, gz, gn = g[:hs], g[hs:2 * hs], g[2 * hs:3 * hs]
    hr = hn[i, t]
    hp = h0[i] if t == 0 else out[i, t - 1]
    dht = dh[i]
    dzi = dhz[i]
    for j in range(hs):
        dht[j] += dzi[j]
    if dout is not None:
        do = dout[i, t]
        for j in range(hs):
            dht[j] += do[j]
    gx, gh = dgx[i, t], dgh[i, t]
    dar, daz, dan = gx[:hs], gx[hs:2 * hs], gx[2 * hs:3 * hs]
    hhr, hhz, hhn = gh[:hs], gh[hs:2 * hs], gh[2 * hs:3 * hs]
    for j in range(hs):                # n
        nn = gn[j]
        dan[j] = dht[j] * (one - gz[j]) * (one - nn * nn)
    for j in range(hs):                # z
        z = gz[j]
        daz[j] = dht[j] * (hp[j] - gn[j]) * z * (one - z)
    for j in range(hs):                # r
        r = gr[j]
        dar[j] = dan[j] * hr[j] * r * (one - r)
    for j in range(hs):
        hhr[j] = dar[j]
    for j in range(hs):
        hhz[j] = daz[j]
    for j in range(hs):
        hhn[j] = dan[j] * gr[j]
    for j in range(hs):
        dzi[j] = dht[j] * gz[j]


@compute_kernel
def _gru_sequence(out, h, gates, hn, wf, b_ih, b_hh, groups, wide):
    # the whole recurrence, block of rows by block (see _lstm_sequence)
    mr = _rows(wide)
    n, hs = h.shape
    cpad = wf.size // hs
    hf = h.ravel()
    for g in prange(groups):
        b0, nb, aofs = _group(g, groups, n, mr)
        _group_offsets(aofs, b0, n, hs, 0, mr)
        gh = np.empty((nb, ROWS_MR, cpad), h.dtype)
        for t in range(gates.shape[1]):
            _group_times(gh, hf, aofs, wf, hs, cpad, wide)
            for bi in range(nb):
                r0, rows = _block_rows(b0, bi, n, mr)
                for i in range(rows):
                    _gru_row(out, h, gates, hn, gh[bi, i], b_ih, b_hh, r0 + i, t)


@compute_kernel
def _gru_sequence_backward(dgx, dgh, dh, dhz, dout, gates, hn, out, h0, wf, last, groups, wide):
    # backward through time, block of rows by block (see _lstm_sequence_backward):
    # dh = dgh[:, t] @ w_hh (packed (3H, Hpad) in wf)
    mr = _rows(wide)
    n, hs = dh.shape
    t_, g3 = dgh.shape[1], dgh.shape[2]
    hpad = wf.size // g3
    dghf = dgh.ravel()
    for g in prange(groups):
        b0, nb, aofs = _group(g, groups, n, mr)
        res = np.empty((nb, ROWS_MR, hpad), dh.dtype)
        for s in range(t_ - 1, -1, -1):
            for bi in range(nb):
                r0, rows = _block_rows(b0, bi, n, mr)
                for i in range(rows):
                    _gru_row_backward(dgx, dgh, dh, dhz, dout, gates, hn, out, h0, r0 + i, s)
            if s >= last:
                _group_offsets(aofs, b0, n, t_ * g3, s * g3, mr)
                _group_times(res, dghf, aofs, wf, g3, hpad, wide)
                _copy_group(dh, res, b0, n, mr)


def gru_forward(out, h_n, gates, hn, x, h0, w_ih, w_hh, b_ih, b_hh):
    """x (N, T, F), h0 (N, H) | None, w_ih (3H, F), w_hh (3H, H), b_ih, b_hh (3H,) | None
    -> out (N, T, H), h_n (N, H), gates (N, T, 3H) activated r, z, n,
    hn (N, T, H) = h_{t-1} @ W_hn.T + b_hn"""
    n, t, f = x.shape
    hs = h_n.shape[1]
    matmul_nt(gates.reshape(n * t, 3 * hs), x.reshape(n * t, f), w_ih)
    h = _running_state(h_n, h0)
    wide = _wide(n, 3 * hs, out.itemsize)
    wf = _packed(w_hh.T, out.dtype, wide)
    _gru_sequence(out, h, gates, hn, wf, b_ih, b_hh, _groups(n, wide, wf), wide)
    _finish_state(h_n, h)


def gru_backward(dx, dh0, dw_ih, dw_hh, db_ih, db_hh, dout, dh_n, x, h0, w_ih, w_hh, out,
                 gates, hn):
    """dout (N, T, H) | None, dh_n (N, H) | None, the rest as in forward -> dx (N, T, F) | None,
    dh0 (N, H) | None, dw_ih | None, dw_hh | None, db_ih | None, db_hh | None"""
    n, t, f = x.shape
    hs = out.shape[2]
    dgx = np.empty(gates.shape, gates.dtype)
    dgh = np.empty(gates.shape, gates.dtype)  # C order: the micro-kernel reads flat rows
    dh = np.zeros((n, hs), out.dtype) if dh_n is None else dh_n.copy()
    dhz = np.zeros((n, hs), out.dtype)
    h0z = _zeros_like_state(h0, n, hs, out.dtype)
    wide = _wide(n, hs, out.itemsize)
    wf = _packed(w_hh, out.dtype, wide)
    _gru_sequence_backward(dgx, dgh, dh, dhz, dout, gates, hn, out, h0z, wf,
                           0 if dh0 is not None else 1, _groups(n, wide, wf), wide)
    if dh0 is not None:
        np.add(dh, dhz, out=dh0)
    _weight_grads(dx, dw_ih, dw_hh, db_ih, db_hh, dgx, dgh, x, _shifted(out, h0), w_ih)


# ---- sequence copies (stacked / bidirectional layers) -------------------------------------

def copy_geometry(out, x, out_col, x_col, reverse, out_time_first, x_time_first):
    """(n, t, out row stride per n, per t, out start, x per n, per t, x start) in elements
    of the flat arrays, for sequence_copy; a reversed copy walks x's time axis backwards."""
    t0, t1 = (1, 0) if out_time_first else (0, 1)
    n, t, co = out.shape[t0], out.shape[t1], out.shape[2]
    cx = x.shape[2]
    os_n, os_t = (co, n * co) if out_time_first else (t * co, co)
    xs_n, xs_t = (cx, n * cx) if x_time_first else (t * cx, cx)
    x0 = x_col
    if reverse:
        x0 += (t - 1) * xs_t
        xs_t = -xs_t
    return n, t, os_n, os_t, out_col, xs_n, xs_t, x0


@parallel_kernel
def _sequence_copy(out, x, n, t, os_n, os_t, o0, xs_n, xs_t, x0, width):
    for r in prange(n * t):
        i = r // t
        k = r - i * t
        o = o0 + i * os_n + k * os_t
        s = x0 + i * xs_n + k * xs_t
        for j in range(width):
            out[o + j] = x[s + j]


def sequence_copy(out, x, out_col, x_col, width, reverse, out_time_first, x_time_first):
    """x (N, T, CX), or (T, N, CX) with x_time_first -> out (N, T, CO), or (T, N, CO) with
    out_time_first: out[n, t, out_col:out_col+width] = x[n, T-1-t if reverse else t,
    x_col:x_col+width]; the rest of out is left as it was"""
    geo = copy_geometry(out, x, out_col, x_col, reverse, out_time_first, x_time_first)
    _sequence_copy(out.reshape(-1), x.reshape(-1), *geo, width)
