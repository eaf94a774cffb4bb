"""fastnet's Conv2D with dilation and groups against numbers PyTorch computed
(tests/data/torch_conv.npz, written by tests/data/make_torch_conv.py with PyTorch 2.13):
PyTorch's state dict loads unchanged, and the output (a fused ReLU where PyTorch applied
one after the conv), dx, dw and db agree, in float32 and float64, on both devices (CUDA:
each case in one dtype, so that dilation, groups and the depthwise conv each meet both)."""
import json
import pathlib

import numpy as np
import pytest

from fastnet.device import to_numpy
from fastnet.layers import Conv2D

REF = np.load(pathlib.Path(__file__).parent / "data" / "torch_conv.npz")
CASES = sorted(k[:-len(".config")] for k in REF.files if k.endswith(".config"))
DTYPES = ("float32", "float64")
# CUDA (the simulator's time): each case in one dtype; dilation with groups 1 runs the same
# kernels as the dilated grouped cases, so only on the CPU
CUDA_DTYPE = {"depthwise": "float32", "depthwise-x2": "float64", "groups2": "float64",
              "odd-depthwise-dilated": "float32", "stride2-dilation": "float64"}
RUNS = [pytest.param(case, dt, device, id=f"{case}-{dt}-{device}",
                     marks=[pytest.mark.cuda] if device == "cuda" else [])
        for case in CASES for dt in DTYPES for device in ("cpu", "cuda")
        if device == "cpu" or CUDA_DTYPE.get(case) == dt]


def test_cases_cover_every_option():
    configs = [json.loads(str(REF[f"{c}.config"])) for c in CASES]
    assert any(c["dilation"] != [1, 1] and c["groups"] == 1 for c in configs)
    assert any(1 < c["groups"] < c["in_channels"] for c in configs)
    assert any(c["groups"] == c["in_channels"] == c["out_channels"] for c in configs)
    assert any(c["groups"] == c["in_channels"] < c["out_channels"] for c in configs)
    assert any(c["stride"] != [1, 1] and c["dilation"] != [1, 1] for c in configs)
    assert {c["bias"] for c in configs} == {True, False}


@pytest.mark.parametrize("case, dt, device", RUNS)
def test_matches_pytorch(case, dt, device):
    config = json.loads(str(REF[f"{case}.config"]))
    layer = Conv2D(**config, dtype=dt)
    tag = f"{case}.{dt}"
    state = {"weight": REF[f"{tag}.weight"]}
    if config["bias"]:
        state["bias"] = REF[f"{tag}.bias"]
    assert list(state) == list(layer.state_dict()), "PyTorch's keys, in PyTorch's order"
    layer.load_state_dict(state)
    layer.to(device)
    dev = layer.device.asarray
    y = layer(dev(REF[f"{tag}.x"]))
    dx = layer.backward(dev(REF[f"{tag}.dout"]))
    rtol, atol = (1e-5, 1e-5) if dt == "float32" else (1e-10, 1e-12)
    got = {"out": y, "dx": dx, "dw": layer.weight.grad}
    if config["bias"]:
        got["db"] = layer.bias.grad
    for name, a in got.items():
        a = to_numpy(a)
        assert a.dtype == np.dtype(dt), name
        np.testing.assert_allclose(a, REF[f"{tag}.{name}"], rtol=rtol, atol=atol * 10, err_msg=name)
