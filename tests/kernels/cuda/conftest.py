"""The CUDA kernel tests run on a GPU when there is one, else in Numba's CUDA simulator:
``NUMBA_ENABLE_CUDASIM=1 python -m pytest -m cuda tests`` (the variable must be set
before Numba is imported, hence a process of its own; .ci/run does this). In a plain run
without a GPU only ``test_ptx.py`` (compiling every kernel to real PTX, no GPU needed)
is collected here; under the simulator ``test_ptx.py`` is left out (it cannot compile).
Every test here but test_ptx.py's carries the ``cuda`` marker.

Simulated kernels run each thread as a Python thread: keep shapes tiny, but large
enough for edge tiles and several blocks (the case lists in ``tests/kernels/cases.py``
are shared with the CPU tests and sized for the simulator).
"""
import importlib.util
import os

import numpy as np
import pytest

from fastnet import cuda as fcuda

_HAS_NUMBA_CUDA = importlib.util.find_spec("numba_cuda") is not None
_HERE = os.path.dirname(os.path.abspath(__file__))

collect_ignore = []
if fcuda.simulator():
    collect_ignore.append("test_ptx.py")  # the simulator cannot compile
elif not (_HAS_NUMBA_CUDA and fcuda.is_available()):
    collect_ignore += [name for name in os.listdir(_HERE)
                       if name.startswith("test_") and name.endswith(".py") and name != "test_ptx.py"]
    if not _HAS_NUMBA_CUDA:
        collect_ignore.append("test_ptx.py")


def pytest_collection_modifyitems(config, items):
    """Marks every test here ``cuda`` but test_ptx.py's, which needs no GPU (and which
    tests/conftest.py would otherwise deselect in a plain run without one)."""
    for item in items:
        path = os.path.abspath(str(item.fspath))
        if os.path.dirname(path) == _HERE and os.path.basename(path) != "test_ptx.py":
            item.add_marker(pytest.mark.cuda)


@pytest.fixture(autouse=True)
def kernel_build():
    """Overrides the serial/parallel parametrisation of tests/kernels/conftest.py: the CPU
    kernels serve here only as a comparison, in their default build."""
    return "default"


@pytest.fixture
def dev():
    """dev(host_array) -> a device copy (C-contiguous, same dtype)."""
    return fcuda.to_device


@pytest.fixture
def host():
    """host(device_array) -> a NumPy copy."""
    def get(a):
        return a.copy_to_host()
    return get


@pytest.fixture
def garbage():
    """garbage(shape, dtype) -> a device array filled with NaN-ish junk, for outputs
    that kernels must overwrite completely."""
    def make(shape, dtype):
        dtype = np.dtype(dtype)
        fill = (np.full(shape, np.iinfo(dtype).max, dtype) if dtype.kind in "iu"
                else np.full(shape, np.nan, dtype))
        return fcuda.to_device(fill)
    return make
