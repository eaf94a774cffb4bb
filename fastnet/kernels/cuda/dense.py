"""Dense (fully connected) kernels (CUDA): y = act(x @ w.T + b).

The GEMMs are fastnet's own (``gemm.py``), with bias and activation fused into the
forward GEMM's epilogue. Backward: one kernel forms g = dout * act'(y) and the bias
gradient (column sums of g, reduced in a fixed order: deterministic, no atomics), then
dw = g.T @ x and dx = g @ w. Backward kernels overwrite their outputs; pass ``None`` for
an output that is not needed (``dx`` of a first layer, ``db`` without bias).
"""
from numba import cuda

from ..codes import ACTIVATIONS
from ._device import through_activation
from ._launch import empty, flat
from .gemm import BIAS_PER_COL, NO_BIAS, gemm

_COLS, _ROWS = 32, 8  # block of the column-sum kernel: 32 columns x 8 row groups


@cuda.jit
def _activation_grad_colsum_kernel(g, db, dout, y, code, write_g):
    # g = dout * act'(y) (when write_g) and db[j] = sum_i g[i, j]: thread (ty, tx)
    # sums rows ty, ty + 8, ... of column j, then 8 partials are added in order.
    part = cuda.shared.array((_ROWS, _COLS), dout.dtype)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    j = cuda.blockIdx.x * _COLS + tx
    n, m = dout.shape
    one = dout.dtype.type(1)
    s = dout.dtype.type(0)
    if j < m:
        for i in range(ty, n, _ROWS):
            v = dout[i, j]
            if code != 0:
                v = through_activation(v, y[i, j], code, one)
            if write_g:
                g[i, j] = v
            s += v
    part[ty, tx] = s
    cuda.syncthreads()
    if db is not None and ty == 0 and j < m:
        for r in range(1, _ROWS):
            s += part[r, tx]
        db[j] = s


def dense_forward(out, x, w, b, activation):
    """x (N, IN), w (OUT, IN), b (OUT,) or None -> out (N, OUT) = act(x @ w.T + b)"""
    gemm(flat(out), x, w, tb=True, bias=b,
         bias_mode=NO_BIAS if b is None else BIAS_PER_COL, code=ACTIVATIONS[activation])


def dense_backward(dx, dw, db, dout, x, w, out, activation):
    """dout (N, OUT), x (N, IN), w (OUT, IN), out (N, OUT) -> dx (N, IN) | None,
    dw (OUT, IN) | None, db (OUT,) | None; ``out`` (the forward output) may be None without
    activation"""
    code = ACTIVATIONS[activation]
    g = dout
    if code != 0 or db is not None:
        if code != 0:
            g = empty(dout.shape, dout.dtype)
        m = dout.shape[1]
        _activation_grad_colsum_kernel[(-(-m // _COLS),), (_COLS, _ROWS)](g, db, dout, dout if out is None else out,
                                                 code, code != 0)
    if dw is not None:                  # (None: a frozen weight)
        gemm(flat(dw), g, x, ta=True)   # (OUT, N) @ (N, IN)
    if dx is not None:
        gemm(flat(dx), g, w)            # (N, OUT) @ (OUT, IN)
