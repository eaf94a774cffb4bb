"""Shared fixtures: a seeded ``rng``, ``dtype`` and ``device`` parametrizations and
``close`` tolerances.

Tests that take ``device`` run on the CPU and, marked ``cuda``, on CUDA: on a GPU, or in
Numba's simulator (``NUMBA_ENABLE_CUDASIM=1 python -m pytest -m cuda tests``; the variable
must be set before Numba is imported). Where CUDA cannot run, ``cuda`` items are
deselected, not skipped, so a plain CPU run reports only what it ran.
"""
import zlib

import numpy as np
import pytest

from fastnet import cuda as fcuda
from fastnet.device import to_numpy


def pytest_collection_modifyitems(config, items):
    dropped = [item for item in items if item.get_closest_marker("cuda")]
    if dropped and not (fcuda.simulator() or fcuda.is_available()):
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if not item.get_closest_marker("cuda")]


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request):
    """The device name a test runs on: "cpu", and "cuda" (marked ``cuda``)."""
    return request.param


@pytest.fixture
def to_dev(device):
    """to_dev(host_array) -> the array on the test's device (NumPy itself on the CPU)."""
    from fastnet.device import Device

    return Device(device).asarray

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
    """close(got, ref, scale=1.0): ``got`` (on any device) of the same dtype as the test's, |got - ref| <= atol*scale + rtol*|ref|."""
    rtol, atol = tolerance

    def check(got, ref, scale=1.0, err_msg=""):
        got = np.asarray(to_numpy(got))  # a CUDA result comes to the host first
        assert got.dtype == dtype, f"{err_msg}: dtype {got.dtype}, expected {dtype}"
        assert got.shape == np.shape(ref), f"{err_msg}: shape {got.shape} != {np.shape(ref)}"
        np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol * scale, err_msg=err_msg)

    return check
