"""LPPool2D and Hardsigmoid layers on every device: forward and backward against the
reference, argument and input checks before any kernel, eval-mode inference plans, and
save / load round trips. (PyTorch's own numbers: tests/test_torch_lp_hardsigmoid.py.)"""
import numpy as np
import pytest

import fastnet
from fastnet.device import device_of, to_numpy
from fastnet.layers import Conv2D, Dense, Flatten, Hardsigmoid, LPPool2D, Sequential
from tests import reference as ref


@pytest.mark.parametrize("p, k, s", [(2, 2, None), (3, (3, 2), (1, 2)), (1.5, 2, 1)])
def test_lp_pool_layer_matches_reference(rng, dtype, close, device, to_dev, p, k, s):
    x = rng.uniform(0.1, 2, (2, 3, 5, 7)).astype(dtype)
    layer = LPPool2D(p, k, s).to(device)
    ks = (k, k) if isinstance(k, int) else k
    st = ks if s is None else ((s, s) if isinstance(s, int) else s)
    y = layer(to_dev(x))
    assert device_of(y) == device
    close(y, ref.lp_pool2d_forward(x, p, ks, st), scale=4)
    dout = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(to_dev(dout))
    assert device_of(dx) == device and dx.shape == x.shape
    close(dx, ref.lp_pool2d_backward(dout, x, p, ks, st), scale=4)


def test_hardsigmoid_layer_matches_reference(rng, dtype, close, device, to_dev):
    x = rng.uniform(-5, 5, (3, 4, 5)).astype(dtype)
    x.reshape(-1)[:2] = (-3, 3)
    layer = Hardsigmoid().to(device)
    y = layer(to_dev(x))
    assert device_of(y) == device
    close(y, ref.hardsigmoid_forward(x))
    dout = rng.standard_normal(x.shape).astype(dtype)
    dx = to_numpy(layer.backward(to_dev(dout)))
    close(dx, ref.hardsigmoid_backward(dout, x))
    assert dx.reshape(-1)[0] == 0 and dx.reshape(-1)[1] == 0  # the boundaries +-3


@pytest.mark.parametrize("make, error, match", [
    (lambda: LPPool2D("2", 2), TypeError, r"LPPool2D: norm_type must be a number"),
    (lambda: LPPool2D(0, 2), ValueError, r"norm_type must be a finite number > 0"),
    (lambda: LPPool2D(-1.5, 2), ValueError, r"norm_type must be a finite number > 0"),
    (lambda: LPPool2D(float("inf"), 2), ValueError, r"norm_type must be a finite number"),
    (lambda: LPPool2D(float("nan"), 2), ValueError, r"norm_type must be a finite number"),
    (lambda: LPPool2D(2, 0), ValueError, r"kernel_size must be an int or a pair"),
    (lambda: LPPool2D(2, 2.5), TypeError, r"kernel_size must be an int or a pair"),
    (lambda: LPPool2D(2, 2, stride=(1, 0)), ValueError, r"stride must be an int or a pair"),
    (lambda: LPPool2D(2, 2, ceil_mode=True), ValueError, r"only ceil_mode=False"),
])
def test_lp_pool_arguments_are_checked(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_inputs_are_checked_before_any_kernel(device, to_dev):
    pool, act = LPPool2D(2, 3).to(device), Hardsigmoid().to(device)
    with pytest.raises(ValueError, match=r"LPPool2D.*\(N, \*, \*, \*\)"):
        pool(to_dev(np.zeros((4, 4), np.float32)))
    with pytest.raises(ValueError, match=r"smaller than the 3x3 window"):
        pool(to_dev(np.zeros((1, 1, 2, 5), np.float32)))
    with pytest.raises(TypeError, match=r"Hardsigmoid"):
        act([[1.0, 2.0]])
    with pytest.raises(TypeError, match=r"Hardsigmoid"):
        act(to_dev(np.zeros((2, 3), np.int32)))
    pool(to_dev(np.ones((1, 1, 3, 3), np.float32)))
    with pytest.raises(ValueError, match=r"LPPool2D"):
        pool.backward(to_dev(np.ones((1, 1, 2, 2), np.float32)))


def _model(dtype=np.float32):
    return Sequential(Conv2D(1, 3, 3, padding=1, dtype=dtype), Hardsigmoid(),
                      LPPool2D(2, 2), Conv2D(3, 2, 2, dtype=dtype), LPPool2D(3, (2, 1), stride=1),
                      Flatten(), Dense(2 * 2 * 3, 4, dtype=dtype), Hardsigmoid())


def test_save_load_round_trip(tmp_path, rng):
    model = _model()
    x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    want = model(x)
    fastnet.save(model, tmp_path / "m.npz")
    loaded = fastnet.load(tmp_path / "m.npz")
    assert [type(m).__name__ for m in loaded] == [type(m).__name__ for m in model]
    assert loaded[4].config() == {"norm_type": 3.0, "kernel_size": (2, 1), "stride": (1, 1),
                                  "ceil_mode": False}
    np.testing.assert_array_equal(loaded(x), want)


def test_eval_plan_gives_the_layers_result(rng):
    """In eval mode on the CPU a Sequential runs an inference plan: the same bits."""
    model = _model(np.float64)
    x = rng.standard_normal((3, 1, 8, 8))
    want = model(x)
    model.eval()
    for _ in range(2):  # the first call prepares the plan, the second runs it
        np.testing.assert_array_equal(model(x), want)
