"""NaN and inf propagate through the layers as in PyTorch (issue 19): ReLU and the ReLU
fused into Dense / Conv2D keep a NaN (they mapped it to 0, a silent wrong answer), and
ReLU's backward passes the gradient where the output is NaN (PyTorch's
threshold_backward: 0 only where the output is <= 0). On both devices."""
import numpy as np
import pytest

import fastnet
from fastnet.device import to_numpy
from fastnet.layers import Conv2D, Dense, LeakyReLU, MaxPool2D, ReLU, Sigmoid, Tanh

nan, inf = np.nan, np.inf


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_relu_keeps_nan_and_inf(device, to_dev, dtype):
    x = np.array([[nan, inf, -inf, -1.0, 0.0, 2.0]], dtype)
    layer = ReLU().to(device)
    out = to_numpy(layer(to_dev(x)))
    np.testing.assert_array_equal(out, np.array([[nan, inf, 0, 0, 0, 2.0]], dtype))
    g = np.arange(1, 7, dtype=dtype)[None]
    dx = to_numpy(layer.backward(to_dev(g)))
    np.testing.assert_array_equal(dx, np.array([[1, 2, 0, 0, 0, 6]], dtype))


@pytest.mark.parametrize("layer", [Sigmoid, Tanh, lambda: LeakyReLU(0.1)], ids=["sigmoid", "tanh", "leaky"])
def test_other_activations_keep_nan(device, to_dev, layer):
    x = np.array([[nan, 1.0]], np.float32)
    out = to_numpy(layer().to(device)(to_dev(x)))
    assert np.isnan(out[0, 0]) and np.isfinite(out[0, 1])


def test_fused_relu_in_dense_keeps_nan(device, to_dev):
    fastnet.manual_seed(0)
    layer = Dense(5, 4, activation="relu").to(device)
    x = np.ones((3, 5), np.float32)
    x[1, 2] = nan
    out = to_numpy(layer(to_dev(x)))
    assert np.isnan(out[1]).all(), out  # every unit of the NaN sample
    assert np.isfinite(out[[0, 2]]).all()


def test_fused_relu_in_conv_keeps_nan(device, to_dev):
    """One NaN pixel of a LeNet batch: the outputs whose window covers it are NaN (they
    were 0 or finite, and one step then made the weights NaN while the loss kept
    falling), the other images are untouched."""
    fastnet.manual_seed(0)
    layer = Conv2D(1, 3, 3, padding=1, activation="relu").to(device)
    x = np.ones((2, 1, 6, 6), np.float32)
    x[0, 0, 2, 3] = nan
    out = to_numpy(layer(to_dev(x)))
    assert np.isnan(out[0, :, 1:4, 2:5]).all()
    covered = np.zeros(out.shape[2:], bool)
    covered[1:4, 2:5] = True
    assert np.isfinite(out[0][:, ~covered]).all() and np.isfinite(out[1]).all()


def test_max_pool_keeps_nan(device, to_dev):
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, 1, 1] = nan
    out = to_numpy(MaxPool2D(2).to(device)(to_dev(x)))
    assert np.isnan(out[0, 0, 0, 0]) and (out[0, 0].ravel()[1:] == 0).all()
