"""Dense (fully connected) kernels (CPU): y = act(x @ w.T + b).

The contractions run on fastnet's own GEMM (kernels/gemm.py: no BLAS, whose thread
pool would compete with Numba's); the forward's bias and activation are its epilogue.
Backward forms dout * act'(y) and the bias gradient in one fused pass (one (N, OUT)
temporary when there is an activation), then dw = g.T @ x and dx = g @ w. Backward
kernels overwrite their outputs; pass ``None`` for an output that is not needed (``dx``
of a first layer, ``db`` without bias).
"""
import numpy as np
from numba import njit, prange

from ._jit import FASTMATH, parallel_family
from .activations import ACTIVATIONS, through_activation
from .codes import IDENTITY, RELU
from .gemm import matmul_nn, matmul_nt, matmul_tn

_COL_BLOCK = 64


@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def sum_rows(out, a):
    """out (M,) = the sum of a (N, M) over rows, parallel over column blocks, each
    summing its rows in order: race-free and deterministic whatever the thread count."""
    n, m = a.shape
    nblocks = (m + _COL_BLOCK - 1) // _COL_BLOCK
    for blk in prange(nblocks):
        # NOTE: loops from 0 over views: with range(j0, j1) LLVM cannot prove the index
        # non-negative, keeps Numba's wraparound check, and the loop stays scalar
        j0 = blk * _COL_BLOCK
        j1 = min(j0 + _COL_BLOCK, m)
        ob = out[j0:j1]
        for j in range(ob.size):
            ob[j] = 0
        for i in range(n):
            ai = a[i, j0:j1]
            for j in range(ob.size):
                ob[j] += ai[j]


@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _grad_columns(g, db, dout, y, code):
    n, m = dout.shape
    if code != 0:
        for i in prange(n):
            gi, di, yi = g[i], dout[i], y[i]
            for j in range(m):
                gi[j] = through_activation(di[j], yi[j], code)
    if db is not None:
        sum_rows(db, g if code != 0 else dout)


@parallel_family
def _activation_and_bias_grad(act):
    """``_activation_and_bias_grad[act](g, db, dout, y, relu)``: g = dout * act'(y), then
    db = the sum over rows of g; ``act`` -1 serves no activation and ReLU (``relu``), other
    activations one kernel each (a model compiles only what it uses)."""
    # NOTE: db is parallel over column blocks, each summing its rows in order: race-free
    # and deterministic whatever the thread count; float32 accumulators are enough for
    # the batch sizes of training (rows are summed exactly as a float32 GEMM would). Two
    # passes (g in L2 for the second) were 5x faster than one fused pass, whose loop
    # LLVM left scalar.
    def kernel(g, db, dout, y, relu):
        if act != -1:
            _grad_columns(g, db, dout, y, act)
        elif relu:
            _grad_columns(g, db, dout, y, RELU)
        else:
            _grad_columns(g, db, dout, y, IDENTITY)
    return kernel


def dense_forward(out, x, w, b, activation):
    """x (N, IN), w (OUT, IN), b (OUT,) or None -> out (N, OUT) = act(x @ w.T + b)"""
    matmul_nt(out, x, w, b, ACTIVATIONS[activation])


def dense_backward(dx, dw, db, dout, x, w, out, activation):
    """dout (N, OUT), x (N, IN), w (OUT, IN), out (N, OUT) -> dx (N, IN) | None,
    dw (OUT, IN) | None, db (OUT,) | None; ``out`` (the forward output) may be None without
    activation"""
    code = ACTIVATIONS[activation]
    g = dout
    if code != 0:
        g = np.empty_like(dout)
    if code != 0 or db is not None:
        act = -1 if code in (IDENTITY, RELU) else code
        _activation_and_bias_grad[act](g, db, dout, dout if out is None else out, code == RELU)
    if dw is not None:  # (None: a frozen weight)
        matmul_tn(dw, g, x)
    if dx is not None:
        matmul_nn(dx, g, w)
