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
  and step). Tiles are numbered panel-major, so a thread's consecutive tiles share one
  B panel (in L2) while A's blocks stream by. The last block's missing rows repeat its
  last row (computed, never stored).
* an epilogue stores the tile's valid part: out = act(tile + bias) (``gemm`` with an
  activation code), or transposed (``out_trans``: out (N, M) = C.T, used when A is the
  weight matrix and B the batch: see dense.py).

With few rows (M < DOT_ROWS) a tile would compute mostly repeated rows and the pack would
be most of the work, so ``dot_rows`` computes each value as a dot product of two
contiguous rows (out = a @ b.T without packing; LLVM vectorises the reassociated sum),
and ``nn_rows`` sums rows of B (a @ B).

The epilogue applies a ReLU (a flag, not a compile-time key: one compiled kernel serves
every layer); a sigmoid or tanh runs as one pass over the output afterwards, the same
values.
"""
import numpy as np
from numba import njit, prange

from ._jit import FASTMATH, compute_kernel
from ._simd import VEC_BYTES
from ._simd.tiles import ROWS_MR, ROWS_NC_VECTORS, rows_tile
from .activations import _activation_forward
from .codes import IDENTITY, RELU

MR = ROWS_MR
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
def gemm(out, a, bp, bias, relu, out_trans):
    """out (M, N) = relu?(a @ B + bias) with B packed in bp (``pack``), a (M, K)
    C-contiguous, bias (N,) or None; ``out_trans``: out (N, M) = its transpose, bias
    (M,). (One kernel for both flags: a family keyed on them compiled a member per
    layer kind, ~0.7 s each on a first run; other activations are a pass afterwards.)"""
    m, k = a.shape
    nc = _nc(bp)
    n = out.shape[0] if out_trans else out.shape[1]
    npan = bp.size // (k * nc)
    nblk = (m + MR - 1) // MR
    af = a.ravel()
    for t in prange(npan * nblk):
        p = t // nblk
        r0 = (t - p * nblk) * MR
        rows = min(MR, m - r0)
        c0 = p * nc
        cw = min(nc, n - c0)
        aofs = np.empty(MR, np.intp)
        for i in range(MR):
            aofs[i] = (r0 + min(i, rows - 1)) * k
        tile = np.zeros(MR * nc, out.dtype)
        rows_tile(tile, af, bp, aofs, 0, p * k * nc, nc, k)
        if out_trans:
            _store_columns(out, tile, bias, r0, rows, c0, cw, nc, relu)
        else:
            _store_rows(out, tile, bias, r0, rows, c0, cw, nc, relu)


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
        gemm(out, b, _packed(a, True), bias, relu, True)
    else:
        gemm(out, a, _packed(b, True), bias, relu, False)
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
        gemm(out, a, _packed(b, False), np.full(b.shape[1], -0.0, b.dtype), False, False)


def matmul_tn(out, a, b):
    """out (M, N) = a.T @ b: a (K, M), b (K, N), C-contiguous."""
    at = np.empty((a.shape[1], a.shape[0]), a.dtype)
    transpose(at, a)
    matmul_nn(out, at, b)
