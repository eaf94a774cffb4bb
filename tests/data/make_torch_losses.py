"""Writes torch_losses.npz, the PyTorch side of tests/test_torch_losses.py: every loss of
fastnet.losses (CrossEntropyLoss, NLLLoss, BCEWithLogitsLoss, L1Loss, MSELoss,
SmoothL1Loss, HuberLoss) x reduction ("mean", "sum", "none") x its options, in float32 and
float64: the inputs, the loss and the gradient (for "none", the gradient of a stored
upstream gradient ``dout``); plus NaN predictions and all-ignored targets.

Each case is ``<name>/...``; ``cases`` (JSON) holds each one's class and constructor
keyword arguments (weights by name), so that the test rebuilds the same loss.

Run by hand where PyTorch is installed (the test suite itself never needs torch):
    python tests/data/make_torch_losses.py
"""
import json
import os

import numpy as np
import torch
import torch.nn as nn

torch.set_num_threads(1)
REDUCTIONS = ("mean", "sum", "none")
DTYPES = (np.float32, np.float64)
C = 3
CASES = {}  # name -> {"cls", the constructor's keyword arguments, "arrays": the weights'}


def tensor(a):
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a))


def run(out, name, cls, kwargs, arrays, x, target, dtype, rng):
    """One case: the loss built from kwargs (+ arrays: the weights) on x, target."""
    loss_fn = getattr(nn, cls)(**kwargs, **{k: tensor(v) for k, v in arrays.items()})
    tx = torch.tensor(x, requires_grad=True)
    loss = loss_fn(tx, tensor(target))
    if loss.ndim:
        dout = rng.standard_normal(loss.shape).astype(dtype)
        loss.backward(tensor(dout))
        out[f"{name}/dout"] = dout
    else:
        loss.backward()
    CASES[name] = {"cls": cls, **kwargs, "arrays": list(arrays)}
    out[f"{name}/x"] = x
    out[f"{name}/target"] = target
    for k, v in arrays.items():
        out[f"{name}/{k}"] = v
    out[f"{name}/loss"] = loss.detach().numpy()
    out[f"{name}/grad"] = tx.grad.numpy()


def class_cases(out):
    options = {
        "plain": ({}, {}),
        "ignore1": ({"ignore_index": 1}, {}),
        "weight": ({}, {"weight": True}),
        "smooth": ({"label_smoothing": 0.2}, {}),
        "all": ({"label_smoothing": 0.1}, {"weight": True}),
    }
    for cls in ("CrossEntropyLoss", "NLLLoss"):
        for shape in ((4, C), (2, C, 2)):
            for opt, (kwargs, arrays) in options.items():
                if cls == "NLLLoss" and "label_smoothing" in kwargs:
                    continue
                if len(shape) == 2 and opt not in ("plain", "all"):
                    continue  # the options on (N, C) rows once: their (N, C, d) cases
                for red in REDUCTIONS:
                    for dt in DTYPES:
                        rng = np.random.default_rng(len(out))
                        x = (rng.standard_normal(shape) * 2).astype(dt)
                        if cls == "NLLLoss":
                            x = torch.log_softmax(torch.from_numpy(x), 1).numpy()
                        labels = rng.integers(0, C, (shape[0],) + shape[2:])
                        labels.reshape(-1)[0] = kwargs.get("ignore_index", -100)
                        labels.reshape(-1)[-1] = 1
                        w = {k: (rng.random(C) + 0.5).astype(dt) for k in arrays}
                        name = f"{cls}-{opt}-{'x'.join(map(str, shape))}-{red}-{np.dtype(dt).name}"
                        run(out, name, cls, {**kwargs, "reduction": red}, w, x, labels, dt, rng)
    for cls in ("CrossEntropyLoss", "NLLLoss"):
        for red in REDUCTIONS:  # every target ignored: mean is NaN, the gradient 0
            rng = np.random.default_rng(len(out))
            x = rng.standard_normal((2, C))
            run(out, f"{cls}-allignored-{red}-float64", cls, {"reduction": red}, {}, x,
                np.full(2, -100), np.float64, rng)


def bce_cases(out):
    options = {
        "plain": {},
        "pos_weight": {"pos_weight": (C,)},
        "both": {"weight": (2, 1, C), "pos_weight": (C,)},
    }
    for opt, arrays in options.items():
        for red in REDUCTIONS:
            for dt in DTYPES:
                rng = np.random.default_rng(len(out))
                x = (rng.standard_normal((2, 2, C)) * 3).astype(dt)
                x[0, 0, :2] = (1e4, -1e4)  # exact, no inf / NaN
                x[1, 0, :2] = (-1e4, 1e4)
                target = rng.random((2, 2, C)).astype(dt)  # soft targets
                target[:, 0, :2] = (1, 0)
                w = {k: (rng.random(s) * 2).astype(dt) for k, s in arrays.items()}
                run(out, f"BCEWithLogitsLoss-{opt}-{red}-{np.dtype(dt).name}",
                    "BCEWithLogitsLoss", {"reduction": red}, w, x, target, dt, rng)


def pointwise_cases(out):
    options = {
        "L1Loss": {}, "MSELoss": {},
        "SmoothL1Loss-beta0.5": {"beta": 0.5},
        "SmoothL1Loss-beta0": {"beta": 0.0},
        "HuberLoss": {}, "HuberLoss-delta0.5": {"delta": 0.5},
    }
    for opt, kwargs in options.items():
        cls = opt.split("-")[0]
        for red in REDUCTIONS:
            for dt in DTYPES:
                rng = np.random.default_rng(len(out))
                x = rng.standard_normal((3, 4)).astype(dt)
                target = rng.standard_normal((3, 4)).astype(dt)
                target[0, 0] = x[0, 0]  # the kinks: d = 0, |d| = beta (exact: 0.5, 1)
                target[0, 1] = x[0, 1] - dt(0.5)
                target[0, 2] = x[0, 2] + dt(1)
                run(out, f"{opt}-{red}-{np.dtype(dt).name}", cls, {**kwargs, "reduction": red},
                    {}, x, target, dt, rng)


def nan_cases(out):
    """A NaN prediction: its loss (and the mean) NaN, its gradient as PyTorch's."""
    for cls, kwargs in (("CrossEntropyLoss", {}), ("NLLLoss", {}), ("BCEWithLogitsLoss", {}),
                        ("L1Loss", {}), ("MSELoss", {}), ("SmoothL1Loss", {}),
                        ("HuberLoss", {})):
        for red in ("mean", "none"):
            rng = np.random.default_rng(len(out))
            x = rng.standard_normal((3, C)).astype(np.float32)
            x[1, 2] = np.nan
            if cls in ("CrossEntropyLoss", "NLLLoss"):
                target = np.array([0, 1, 2])
            else:
                target = rng.random((3, C)).astype(np.float32)
            run(out, f"nan-{cls}-{red}-float32", cls, {**kwargs, "reduction": red}, {}, x,
                target, np.float32, rng)


def main():
    out = {}
    class_cases(out)
    bce_cases(out)
    pointwise_cases(out)
    nan_cases(out)
    out["cases"] = np.array(json.dumps(CASES))
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_losses.npz")
    np.savez_compressed(path, **out)
    print(f"wrote {path}: {len(out)} arrays, torch {torch.__version__}")


if __name__ == "__main__":
    main()
