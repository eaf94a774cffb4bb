"""Writes torch_embedding_ce.npz, the PyTorch side of tests/layers/test_embedding.py and
tests/layers/test_cross_entropy.py: nn.Embedding (forward, weight gradient, padding_idx)
and F.cross_entropy on (N, C) and (N, C, d1, ...) logits (loss, gradient), in float32 and
float64, with the inputs they were computed on.

Run by hand where PyTorch is installed (the test suite itself never needs torch):
    python tests/data/make_torch_embedding_ce.py
"""
import os

import numpy as np
import torch
import torch.nn.functional as F

torch.set_num_threads(1)

CE_SHAPES = [(4, 3), (3, 5, 4), (1, 7, 1), (2, 3, 1), (5, 2, 9), (2, 4, 3, 2), (1, 1, 6)]
EMB_SHAPES = [(2, 5), (7,), (1, 1), (2, 3, 4), ()]
EMB_PADDING = [None, 3, -1]


def key(*parts):
    return "/".join(str(p).replace(" ", "") for p in parts)


def cross_entropy(out, tag, logits, labels):
    x = torch.tensor(logits, requires_grad=True)
    loss = F.cross_entropy(x, torch.from_numpy(labels.astype(np.int64)))
    loss.backward()
    out[key(tag, "logits")] = logits
    out[key(tag, "labels")] = labels
    out[key(tag, "loss")] = np.array(loss.item())
    out[key(tag, "grad")] = x.grad.numpy()


def main():
    out = {}
    for i, shape in enumerate(CE_SHAPES):
        for dt in (np.float32, np.float64):
            rng = np.random.default_rng(100 + i)
            logits = (rng.standard_normal(shape) * 3).astype(dt)
            labels = rng.integers(0, shape[1], (shape[0],) + shape[2:]).astype(np.int32)
            cross_entropy(out, key("ce", shape, np.dtype(dt).name), logits, labels)
    rng = np.random.default_rng(7)
    logits = rng.standard_normal((2, 4, 3))
    logits[1, 2, 0] = np.nan
    cross_entropy(out, "ce-nan", logits, np.array([[0, 1, 3], [2, 2, 1]]))
    for i, shape in enumerate(EMB_SHAPES):
        for padding in EMB_PADDING:
            for dt in (np.float32, np.float64):
                rng = np.random.default_rng(200 + i)
                weight = rng.standard_normal((10, 4)).astype(dt)
                idx = rng.integers(0, 10, shape)
                if idx.size > 1:
                    idx.reshape(-1)[:2] = 3  # a repeat, and the padding row when there is one
                dout = rng.standard_normal(shape + (4,)).astype(dt)
                t = torch.nn.Embedding(10, 4, padding_idx=padding,
                                       dtype=torch.float64 if dt == np.float64 else torch.float32)
                with torch.no_grad():
                    t.weight.copy_(torch.from_numpy(weight))
                y = t(torch.from_numpy(idx))
                y.backward(torch.from_numpy(dout))
                tag = key("emb", shape, padding, np.dtype(dt).name)
                out[key(tag, "weight")] = weight
                out[key(tag, "idx")] = idx
                out[key(tag, "dout")] = dout
                out[key(tag, "y")] = y.detach().numpy()
                out[key(tag, "dweight")] = t.weight.grad.numpy()
    torch.manual_seed(0)
    t = torch.nn.Embedding(100, 20, padding_idx=-3)
    out["emb-init/weight"] = t.weight.detach().numpy()
    out["emb-init/y"] = t(torch.tensor([[0, 97, 99]])).detach().numpy()
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_embedding_ce.npz")
    np.savez_compressed(path, **out)
    print(f"wrote {path}: {len(out)} arrays, torch {torch.__version__}")


if __name__ == "__main__":
    main()
