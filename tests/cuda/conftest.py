"""The CUDA tests run on a GPU when there is one, else in Numba's CUDA simulator:
``NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda`` (the variable must be set before
Numba is imported, hence a process of its own; .ci/run does this). In a plain run
without a GPU only ``test_ptx.py`` (compiling every kernel to real PTX, no GPU needed)
is collected here.

Simulated kernels run each thread as a Python thread: keep shapes tiny, but large
enough for edge tiles and several blocks.
"""
import importlib.util

import numpy as np
import pytest

from fastnet import cuda as fcuda

_HAS_NUMBA_CUDA = importlib.util.find_spec("numba_cuda") is not None

collect_ignore = []
if fcuda.simulator():
    collect_ignore.append("test_ptx.py")  # the simulator cannot compile
elif not (_HAS_NUMBA_CUDA and fcuda.is_available()):
    import glob
    import os

    here = os.path.dirname(__file__)
    collect_ignore += [os.path.basename(p) for p in glob.glob(os.path.join(here, "test_*.py"))
                       if not p.endswith("test_ptx.py")]
    if not _HAS_NUMBA_CUDA:
        collect_ignore.append("test_ptx.py")


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
