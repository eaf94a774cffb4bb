"""fastnet's own SGEMM (and DGEMM) for CUDA: shared-memory tiles, register blocking.

    c = act(op(a) @ op(b) + bias)        (or c += op(a) @ op(b) with ``accumulate``)

``op`` is the identity or the transpose of a C-contiguous 2-D operand (``ta`` / ``tb``),
so the same kernel serves dense forward (x @ w.T), dense backward (g.T @ x, g @ w) and
the conv GEMMs. Each block computes a BM x BN tile of c, staging BK-deep slices of a and
b in shared memory; each of its (BM/TM) x (BN/TN) threads accumulates a TM x TN
sub-tile in registers, so every shared-memory load feeds TM (or TN) multiply-adds.
Accumulators have the operands' dtype: float32 stays float32 (as cuBLAS's SGEMM).
Edge tiles load zeros past the matrix and store nothing there.

The epilogue (bias along rows or columns, a fused activation) writes element (r, col)
of the M x N result to ``c_flat[(col // P) * chunk_stride + r * row_stride + col % P]``:
with P = N, chunk_stride = 0, row_stride = N that is plain row-major; conv2d uses it to
write its (O, N*OH*OW) product straight into NCHW (P = OH*OW).

Why the kernel is generated from a source template through ``exec`` (and not a closure
over the tile constants): its TM x TN accumulators must be scalar variables, written out
(see ``_make``). The closure twin with ``cuda.local.array`` accumulators and loops over
range(TM) / range(TN) was compiled to PTX (sm_86, float32, ta=False, tb=True, bias) and
costs speed: on the large tile 704 -> 144 FMA instructions in the code (the loops are not
fully unrolled) and 76 local-memory loads/stores where the template has none; on the
medium tile 192 -> 56 FMAs and 30 local accesses; on the small tile no local memory but
64 -> 16 shared-memory loads and 1.2x the instructions. ``exec`` runs on our own
template only, once per (dtype, transposes, tile), cached in ``_kernels``.
"""
import math

import numpy as np
from numba import cuda, float32, float64

from ...cuda import simulator
from ..codes import RELU, SIGMOID, TANH
from ._device import sigmoid

NO_BIAS, BIAS_PER_ROW, BIAS_PER_COL = 0, 1, 2

# (BM, BN, BK, TM, TN): 256 threads per block each. The big tile has the most reuse
# per load; smaller tiles keep enough blocks in flight when the output is small.
CONFIGS = {
    "large": (128, 128, 8, 8, 8),
    "medium": (64, 64, 8, 4, 4),
    "small": (32, 32, 16, 2, 2),
    # 64 threads: what the CUDA simulator runs (each simulated thread is a Python
    # thread); the tests run the three above explicitly
    "tiny": (16, 16, 8, 2, 2),
}
# blocks wanted in flight before a bigger tile is worth it (about 2 per SM on big GPUs)
_MIN_BLOCKS = 256

_kernels = {}


_TEMPLATE = """
def _gemm_kernel(c, a, b, bias, m, n, k, accumulate, bias_mode, code, p, chunk_stride,
                 row_stride):
    a_tile = cuda.shared.array((BK, BM), nbtype)   # k-major: a thread row reads a column
    b_tile = cuda.shared.array((BK, BN), nbtype)
    zero = c.dtype.type(0)
    one = c.dtype.type(1)
    tid = cuda.threadIdx.x
    ty = tid // TX
    tx = tid % TX
    row0 = cuda.blockIdx.y * BM
    col0 = cuda.blockIdx.x * BN
{init}
    for k0 in range(0, k, BK):
        # NOTE: consecutive threads read consecutive addresses of the stored operand
        # (coalesced), whichever way it is transposed.
        for l in range(A_LOADS):
            e = tid + l * NT
            if TA:   # a stored (K, M)
                kk = e // BM
                mm = e % BM
            else:    # a stored (M, K)
                mm = e // BK
                kk = e % BK
            gm = row0 + mm
            gk = k0 + kk
            v = zero
            if gm < m and gk < k:
                if TA:
                    v = a[gk, gm]
                else:
                    v = a[gm, gk]
            a_tile[kk, mm] = v
        for l in range(B_LOADS):
            e = tid + l * NT
            if TB:   # b stored (N, K)
                nn = e // BK
                kk = e % BK
            else:    # b stored (K, N)
                kk = e // BN
                nn = e % BN
            gn = col0 + nn
            gk = k0 + kk
            v = zero
            if gn < n and gk < k:
                if TB:
                    v = b[gn, gk]
                else:
                    v = b[gk, gn]
            b_tile[kk, nn] = v
        cuda.syncthreads()
        for kk in range(BK):
{compute}
        cuda.syncthreads()
{epilogue}
"""


STORE = """\
        col = {col}
        if col < n:
            v = c_{i}_{j} + br_{i} + bc_{j}
            if code == RELU:
                v = zero if v <= zero else v  # (a NaN stays NaN; max() would drop it)
            elif code == SIGMOID:
                v = sigmoid(v, one)
            elif code == TANH:
                v = math.tanh(v)
            addr = (col // p) * chunk_stride + r * row_stride + col % p
            if accumulate:
                c[addr] += v
            else:
                c[addr] = v"""


def _make(dtype, ta, tb, config):
    """Build the kernel for one (dtype, transposes, tile) from _TEMPLATE.

    NOTE: the TM x TN accumulators are generated as scalar variables (c_i_j) rather than
    a cuda.local.array: LLVM does not unroll the nested loops far enough to keep a
    local array in registers, and a GEMM whose accumulators live in local memory is
    several times slower. Thread (ty, tx) owns rows ty + i*TY and columns tx + j*TX:
    interleaved, so a warp's shared-memory reads hit distinct banks and its stores to c
    are coalesced.
    """
    BM, BN, BK, TM, TN = CONFIGS[config]
    TX, TY = BN // TN, BM // TM
    NT = TX * TY
    consts = dict(BM=BM, BN=BN, BK=BK, TX=TX, NT=NT, A_LOADS=BM * BK // NT,
                  B_LOADS=BK * BN // NT, TA=ta, TB=tb, BIAS_PER_ROW=BIAS_PER_ROW,
                  BIAS_PER_COL=BIAS_PER_COL, cuda=cuda, math=math, sigmoid=sigmoid, RELU=RELU, SIGMOID=SIGMOID, TANH=TANH,
                  nbtype=float32 if dtype == np.float32 else float64)
    ind = " " * 4
    init = "\n".join(f"{ind}c_{i}_{j} = zero" for i in range(TM) for j in range(TN))
    ind3 = " " * 12
    compute = "\n".join(
        [f"{ind3}a_{i} = a_tile[kk, ty + {i * TY}]" for i in range(TM)]
        + [f"{ind3}b_{j} = b_tile[kk, tx + {j * TX}]" for j in range(TN)]
        + [f"{ind3}c_{i}_{j} += a_{i} * b_{j}" for i in range(TM) for j in range(TN)])
    # per-thread bias terms, loaded once: rows ty + i*TY, columns tx + j*TX
    epilogue = [f"{ind}br_{i} = zero" for i in range(TM)] + [f"{ind}bc_{j} = zero" for j in range(TN)]
    epilogue.append(f"{ind}if bias is not None:")
    for i in range(TM):
        epilogue.append(f"{ind}    if bias_mode == BIAS_PER_ROW and row0 + ty + {i * TY} < m:\n"
                        f"{ind}        br_{i} = bias[row0 + ty + {i * TY}]")
    for j in range(TN):
        epilogue.append(f"{ind}    if bias_mode == BIAS_PER_COL and col0 + tx + {j * TX} < n:\n"
                        f"{ind}        bc_{j} = bias[col0 + tx + {j * TX}]")
    for i in range(TM):
        epilogue.append(f"{ind}r = row0 + ty + {i * TY}")
        epilogue.append(f"{ind}if r < m:")
        for j in range(TN):
            epilogue.append(STORE.format(i=i, j=j, col=f"col0 + tx + {j * TX}"))
    epilogue = "\n".join(epilogue)
    source = _TEMPLATE.format(init=init, compute=compute, epilogue=epilogue)
    namespace = dict(consts)
    exec(compile(source, f"<fastnet gemm {np.dtype(dtype).name} ta={ta} tb={tb} {config}>",
                 "exec"), namespace)
    return cuda.jit(namespace["_gemm_kernel"]), NT


def kernel_for(dtype, ta, tb, config):
    key = (np.dtype(dtype), bool(ta), bool(tb), config)
    entry = _kernels.get(key)
    if entry is None:
        entry = _kernels[key] = _make(np.dtype(dtype), bool(ta), bool(tb), config)
    return entry


def choose_config(m, n):
    """The tile configuration (a CONFIGS key) for an M x N output; the tests replace this
    function to run a given tile on small matrices."""
    if simulator():
        return "tiny"
    for name in ("large", "medium"):
        bm, bn = CONFIGS[name][:2]
        if -(-m // bm) * -(-n // bn) >= _MIN_BLOCKS:
            return name
    return "small"


def gemm(c_flat, a, b, ta=False, tb=False, bias=None, bias_mode=NO_BIAS, code=0,
         accumulate=False, p=None, chunk_stride=0, row_stride=None):
    """c (M, N) [+]= act(op(a) @ op(b) + bias): a (M, K) or (K, M) if ``ta``, b (K, N)
    or (N, K) if ``tb``; ``c_flat`` a 1-D view of the output, addressed as the module
    docstring says (row-major M x N by default)."""
    m, k = (a.shape[1], a.shape[0]) if ta else a.shape
    n = b.shape[0] if tb else b.shape[1]
    if p is None:
        p, chunk_stride = n, 0
    if row_stride is None:
        row_stride = n
    config = choose_config(m, n)
    kern, threads = kernel_for(a.dtype, ta, tb, config)
    bm, bn = CONFIGS[config][:2]
    grid = (-(-n // bn), -(-m // bm))
    kern[grid, threads](c_flat, a, b, bias, m, n, k, accumulate, bias_mode, code, p,
                        chunk_stride, row_stride)
