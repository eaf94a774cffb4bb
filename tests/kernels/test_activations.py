"""Activation kernels. Elementwise: relu / sigmoid / tanh forward(out, x),
backward(dx, dout, out); leaky_relu forward(out, x, slope), backward(dx, dout, x, slope);
hardsigmoid forward(out, x), backward(dx, dout, x).
Row-wise over the last axis of (N, C): softmax / log_softmax forward(out, x),
backward(dx, dout, out)."""
import numpy as np
import pytest

from fastnet.kernels import _kernel, kernel
from tests import reference as ref
from tests.gradcheck import check_backward

from .cases import ACTIVATION_SHAPES, SOFTMAX_SHAPES

SLOPE = 0.1
# op -> (kernel forward(out, x), kernel backward(dx, dout, x, out), reference forward,
#        reference backward(dout, x, out))
ELEMENTWISE = {
    "relu": (lambda o, x: kernel("relu_forward")(o, x),
             lambda dx, g, x, o: kernel("relu_backward")(dx, g, o),
             ref.relu_forward, lambda g, x, o: ref.relu_backward(g, o)),
    "leaky_relu": (lambda o, x: kernel("leaky_relu_forward")(o, x, SLOPE),
                   lambda dx, g, x, o: kernel("leaky_relu_backward")(dx, g, x, SLOPE),
                   lambda x: ref.leaky_relu_forward(x, SLOPE),
                   lambda g, x, o: ref.leaky_relu_backward(g, x, SLOPE)),
    "hardsigmoid": (lambda o, x: kernel("hardsigmoid_forward")(o, x),
                    lambda dx, g, x, o: kernel("hardsigmoid_backward")(dx, g, x),
                    ref.hardsigmoid_forward, lambda g, x, o: ref.hardsigmoid_backward(g, x)),
    "sigmoid": (lambda o, x: kernel("sigmoid_forward")(o, x),
                lambda dx, g, x, o: kernel("sigmoid_backward")(dx, g, o),
                ref.sigmoid_forward, lambda g, x, o: ref.sigmoid_backward(g, o)),
    "tanh": (lambda o, x: kernel("tanh_forward")(o, x),
             lambda dx, g, x, o: kernel("tanh_backward")(dx, g, o),
             ref.tanh_forward, lambda g, x, o: ref.tanh_backward(g, o)),
}
ROWWISE = {
    "softmax": (ref.softmax_forward, ref.softmax_backward),
    "log_softmax": (ref.log_softmax_forward, ref.log_softmax_backward),
}
# elementwise kernels take any shape: odd 1-D, batch-1 4-D, and one big enough to split
EW_SHAPES = ACTIVATION_SHAPES
ROW_SHAPES = SOFTMAX_SHAPES


def _ew_forward(op, x):
    out = np.full_like(x, 123.0)
    ELEMENTWISE[op][0](out, x)
    return out


def _row_forward(op, x):
    out = np.full_like(x, 123.0)
    kernel(f"{op}_forward")(out, x)
    return out


def _row_backward(op, dx, dout, out):
    kernel(f"{op}_backward")(dx, dout, out)
    return dx


@pytest.mark.parametrize("shape", EW_SHAPES, ids=str)
@pytest.mark.parametrize("op", list(ELEMENTWISE))
def test_elementwise_forward_matches_reference(rng, dtype, close, op, shape):
    """Forward against the reference over values in [-6, 6] (plus exact zeros)."""
    x = (rng.uniform(-6, 6, shape)).astype(dtype)
    x.reshape(-1)[::5] = 0
    close(_ew_forward(op, x), ELEMENTWISE[op][2](x))


@pytest.mark.parametrize("shape", EW_SHAPES, ids=str)
@pytest.mark.parametrize("op", list(ELEMENTWISE))
def test_elementwise_backward_matches_reference(rng, dtype, close, op, shape):
    """Backward against the reference; dx pre-filled with garbage is overwritten."""
    x = rng.uniform(-6, 6, shape).astype(dtype)
    out = _ew_forward(op, x)
    dout = rng.standard_normal(shape).astype(dtype)
    dx = np.full_like(x, 123.0)
    ELEMENTWISE[op][1](dx, dout, x, out)
    close(dx, ELEMENTWISE[op][3](dout, x, out))


@pytest.mark.parametrize("op", list(ELEMENTWISE))
def test_elementwise_backward_may_alias_dout(rng, dtype, close, op):
    """dx may be the same array as dout."""
    x = rng.uniform(-6, 6, (3, 37)).astype(dtype)
    out = _ew_forward(op, x)
    dout = rng.standard_normal(x.shape).astype(dtype)
    want = ELEMENTWISE[op][3](dout, x, out)
    ELEMENTWISE[op][1](dout, dout, x, out)
    close(dout, want)


@pytest.mark.parametrize("op", list(ELEMENTWISE))
def test_elementwise_backward_matches_finite_differences(rng, op):
    """float64 central differences of the kernel's own forward (x kept away from 0)."""
    x = rng.uniform(0.1, 3, (2, 3, 4)) * rng.choice([-1.0, 1.0], (2, 3, 4))

    def backward(dout, x):
        dx = np.empty_like(x)
        ELEMENTWISE[op][1](dx, dout, x, _ew_forward(op, x))
        return (dx,)

    check_backward(lambda x: _ew_forward(op, x), backward, [x], rng)


def test_saturation_is_finite(dtype):
    """sigmoid(+-1e4) is exactly 1 / 0, tanh(+-1e4) exactly +-1, no NaN or inf;
    relu / leaky_relu of +-1e4 are exact; all in the input dtype."""
    x = np.array([1e4, -1e4, 0.0, 88.0, -88.0, 1e30, -1e30], dtype)
    s = _ew_forward("sigmoid", x)
    assert s.dtype == dtype and np.all(np.isfinite(s))
    np.testing.assert_array_equal(s[:3], [1.0, 0.0, 0.5])
    close_ref = ref.sigmoid_forward(x)
    np.testing.assert_allclose(s, close_ref, rtol=1e-6, atol=1e-30)
    t = _ew_forward("tanh", x)
    np.testing.assert_array_equal(t[[0, 1, 2, 5, 6]], [1.0, -1.0, 0.0, 1.0, -1.0])
    np.testing.assert_array_equal(_ew_forward("relu", x), np.maximum(x, 0))
    np.testing.assert_array_equal(_ew_forward("leaky_relu", x), np.where(x > 0, x, x * dtype.type(SLOPE)))
    # the saturated derivative is 0, not NaN
    dx = np.empty_like(x)
    kernel("sigmoid_backward")(dx, np.ones_like(x), s)
    assert np.all(np.isfinite(dx)) and dx[0] == 0 and dx[1] == 0


@pytest.mark.parametrize("shape", ROW_SHAPES, ids=str)
@pytest.mark.parametrize("op", list(ROWWISE))
def test_rowwise_forward_matches_reference(rng, dtype, close, op, shape):
    """softmax / log_softmax over the last axis against the logaddexp reference."""
    x = (3 * rng.standard_normal(shape)).astype(dtype)
    out = _row_forward(op, x)
    close(out, ROWWISE[op][0](x))
    if op == "softmax":
        np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=10 * np.finfo(dtype).eps * shape[1])


@pytest.mark.parametrize("shape", ROW_SHAPES, ids=str)
@pytest.mark.parametrize("op", list(ROWWISE))
def test_rowwise_backward_matches_reference(rng, dtype, close, op, shape):
    """Backward against the explicit-Jacobian reference; garbage dx is overwritten."""
    x = (3 * rng.standard_normal(shape)).astype(dtype)
    out = _row_forward(op, x)
    dout = rng.standard_normal(shape).astype(dtype)
    dx = _row_backward(op, np.full_like(x, 123.0), dout, out)
    close(dx, ROWWISE[op][1](dout, out), scale=np.sqrt(shape[1]))


@pytest.mark.parametrize("op", list(ROWWISE))
def test_rowwise_backward_may_alias_dout(rng, dtype, close, op):
    """dx may be the same array as dout (the row sum is taken before any write)."""
    x = rng.standard_normal((6, 11)).astype(dtype)
    out = _row_forward(op, x)
    dout = rng.standard_normal(x.shape).astype(dtype)
    want = ROWWISE[op][1](dout, out)
    _row_backward(op, dout, dout, out)
    close(dout, want, scale=np.sqrt(11))


@pytest.mark.parametrize("shape", [(3, 4), (1, 5), (2, 1)], ids=str)
@pytest.mark.parametrize("op", list(ROWWISE))
def test_rowwise_backward_matches_finite_differences(rng, op, shape):
    """float64 central differences of softmax / log_softmax forward."""
    x = rng.standard_normal(shape)

    def backward(dout, x):
        return (_row_backward(op, np.empty_like(x), dout, _row_forward(op, x)),)

    check_backward(lambda x: _row_forward(op, x), backward, [x], rng)


@pytest.mark.parametrize("op", list(ROWWISE))
def test_rowwise_extreme_logits(dtype, close, op):
    """Logits of +-1e4 stay finite and correct to the dtype's usual tolerance: the row max
    is subtracted, and x - max is exact, so values near 0 keep full precision."""
    x = np.array([[1e4, -1e4, 0.0],
                  [-1e4, -1e4, -1e4],
                  [1e4, 1e4, -1e4],
                  [-1e4, 0.0, 1e4 - 1.0]], dtype)
    out = _row_forward(op, x)
    assert out.dtype == dtype and np.all(np.isfinite(out))
    dout = np.array([[1.0, 2.0, 3.0]] * 4, dtype)
    dx = _row_backward(op, np.empty_like(x), dout, out)
    assert np.all(np.isfinite(dx))
    close(dx, ROWWISE[op][1](dout, out), err_msg="backward")
    close(out, ROWWISE[op][0](x), err_msg="forward")


# float32 rows of up to one vector (8 or 16 values) run explicit vector code, longer ones
# loops: every width around both vector sizes
@pytest.mark.parametrize("c", [1, 2, 7, 8, 9, 10, 15, 16, 17, 31, 33])
@pytest.mark.parametrize("op", list(ROWWISE))
def test_rowwise_every_width_near_one_vector(rng, dtype, close, op, c):
    """Forward and backward against the reference for rows of 1 to 33 values."""
    x = (3 * rng.standard_normal((37, c))).astype(dtype)
    out = _row_forward(op, x)
    close(out, ROWWISE[op][0](x))
    dout = rng.standard_normal(x.shape).astype(dtype)
    dx = _row_backward(op, np.full_like(x, 123.0), dout, out)
    close(dx, ROWWISE[op][1](dout, out), scale=np.sqrt(c))


@pytest.mark.parametrize("op", list(ROWWISE))
def test_rowwise_strided_rows(rng, dtype, close, op):
    """Rows that are not contiguous (a column-strided view) give the contiguous result
    (up to rounding: short float32 rows take another path when contiguous)."""
    for c in (5, 40):
        x = rng.standard_normal((6, 2 * c)).astype(dtype)
        dout = rng.standard_normal((6, c)).astype(dtype)
        out, dx = np.empty((6, 2 * c), dtype)[:, ::2], np.empty((6, 2 * c), dtype)[:, ::2]
        kernel(f"{op}_forward")(out, x[:, ::2])
        kernel(f"{op}_backward")(dx, dout, out)
        want = _row_forward(op, np.ascontiguousarray(x[:, ::2]))
        close(out, want)
        close(dx, _row_backward(op, np.empty_like(want), dout, want), scale=np.sqrt(c))


def test_softmax_backward_of_mixed_dtypes(rng):
    """Arrays of two float dtypes in one backward call (the loop, not the vector code) on
    the raw kernel (kernel() refuses mixed float dtypes: tests/kernels/test_checked.py)."""
    out = _row_forward("softmax", rng.standard_normal((5, 10)).astype(np.float32))
    dout = rng.standard_normal((5, 10))
    dx = np.empty((5, 10))
    _kernel("softmax_backward")(dx, dout, out)
    np.testing.assert_allclose(dx, ref.softmax_backward(dout, out.astype(np.float64)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("c", [10, 37])
@pytest.mark.parametrize("op", list(ROWWISE))
def test_rowwise_nan_and_inf_logits(dtype, op, c):
    """A row with a NaN comes out all NaN, as from the NumPy formula; -inf logits get
    probability 0 (log-probability -inf); the other rows are untouched by either.
    Rows of one vector and rows long enough for the vectorised row max to have a
    remainder."""
    x = np.zeros((4, c), dtype)
    x[0, c // 2] = np.nan
    x[1, :5] = -np.inf
    x[2] = np.linspace(-3, 3, c)
    x[3, c - 1] = np.nan
    out = _row_forward(op, x)
    assert np.all(np.isnan(out[0])) and np.all(np.isnan(out[3]))
    with np.errstate(invalid="ignore"):
        want = ROWWISE[op][0](x[1:3])
    np.testing.assert_allclose(out[1:3], want, rtol=1e-5)
    zero = 0 if op == "softmax" else -np.inf
    assert np.all(out[1, :5] == zero)


def test_relu_propagates_nan_and_inf_as_pytorch(dtype):
    """relu(NaN) = NaN, relu(+-inf) = inf / 0; the backward is 0 only where the output is
    <= 0, so a NaN output passes the gradient (PyTorch's threshold_backward); the fused
    epilogues share this code (tests/layers/test_nonfinite.py)."""
    x = np.array([np.nan, np.inf, -np.inf, -2.0, -0.0, 0.0, 3.0] * 5, dtype)
    out = np.empty_like(x)
    kernel("relu_forward")(out, x)
    np.testing.assert_array_equal(out, ref.relu_forward(x))
    assert np.isnan(out[0]) and out[1] == np.inf and out[2] == 0
    g = np.arange(1, x.size + 1, dtype=dtype)
    dx = np.empty_like(g)
    kernel("relu_backward")(dx, g, out)
    np.testing.assert_array_equal(dx, ref.relu_backward(g, out))
    assert dx[0] == 1 and dx[1] == 2 and dx[2] == 0



# PyTorch 2.13's hardsigmoid, forward and backward (dout = 1) of HARDSIGMOID_X, float32 and
# float64 alike but for the rounding of (x + 3) / 6: the boundaries +-3 get gradient 0,
# NaN gives NaN and gradient 0, and the gradient factor is float32's 1/6 in both dtypes.
HARDSIGMOID_X = [-np.inf, -4.0, -3.0, -2.9999, -1.5, -0.0, 0.0, 1.0, 2.9999, 3.0, 3.5, np.inf, np.nan]
TORCH_HARDSIGMOID_GRAD = [0.0] * 3 + [0.1666666716337204] * 6 + [0.0] * 4


def test_hardsigmoid_boundaries_and_nan_as_pytorch(dtype):
    """Exactly PyTorch's values: clamps at +-3, gradient 1/6 only strictly inside (-3, 3)
    (0 at x = +-3, as PyTorch's backward), NaN propagates forward with gradient 0."""
    x = np.array(HARDSIGMOID_X, dtype)
    out = _ew_forward("hardsigmoid", x)
    t = dtype.type
    want = np.array([min(max(v + t(3), t(0)), t(6)) / t(6) if v == v else v for v in x], dtype)
    np.testing.assert_array_equal(out, want)
    assert out[2] == 0 and out[9] == 1 and out[0] == 0 and out[11] == 1 and np.isnan(out[-1])
    dx = np.full_like(x, 123.0)
    kernel("hardsigmoid_backward")(dx, np.ones_like(x), x)
    np.testing.assert_array_equal(dx, np.array(TORCH_HARDSIGMOID_GRAD, dtype))
    # the output near 3 rounds to 1 in float32, yet the gradient there is still 1/6
    if dtype == np.float32:
        near = np.array([np.nextafter(np.float32(3), np.float32(0))], np.float32)
        assert _ew_forward("hardsigmoid", near)[0] == 1
        kernel("hardsigmoid_backward")(dx[:1], np.ones(1, np.float32), near)
        assert dx[0] == np.float32(1) / np.float32(6)
