"""Elementwise kernels: add(out, a, b): out = a + b, and accumulate(out, x): out += x."""
import numpy as np
import pytest

from fastnet.kernels import kernel
from tests import reference as ref

from .cases import ELEMENTWISE_SHAPES


@pytest.mark.parametrize("shape", ELEMENTWISE_SHAPES, ids=str)
def test_accumulate_adds_in_place(rng, dtype, close, shape):
    """accumulate(out, x) adds x into out (twice = 2x), leaving x alone, in out's dtype."""
    out = rng.standard_normal(shape).astype(dtype)
    x = rng.standard_normal(shape).astype(dtype)
    x_copy = x.copy()
    want = ref.accumulate(ref.accumulate(out, x), x)
    kernel("accumulate")(out, x)
    kernel("accumulate")(out, x)
    close(out, want)
    np.testing.assert_array_equal(x, x_copy)


@pytest.mark.parametrize("shape", ELEMENTWISE_SHAPES, ids=str)
def test_add_matches_reference(rng, dtype, shape):
    """add(out, a, b) overwrites out with a + b (exact: one rounding), inputs untouched;
    out may alias an input."""
    a = rng.standard_normal(shape).astype(dtype)
    b = rng.standard_normal(shape).astype(dtype)
    a_copy, b_copy = a.copy(), b.copy()
    out = np.full(shape, np.nan, dtype)
    kernel("add")(out, a, b)
    np.testing.assert_array_equal(out, ref.add(a, b))
    np.testing.assert_array_equal(a, a_copy)
    np.testing.assert_array_equal(b, b_copy)
    kernel("add")(a, a, b)
    np.testing.assert_array_equal(a, out)
