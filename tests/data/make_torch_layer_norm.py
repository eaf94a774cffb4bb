"""Writes torch_layer_norm.npz, the PyTorch side of tests/test_torch_layer_norm.py:

- torch.nn.LayerNorm forward and backward (output, input, weight and bias gradients for a
  fixed random output gradient) for several normalized_shapes, with and without affine
  parameters (and bias=False), two eps, in float32 and float64;
- a small model (Linear, LayerNorm, ReLU, Linear) trained for three AdamW steps (weight
  decay on) with its first Linear and the LayerNorm's weight frozen (requires_grad=False),
  in float64: the final state.

Run by hand where PyTorch is installed (the test suite itself never needs torch):
    python tests/data/make_torch_layer_norm.py
"""
import os

import numpy as np
import torch
from torch import nn

# name: (input shape, normalized_shape, eps, elementwise_affine, bias)
CASES = {
    "d6": ((4, 6), 6, 1e-5, True, True),
    "seq-d5": ((2, 3, 5), (5,), 1e-5, True, True),
    "image-c3x4x4": ((2, 3, 4, 4), (3, 4, 4), 1e-3, True, True),
    "two-axes-plain": ((3, 2, 4), (2, 4), 1e-5, False, True),
    "no-bias-eps0_1": ((5, 7), 7, 0.1, True, False),
    "one-sample": ((4, 3), (4, 3), 1e-5, True, True),
}

out = {}
for dtype, tag in ((torch.float32, "f32"), (torch.float64, "f64")):
    for i, (name, (shape, normalized, eps, affine, bias)) in enumerate(CASES.items()):
        torch.manual_seed(100 + i)
        ln = nn.LayerNorm(normalized, eps=eps, elementwise_affine=affine, bias=bias,
                          dtype=dtype)
        with torch.no_grad():
            if ln.weight is not None:
                ln.weight.uniform_(0.5, 1.5)
            if ln.bias is not None:
                ln.bias.normal_()
        x = (torch.randn(shape, dtype=dtype) * 2 + 1).requires_grad_(True)
        y = ln(x)
        dout = torch.randn(shape, dtype=dtype)
        y.backward(dout)
        key = f"{tag}.{name}"
        out[f"{key}.normalized_shape"] = np.array(ln.normalized_shape, np.int64)
        out[f"{key}.eps"] = np.array(eps)
        out[f"{key}.affine"] = np.array([affine, bias])
        out[f"{key}.x"] = x.detach().numpy()
        out[f"{key}.dout"] = dout.numpy()
        out[f"{key}.out"] = y.detach().numpy()
        out[f"{key}.dx"] = x.grad.numpy()
        for pname, p in ln.named_parameters():
            out[f"{key}.{pname}"] = p.detach().numpy().copy()
            out[f"{key}.grad_{pname}"] = p.grad.numpy().copy()

# frozen training: PyTorch-style freezing with AdamW (decoupled weight decay)
torch.manual_seed(7)
torch.set_default_dtype(torch.float64)
net = nn.Sequential(nn.Linear(5, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 3))
with torch.no_grad():
    net[1].weight.uniform_(0.5, 1.5)
    net[1].bias.normal_()
out.update({f"frozen.state0.{k}": v.detach().numpy().copy() for k, v in net.state_dict().items()})
for p in net[0].parameters():
    p.requires_grad = False
net[1].weight.requires_grad_(False)
opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=0.05,
                        weight_decay=0.1)
for step in range(3):
    x = torch.randn(6, 5)
    labels = torch.randint(0, 3, (6,))
    out[f"frozen.x{step}"], out[f"frozen.labels{step}"] = x.numpy(), labels.numpy()
    opt.zero_grad()
    nn.functional.cross_entropy(net(x), labels).backward()
    opt.step()
out.update({f"frozen.state3.{k}": v.detach().numpy().copy() for k, v in net.state_dict().items()})

path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_layer_norm.npz")
np.savez_compressed(path, **out)
print(f"wrote {path} with torch {torch.__version__}: {len(out)} arrays, "
      f"{os.path.getsize(path)} bytes")
