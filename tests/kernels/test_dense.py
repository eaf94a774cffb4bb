"""Dense kernels: dense_forward(out, x, w, b, activation) and
dense_backward(dx, dw, db, dout, x, w, out, activation)."""
import numba
import numpy as np
import pytest

from fastnet.kernels import kernel
from tests import reference as ref
from tests.gradcheck import check_backward

from .cases import DENSE_SHAPES

ACTIVATIONS = [None, "relu", "sigmoid", "tanh"]
# (N, IN, OUT): odd sizes, batch 1, and one large enough for the parallel epilogue
# (several 64-column blocks, rows split across threads)
SHAPES = DENSE_SHAPES


def _make(rng, dtype, n, i, o, bias=True):
    x = rng.standard_normal((n, i)).astype(dtype)
    w = (rng.standard_normal((o, i)) / np.sqrt(i)).astype(dtype)
    b = rng.standard_normal(o).astype(dtype) if bias else None
    return x, w, b


def _forward(x, w, b, activation):
    out = np.full((x.shape[0], w.shape[0]), 123.0, dtype=x.dtype)
    kernel("dense_forward")(out, x, w, b, activation)
    return out


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_forward_matches_reference(rng, dtype, close, shape, bias, activation):
    """act(x @ w.T + b) against the einsum reference, with and without bias."""
    x, w, b = _make(rng, dtype, *shape, bias=bias)
    out = _forward(x, w, b, activation)
    close(out, ref.dense_forward(x, w, b, activation), scale=np.sqrt(shape[1]))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_backward_matches_reference(rng, dtype, close, shape, activation):
    """dx, dw, db against the reference; outputs pre-filled with garbage are overwritten."""
    n, i, o = shape
    x, w, b = _make(rng, dtype, *shape)
    y = _forward(x, w, b, activation)
    dout = rng.standard_normal(y.shape).astype(dtype)
    dx = np.full(x.shape, 123.0, dtype)
    dw = np.full(w.shape, 123.0, dtype)
    db = np.full(b.shape, 123.0, dtype)
    dout_copy = dout.copy()
    kernel("dense_backward")(dx, dw, db, dout, x, w, y, activation)
    rdx, rdw, rdb = ref.dense_backward(dout, x, w, y, activation)
    close(dx, rdx, scale=np.sqrt(o), err_msg="dx")
    close(dw, rdw, scale=np.sqrt(n), err_msg="dw")
    close(db, rdb, scale=np.sqrt(n), err_msg="db")
    np.testing.assert_array_equal(dout, dout_copy, err_msg="dout must not be modified")


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", [(3, 4, 5), (1, 2, 3)], ids=["3x4x5", "1x2x3"])
def test_backward_matches_finite_differences(rng, shape, activation):
    """float64 central differences of dense_forward for x, w and b."""
    x, w, b = _make(rng, np.float64, *shape)

    def backward(dout, x, w, b):
        y = _forward(x, w, b, activation)
        dx, dw, db = np.empty_like(x), np.empty_like(w), np.empty_like(b)
        kernel("dense_backward")(dx, dw, db, dout, x, w, y, activation)
        return dx, dw, db

    check_backward(lambda x, w, b: _forward(x, w, b, activation), backward, [x, w, b], rng,
                   names=["x", "w", "b"])


@pytest.mark.parametrize("activation", [None, "relu"])
def test_optional_bias_dx_db_none(rng, dtype, close, activation):
    """b=None in forward, dx=None and db=None in backward: dw is still right."""
    x, w, _ = _make(rng, dtype, 9, 11, 6, bias=False)
    y = _forward(x, w, None, activation)
    close(y, ref.dense_forward(x, w, None, activation), scale=np.sqrt(11))
    dout = rng.standard_normal(y.shape).astype(dtype)
    dw = np.full(w.shape, 123.0, dtype)
    kernel("dense_backward")(None, dw, None, dout, x, w, y, activation)
    close(dw, ref.dense_backward(dout, x, w, y, activation)[1], scale=3.0)
    # dx only (db None) and db only (dx None)
    dx = np.full(x.shape, 123.0, dtype)
    kernel("dense_backward")(dx, dw, None, dout, x, w, y, activation)
    close(dx, ref.dense_backward(dout, x, w, y, activation)[0], scale=3.0)
    db = np.full(6, 123.0, dtype)
    kernel("dense_backward")(None, dw, db, dout, x, w, y, activation)
    close(db, ref.dense_backward(dout, x, w, y, activation)[2], scale=3.0)


def test_sigmoid_epilogue_saturates_without_nan():
    """sigmoid fused into dense: pre-activations of +-1e4 give exactly 1 and 0 (float32)."""
    x = np.array([[1.0], [-1.0]], np.float32)
    w = np.array([[1e4]], np.float32)
    out = _forward(x, w, None, "sigmoid")
    np.testing.assert_array_equal(out, [[1.0], [0.0]])


def test_backward_does_not_depend_on_thread_count(rng):
    """db (column blocks summed in row order) is bitwise the same with 1 and 2 Numba threads."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 Numba threads")
    x, w, b = _make(rng, np.float32, 130, 257, 300)
    y = _forward(x, w, b, "tanh")
    dout = rng.standard_normal(y.shape).astype(np.float32)
    saved = numba.get_num_threads()
    results = []
    try:
        for t in (1, 2):
            numba.set_num_threads(t)
            dx, dw, db = np.empty_like(x), np.empty_like(w), np.empty_like(b)
            kernel("dense_backward")(dx, dw, db, dout, x, w, y, "tanh")
            results.append((dx, dw, db))
    finally:
        numba.set_num_threads(saved)
    for a, c in zip(*results):
        np.testing.assert_array_equal(a, c)
