"""fastnet's own matrix products on the CPU (dense layers, the recurrent layers' input
projections and weight gradients), on the register-blocked shift tile of
_simd/tiles.py and Numba's thread pool: no BLAS.

Why not NumPy's BLAS: its threads are not fastnet's. OpenBLAS's idle workers busy-wait
for ~60 ms after each GEMM (MKL's ~200 ms) and took the cores from the Numba kernels that
followed (a LeNet-5 training step ran 2x slower with NumPy imported before fastnet, too
late for OPENBLAS_THREAD_TIMEOUT to be read). With every product on Numba's pool, no
other thread pool wakes up during a step, whatever the user's program imported first;
and the sums run in a fixed order, the same for every BLAS and thread count.

C (M, N) = A (M, K) @ B (K, N), in three steps:

* B is packed into panels of NC = ROWS_NC_VECTORS vectors of columns (48 float32 with
  AVX-512): panel p holds B[:, p*NC:(p+1)*NC] row after row, zeros past N, so that a
  tile reads NC contiguous values per step and never past an array (``pack``).
  B is given as b (K, N) or as b.T with b (N, K) (``trans``): the transposing pack is
  the one pass over a weight matrix that a forward x @ w.T costs (or over the batch,
  when it is the smaller operand).
* per (panel, block of ROWS_MR rows of A) one shift tile: ROWS_MR x NC accumulators in
  registers over the whole K (A's rows read contiguously, one broadcast value per row
  and step). A task runs a group of blocks on one panel, and consecutive tasks the same
  blocks on the next panels: the panel stays in L1 / L2 across the group, the group's
  rows of A in L2 across the panels (``_groups``). The last block's missing rows repeat
  its last row (computed, never stored).
* an epilogue stores the tile's valid part: out = act(tile + bias) (``gemm`` with an
  activation code), or transposed (``out_trans``: out (N, M) = C.T, used when A is the
  weight matrix and B the batch: see dense.py).

The weight gradients, out (M, N) = a.T @ b with a (K, M) and b (K, N) over a large K
(the batch, or batch x timesteps), have both operands K-major. ``gemm_tn`` reads a in
place, NC contiguous values of a row per step (no transpose of the larger operand), and
broadcasts values of b, packed once in blocks of MR columns (``pack_blocks``); each task
accumulates its tiles over K in chunks that stay in cache, and stores them transposed.

With few rows (M < DOT_ROWS) a tile would compute mostly repeated rows and the pack would
be most of the work, so ``dot_rows`` computes each value as a dot product of two
contiguous rows (out = a @ b.T without packing; LLVM vectorises the reassociated sum),
and ``nn_rows`` sums rows of B (a @ B).

The epilogue applies a ReLU (a flag, not a compile-time key: one compiled kernel serves
every layer); a sigmoid or tanh runs as one pass over the output afterwards, the same
values.
"""
import numba
import numpy as np
from numba import njit, prange

from ._jit import FASTMATH, compute_kernel
from ._simd import VEC_BYTES
from ._simd.tiles import ROWS_MR, ROWS_NC_VECTORS, packed_rows_tile, rows_tile
from .activations import _activation_forward
from .codes import IDENTITY, RELU

MR = ROWS_MR
# matmul_tn's tasks: GROUP blocks of MR columns of b x PANELS panels of a, over K in chunks
# of KC rows. Measured on the LSTM's weight gradients (K = 6400 = batch 64 x 100 steps;
# GFLOP/s, transpose + gemm -> gemm_tn): 1024x6400 @ 6400x256 152 -> 213, @ 6400x64 62 ->
# 219, 1056x6400 @ 6400x100 99 -> 218; fewer blocks or panels per task re-read the
# chunks more often (GROUP 4 x PANELS 1: 122-143), more left a thread idle.
TN_GROUP, TN_PANELS, TN_KC = 16, 4, 64
TN_MIN_K = 1024
# gemm groups blocks of A larger than this (see _groups)
GROUP_MIN_BYTES = 1 << 20
GROUP_MAX_K = 1024
# rows of b per task of pack_blocks
PACK_ROWS = 64
# fewer rows than this take the dot-product / row-sum paths (batch-1 inference); from 4
# rows on the tiles, which compute MR rows, waste at most half of their work
DOT_ROWS = 4


def panel_columns(itemsize):
    """NC, the columns per packed panel, for an element size in bytes."""
    return ROWS_NC_VECTORS * (VEC_BYTES // itemsize)


def packed_size(k, n, itemsize):
    """Elements of the packed panels of a (K, N) matrix."""
    nc = panel_columns(itemsize)
    return -(-n // nc) * nc * k


@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _nc(a):
    return ROWS_NC_VECTORS * (VEC_BYTES // a.itemsize)


@compute_kernel
def pack(bp, b, trans):
    """b (K, N) (``trans`` False) or (N, K) (True) -> bp (packed_size,), the panels of
    B = b or b.T (see the module docstring). (One kernel for both: as a family keyed on
    ``trans`` a first run compiled it twice.)"""
    nc = _nc(bp)
    if trans:
        n, k = b.shape
    else:
        k, n = b.shape
    npan = bp.size // (k * nc)
    for p in prange(npan):
        c0 = p * nc
        cw = min(nc, n - c0)
        panel = bp[p * k * nc:(p + 1) * k * nc]
        if trans:
            # NOTE: row by row of the panel, reading a column of b's block (in L1 after
            # the first rows): LLVM gathers it, 1.6x faster than 16 x 16 blocks of
            # contiguous reads and strided writes (measured on a 256 x 784 weight)
            blk = b[c0:c0 + cw]
            for s in range(k):
                row = panel[s * nc:(s + 1) * nc]
                for c in range(cw):
                    row[c] = blk[c, s]
                for c in range(cw, nc):
                    row[c] = 0
        else:
            for s in range(k):
                src = b[s, c0:c0 + cw]
                row = panel[s * nc:(s + 1) * nc]
                for c in range(cw):
                    row[c] = src[c]
                for c in range(cw, nc):
                    row[c] = 0


@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _relu(v):
    # NOTE: "<= 0 gives 0", not "> 0 keeps v": a NaN stays NaN, as in PyTorch
    return type(v)(0) if v <= 0 else v


@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _store_rows(out, tile, bias, r0, rows, c0, cw, nc, relu):
    # out[r0 + i, c0 + c] = relu?(tile[i, c] + bias[c0 + c])
    for i in range(rows):
        src = tile[i * nc:i * nc + cw]
        dst = out[r0 + i, c0:c0 + cw]
        if bias is not None:
            bb = bias[c0:c0 + cw]
            if relu:
                for c in range(cw):
                    dst[c] = _relu(src[c] + bb[c])
            else:
                for c in range(cw):
                    dst[c] = src[c] + bb[c]
        elif relu:
            for c in range(cw):
                dst[c] = _relu(src[c])
        else:
            for c in range(cw):
                dst[c] = src[c]


@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _store_columns(out, tile, bias, r0, rows, c0, cw, nc, relu):
    # out (N, M): out[c0 + c, r0 + i] = relu?(tile[i, c] + bias[r0 + i])
    for i in range(rows):
        src = tile[i * nc:i * nc + cw]
        bo = bias[r0 + i] if bias is not None else src.dtype.type(0)
        if relu:
            for c in range(cw):
                out[c0 + c, r0 + i] = _relu(src[c] + bo)
        else:
            for c in range(cw):
                out[c0 + c, r0 + i] = src[c] + bo


@compute_kernel
def gemm(out, a, bp, bias, relu, out_trans, group):
    """out (M, N) = relu?(a @ B + bias) with B packed in bp (``pack``), a (M, K)
    C-contiguous, bias (N,) or None; ``out_trans``: out (N, M) = its transpose, bias
    (M,). One task per (``group`` blocks of MR rows, panel), numbered group-major, or
    panel-major for ``group`` 1: see ``_groups``. (One kernel
    for both flags: a family keyed on them compiled a member per layer kind, ~0.7 s each
    on a first run; other activations are a pass afterwards.)"""
    m, k = a.shape
    nc = _nc(bp)
    n = out.shape[0] if out_trans else out.shape[1]
    npan = bp.size // (k * nc)
    nblk = (m + MR - 1) // MR
    ngrp = (nblk + group - 1) // group
    af = a.ravel()
    for t in prange(ngrp * npan):
        if group == 1:  # panel-major
            p = t // ngrp
            g = t - p * ngrp
        else:
            g = t // npan
            p = t - g * npan
        c0 = p * nc
        cw = min(nc, n - c0)
        aofs = np.empty(MR, np.intp)
        tile = np.empty(MR * nc, out.dtype)
        for blk in range(g * group, min(nblk, g * group + group)):
            r0 = blk * MR
            rows = min(MR, m - r0)
            for i in range(MR):
                aofs[i] = (r0 + min(i, rows - 1)) * k
            for i in range(tile.size):
                tile[i] = 0
            rows_tile(tile, af, bp, aofs, 0, p * k * nc, nc, k)
            if out_trans:
                _store_columns(out, tile, bias, r0, rows, c0, cw, nc, relu)
            else:
                _store_rows(out, tile, bias, r0, rows, c0, cw, nc, relu)


@compute_kernel
def pack_blocks(bp, b):
    """b (K, N) -> bp (ceil(N / MR), K, MR): blocks of MR columns of b, row after row (the
    a_i of the strided tile); the last block's missing columns repeat its last column
    (computed, never stored). Parallel over chunks of rows, each read once, in cache
    while it is spread over the blocks."""
    k, n = b.shape
    nblk = bp.shape[0]
    for ch in prange((k + PACK_ROWS - 1) // PACK_ROWS):
        s0 = ch * PACK_ROWS
        s1 = min(k, s0 + PACK_ROWS)
        for blk in range(nblk):
            c0 = blk * MR
            if c0 + MR <= n:
                for s in range(s0, s1):
                    src = b[s, c0:c0 + MR]
                    dst = bp[blk, s]
                    for i in range(MR):
                        dst[i] = src[i]
            else:
                for s in range(s0, s1):
                    dst = bp[blk, s]
                    for i in range(MR):
                        dst[i] = b[s, min(c0 + i, n - 1)]


@compute_kernel
def gemm_tn(out, a, bp, group, panels, kc):
    """out (M, N) = a.T @ b: a (K, M) C-contiguous with M >= NC, read in place; b (K, N)
    packed by ``pack_blocks`` into bp. Tiles of MR columns of b x NC columns of a (a
    panel: NC contiguous values of each row of a; the last one ends at column M and
    stores only its new columns), written transposed. One task per (``group`` blocks,
    ``panels`` panels), their tiles accumulated over K in chunks of ``kc`` rows (the
    chunk of a and of bp in cache across the task's tiles; the same order of sums as
    one pass over K)."""
    k, m = a.shape
    n = out.shape[1]
    nc = _nc(out)
    if m < nc:  # the last panel would start before a (matmul_tn pads such an a)
        raise ValueError("gemm_tn: a needs at least one panel of columns")
    nblk = bp.shape[0]
    npan = (m + nc - 1) // nc
    ngrp = (nblk + group - 1) // group
    npg = (npan + panels - 1) // panels
    tsz = MR * nc
    af = a.ravel()
    bf = bp.ravel()
    for t in prange(ngrp * npg):
        pg = t // ngrp
        g = t - pg * ngrp
        p0 = pg * panels
        p1 = min(npan, p0 + panels)
        b0 = g * group
        b1 = min(nblk, b0 + group)
        np_ = p1 - p0
        acc = np.zeros((b1 - b0) * np_ * tsz, out.dtype)
        for k0 in range(0, k, kc):
            kk = min(kc, k - k0)
            for p in range(p0, p1):
                c0 = min(p * nc, m - nc)
                for bi in range(b1 - b0):
                    j = (bi * np_ + p - p0) * tsz
                    packed_rows_tile(acc[j:j + tsz], bf, af, ((b0 + bi) * k + k0) * MR, MR,
                                     k0 * m + c0, m, kk)
        for bi in range(b1 - b0):
            r0 = (b0 + bi) * MR
            rows = min(MR, n - r0)
            for p in range(p0, p1):
                c0 = min(p * nc, m - nc)
                skip = p * nc - c0
                j = (bi * np_ + p - p0) * tsz
                for i in range(rows):
                    src = acc[j + i * nc + skip:j + (i + 1) * nc]
                    for c in range(src.size):
                        out[c0 + skip + c, r0 + i] = src[c]


@compute_kernel
def dot_rows(out, a, b, bias, relu):
    """a (M, K), b (N, K), bias (N,) or None -> out (M, N) = relu?(a @ b.T + bias), one
    dot product per value (few rows: see the module docstring)."""
    m, k = a.shape
    n = b.shape[0]
    for j in prange(n):
        bj = b[j]
        bo = bias[j] if bias is not None else out.dtype.type(0)
        for i in range(m):
            ai = a[i]
            s = out.dtype.type(0)
            for q in range(k):
                s += ai[q] * bj[q]
            v = s + bo
            out[i, j] = _relu(v) if relu else v


@compute_kernel
def transpose(out, a):
    """a (M, N) -> out (N, M) = a.T, in 16 x 16 blocks."""
    m, n = a.shape
    nb = (n + 15) // 16
    for jb in prange(nb):
        j0 = jb * 16
        j1 = min(j0 + 16, n)
        for i0 in range(0, m, 16):
            i1 = min(i0 + 16, m)
            for j in range(j0, j1):
                dst = out[j, i0:i1]
                for i in range(dst.size):
                    dst[i] = a[i0 + i, j]


@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _nn_rows_block(out, a, b, j0, j1):
    m, k = a.shape
    for i in range(m):
        dst = out[i, j0:j1]
        for c in range(dst.size):
            dst[c] = 0
        ai = a[i]
        for s in range(k):
            src = b[s, j0:j1]
            av = ai[s]
            for c in range(dst.size):
                dst[c] += av * src[c]


@compute_kernel
def nn_rows(out, a, b):
    """a (M, K), b (K, N) -> out (M, N) = a @ b for few rows: per block of columns, each
    row of out summed over K in order, vectorised along the row (no packing)."""
    n = b.shape[1]
    nb = (n + 255) // 256
    for jb in prange(nb):
        _nn_rows_block(out, a, b, jb * 256, min(jb * 256 + 256, n))


def _tasks(count, per_task):
    return -(-count // per_task)


def _enough_tasks(per_thread=4):
    """Tasks a kernel needs to keep every thread busy."""
    return per_thread * numba.get_num_threads()


def _groups(m, n, k, itemsize):
    """Blocks of MR rows per task of ``gemm`` (M rows, N columns, K the sum's length).

    NOTE: with one tile per task, numbered panel-major, the panel stays in cache while
    every block of A streams by, from memory when A is larger than L2 (a 6400 x 256 A,
    the LSTM's input projection over a batch of sequences, is 6.5 MB). For such an A a
    task runs ``group`` blocks on one panel and consecutive tasks the same blocks on the
    next panels, so that the group's rows stay in L2 across the panels. Measured
    (2-core AVX-512 development machine, GFLOP/s, panel-major -> grouped): 6400x64 @
    64x1024 66 -> 235, 6400x256 @ 256x1024 191 -> 240, 6400x256 @ 256x103 97 -> 210,
    6400x1024 @ 1024x256 250 -> 270; 4 blocks were best for K up to a few hundred, 8
    beyond. Panel-major stays where A fits in L2 (each thread then reads the panels its
    own core packed: a 10x128 @ 128x256, grouped, went from 27 to 37 us) and for K past
    GROUP_MAX_K (a panel of ~400 KB: 2048^3 ran at 279 GFLOP/s panel-major, 222
    grouped). Fewer blocks when there would be too few tasks."""
    if m * k * itemsize <= GROUP_MIN_BYTES or k > GROUP_MAX_K:
        return 1
    group = 4 if k <= 512 else 8
    npan = _tasks(n, panel_columns(itemsize))
    while group > 1 and _tasks(_tasks(m, MR), group) * npan < _enough_tasks():
        group //= 2
    return group


def _packed(b, trans):
    k, n = (b.shape[1], b.shape[0]) if trans else b.shape
    bp = np.empty(packed_size(k, n, b.itemsize), b.dtype)
    pack(bp, b, trans)
    return bp


def matmul_nt(out, a, b, bias=None, code=IDENTITY):
    """out (M, N) = act(a @ b.T + bias): a (M, K), b (N, K), bias (N,) or None, all
    C-contiguous; ``code`` the activation (kernels/codes.py): ReLU in the epilogue, a
    sigmoid or tanh as one pass over out afterwards."""
    m, n = a.shape[0], b.shape[0]
    relu = code == RELU
    if a.shape[1] == 0:  # empty sums (the tiles would divide by K)
        out[...] = 0 if bias is None else bias
        if relu:
            np.maximum(out, 0, out=out)
    elif m < DOT_ROWS:
        dot_rows(out, a, b, bias, relu)
    elif m < n:
        # NOTE: the batch is the smaller operand: pack it (transposed) and let the weight
        # rows be the tiles' rows; the epilogue writes the transpose back
        gemm(out, b, _packed(a, True), bias, relu, True, _groups(n, m, b.shape[1], a.itemsize))
    else:
        gemm(out, a, _packed(b, True), bias, relu, False, _groups(m, n, a.shape[1], a.itemsize))
    if code != IDENTITY and not relu:
        flat = out.reshape(-1)
        _activation_forward[code](flat, flat)


def matmul_nn(out, a, b):
    """out (M, N) = a @ b: a (M, K), b (K, N), C-contiguous."""
    if a.shape[1] == 0:  # empty sums (the tiles would divide by K)
        out[...] = 0
    elif a.shape[0] < DOT_ROWS:
        nn_rows(out, a, b)
    else:
        # NOTE: a bias of -0.0, not None: x + -0.0 is x for every x (-0.0, NaN and inf
        # included), and the forward's compiled kernel serves dx and dw too (a signature
        # with None compiled a second one on a first run)
        gemm(out, a, _packed(b, False), np.full(b.shape[1], -0.0, b.dtype), False, False,
             _groups(a.shape[0], b.shape[1], a.shape[1], a.itemsize))


def matmul_tn(out, a, b):
    """out (M, N) = a.T @ b: a (K, M), b (K, N), C-contiguous (the weight gradients: a
    the output gradients over the batch, b the inputs)."""
    k, m = a.shape
    n = b.shape[1]
    if k == 0:
        out[...] = 0
        return
    nc = panel_columns(a.itemsize)
    # NOTE: the transpose of a and gemm pass over a (K x M) once more, gemm_tn over b
    # (K x N); gemm_tn was faster (old / new, 2-core development machine) where a is the
    # larger operand over a long K: 1024x6400 @ 6400x256 1.44, @ 6400x64 2.66 (and from
    # K = 128 on, 1.43), 103x6400 @ 6400x256 1.42; slower for the dense layers' K =
    # batch 128 (256x128 @ 128x784: 0.64, 1024x128 @ 128x256: 0.74) and for few columns
    # of a (10 x K @ K x 256: 0.70-0.87)
    if m < nc or not (m >= 8 * n or (k >= TN_MIN_K and 5 * m >= 2 * n)):
        at = np.empty((m, k), a.dtype)
        transpose(at, a)
        matmul_nn(out, at, b)
        return
    bp = np.empty(((n + MR - 1) // MR, k, MR), b.dtype)
    pack_blocks(bp, b)
    group, panels = TN_GROUP, TN_PANELS
    npan = (m + nc - 1) // nc
    # NOTE: two tasks per thread: with four, 1024x6400 @ 6400x64 (8 blocks, 22 panels)
    # took 2 panels per task and ran at 102 GFLOP/s instead of 219
    while group > 1 and _tasks(bp.shape[0], group) * _tasks(npan, panels) < _enough_tasks(2):
        group //= 2
    while panels > 1 and _tasks(bp.shape[0], group) * _tasks(npan, panels) < _enough_tasks(2):
        panels //= 2
    gemm_tn(out, a, bp, group, panels, TN_KC)
