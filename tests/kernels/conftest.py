import numpy as np
import pytest

from fastnet.kernels import _jit


@pytest.fixture(autouse=True, params=["serial", "parallel"])
def kernel_build(request, monkeypatch):
    """Run every kernel test against both builds of each parallel kernel: the serial one
    that small inputs get and the prange one that large inputs get."""
    monkeypatch.setattr(_jit, "PARALLEL_MIN_WORK", 0 if request.param == "parallel" else 1 << 62)
    return request.param


def pytest_collection_modifyitems(config, items):
    """Tests that use the ``serial_f64`` fixture run float64 on the serial build only
    (the parallel build: float32): their parallel float64 items are deselected."""
    drop = []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if ("serial_f64" in getattr(item, "fixturenames", ()) and
                params.get("kernel_build") == "parallel" and "dtype" in params and
                np.dtype(params["dtype"]) == np.float64):
            drop.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        keep = set(map(id, drop))
        items[:] = [item for item in items if id(item) not in keep]
