"""fastnet's LPPool2D and Hardsigmoid layers against numbers PyTorch computed
(tests/data/torch_lp_hardsigmoid.npz, written by tests/data/make_torch_lp_hardsigmoid.py with
PyTorch 2.13): forward and backward in float32 and float64 on every device, NaN, inf, windows
of zeros and negative sums of odd powers included."""
import pathlib

import numpy as np
import pytest

from fastnet.device import device_of, to_numpy
from fastnet.layers import Hardsigmoid, LPPool2D

REF = np.load(pathlib.Path(__file__).parent / "data" / "torch_lp_hardsigmoid.npz")
# name -> (norm_type, kernel_size, stride), as make_torch_lp_hardsigmoid.py's LP_CASES
LP_CASES = {
    "p2-k2": (2, 2, None),
    "p3-k3x2-s2x1": (3, (3, 2), (2, 1)),
    "p1-k2-s1": (1, 2, 1),
    "p1.5-k3-s2": (1.5, 3, 2),
    "p4-k2x3-s3x2": (4, (2, 3), (3, 2)),
}
# float32: PyTorch's pow and sqrt may differ from fastnet's by an ulp or two per step
TOL = {"float32": dict(rtol=2e-6, atol=1e-6), "float64": dict(rtol=1e-13, atol=1e-13)}


def _assert_close(got, want, tol, what):
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{what}: NaN places")
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want), err_msg=f"{what}: inf places")
    np.testing.assert_allclose(got, want, **tol, err_msg=what)  # (NaN == NaN here)


@pytest.mark.parametrize("name", list(LP_CASES))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_lp_pool_matches_pytorch(device, to_dev, dtype, name):
    p, k, s = LP_CASES[name]
    key = f"lp/{name}/{dtype}"
    x, dout = REF[f"{key}/x"], REF[f"{key}/dout"]
    layer = LPPool2D(p, k, s).to(device)
    y = layer(to_dev(x))
    assert device_of(y) == device and y.dtype == x.dtype
    _assert_close(to_numpy(y), REF[f"{key}/y"], TOL[dtype], f"{key} forward")
    dx = to_numpy(layer.backward(to_dev(dout)))
    assert dx.dtype == x.dtype
    _assert_close(dx, REF[f"{key}/dx"], TOL[dtype], f"{key} backward")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_hardsigmoid_matches_pytorch_bitwise(device, to_dev, dtype):
    """Bitwise: the same operations as PyTorch's kernel, in the same order and dtype
    (the float64 gradient carries PyTorch's float32 1/6)."""
    key = f"hardsigmoid/{dtype}"
    x, dout = REF[f"{key}/x"], REF[f"{key}/dout"]
    layer = Hardsigmoid().to(device)
    y = to_numpy(layer(to_dev(x)))
    np.testing.assert_array_equal(y, REF[f"{key}/y"])
    np.testing.assert_array_equal(to_numpy(layer.backward(to_dev(dout))), REF[f"{key}/dx"])
