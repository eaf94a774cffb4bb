"""fastnet vs its NumPy twin, per op (forward + backward) and for a LeNet-5 training step.

Run: python -m pytest benchmarks/ --benchmark-only
Each pair shares a benchmark group, so the table reads as a ratio.
"""
import numpy as np
import pytest

import fastnet
from fastnet.kernels import kernel
from fastnet.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sequential
from fastnet.losses import CrossEntropyLoss
from fastnet.optim import SGD

import twins

RNG = np.random.default_rng(0)
f32 = np.float32


def _bench(benchmark, fn, flops=None, samples=None):
    fn()  # warm-up: JIT compile and caches stay out of the timing
    benchmark(fn)
    if benchmark.stats is None:  # --benchmark-disable: run once as a test, no figures
        return
    t = benchmark.stats.stats.median
    if flops:
        benchmark.extra_info["GFLOP/s"] = round(flops / t / 1e9, 2)
    if samples:
        benchmark.extra_info["samples/s"] = round(samples / t, 1)


DENSE = (128, 784, 256)


@pytest.mark.benchmark(group="dense 128x784->256 relu fwd+bwd")
@pytest.mark.parametrize("impl", ["fastnet", "numpy"])
def test_dense(benchmark, impl):
    n, i, o = DENSE
    x, w, b = RNG.random((n, i), f32), RNG.random((o, i), f32) - 0.5, RNG.random(o, f32)
    dout = RNG.random((n, o), f32)
    y, dx, dw, db = np.empty((n, o), f32), np.empty_like(x), np.empty_like(w), np.empty_like(b)
    fwd, bwd = kernel("dense_forward"), kernel("dense_backward")

    def run_fastnet():
        fwd(y, x, w, b, "relu")
        bwd(dx, dw, db, dout, x, w, y, "relu")

    run = run_fastnet if impl == "fastnet" else (lambda: twins.dense_fwd_bwd(x, w, b, dout))
    _bench(benchmark, run, flops=3 * 2 * n * i * o, samples=n)


CONV = (128, 6, 14, 14, 16, 5, 1, 0)


@pytest.mark.benchmark(group="conv2d 128x6x14x14 -> 16 5x5 fwd+bwd")
@pytest.mark.parametrize("impl", ["fastnet", "numpy"])
def test_conv2d(benchmark, impl):
    n, c, h, wd, o, k, s, p = CONV
    x, w, b = RNG.random((n, c, h, wd), f32), RNG.random((o, c, k, k), f32), RNG.random(o, f32)
    oh = (h + 2 * p - k) // s + 1
    dout = RNG.random((n, o, oh, oh), f32)
    y, dx, dw, db = np.empty_like(dout), np.empty_like(x), np.empty_like(w), np.empty_like(b)
    cols = np.empty((c * k * k, n * oh * oh), f32)

    def run_fastnet():
        kernel("conv2d_forward")(y, cols, x, w, b, (s, s), (p, p))
        kernel("conv2d_backward")(dx, dw, db, dout, cols, w, (s, s), (p, p))

    run = run_fastnet if impl == "fastnet" else (lambda: twins.conv_fwd_bwd(x, w, b, dout, s, p))
    _bench(benchmark, run, flops=3 * 2 * n * o * oh * oh * c * k * k, samples=n)


@pytest.mark.benchmark(group="max_pool2d 128x16x28x28 k2 fwd+bwd")
@pytest.mark.parametrize("impl", ["fastnet", "numpy"])
def test_max_pool(benchmark, impl):
    x = RNG.random((128, 16, 28, 28), f32)
    dout = RNG.random((128, 16, 14, 14), f32)
    y, am, dx = np.empty_like(dout), np.empty(dout.shape, np.int32), np.empty_like(x)

    def run_fastnet():
        kernel("max_pool2d_forward")(y, am, x, (2, 2), (2, 2), (0, 0))
        kernel("max_pool2d_backward")(dx, dout, am)

    run = run_fastnet if impl == "fastnet" else (lambda: twins.maxpool_fwd_bwd(x, 2, dout))
    _bench(benchmark, run, samples=128)


@pytest.mark.benchmark(group="LeNet-5 training step, batch 128")
def test_lenet_step_fastnet(benchmark):
    fastnet.manual_seed(0)
    model = Sequential(Conv2D(1, 6, 5, padding=2), ReLU(), MaxPool2D(2), Conv2D(6, 16, 5), ReLU(),
                       MaxPool2D(2), Flatten(), Dense(400, 120, activation="relu"),
                       Dense(120, 84, activation="relu"), Dense(84, 10))
    x, y = RNG.random((128, 1, 28, 28), f32), RNG.integers(0, 10, 128)
    opt, loss_fn = SGD(model.parameters(), lr=0.01, momentum=0.9), CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        opt.step()

    _bench(benchmark, step, samples=128)
