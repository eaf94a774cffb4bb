"""CUDA activation kernels against the reference, finite differences and the CPU kernels.
Elementwise: relu / sigmoid / tanh forward(out, x), backward(dx, dout, out);
leaky_relu forward(out, x, slope), backward(dx, dout, x, slope); hardsigmoid forward(out, x),
backward(dx, dout, x). Row-wise over (N, C):
softmax / log_softmax forward(out, x), backward(dx, dout, out)."""
import numpy as np
import pytest

from fastnet.kernels import kernel
from tests import reference as ref
from tests.gradcheck import check_backward

from ..cases import ACTIVATION_SHAPES, SOFTMAX_SHAPES, cases_for

SLOPE = 0.1
# op -> (forward(out, x), backward(dx, dout, x, out), reference forward,
#        reference backward(dout, x, out)), all taking the kernels' arguments
ELEMENTWISE = {
    "relu": (lambda dev, o, x: kernel("relu_forward", dev)(o, x),
             lambda dev, dx, g, x, o: kernel("relu_backward", dev)(dx, g, o),
             ref.relu_forward, lambda g, x, o: ref.relu_backward(g, o)),
    "leaky_relu": (lambda dev, o, x: kernel("leaky_relu_forward", dev)(o, x, SLOPE),
                   lambda dev, dx, g, x, o: kernel("leaky_relu_backward", dev)(dx, g, x, SLOPE),
                   lambda x: ref.leaky_relu_forward(x, SLOPE),
                   lambda g, x, o: ref.leaky_relu_backward(g, x, SLOPE)),
    "hardsigmoid": (lambda dev, o, x: kernel("hardsigmoid_forward", dev)(o, x),
                    lambda dev, dx, g, x, o: kernel("hardsigmoid_backward", dev)(dx, g, x),
                    ref.hardsigmoid_forward, lambda g, x, o: ref.hardsigmoid_backward(g, x)),
    "sigmoid": (lambda dev, o, x: kernel("sigmoid_forward", dev)(o, x),
                lambda dev, dx, g, x, o: kernel("sigmoid_backward", dev)(dx, g, o),
                ref.sigmoid_forward, lambda g, x, o: ref.sigmoid_backward(g, o)),
    "tanh": (lambda dev, o, x: kernel("tanh_forward", dev)(o, x),
             lambda dev, dx, g, x, o: kernel("tanh_backward", dev)(dx, g, o),
             ref.tanh_forward, lambda g, x, o: ref.tanh_backward(g, o)),
}
ROWWISE = {
    "softmax": (ref.softmax_forward, ref.softmax_backward),
    "log_softmax": (ref.log_softmax_forward, ref.log_softmax_backward),
}
# odd 1-D, batch-1 4-D, and more than one block of threads
EW_SHAPES = cases_for(ACTIVATION_SHAPES, "cuda")
ROW_SHAPES = cases_for(SOFTMAX_SHAPES, "cuda")


def _ew(op, x, dev, host, garbage):
    """(forward out, backward dx) of op on the device; outputs start as garbage."""
    dx_ = dev(x)
    out = garbage(x.shape, x.dtype)
    ELEMENTWISE[op][0]("cuda", out, dx_)
    return host(out), out


def _cpu_ew(op, x, dout):
    out = np.empty_like(x)
    ELEMENTWISE[op][0]("cpu", out, x)
    dx = np.empty_like(x)
    ELEMENTWISE[op][1]("cpu", dx, dout, x, out)
    return out, dx


@pytest.mark.parametrize("shape", EW_SHAPES, ids=str)
@pytest.mark.parametrize("op", list(ELEMENTWISE))
def test_elementwise_matches_reference_and_cpu(rng, dtype, close, dev, host, garbage, op, shape):
    """Forward and backward against the reference and the CPU kernels, over values in
    [-6, 6] plus exact zeros; garbage-filled outputs are overwritten."""
    x = rng.uniform(-6, 6, shape).astype(dtype)
    x.reshape(-1)[::5] = 0
    dout = rng.standard_normal(shape).astype(dtype)
    out_h, out_d = _ew(op, x, dev, host, garbage)
    dx = garbage(shape, dtype)
    ELEMENTWISE[op][1]("cuda", dx, dev(dout), dev(x), out_d)
    dx = host(dx)
    close(out_h, ELEMENTWISE[op][2](x), err_msg="forward vs reference")
    close(dx, ELEMENTWISE[op][3](dout, x, out_h), err_msg="backward vs reference")
    cpu_out, cpu_dx = _cpu_ew(op, x, dout)
    close(out_h, cpu_out, err_msg="forward vs cpu")
    close(dx, cpu_dx, err_msg="backward vs cpu")


@pytest.mark.parametrize("op", list(ELEMENTWISE))
def test_elementwise_backward_may_alias_dout(rng, dtype, close, dev, host, garbage, op):
    """dx may be the same device array as dout."""
    x = rng.uniform(-6, 6, (3, 37)).astype(dtype)
    out_h, out_d = _ew(op, x, dev, host, garbage)
    dout = rng.standard_normal(x.shape).astype(dtype)
    g = dev(dout)
    ELEMENTWISE[op][1]("cuda", g, g, dev(x), out_d)
    close(host(g), ELEMENTWISE[op][3](dout, x, out_h))


@pytest.mark.parametrize("op", list(ELEMENTWISE))
def test_elementwise_backward_matches_finite_differences(rng, dev, host, garbage, op):
    """float64 central differences of the CUDA kernel's own forward (x kept away from 0)."""
    x = rng.uniform(0.1, 3, (2, 3)) * rng.choice([-1.0, 1.0], (2, 3))

    def forward(x):
        return _ew(op, x, dev, host, garbage)[0]

    def backward(dout, x):
        _, out = _ew(op, x, dev, host, garbage)
        dx = garbage(x.shape, x.dtype)
        ELEMENTWISE[op][1]("cuda", dx, dev(dout), dev(x), out)
        return (host(dx),)

    check_backward(forward, backward, [x], rng)


def test_saturation_is_finite(dtype, dev, host, garbage):
    """sigmoid(+-1e4) is exactly 1 / 0, tanh(+-1e4) exactly +-1, no NaN or inf; relu /
    leaky_relu of +-1e4 are exact; the saturated sigmoid derivative is 0; NaN propagates."""
    x = np.array([1e4, -1e4, 0.0, 88.0, -88.0, 1e30, -1e30, np.nan], dtype)
    s, s_d = _ew("sigmoid", x, dev, host, garbage)
    assert s.dtype == dtype and np.all(np.isfinite(s[:-1])) and np.isnan(s[-1])
    np.testing.assert_array_equal(s[[0, 1, 2, 5, 6]], [1.0, 0.0, 0.5, 1.0, 0.0])
    np.testing.assert_allclose(s[:-1], ref.sigmoid_forward(x[:-1]), rtol=1e-6, atol=1e-30)
    t, _ = _ew("tanh", x, dev, host, garbage)
    np.testing.assert_array_equal(t[[0, 1, 2, 5, 6]], [1.0, -1.0, 0.0, 1.0, -1.0])
    np.testing.assert_array_equal(_ew("relu", x, dev, host, garbage)[0][:-1], np.maximum(x[:-1], 0))
    np.testing.assert_array_equal(_ew("leaky_relu", x, dev, host, garbage)[0][:-1],
                                  np.where(x > 0, x, x * dtype.type(SLOPE))[:-1])
    dx = garbage(x.shape, dtype)
    kernel("sigmoid_backward", "cuda")(dx, dev(np.ones_like(x)), s_d)
    dx = host(dx)
    assert np.all(np.isfinite(dx[:-1])) and dx[0] == 0 and dx[1] == 0


def _row(op, x, dev, host, garbage):
    out = garbage(x.shape, x.dtype)
    kernel(f"{op}_forward", "cuda")(out, dev(x))
    return host(out), out


def _row_backward(op, dout, out_d, dev, host, garbage):
    dx = garbage(dout.shape, dout.dtype)
    kernel(f"{op}_backward", "cuda")(dx, dev(dout), out_d)
    return host(dx)


@pytest.mark.parametrize("shape", ROW_SHAPES, ids=str)
@pytest.mark.parametrize("op", list(ROWWISE))
def test_rowwise_matches_reference_and_cpu(rng, dtype, close, dev, host, garbage, op, shape):
    """softmax / log_softmax forward and backward against the logaddexp / explicit-Jacobian
    reference and the CPU kernels; garbage-filled outputs are overwritten."""
    x = (3 * rng.standard_normal(shape)).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    out, out_d = _row(op, x, dev, host, garbage)
    dx = _row_backward(op, dout, out_d, dev, host, garbage)
    close(out, ROWWISE[op][0](x), err_msg="forward vs reference")
    close(dx, ROWWISE[op][1](dout, out), scale=np.sqrt(shape[1]), err_msg="backward vs reference")
    if op == "softmax":
        np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=10 * np.finfo(dtype).eps * shape[1])
    cpu_out, cpu_dx = np.empty_like(x), np.empty_like(x)
    kernel(f"{op}_forward", "cpu")(cpu_out, x)
    kernel(f"{op}_backward", "cpu")(cpu_dx, dout, cpu_out)
    close(out, cpu_out, err_msg="forward vs cpu")
    close(dx, cpu_dx, scale=np.sqrt(shape[1]), err_msg="backward vs cpu")


@pytest.mark.parametrize("op", list(ROWWISE))
def test_rowwise_backward_may_alias_dout(rng, dtype, close, dev, host, garbage, op):
    """dx may be the same device array as dout (the row sum is taken before any write)."""
    x = rng.standard_normal((6, 11)).astype(dtype)
    out, out_d = _row(op, x, dev, host, garbage)
    dout = rng.standard_normal(x.shape).astype(dtype)
    g = dev(dout)
    kernel(f"{op}_backward", "cuda")(g, g, out_d)
    close(host(g), ROWWISE[op][1](dout, out), scale=np.sqrt(11))


@pytest.mark.parametrize("shape", [(3, 4), (2, 1), (1, 9)], ids=str)
@pytest.mark.parametrize("op", list(ROWWISE))
def test_rowwise_backward_matches_finite_differences(rng, dev, host, garbage, op, shape):
    """float64 central differences of the CUDA softmax / log_softmax forward."""
    x = rng.standard_normal(shape)

    def backward(dout, x):
        return (_row_backward(op, dout, _row(op, x, dev, host, garbage)[1], dev, host, garbage),)

    check_backward(lambda x: _row(op, x, dev, host, garbage)[0], backward, [x], rng)


@pytest.mark.parametrize("op", list(ROWWISE))
def test_rowwise_extreme_logits(dtype, close, dev, host, garbage, op):
    """Logits of +-1e4 stay finite and correct (the row max is subtracted; x - max is
    exact); a NaN in a row makes that row NaN and leaves the others alone."""
    x = np.array([[1e4, -1e4, 0.0],
                  [-1e4, -1e4, -1e4],
                  [1e4, 1e4, -1e4],
                  [-1e4, 0.0, 1e4 - 1.0]], dtype)
    out, out_d = _row(op, x, dev, host, garbage)
    assert out.dtype == dtype and np.all(np.isfinite(out))
    dout = np.array([[1.0, 2.0, 3.0]] * 4, dtype)
    dx = _row_backward(op, dout, out_d, dev, host, garbage)
    assert np.all(np.isfinite(dx))
    close(out, ROWWISE[op][0](x), err_msg="forward")
    close(dx, ROWWISE[op][1](dout, out), err_msg="backward")
    x[1, 2] = np.nan
    out, _ = _row(op, x, dev, host, garbage)
    assert np.all(np.isnan(out[1])) and np.all(np.isfinite(np.delete(out, 1, axis=0)))


def test_hardsigmoid_boundaries_and_nan_as_pytorch(dtype, dev, host, garbage):
    """The CPU test's values (PyTorch's): clamps at +-3, gradient float32's 1/6 strictly
    inside (-3, 3) and 0 at the boundaries, NaN forward with gradient 0."""
    from ..test_activations import HARDSIGMOID_X, TORCH_HARDSIGMOID_GRAD

    x = np.array(HARDSIGMOID_X, dtype)
    out = garbage(x.shape, dtype)
    kernel("hardsigmoid_forward", "cuda")(out, dev(x))
    cpu = np.empty_like(x)
    kernel("hardsigmoid_forward", "cpu")(cpu, x)
    np.testing.assert_array_equal(host(out), cpu)
    dx = garbage(x.shape, dtype)
    kernel("hardsigmoid_backward", "cuda")(dx, dev(np.ones_like(x)), dev(x))
    np.testing.assert_array_equal(host(dx), np.array(TORCH_HARDSIGMOID_GRAD, dtype))
