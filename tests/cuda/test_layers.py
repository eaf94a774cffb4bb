"""Layers, losses and optimizers on CUDA (simulator or GPU): a training step matches the
CPU one, allocates no device memory after the first step, takes NumPy, fastnet and
foreign device arrays, and refuses wrong inputs clearly."""
import numpy as np
import pytest

import fastnet
from fastnet import cuda as fcuda
from fastnet.device import to_numpy
from fastnet.layers import (AvgPool2D, Conv2D, Dense, Dropout, Flatten, LeakyReLU, LogSoftmax,
                            MaxPool2D, ReLU, Sequential, Sigmoid, Softmax, Tanh)
from fastnet.losses import CrossEntropyLoss, MSELoss
from fastnet.optim import SGD, Adam


def _model(dtype):
    fastnet.manual_seed(3)
    return Sequential(
        Conv2D(2, 3, 3, padding=1, activation="relu", dtype=dtype), MaxPool2D(2),
        Conv2D(3, 4, 2, stride=1, dtype=dtype), Tanh(), AvgPool2D(2, stride=1),
        Flatten(), Dropout(0.25), Dense(4, 6, activation="sigmoid", dtype=dtype),
        LeakyReLU(0.1), Dense(6, 3, dtype=dtype))


def _pair(dtype, opt_cls, **opt_args):
    cpu = _model(dtype)
    gpu = _model(dtype).to("cuda")
    return (cpu, opt_cls(cpu.parameters(), **opt_args)), (gpu, opt_cls(gpu.parameters(), **opt_args))


def _step(model, opt, loss_fn, x, y):
    opt.zero_grad()
    loss = loss_fn(model(x), y)
    model.backward(loss_fn.backward(), input_grad=False)
    opt.step()
    return loss


@pytest.mark.parametrize("opt_cls,opt_args", [(SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
                                              (Adam, dict(lr=0.01, weight_decay=1e-3))],
                         ids=["sgd", "adam"])
def test_training_steps_match_cpu(rng, opt_cls, opt_args):
    """float64, the same init and dropout seeds: CUDA and CPU agree to rounding."""
    (cpu, copt), (gpu, gopt) = _pair(np.float64, opt_cls, **opt_args)
    x = rng.standard_normal((3, 2, 6, 6))
    y = rng.integers(0, 3, 3)
    loss_fn = CrossEntropyLoss()
    for _ in range(2):
        lc = _step(cpu, copt, loss_fn, x, y)
        lg = _step(gpu, gopt, loss_fn, x, y)
        assert isinstance(lc, float) and not isinstance(lg, float)
        assert float(lg) == pytest.approx(lc, rel=1e-10)
    for (name, pc), pg in zip(cpu.named_parameters(), gpu.parameters()):
        np.testing.assert_allclose(to_numpy(pg.data), pc.data, rtol=1e-9, atol=1e-12, err_msg=name)


def test_no_device_allocation_after_the_first_step(rng):
    """Buffers come back to fastnet's pool and are reused: steps 2.. allocate nothing."""
    fastnet.manual_seed(0)
    model = Sequential(Conv2D(1, 2, 3, padding=1, activation="relu"), MaxPool2D(2),
                       Flatten(), Dense(2 * 3 * 3, 4)).to("cuda")
    opt = Adam(model.parameters(), lr=1e-3)
    loss_fn = CrossEntropyLoss()
    x = fcuda.to_device(rng.standard_normal((4, 1, 6, 6)).astype(np.float32))
    y = fcuda.to_device(rng.integers(0, 4, 4))
    _step(model, opt, loss_fn, x, y)
    before = fcuda.memory_stats()["device_allocations"]
    for _ in range(2):
        loss = _step(model, opt, loss_fn, x, y)
    assert fcuda.memory_stats()["device_allocations"] == before
    assert np.isfinite(float(loss))


def test_outputs_stay_on_device_and_state_comes_home(rng, tmp_path):
    fastnet.manual_seed(1)
    model = Sequential(Dense(3, 4, activation="tanh"), Softmax()).to("cuda")
    x = rng.standard_normal((2, 3)).astype(np.float32)
    out = model(x)  # NumPy in, device array out
    assert fcuda.is_cuda_array(out) and out.dtype == np.float32
    np.testing.assert_allclose(to_numpy(out).sum(axis=1), 1, rtol=1e-6)
    state = model.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    fastnet.save(model, tmp_path / "m.npz")
    back = fastnet.load(tmp_path / "m.npz")
    np.testing.assert_allclose(back.eval()(x), to_numpy(out), rtol=1e-6)
    model.to("cpu")
    assert isinstance(model[0].weight.data, np.ndarray)
    np.testing.assert_allclose(model(x), to_numpy(out), rtol=1e-6)


def test_load_state_dict_into_a_cuda_model(rng):
    a = Dense(3, 2).to("cuda")
    w = rng.standard_normal((2, 3)).astype(np.float32)
    a.load_state_dict({"weight": w, "bias": np.zeros(2, np.float32)})
    np.testing.assert_array_equal(to_numpy(a.weight.data), w)
    assert fcuda.is_cuda_array(a.weight.data)


def test_loss_values_and_device_labels(rng):
    logits = rng.standard_normal((4, 3)).astype(np.float32)
    labels = np.array([0, 2, 1, 2])
    want = CrossEntropyLoss()(logits, labels)
    got = CrossEntropyLoss()(fcuda.to_device(logits), fcuda.to_device(labels.astype(np.int32)))
    assert float(got) == pytest.approx(want, rel=1e-6) and f"{got:.3f}" == f"{want:.3f}"
    bad = CrossEntropyLoss()(fcuda.to_device(logits), fcuda.to_device(np.array([0, 3, 1, 2])))
    with pytest.raises(ValueError, match="out of range"):
        float(bad)
    with pytest.raises(ValueError, match="label 3 is out of range"):
        CrossEntropyLoss()(fcuda.to_device(logits), np.array([0, 3, 1, 2]))
    pred = rng.standard_normal((3, 2))
    target = rng.standard_normal((3, 2))
    assert float(MSELoss()(fcuda.to_device(pred), target)) == pytest.approx(
        MSELoss()(pred, target), rel=1e-12)


def test_wrong_inputs_are_refused_before_any_kernel(rng):
    model = Dense(3, 2).to("cuda")
    with pytest.raises(TypeError, match=r"expected float32 input .* got float64"):
        model(rng.standard_normal((2, 3)))
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 3\), got \(2, 4\)"):
        model(fcuda.to_device(np.zeros((2, 4), np.float32)))
    with pytest.raises(TypeError, match="expected a numpy.ndarray or a CUDA array, got list"):
        model([[1.0, 2.0, 3.0]])
    cpu = Dense(3, 2)
    with pytest.raises(TypeError, match=r"got a CUDA array but runs on the cpu"):
        cpu(fcuda.to_device(np.zeros((2, 3), np.float32)))


@pytest.mark.skipif(fcuda.simulator(), reason="the simulator has no __cuda_array_interface__")
def test_foreign_cuda_arrays_are_taken_without_a_copy(rng):
    from numba import cuda

    class Foreign:  # what CuPy arrays and PyTorch CUDA tensors expose
        def __init__(self, a):
            self.a = a
            self.__cuda_array_interface__ = a.__cuda_array_interface__

    x = fcuda.to_device(rng.standard_normal((2, 3)).astype(np.float32))
    model = Sequential(Dense(3, 2), ReLU()).to("cuda")
    got = model(Foreign(x))
    np.testing.assert_allclose(to_numpy(got), to_numpy(model(x)), rtol=1e-6)
    wrapped = fastnet.cuda.as_device_array(Foreign(x))
    assert wrapped.device_ctypes_pointer.value == x.device_ctypes_pointer.value
    assert cuda.is_cuda_array(Foreign(x))


def test_activation_layers_and_log_softmax_on_cuda(rng):
    x = rng.standard_normal((3, 5))
    for layer in (Sigmoid(), Tanh(), ReLU(), LeakyReLU(0.2), Softmax(), LogSoftmax()):
        want = layer(x)
        layer.to("cuda")
        got = to_numpy(layer(x))
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14, err_msg=repr(layer))
        dx = layer.backward(np.ones_like(x))
        assert fcuda.is_cuda_array(dx)


def test_readme_cuda_example_runs(capsys):
    from tests.test_readme import python_blocks

    (code,) = [b for b in python_blocks() if '.to("cuda")' in b]
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.split()
    assert printed[0] == "True" and np.isfinite(float(printed[-1]))


def test_cli_trains_on_cuda(tmp_path, monkeypatch, capsys):
    """`python -m fastnet train --device cuda` end to end, on a slice of the embedded
    digits and a narrow MLP (whole-size runs are for a GPU: the simulator runs every
    GPU thread as a Python thread)."""
    import fastnet.data
    import fastnet.models
    from fastnet import cli

    x, y = fastnet.data.load_digits()
    monkeypatch.setattr(fastnet.data, "load_digits", lambda dtype=np.float32: (x[:40], y[:40]))
    monkeypatch.setitem(fastnet.models.MODELS, "mlp",
                        lambda **kw: fastnet.models.mlp(hidden=(8,), **kw))
    code = cli.main(["train", "--device", "cuda", "--model", "mlp", "--epochs", "2",
                     "--batch-size", "16", "--val-fraction", "0.3", "--no-progress",
                     "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "test accuracy" in out and (tmp_path / "run" / "checkpoint.npz").exists()
    model = fastnet.load(tmp_path / "run" / "checkpoint.npz")
    assert all(isinstance(p.data, np.ndarray) for p in model.parameters())
