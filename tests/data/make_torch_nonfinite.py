"""Writes torch_nonfinite.npz, the PyTorch side of tests/robustness/test_nonfinite_layers.py:
what every activation, fused epilogue, pooling layer, normalisation, recurrent layer,
dropout (p=1) and loss gives for inputs sprinkled with NaN, inf and -inf, forward and
backward, in float32 and float64.

Run by hand where PyTorch is installed (the test suite itself never needs torch):
    python tests/data/make_torch_nonfinite.py
"""
import os

import numpy as np
import torch
from torch import nn

from nonfinite_cases import CASES, classes, inputs, upstream  # shared with the test: names, shapes, inputs

torch.set_num_threads(1)
ACT = {None: lambda t: t, "relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}


def module(case):
    kind, a = case["kind"], case.get("args", {})
    if kind in ("ce", "mse"):
        return None
    if kind in ("relu", "sigmoid", "tanh"):
        return ACT[kind]
    if kind == "leaky_relu":
        return nn.LeakyReLU(a["slope"])
    if kind == "softmax":
        return nn.Softmax(-1)
    if kind == "log_softmax":
        return nn.LogSoftmax(-1)
    if kind == "max_pool":
        return nn.MaxPool2d(a["k"], a["s"], a["p"])
    if kind == "avg_pool":
        return nn.AvgPool2d(a["k"], a["s"], a["p"])
    if kind == "global_avg_pool":
        return lambda t: t.mean((2, 3))
    if kind == "dropout_p1":
        return lambda t: nn.functional.dropout(t, 1.0, True)
    if kind in ("batch_norm1d", "batch_norm2d"):
        return (nn.BatchNorm1d if kind == "batch_norm1d" else nn.BatchNorm2d)(a["c"])
    if kind == "dense":
        return nn.Linear(a["fin"], a["fout"])
    if kind == "conv":
        return nn.Conv2d(a["cin"], a["cout"], a["k"], stride=a.get("s", 1), padding=a["p"])
    if kind == "rnn":
        return nn.RNN(a["f"], a["h"], nonlinearity=a.get("nonlinearity", "tanh"),
                      batch_first=True)
    if kind == "lstm":
        return nn.LSTM(a["f"], a["h"], batch_first=True)
    if kind == "gru":
        return nn.GRU(a["f"], a["h"], batch_first=True)
    raise ValueError(kind)


out = {}
for name, case in CASES.items():
    for dtype in (np.float32, np.float64):
        torch.manual_seed(0)
        tdtype = torch.float32 if dtype == np.float32 else torch.float64
        m = module(case)
        if isinstance(m, nn.Module):
            m = m.to(tdtype)
            for k, v in m.state_dict().items():
                out[f"{name}.{dtype.__name__}.state.{k}"] = v.numpy().copy()
        x, g = inputs(name, case, dtype)
        tx = torch.tensor(x, requires_grad=True)
        if case["kind"] in ("ce", "mse"):
            target = torch.tensor(g if case["kind"] == "mse" else g.astype(np.int64))
            loss = (nn.functional.cross_entropy if case["kind"] == "ce"
                    else nn.functional.mse_loss)(tx, target)
            loss.backward()
            y, dx = loss.detach().numpy(), tx.grad.numpy()
            extra = {}
        else:
            y = m(tx)
            if isinstance(y, tuple):  # recurrent: (output, h_n)
                y = y[0]
            y = ACT[case.get("args", {}).get("act")](y)
            grad = torch.tensor(upstream(y.shape, dtype, case["args"].get("badgrad", False)))
            y.backward(grad)
            extra = {}
            if isinstance(m, nn.Module):
                extra.update({f"pgrad.{k}": p.grad.numpy().copy() for k, p in m.named_parameters()})
            y, dx = y.detach().numpy(), tx.grad.numpy()
        for k, v in {"y": y, "dx": dx, **extra}.items():
            v = np.asarray(v)
            # large cases: only where the NaN and inf are (their values are checked by the
            # kernels' own tests), to keep the file small
            out[f"{name}.{dtype.__name__}.{k}"] = classes(v) if case["large"] else v

np.savez_compressed(os.path.join(os.path.dirname(__file__), "torch_nonfinite.npz"), **out)
print("wrote", len(out), "arrays")
