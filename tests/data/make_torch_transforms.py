"""Writes torch_transforms.npz, the PyTorch side of tests/test_transforms.py: torchvision's
Normalize, RandomCrop(size, padding) and RandomHorizontalFlip, reproduced with the torch
operations torchvision's tensor code runs (torchvision is not installed here): Normalize
is ``x.sub_(mean).div_(std)`` with mean and std as tensors of x's dtype; RandomCrop pads
with ``F.pad(x, [left, right, top, bottom])`` (zeros) and cuts at (i, j); the flip is
``x.flip(-1)``. The crop offsets and flip draws are stored with the results (the random
streams of torch and NumPy differ; the test replays these draws). float32 and float64,
NaN and inf included.

Run by hand where PyTorch is installed (the test suite itself never needs torch):
    python tests/data/make_torch_transforms.py
"""
import os

import numpy as np
import torch
import torch.nn.functional as F

torch.set_num_threads(1)

MEAN, STD = [0.1307, -0.5, 2.0], [0.3081, 1.5, 0.25]
CROPS = [((5, 6), (1, 2)), ((4, 4), (0, 0)), ((7, 9), (2, 1))]  # (size, padding (lr, tb))


def main():
    out = {}
    rng = np.random.default_rng(0)
    for dt in (np.float32, np.float64):
        name = np.dtype(dt).name
        x = rng.standard_normal((4, 3, 5, 6)).astype(dt)
        x[0, 1, 2, 3], x[2, 0, 4, 5], x[3, 2, 0, 0] = np.nan, np.inf, -np.inf
        out[f"{name}/x"] = x
        t = torch.from_numpy(x.copy())
        mean = torch.as_tensor(MEAN, dtype=t.dtype).view(-1, 1, 1)
        std = torch.as_tensor(STD, dtype=t.dtype).view(-1, 1, 1)
        out[f"{name}/normalize"] = t.clone().sub_(mean).div_(std).numpy()
        for k, ((th, tw), (pw, ph)) in enumerate(CROPS):
            top = rng.integers(0, 5 + 2 * ph - th + 1, size=4)
            left = rng.integers(0, 6 + 2 * pw - tw + 1, size=4)
            padded = F.pad(t, [pw, pw, ph, ph])
            crops = [padded[n, :, top[n]:top[n] + th, left[n]:left[n] + tw] for n in range(4)]
            out[f"{name}/crop{k}/top"], out[f"{name}/crop{k}/left"] = top, left
            out[f"{name}/crop{k}"] = torch.stack(crops).numpy()
        u = rng.random(4)
        flips = [t[n].flip(-1) if u[n] < 0.5 else t[n] for n in range(4)]
        out[f"{name}/flip/u"] = u
        out[f"{name}/flip"] = torch.stack(flips).numpy()
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_transforms.npz")
    np.savez_compressed(path, **out)
    print(f"wrote {path} ({os.path.getsize(path)} bytes, torch {torch.__version__})")


if __name__ == "__main__":
    main()
