"""Writes torch_lp_hardsigmoid.npz, the PyTorch side of tests/test_torch_lp_hardsigmoid.py:
nn.LPPool2d and nn.Hardsigmoid, forward and backward (autograd), in float32 and float64, on
inputs that hold the edge cases: windows of zeros (gradient 0, not NaN), negative sums of
odd powers (NaN), NaN, +-inf, and hardsigmoid's boundaries x = +-3.

Run by hand where PyTorch is installed (the test suite itself never needs torch):
    python tests/data/make_torch_lp_hardsigmoid.py
"""
import os

import numpy as np
import torch
from torch import nn

torch.set_num_threads(1)

# name -> (x shape, norm_type, kernel_size, stride); stride None: the kernel size
LP_CASES = {
    "p2-k2": ((2, 3, 6, 8), 2, 2, None),
    "p3-k3x2-s2x1": ((2, 2, 7, 6), 3, (3, 2), (2, 1)),
    "p1-k2-s1": ((1, 2, 5, 5), 1, 2, 1),
    "p1.5-k3-s2": ((2, 2, 7, 7), 1.5, 3, 2),
    "p4-k2x3-s3x2": ((1, 3, 8, 9), 4, (2, 3), (3, 2)),
}
HARDSIGMOID_SHAPE = (3, 41)


def lp_input(name, shape, p, dtype):
    """Seeded values in [-2, 2] (|x| for a fractional p), with a window of zeros, a NaN and
    an inf in the first plane."""
    rng = np.random.default_rng(sum(map(ord, name)))
    x = rng.uniform(-2, 2, shape)
    if not float(p).is_integer():
        x = np.abs(x)
    x[0, 0, :3, :3] = 0
    x[-1, -1, -1, -1] = np.nan
    x[-1, 0, -2, 1] = np.inf
    return x.astype(dtype)


def hardsigmoid_input(dtype):
    rng = np.random.default_rng(7)
    x = rng.uniform(-5, 5, HARDSIGMOID_SHAPE)
    f = x.reshape(-1)
    f[:8] = [-3.0, 3.0, -np.inf, np.inf, np.nan, 0.0, -0.0, 2.5]
    return x.astype(dtype)


def upstream(name, shape, dtype):
    return np.random.default_rng(sum(map(ord, name)) + 1).standard_normal(shape).astype(dtype)


def run(module, x, name):
    t = torch.tensor(x, requires_grad=True)
    y = module(t)
    g = upstream(name, tuple(y.shape), x.dtype)
    y.backward(torch.tensor(g))
    return y.detach().numpy(), t.grad.numpy(), g


def main():
    out = {}
    for dtype in (np.float32, np.float64):
        tag = np.dtype(dtype).name
        for name, (shape, p, k, s) in LP_CASES.items():
            x = lp_input(name, shape, p, dtype)
            y, dx, g = run(nn.LPPool2d(p, k, s), x, name)
            out.update({f"lp/{name}/{tag}/x": x, f"lp/{name}/{tag}/y": y,
                        f"lp/{name}/{tag}/dout": g, f"lp/{name}/{tag}/dx": dx})
        x = hardsigmoid_input(dtype)
        y, dx, g = run(nn.Hardsigmoid(), x, "hardsigmoid")
        out.update({f"hardsigmoid/{tag}/x": x, f"hardsigmoid/{tag}/y": y,
                    f"hardsigmoid/{tag}/dout": g, f"hardsigmoid/{tag}/dx": dx})
    out["torch_version"] = np.array(torch.__version__)
    np.savez_compressed(os.path.join(os.path.dirname(__file__), "torch_lp_hardsigmoid.npz"), **out)


if __name__ == "__main__":
    main()
