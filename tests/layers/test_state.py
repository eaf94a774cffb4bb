"""Parameters, gradients, optimizer state and module bookkeeping across steps."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastnet
from fastnet.device import device_of, to_numpy
from fastnet.layers import Conv2D, Dense, Dropout, LeakyReLU, ReLU, Sequential, Softmax
from fastnet.optim import SGD, Adam

f32 = np.float32


def _one_step(model, opt, x):
    opt.zero_grad()
    y = model(x)
    model.backward(np.ones_like(y))
    opt.step()


def test_consecutive_dropout_masks_are_unrelated():
    """Call k+1's mask must not be call k's mask shifted by an element (a seed stream
    that only adds a constant per call would give exactly that)."""
    fastnet.manual_seed(0)
    d = Dropout(0.5)
    x = np.ones((8, 1000), f32)
    m1 = (d(x) != 0).ravel()
    m2 = (d(x) != 0).ravel()
    for shift in range(-3, 4):
        a, b = (m1[shift:], m2[:m2.size - shift]) if shift >= 0 else (m1[:shift], m2[-shift:])
        assert 0.4 < (a == b).mean() < 0.6, shift


def test_gradients_are_new_arrays_each_step(rng):
    """A gradient kept by reference is not overwritten by the next step (as in PyTorch)."""
    layer = Dense(3, 2)
    x = rng.standard_normal((4, 3)).astype(f32)
    layer(x)
    layer.backward(np.ones((4, 2), f32))
    first = layer.weight.grad
    kept = first.copy()
    layer.zero_grad()
    layer(2 * x)
    layer.backward(np.ones((4, 2), f32))
    assert layer.weight.grad is not first
    np.testing.assert_array_equal(first, kept)


def test_parameter_data_is_kept_contiguous_and_shape_checked():
    d = Dense(3, 2)
    d.weight.data = np.arange(6, dtype=f32).reshape(3, 2).T  # a transposed view
    assert d.weight.data.flags.c_contiguous
    before = d.weight.data.copy()
    opt = SGD(d.parameters(), lr=0.1)
    _one_step(d, opt, np.ones((4, 3), f32))
    assert not np.array_equal(d.weight.data, before)  # the optimizer really updated it
    with pytest.raises(ValueError, match=r"Parameter.data: expected shape \(2,\), got \(1,\)"):
        d.bias.data = np.zeros(1, f32)
    with pytest.raises(TypeError, match="expected float32 or float64, got int64"):
        d.bias.data = np.zeros(2, np.int64)
    with pytest.raises(TypeError, match=r"Parameter.grad: expected a numpy.ndarray or a CUDA array, got list"):
        d.bias.grad = [0.0, 0.0]


def test_changing_dtype_keeps_optimizer_state():
    """model.to(np.float64) mid-training converts momentum / Adam moments, not resets them."""
    for make in (lambda ps: SGD(ps, lr=0.1, momentum=0.9), lambda ps: Adam(ps, lr=0.1)):
        fastnet.manual_seed(0)
        a, b = Dense(3, 2), Dense(3, 2)
        b.load_state_dict(a.state_dict())
        opt_a, opt_b = make(a.parameters()), make(b.parameters())
        x = np.ones((4, 3), f32)
        for _ in range(3):
            _one_step(a, opt_a, x)
            _one_step(b, opt_b, x)
        b.to(np.float64)
        _one_step(a, opt_a, x)
        _one_step(b, opt_b, x.astype(np.float64))
        assert b.weight.dtype == np.float64
        np.testing.assert_allclose(b.weight.data, a.weight.data, rtol=1e-5, atol=1e-6)


def test_to_the_same_device_or_dtype_changes_nothing():
    d = Dense(3, 2)
    d(np.ones((1, 3), f32))
    d.backward(np.ones((1, 2), f32))
    g = d.weight.grad
    d.to("cpu").to(np.float32)
    assert d.weight.grad is g


def test_shared_parameters_are_updated_once():
    d1, d2 = Dense(2, 2, bias=False), Dense(2, 2, bias=False)
    d2.weight = d1.weight
    model = Sequential(d1, d2)
    assert len(model.parameters()) == 1
    assert list(model.state_dict()) == ["0.weight", "1.weight"]  # PyTorch keeps both keys
    model.load_state_dict(model.state_dict())
    with pytest.raises(ValueError, match="appears more than once"):
        SGD([d1.weight, d2.weight], lr=0.1)


def test_numpy_scalars_are_accepted_in_constructors():
    n = np.prod((2, 3))
    assert Dense(n, np.int64(4)).weight.shape == (4, 6)
    assert Conv2D(np.int32(1), 2, np.int64(3)).kernel_size == (3, 3)
    assert LeakyReLU(np.float32(0.25)).negative_slope == 0.25
    assert Dropout(np.float64(0.5)).p == 0.5
    with pytest.raises(TypeError, match="in_features must be a positive int"):
        Dense(2.0, 3)


def test_optimizer_state_dict_round_trip_and_checks():
    fastnet.manual_seed(0)
    model = Sequential(Dense(3, 4), ReLU(), Dense(4, 2))
    opt = Adam(model.parameters(), lr=0.01, betas=(0.8, 0.9))
    _one_step(model, opt, np.ones((2, 3), f32))
    state = opt.state_dict()
    other = Adam(model.parameters())
    other.load_state_dict(state)
    assert other.lr == 0.01 and other.betas == (0.8, 0.9) and other.param_steps == [1] * 4
    with pytest.raises(ValueError, match="the state is a Adam's"):
        SGD(model.parameters(), lr=0.1).load_state_dict(state)
    with pytest.raises(ValueError, match="state for 4 parameters, the optimizer has 2"):
        Adam(model[0].parameters()).load_state_dict(state)
    with pytest.raises(TypeError, match="got a Sequential module; pass model.parameters()"):
        SGD(model, lr=0.1)


def test_nested_sequential_repr_is_indented():
    text = repr(Sequential(Sequential(ReLU()), ReLU()))
    assert text == "Sequential(\n  (0): Sequential(\n    (0): ReLU()\n  )\n  (1): ReLU()\n)"


def test_layer_used_twice_gets_a_helpful_error():
    r = ReLU()
    model = Sequential(r, Dense(3, 3), r)
    model(np.ones((1, 3), f32))
    with pytest.raises(RuntimeError, match="a layer object used twice"):
        model.backward(np.ones((1, 3), f32))


def _infer_in_child(_):
    from fastnet.layers import Sigmoid
    return float(Sigmoid().eval()(np.ones((300, 300), f32)).sum())


def test_importing_fastnet_keeps_fork_usable():
    """import fastnet must not start OpenMP threads: GNU OpenMP cannot survive fork() once
    they exist, and fork is Linux's default start method for multiprocessing."""
    code = textwrap.dedent("""
        import multiprocessing as mp
        import fastnet
        from tests.layers.test_state import _infer_in_child
        with mp.get_context("fork").Pool(2) as pool:
            print(pool.map(_infer_in_child, range(2)))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[65795.2734375, 65795.2734375]"  # 90000 * sigmoid(1)


def test_save_keeps_normal_file_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        fastnet.save(Dense(2, 2), tmp_path / "m.npz")
    finally:
        os.umask(old)
    assert (os.stat(tmp_path / "m.npz").st_mode & 0o777) == 0o644


def test_load_does_not_consume_the_global_random_stream(tmp_path):
    fastnet.save(Sequential(Dense(2, 2), Dropout(0.5)), tmp_path / "m.npz")
    fastnet.manual_seed(1)
    want = Dense(2, 2).weight.data
    fastnet.manual_seed(1)
    fastnet.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(Dense(2, 2).weight.data, want)


def test_load_wraps_broken_descriptions(tmp_path):
    import json
    np.savez(tmp_path / "bad.npz", __fastnet__=np.array(json.dumps(
        {"format": "fastnet-model", "version": 1, "model": {"type": "Dense", "config": {"x": 1}}})))
    with pytest.raises(ValueError, match="does not describe a model this fastnet can rebuild"):
        fastnet.load(tmp_path / "bad.npz")


def test_outputs_stay_on_the_device_and_state_comes_home(rng, tmp_path, device):
    fastnet.manual_seed(1)
    model = Sequential(Dense(3, 4, activation="tanh"), Softmax()).to(device)
    x = rng.standard_normal((2, 3)).astype(np.float32)
    out = model(x)  # NumPy in, an array on the model's device out
    assert device_of(out) == device and out.dtype == np.float32
    np.testing.assert_allclose(to_numpy(out).sum(axis=1), 1, rtol=1e-6)
    state = model.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    fastnet.save(model, tmp_path / "m.npz")
    back = fastnet.load(tmp_path / "m.npz")
    np.testing.assert_allclose(back.eval()(x), to_numpy(out), rtol=1e-6)
    model.to("cpu")
    assert isinstance(model[0].weight.data, np.ndarray)
    np.testing.assert_allclose(model(x), to_numpy(out), rtol=1e-6)


def test_load_state_dict_keeps_the_device(rng, device):
    a = Dense(3, 2).to(device)
    w = rng.standard_normal((2, 3)).astype(np.float32)
    a.load_state_dict({"weight": w, "bias": np.zeros(2, np.float32)})
    np.testing.assert_array_equal(to_numpy(a.weight.data), w)
    assert device_of(a.weight.data) == device
