"""Gradient clipping, the per-step and plateau schedules and the Trainer's use of them
against numbers PyTorch computed (tests/data/torch_schedules.npz, written by
tests/data/make_torch_schedules.py): clip_grad_norm_ / clip_grad_value_ in float32 and
float64 on every device, the lr sequences of OneCycleLR, WarmupCosine (PyTorch's
SequentialLR of LinearLR and CosineAnnealingLR) and ReduceLROnPlateau, and short training
runs (clipping before every step, OneCycleLR per step, ReduceLROnPlateau per epoch)."""
import pathlib
import sys

import numpy as np
import pytest

from fastnet.data import ArrayDataset, DataLoader
from fastnet.device import Device, to_numpy
from fastnet.layers import Dense, Parameter, Sequential
from fastnet.optim import SGD, clip_grad_norm_, clip_grad_value_
from fastnet.train import OneCycleLR, ReduceLROnPlateau, Trainer, WarmupCosine

DATA = pathlib.Path(__file__).parent / "data"
REF = np.load(DATA / "torch_schedules.npz")
sys.path.insert(0, str(DATA))
from schedule_cases import NORM_TYPES, ONECYCLE, PLATEAU, WARMUP  # noqa: E402

RTOL = {"float32": 2e-6, "float64": 1e-13}


def params(grads, device):
    """Parameters (zeros) whose .grad are copies of ``grads``, on ``device``."""
    dev = Device(device)
    out = []
    for g in grads:
        p = Parameter(dev.zeros(g.shape, g.dtype))
        p.grad = dev.asarray(np.array(g))
        out.append(p)
    return out


@pytest.mark.parametrize("name", ["float32", "float64"])
def test_clip_grad_norm_matches_pytorch(name, device):
    grads = [REF[f"grads/{name}/{i}"] for i in range(3)]
    for p in NORM_TYPES:
        for max_norm in (0.7, 1e3) if device == "cpu" else (0.7,):  # (the simulator is slow)
            tag = f"norm/{name}/{p}/{max_norm}"
            ps = params(grads, device)
            total = clip_grad_norm_(ps, max_norm, norm_type=p)
            assert isinstance(total, float)
            np.testing.assert_allclose(total, REF[f"{tag}/total"], rtol=RTOL[name], err_msg=tag)
            for i, q in enumerate(ps):
                got = to_numpy(q.grad)
                assert got.dtype == name
                np.testing.assert_allclose(got, REF[f"{tag}/grad{i}"], rtol=RTOL[name],
                                           atol=0, err_msg=f"{tag} grad {i}")
                if total < max_norm:  # not clipped: untouched, bit for bit
                    np.testing.assert_array_equal(got, grads[i])


@pytest.mark.parametrize("name", ["float32", "float64"])
@pytest.mark.parametrize("special", ["nan", "inf"])
def test_clip_grad_norm_non_finite_as_pytorch(name, special, device):
    tag = f"special/{name}/{special}"
    (p,) = params([REF[f"{tag}/input"]], device)
    total = clip_grad_norm_(p, 1.0)  # a single Parameter is taken too
    np.testing.assert_equal(total, REF[f"{tag}/total"])
    np.testing.assert_equal(to_numpy(p.grad), REF[f"{tag}/grad"])  # NaN where PyTorch's are
    (p,) = params([REF[f"{tag}/input"]], device)
    with pytest.raises(RuntimeError, match="non-finite"):
        clip_grad_norm_([p], 1.0, error_if_nonfinite=True)
    np.testing.assert_equal(to_numpy(p.grad), REF[f"{tag}/input"])  # nothing was scaled


@pytest.mark.parametrize("name", ["float32", "float64"])
def test_clip_grad_value_matches_pytorch(name, device):
    ps = params([REF[f"grads/{name}/{i}"] for i in range(3)], device)
    assert clip_grad_value_(iter(ps), 0.8) is None
    for i, p in enumerate(ps):
        np.testing.assert_array_equal(to_numpy(p.grad), REF[f"value/{name}/{i}"])


def test_clipping_skips_parameters_without_gradients_and_refuses_bad_input():
    a, b = params([np.full(4, 3.0, np.float32)], "cpu")[0], Parameter(np.zeros(3, np.float32))
    assert clip_grad_norm_([b], 1.0) == 0.0  # no gradient at all: PyTorch's 0
    assert clip_grad_norm_([b, a], 1.0) == pytest.approx(6.0)
    assert b.grad is None
    np.testing.assert_allclose(a.grad, np.full(4, 1 / (6 + 1e-6) * 3, np.float32), rtol=1e-6)
    clip_grad_value_([b, a], 0.1)
    assert b.grad is None
    with pytest.raises(TypeError, match="clip_grad_norm_: parameter 0 is not a fastnet Parameter"):
        clip_grad_norm_([np.zeros(3)], 1.0)
    with pytest.raises(TypeError, match="clip_grad_norm_: expected parameters, got a Dense"):
        clip_grad_norm_(Dense(2, 2), 1.0)
    with pytest.raises(ValueError, match="clip_grad_norm_: norm_type must be > 0"):
        clip_grad_norm_([a], 1.0, norm_type=0)
    with pytest.raises(ValueError, match="clip_grad_norm_: max_norm must be >= 0"):
        clip_grad_norm_([a], -1.0)
    with pytest.raises(TypeError, match="clip_grad_norm_: max_norm must be a number"):
        clip_grad_norm_([a], "1")
    with pytest.raises(ValueError, match="clip_grad_value_: clip_value must be >= 0"):
        clip_grad_value_([a], float("nan"))


@pytest.mark.parametrize("i", range(len(ONECYCLE)))
def test_one_cycle_lr_sequence_matches_pytorch(i):
    cfg = ONECYCLE[i]
    s = OneCycleLR(**cfg)
    got = [s(step, 123.0) for step in range(cfg["total_steps"])]  # base_lr is not used
    np.testing.assert_allclose(got, REF[f"onecycle/{i}"], rtol=1e-14)
    s(cfg["total_steps"])  # PyTorch's last step() is allowed, one more is not
    with pytest.raises(ValueError, match="tried to step"):
        s(cfg["total_steps"] + 1)


@pytest.mark.parametrize("i", range(len(WARMUP)))
def test_warmup_cosine_is_pytorchs_linear_then_cosine(i):
    s = WarmupCosine(**WARMUP[i])
    want = REF[f"warmup/{i}"]
    np.testing.assert_allclose([s(step, 0.2) for step in range(len(want))], want, rtol=1e-12)
    # after total_steps fastnet stays at min_lr (PyTorch's cosine would rise again)
    assert s(WARMUP[i]["total_steps"] + 5, 0.2) == WARMUP[i]["min_lr"]


@pytest.mark.parametrize("i", range(len(PLATEAU)))
def test_reduce_lr_on_plateau_decides_as_pytorch(i):
    s = ReduceLROnPlateau(**PLATEAU[i])
    metrics = REF["plateau/metrics"] * (-1 if PLATEAU[i].get("mode") == "max" else 1)
    lr, got = 0.1, []
    for k, m in enumerate(metrics):
        lr = s.step(m, lr)
        got.append(lr)
        if k == 7:  # through a state_dict, as a checkpoint carries it
            t = ReduceLROnPlateau(**PLATEAU[i])
            t.load_state_dict(s.state_dict())
            s = t
    np.testing.assert_array_equal(got, REF[f"plateau/{i}"])


def _train(kind, name, device):
    dt = np.dtype(name)
    x, y, xv, yv = (REF[f"train/{k}"] for k in ("x", "y", "xv", "yv"))
    model = Sequential(Dense(5, 3, dtype=name))
    model.load_state_dict({"0.weight": REF["train/w0"].astype(dt),
                           "0.bias": REF["train/b0"].astype(dt)})
    opt = SGD(model.parameters(), lr=0.5, momentum=0.9)
    if kind == "onecycle":
        extra = dict(schedule=OneCycleLR(2.0, 12), clip_grad_norm=0.5)
    else:
        extra = dict(schedule=ReduceLROnPlateau(factor=0.5, patience=0))
    seen = []
    trainer = Trainer(model, opt, device=device, progress=False, log=None,
                      on_epoch_end=lambda t, r: seen.append(
                          (to_numpy(model[0].weight.data).copy(),
                           to_numpy(model[0].bias.data).copy(), t.optimizer.lr)), **extra)
    trainer.fit(DataLoader(ArrayDataset(x.astype(dt), y), 6, dtype=dt),
                DataLoader(ArrayDataset(xv.astype(dt), yv), 8, dtype=dt), epochs=3)
    return seen


@pytest.mark.parametrize("device, kind, name", [
    *(("cpu", k, n) for k in ("onecycle", "plateau") for n in ("float32", "float64")),
    # the schedules are host arithmetic: on CUDA (slow in the simulator) the clipped run
    pytest.param("cuda", "onecycle", "float32", marks=pytest.mark.cuda)])
def test_training_with_clipping_and_schedules_matches_pytorch(device, kind, name):
    tol = dict(rtol=1e-5, atol=1e-6) if name == "float32" else dict(rtol=1e-12, atol=1e-13)
    for e, (w, b, lr) in enumerate(_train(kind, name, device)):
        tag = f"train/{kind}/{name}/{e}"
        np.testing.assert_allclose(w, REF[f"{tag}/weight"], **tol, err_msg=tag)
        np.testing.assert_allclose(b, REF[f"{tag}/bias"], **tol, err_msg=tag)
        if kind == "plateau":  # (OneCycleLR's: the lr of the next step, in PyTorch's record)
            assert lr == pytest.approx(float(REF[f"{tag}/lr"]), rel=1e-14), tag
