"""Shared fixtures: a seeded ``rng``, a ``dtype`` parametrization and ``close`` tolerances."""
import zlib

import numpy as np
import pytest

# (rtol, atol) per dtype. atol is for O(1) values; pass ``scale`` for quantities that
# sum K terms (e.g. scale=sqrt(K)) so float32 accumulation error is allowed for.
TOLERANCES = {np.dtype(np.float32): (1e-4, 1e-5), np.dtype(np.float64): (1e-10, 1e-10)}


@pytest.fixture
def rng(request):
    """A NumPy Generator seeded from the test's name: deterministic, distinct per test."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(params=[np.float32, np.float64], ids=["f32", "f64"])
def dtype(request):
    return np.dtype(request.param)


@pytest.fixture
def tolerance(dtype):
    """(rtol, atol) for the test's dtype, e.g. for scalars such as a loss."""
    return TOLERANCES[dtype]


@pytest.fixture
def close(dtype, tolerance):
    """close(got, ref, scale=1.0): same dtype as the test's, |got - ref| <= atol*scale + rtol*|ref|."""
    rtol, atol = tolerance

    def check(got, ref, scale=1.0, err_msg=""):
        got = np.asarray(got)
        assert got.dtype == dtype, f"{err_msg}: dtype {got.dtype}, expected {dtype}"
        assert got.shape == np.shape(ref), f"{err_msg}: shape {got.shape} != {np.shape(ref)}"
        np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol * scale, err_msg=err_msg)

    return check
