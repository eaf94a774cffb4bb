"""CUDA inverted dropout: dropout_forward(out, mask, x, p, seed) -> out = x * mask / (1 - p)
with the CPU's mask bit for bit (SplitMix64 of (seed, flat index)); dropout_backward(dx,
dout, mask, p)."""
import numpy as np
import pytest

from fastnet.kernels import kernel
from tests import reference as ref
from tests.gradcheck import check_backward

from ..cases import DROPOUT_SHAPES, cases_for

# The simulator runs the uint64 hash on NumPy scalars, which warn on the (intended)
# wrap-around that the GPU does silently.
pytestmark = pytest.mark.filterwarnings("ignore:.*overflow encountered:RuntimeWarning")


@pytest.fixture
def drop(dev, host, garbage):
    """drop(x, p, seed) -> (out, mask) on the host; outputs start as garbage."""
    def run(x, p, seed):
        # (the garbage fixture's 7777 does not fit a uint8)
        out, mask = garbage(x.shape, x.dtype), dev(np.full(x.shape, 7, np.uint8))
        kernel("dropout_forward", "cuda")(out, mask, dev(x), p, seed)
        return host(out), host(mask)
    return run


@pytest.fixture
def drop_backward(dev, host, garbage):
    def run(dout, mask, p):
        dx = garbage(dout.shape, dout.dtype)
        kernel("dropout_backward", "cuda")(dx, dev(dout), dev(mask), p)
        return host(dx)
    return run


def _cpu(x, p, seed):
    out, mask = np.empty_like(x), np.empty(x.shape, np.uint8)
    kernel("dropout_forward", "cpu")(out, mask, x, p, seed)
    return out, mask


@pytest.mark.parametrize("p", [0.1, 0.5])
@pytest.mark.parametrize("shape", cases_for(DROPOUT_SHAPES, "cuda"), ids=str)
def test_forward_matches_reference_and_cpu(rng, dtype, close, drop, shape, p):
    """out == x * mask / (1 - p) with a 0/1 uint8 mask; mask and out bitwise equal to the
    CPU kernel's."""
    x = rng.standard_normal(shape).astype(dtype)
    out, mask = drop(x, p, seed=1234)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    close(out, ref.dropout_forward(x, mask, p))
    cpu_out, cpu_mask = _cpu(x, p, 1234)
    np.testing.assert_array_equal(mask, cpu_mask)
    np.testing.assert_array_equal(out, cpu_out)


@pytest.mark.parametrize("seed", [0, 2**40 + 3, 2**64 - 1, -1])
@pytest.mark.parametrize("p", [0.25, 0.9])
def test_mask_is_the_documented_hash(drop, p, seed):
    """The mask is the documented SplitMix64 recipe bit for bit (seeds modulo 2^64)."""
    x = np.ones((5, 61), np.float32)
    _, mask = drop(x, p, seed)
    np.testing.assert_array_equal(mask, ref.dropout_mask(x.shape, p, seed))
    np.testing.assert_array_equal(mask, _cpu(x, p, seed)[1])


def test_p0_keeps_everything_and_p1_drops_everything(rng, dtype, drop, drop_backward):
    """p=0: out == x exactly and every mask bit set; p=1: x * 0, as PyTorch computes it
    (and the CPU): zeros, except NaN where x is inf or NaN."""
    x = rng.standard_normal(41).astype(dtype)
    x[:4] = [np.inf, -np.inf, np.nan, np.finfo(dtype).max]
    out, mask = drop(x, 0.0, seed=5)
    assert np.all(mask == 1)
    np.testing.assert_array_equal(out, x)
    np.testing.assert_array_equal(drop_backward(x, mask, 0.0), x)

    out, mask = drop(x, 1.0, seed=5)
    assert np.all(mask == 0) and out.dtype == dtype
    expected = np.zeros_like(x)
    expected[:3] = np.nan
    np.testing.assert_array_equal(out, expected)
    dx = drop_backward(x, mask, 1.0)
    np.testing.assert_array_equal(dx, expected)


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_backward_matches_reference_and_cpu(rng, dtype, close, drop, drop_backward, p):
    """dx = dout * mask / (1 - p), bitwise the CPU's; garbage-filled dx is overwritten."""
    x = rng.standard_normal((3, 101)).astype(dtype)
    _, mask = drop(x, p, seed=3)
    dout = rng.standard_normal(x.shape).astype(dtype)
    dx = drop_backward(dout, mask, p)
    close(dx, ref.dropout_backward(dout, mask, p))
    cpu_dx = np.empty_like(dout)
    kernel("dropout_backward", "cpu")(cpu_dx, dout, mask, p)
    np.testing.assert_array_equal(dx, cpu_dx)


def test_backward_may_alias_dout(rng, dev, host, drop):
    """dx may be the same device array as dout."""
    dout = rng.standard_normal(50)
    _, mask = drop(dout, 0.3, seed=8)
    g = dev(dout)
    kernel("dropout_backward", "cuda")(g, g, dev(mask), 0.3)
    want = np.empty_like(dout)
    kernel("dropout_backward", "cpu")(want, dout, mask, 0.3)
    np.testing.assert_array_equal(host(g), want)


def test_backward_matches_finite_differences(rng, drop, drop_backward):
    """float64 central differences of the CUDA forward at a fixed seed."""
    p, seed = 0.4, 11
    x = rng.standard_normal((2, 3))
    check_backward(lambda x: drop(x, p, seed)[0],
                   lambda dout, x: (drop_backward(dout, drop(x, p, seed)[1], p),), [x], rng)
