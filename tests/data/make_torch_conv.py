"""Writes torch_conv.npz, the PyTorch side of tests/test_torch_conv.py: nn.Conv2d with
dilation and groups (dilation 2, groups 2, depthwise, depthwise multiplier 2, stride 2 with
dilation, odd sizes, with and without bias, a fused ReLU), forward and backward (dx, dw,
db), in float32 and float64, with the inputs they were computed on.

Run by hand where PyTorch is installed (the test suite itself never needs torch):
    python tests/data/make_torch_conv.py
"""
import json
import os

import numpy as np
import torch
import torch.nn.functional as F

torch.set_num_threads(1)

# name: (N, C, H, W, O, kernel, stride, padding, dilation, groups, bias, activation)
CASES = {  # small: the CUDA simulator runs them too
    "dilation2": (1, 3, 7, 6, 4, 3, 1, 2, 2, 1, True, None),
    "groups2": (1, 4, 5, 5, 4, (3, 2), 1, 1, 1, 2, False, None),
    "depthwise": (2, 3, 6, 5, 3, 3, 1, 1, 1, 3, True, "relu"),
    "depthwise-x2": (1, 2, 5, 6, 4, 3, 1, 0, 1, 2, True, None),
    "stride2-dilation": (1, 4, 9, 8, 4, 3, 2, (2, 1), (2, 3), 2, True, None),
    "odd-depthwise-dilated": (2, 2, 5, 9, 4, (2, 3), (1, 2), (1, 3), (3, 2), 2, False, "relu"),
}


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def main():
    out = {}
    for i, (name, c) in enumerate(CASES.items()):
        n, ch, h, w, o, k, s, p, d, g, bias, act = c
        k, s, p, d = _pair(k), _pair(s), _pair(p), _pair(d)
        out[f"{name}.config"] = np.array(json.dumps(
            dict(in_channels=ch, out_channels=o, kernel_size=k, stride=s, padding=p,
                 dilation=d, groups=g, bias=bias, activation=act)))
        for dt, tdt in ((np.float32, torch.float32), (np.float64, torch.float64)):
            rng = np.random.default_rng(300 + i)
            x = rng.standard_normal((n, ch, h, w))
            wt = rng.standard_normal((o, ch // g) + k) / np.sqrt(ch // g * k[0] * k[1])
            b = rng.standard_normal(o) if bias else None
            tx = torch.tensor(x.astype(dt), requires_grad=True)
            tw = torch.tensor(wt.astype(dt), requires_grad=True)
            tb = torch.tensor(b.astype(dt), requires_grad=True) if bias else None
            y = F.conv2d(tx, tw, tb, s, p, d, g)
            if act == "relu":
                y = F.relu(y)
            dout = rng.standard_normal(tuple(y.shape))
            y.backward(torch.tensor(dout.astype(dt), dtype=tdt))
            tag = f"{name}.{np.dtype(dt).name}"
            out[f"{tag}.x"] = x.astype(dt)
            out[f"{tag}.weight"] = wt.astype(dt)
            if bias:
                out[f"{tag}.bias"] = b.astype(dt)
                out[f"{tag}.db"] = tb.grad.numpy()
            out[f"{tag}.dout"] = dout.astype(dt)
            out[f"{tag}.out"] = y.detach().numpy()
            out[f"{tag}.dx"] = tx.grad.numpy()
            out[f"{tag}.dw"] = tw.grad.numpy()
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_conv.npz")
    np.savez_compressed(path, **out)
    print(f"wrote {path}: {len(out)} arrays, torch {torch.__version__}")


if __name__ == "__main__":
    main()
