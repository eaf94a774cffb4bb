"""CUDA dense kernels against the NumPy reference, the CPU kernels and finite
differences: dense_forward(out, x, w, b, activation),
dense_backward(dx, dw, db, dout, x, w, out, activation)."""
import numpy as np
import pytest

from fastnet.kernels import kernel
from tests import reference as ref
from tests.gradcheck import check_backward

from ..cases import DENSE_SHAPES, cases_for

# (N, IN, OUT): odd sizes, batch 1, several GEMM blocks and column-sum blocks
SHAPES = cases_for(DENSE_SHAPES, "cuda")


def _make(rng, dtype, n, i, o):
    return (rng.standard_normal((n, i)).astype(dtype),
            (rng.standard_normal((o, i)) / np.sqrt(i)).astype(dtype),
            rng.standard_normal(o).astype(dtype))


def _forward(dev, host, x, w, b, activation):
    out = dev(np.full((x.shape[0], w.shape[0]), np.nan, x.dtype))
    kernel("dense_forward", "cuda")(out, dev(x), dev(w), None if b is None else dev(b),
                                    activation)
    return host(out)


def _backward(dev, host, dout, x, w, b, y, activation, want=(True, True, True)):
    dx, dw, db = (dev(np.full(a.shape, np.nan, a.dtype)) if k else None
                  for a, k in zip((x, w, b), want))
    kernel("dense_backward", "cuda")(dx, dw, db, dev(dout), dev(x), dev(w), dev(y), activation)
    return tuple(None if a is None else host(a) for a in (dx, dw, db))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("activation", [None, "relu", "sigmoid", "tanh"])
def test_matches_reference_and_cpu(rng, dtype, close, dev, host, shape, activation):
    n, i, o = shape
    x, w, b = _make(rng, dtype, *shape)
    y = _forward(dev, host, x, w, b, activation)
    close(y, ref.dense_forward(x, w, b, activation), scale=np.sqrt(i))
    y_cpu = np.empty_like(y)
    kernel("dense_forward")(y_cpu, x, w, b, activation)
    close(y, y_cpu, scale=np.sqrt(i), err_msg="cuda vs cpu")
    dout = rng.standard_normal(y.shape).astype(dtype)
    dx, dw, db = _backward(dev, host, dout, x, w, b, y, activation)
    rdx, rdw, rdb = ref.dense_backward(dout, x, w, y, activation)
    close(dx, rdx, scale=np.sqrt(o), err_msg="dx")
    close(dw, rdw, scale=np.sqrt(n), err_msg="dw")
    close(db, rdb, scale=np.sqrt(n), err_msg="db")


def test_no_bias_no_dx(rng, close, dev, host):
    x, w, _ = _make(rng, np.float64, 9, 11, 6)
    y = _forward(dev, host, x, w, None, "relu")
    dout = rng.standard_normal(y.shape)
    dx, dw, db = _backward(dev, host, dout, x, w, None, y, "relu", want=(False, True, False))
    assert dx is None and db is None
    np.testing.assert_allclose(dw, ref.dense_backward(dout, x, w, y, "relu")[1], rtol=1e-10)


@pytest.mark.parametrize("activation", [None, "tanh"])
def test_backward_matches_finite_differences(rng, dev, host, activation):
    x, w, b = _make(rng, np.float64, 2, 3, 2)

    def backward(dout, x, w, b):
        return _backward(dev, host, dout, x, w, b, _forward(dev, host, x, w, b, activation),
                         activation)

    check_backward(lambda x, w, b: _forward(dev, host, x, w, b, activation), backward,
                   [x, w, b], rng, names=["x", "w", "b"])
