"""The cases of tests/data/make_torch_nonfinite.py and tests/robustness/test_nonfinite_layers.py
(plain data, no torch, no fastnet): each layer kind, its arguments and input shape; ``large``
cases take the kernels' vectorised paths and run on the CPU only (too slow in the CUDA
simulator)."""
import numpy as np

CASES = {}


def _add(name, kind, shape, large=False, **args):
    CASES[name] = {"kind": kind, "shape": shape, "large": large, "args": args}


for k in ("relu", "sigmoid", "tanh"):
    _add(k, k, (5, 7))
    _add(f"{k}_large", k, (32, 301), large=True)
_add("leaky_relu", "leaky_relu", (5, 7), slope=0.1)
for k in ("softmax", "log_softmax"):
    _add(k, k, (6, 5))
    _add(f"{k}_large", k, (32, 133), large=True)
_add("max_pool", "max_pool", (2, 2, 6, 6), k=2, s=2, p=0)
_add("max_pool_3s2p1", "max_pool", (2, 2, 7, 7), k=3, s=2, p=1)
_add("max_pool_large", "max_pool", (8, 8, 32, 32), large=True, k=2, s=2, p=0)
_add("avg_pool", "avg_pool", (2, 2, 6, 6), k=2, s=2, p=0)
_add("avg_pool_3s1p1", "avg_pool", (2, 2, 5, 5), k=3, s=1, p=1)
_add("avg_pool_large", "avg_pool", (8, 8, 32, 32), large=True, k=2, s=2, p=0)
_add("global_avg_pool", "global_avg_pool", (3, 4, 5, 5))
_add("global_avg_pool_large", "global_avg_pool", (16, 32, 16, 16), large=True)
_add("dropout_p1", "dropout_p1", (4, 9))
_add("batch_norm1d", "batch_norm1d", (8, 5), c=5)
_add("batch_norm2d", "batch_norm2d", (4, 3, 5, 5), c=3)
for act in (None, "relu", "sigmoid", "tanh"):
    _add(f"dense_{act}", "dense", (6, 9), fin=9, fout=7, act=act)
    _add(f"conv_{act}", "conv", (2, 3, 6, 6), cin=3, cout=4, k=3, p=1, act=act)
_add("conv_1channel_relu", "conv", (2, 1, 7, 7), cin=1, cout=3, k=3, p=1, act="relu")  # direct.py
_add("conv_stride2", "conv", (2, 3, 7, 7), cin=3, cout=4, k=3, p=1, s=2, act=None)
_add("dense_relu_large", "dense", (64, 200), large=True, fin=200, fout=96, act="relu")
_add("conv_relu_large", "conv", (8, 6, 20, 20), large=True, cin=6, cout=16, k=3, p=1, act="relu")
_add("rnn", "rnn", (2, 4, 3), f=3, h=5)
_add("lstm", "lstm", (2, 4, 3), f=3, h=5)
_add("gru", "gru", (2, 4, 3), f=3, h=5)
# NaN / inf in the gradient handed to backward, finite inputs (ReLU's backward is a select:
# 0 where the output is <= 0 even for a NaN gradient, as PyTorch's threshold_backward)
for k in ("relu", "sigmoid", "tanh"):
    _add(f"{k}_badgrad", k, (5, 7), badgrad=True)
_add("leaky_relu_badgrad", "leaky_relu", (5, 7), slope=0.1, badgrad=True)
_add("max_pool_badgrad", "max_pool", (2, 2, 6, 6), k=2, s=2, p=0, badgrad=True)
for act in ("relu", "tanh"):
    _add(f"dense_{act}_badgrad", "dense", (6, 9), fin=9, fout=7, act=act, badgrad=True)
    _add(f"conv_{act}_badgrad", "conv", (2, 3, 6, 6), cin=3, cout=4, k=3, p=1, act=act,
         badgrad=True)
_add("conv_1channel_relu_badgrad", "conv", (2, 1, 7, 7), cin=1, cout=3, k=3, p=1, act="relu",
     badgrad=True)
_add("rnn_relu", "rnn", (2, 4, 3), f=3, h=5, nonlinearity="relu")
_add("rnn_relu_badgrad", "rnn", (2, 4, 3), f=3, h=5, nonlinearity="relu", badgrad=True)
_add("ce", "ce", (6, 5))
_add("mse", "mse", (6, 5))


def inputs(name, case, dtype):
    """(x, g): the input, sprinkled with NaN, inf and -inf (about 1 in 12 elements, at
    least 3), and the loss target (labels for ce, values with a NaN for mse; None else)."""
    seed = sum(map(ord, name))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case["shape"])
    flat = x.reshape(-1)
    idx = rng.choice(flat.size, size=max(3, flat.size // 12), replace=False)
    flat[idx] = np.array([np.nan, np.inf, -np.inf])[np.arange(idx.size) % 3]
    if case["args"].get("badgrad"):
        x = rng.standard_normal(case["shape"])  # finite: the gradient is the bad one
    elif case["kind"] in ("rnn", "lstm", "gru", "batch_norm1d", "batch_norm2d"):
        x = rng.standard_normal(case["shape"])  # one bad value: the rest stays informative
        x.reshape(-1)[seed % x.size] = np.nan
    g = None
    if case["kind"] == "ce":
        g = rng.integers(0, case["shape"][1], case["shape"][0])
    elif case["kind"] == "mse":
        x = rng.standard_normal(case["shape"])
        x[0, 1], x[2, 2] = np.inf, -np.inf
        g = rng.standard_normal(case["shape"])
        g[4, 3] = np.nan
        g = g.astype(dtype)
    return x.astype(dtype), g


def upstream(shape, dtype, bad=False):
    """The gradient fed to backward: fixed; finite, or (``bad``) with about 1 in 4 values
    NaN, inf or -inf."""
    rng = np.random.default_rng(1)
    g = rng.standard_normal(shape)
    if bad:
        flat = g.reshape(-1)
        idx = rng.choice(flat.size, size=max(3, flat.size // 4), replace=False)
        flat[idx] = np.array([np.nan, np.inf, -np.inf])[np.arange(idx.size) % 3]
    return g.astype(dtype)


def classes(a):
    """uint8 per element: 0 finite, 1 NaN, 2 +inf, 3 -inf."""
    a = np.asarray(a)
    return (np.isnan(a) * 1 + (a == np.inf) * 2 + (a == -np.inf) * 3).astype(np.uint8)
