import pytest

from fastnet.kernels import _jit


@pytest.fixture(autouse=True, params=["serial", "parallel"])
def kernel_build(request, monkeypatch):
    """Run every kernel test against both builds of each parallel kernel: the serial one
    that small inputs get and the prange one that large inputs get."""
    monkeypatch.setattr(_jit, "PARALLEL_MIN_WORK", 0 if request.param == "parallel" else 1 << 62)
    return request.param
