"""Inverted dropout: dropout_forward(out, mask, x, p, seed) -> out = x * mask / (1 - p),
mask uint8 from a counter-based hash of (seed, flat index);
dropout_backward(dx, dout, mask, p)."""
import numba
import numpy as np
import pytest

from fastnet.kernels import kernel
from tests import reference as ref
from tests.gradcheck import check_backward

from .cases import DROPOUT_SHAPES


def _forward(x, p, seed):
    out = np.full_like(x, 123.0)
    mask = np.full(x.shape, 7, np.uint8)
    kernel("dropout_forward")(out, mask, x, p, seed)
    return out, mask


def _backward(dout, mask, p):
    dx = np.full_like(dout, 123.0)
    kernel("dropout_backward")(dx, dout, mask, p)
    return dx


@pytest.mark.parametrize("p", [0.1, 0.5, 0.75])
@pytest.mark.parametrize("shape", DROPOUT_SHAPES, ids=str)
def test_forward_is_x_times_mask_over_keep(rng, dtype, close, shape, p):
    """out == x * mask / (1 - p) with a 0/1 uint8 mask."""
    x = rng.standard_normal(shape).astype(dtype)
    out, mask = _forward(x, p, seed=1234)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    close(out, ref.dropout_forward(x, mask, p))
    assert np.all(out[mask == 0] == 0)


@pytest.mark.parametrize("seed", [0, 1, 2**40 + 3, 2**64 - 1])
@pytest.mark.parametrize("p", [0.25, 0.5, 0.9])
def test_mask_is_the_documented_hash(p, seed):
    """The mask is reproducible bit for bit from the documented SplitMix64 recipe."""
    x = np.ones((37, 53), np.float32)
    _, mask = _forward(x, p, seed)
    np.testing.assert_array_equal(mask, ref.dropout_mask(x.shape, p, seed))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_keep_fraction(p):
    """On 2^20 elements the kept fraction is 1 - p within 5 standard deviations."""
    x = np.ones(1 << 20, np.float32)
    _, mask = _forward(x, p, seed=99)
    sigma = np.sqrt(p * (1 - p) / x.size)
    assert abs(mask.mean() - (1 - p)) < 5 * sigma


def test_seed_determines_mask():
    """Same seed -> identical mask; different seeds -> masks that agree only by chance
    (about half the elements for p = 0.5, so nearby seeds are not correlated)."""
    x = np.ones((300, 301), np.float64)
    _, a = _forward(x, 0.5, seed=7)
    _, b = _forward(x, 0.5, seed=7)
    np.testing.assert_array_equal(a, b)
    # seeds are taken modulo 2^64
    np.testing.assert_array_equal(_forward(x, 0.5, seed=-1)[1], _forward(x, 0.5, seed=2**64 - 1)[1])
    for other in (8, 6, 7 + 2**32):
        _, c = _forward(x, 0.5, seed=other)
        agree = np.mean(a == c)
        assert 0.48 < agree < 0.52, f"seed 7 vs {other}: {agree:.3f} of the mask agrees"


def test_p0_keeps_everything_and_p1_drops_everything(rng, dtype):
    """p=0: out == x exactly and every mask bit set; p=1: x * 0, as PyTorch computes it:
    zeros, except NaN where x is inf (a dropped NaN or inf is never silently 0)."""
    x = rng.standard_normal(1001).astype(dtype)
    x[:4] = [np.inf, -np.inf, np.nan, np.finfo(dtype).max]
    out, mask = _forward(x, 0.0, seed=5)
    assert np.all(mask == 1)
    np.testing.assert_array_equal(out, x)
    dx = _backward(x, mask, 0.0)
    np.testing.assert_array_equal(dx, x)

    out, mask = _forward(x, 1.0, seed=5)
    assert np.all(mask == 0)
    assert out.dtype == dtype
    expected = np.zeros_like(x)
    expected[:3] = np.nan
    np.testing.assert_array_equal(out, expected)
    dx = _backward(x, mask, 1.0)
    np.testing.assert_array_equal(dx, expected)


def test_mask_independent_of_thread_count():
    """The mask (and out) are identical with 1 and 2 Numba threads."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 Numba threads")
    x = np.arange(100_003, dtype=np.float32)
    saved = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        out1, m1 = _forward(x, 0.3, seed=42)
        numba.set_num_threads(2)
        out2, m2 = _forward(x, 0.3, seed=42)
    finally:
        numba.set_num_threads(saved)
    np.testing.assert_array_equal(m1, m2)
    np.testing.assert_array_equal(out1, out2)


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_backward_matches_reference(rng, dtype, close, p):
    """dx = dout * mask / (1 - p); garbage-filled dx is overwritten."""
    x = rng.standard_normal((33, 17)).astype(dtype)
    _, mask = _forward(x, p, seed=3)
    dout = rng.standard_normal(x.shape).astype(dtype)
    close(_backward(dout, mask, p), ref.dropout_backward(dout, mask, p))


def test_backward_matches_finite_differences(rng):
    """float64 central differences of the forward at a fixed seed."""
    p, seed = 0.4, 11
    x = rng.standard_normal((3, 5))
    check_backward(lambda x: _forward(x, p, seed)[0],
                   lambda dout, x: (_backward(dout, _forward(x, p, seed)[1], p),), [x], rng)
