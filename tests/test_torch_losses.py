"""fastnet.losses against numbers PyTorch computed (tests/data/torch_losses.npz, written by
tests/data/make_torch_losses.py with PyTorch 2.13): CrossEntropyLoss (weight, ignore_index,
label_smoothing, (N, C) and (N, C, d) logits), NLLLoss, BCEWithLogitsLoss (weight,
pos_weight, logits of +-1e4, soft targets), L1Loss, MSELoss, SmoothL1Loss (beta, beta = 0),
HuberLoss (delta) x reduction "mean" / "sum" / "none" (its backward given PyTorch's upstream
gradient), float32 and float64: the loss and the gradient, NaN predictions and all-ignored
targets included. Every case on the CPU; on CUDA (the simulator: tiny shapes) the float32
ones but "sum" (plain ones only) and the NaN / all-ignored ones."""
import json
import pathlib

import numpy as np
import pytest

from fastnet import losses
from fastnet.device import Device, device_of, to_numpy

REF = np.load(pathlib.Path(__file__).parent / "data" / "torch_losses.npz")
CASES = json.loads(str(REF["cases"]))
# the simulator's share (~10 s): float32 "mean" and "none" of every option, "sum" of the
# plain ones, NaN and all-ignored
CUDA_CASES = [c for c in CASES if "allignored" in c or (
    "float64" not in c and ("-sum-" not in c or "plain" in c))]
TOL = {np.dtype(np.float32): 2e-6, np.dtype(np.float64): 1e-12}


def build(name):
    spec = dict(CASES[name])
    cls = getattr(losses, spec.pop("cls"))
    arrays = {k: REF[f"{name}/{k}"] for k in spec.pop("arrays")}
    return cls(**spec, **arrays)


def check(name, device):
    dev = Device(device)
    fn = build(name)
    x, target = REF[f"{name}/x"], REF[f"{name}/target"]
    if device == "cuda" and target.dtype.kind in "iu":
        target = dev.asarray(target)  # labels already on the GPU: the device's check
    loss = fn(dev.asarray(x), target)
    want_loss, want_grad = REF[f"{name}/loss"], REF[f"{name}/grad"]
    tol = TOL[x.dtype]
    if want_loss.ndim:
        assert device_of(loss) == dev
        loss = to_numpy(loss)
        assert loss.shape == want_loss.shape and loss.dtype == x.dtype
        dout = REF[f"{name}/dout"]
        grad = fn.backward(dev.asarray(dout))
    else:
        loss = np.asarray(float(loss))
        grad = fn.backward()
    scale = np.abs(np.nan_to_num(want_loss)).max() + 1
    np.testing.assert_allclose(loss, want_loss, rtol=tol, atol=tol * scale, err_msg="loss")
    assert device_of(grad) == dev
    grad = to_numpy(grad)
    assert grad.shape == x.shape and grad.dtype == x.dtype
    np.testing.assert_allclose(grad, want_grad, rtol=tol, atol=tol, err_msg="gradient")


@pytest.mark.parametrize("name", list(CASES))
def test_matches_pytorch_cpu(name):
    check(name, "cpu")


@pytest.mark.cuda
def test_matches_pytorch_cuda():
    for name in CUDA_CASES:
        try:
            check(name, "cuda")
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None


def test_none_backward_defaults_to_ones():
    """backward() of a "none" loss is the gradient of loss.sum()."""
    name = "MSELoss-none-float64"
    x, target = REF[f"{name}/x"], REF[f"{name}/target"]
    a, b = losses.MSELoss(reduction="none"), losses.MSELoss(reduction="sum")
    a(x, target), b(x, target)
    np.testing.assert_allclose(a.backward(), b.backward(), rtol=1e-15)


@pytest.mark.parametrize("eps", [0.0, 0.2, 1.0])
def test_mean_over_zero_total_weight_is_nan(device, eps):
    """Every target of class weight 0 (as all ignored): "mean" divides by a total weight of
    0, and PyTorch gives NaN with label smoothing too ((1 - eps) * 0 / 0 + smooth / 0), not
    the inf of the smoothing term alone; the gradient is NaN, as PyTorch's."""
    dev = Device(device)
    x = np.array([[0.1, 0.5, -0.3], [1.0, 2.0, 3.0]], dtype=np.float32)
    fn = losses.CrossEntropyLoss(np.array([0.0, 1.0, 1.0]), label_smoothing=eps)
    loss = float(fn(dev.asarray(x), np.array([0, 0])))
    assert np.isnan(loss)
    assert np.isnan(to_numpy(fn.backward())).all()
