"""Bad input raises a clear TypeError / ValueError naming the layer, what was expected and
what came, before any kernel runs."""
import numpy as np

import fastnet
import pytest

from fastnet import cuda as fcuda

from fastnet.layers import (AvgPool2D, Conv2D, Dense, Dropout, Flatten, LeakyReLU, MaxPool2D,
                            ReLU, Sequential, Softmax)
from fastnet.losses import CrossEntropyLoss, MSELoss
from fastnet.optim import SGD, Adam, AdamW

f32 = np.float32


@pytest.mark.parametrize("layer, x, error, pattern", [
    (Dense(784, 10), np.zeros((32, 780), f32), ValueError,
     r"Dense\(in_features=784.*expected input of shape \(N, 784\), got \(32, 780\)"),
    (Dense(784, 10), np.zeros((32, 1, 784), f32), ValueError, r"\(N, 784\), got \(32, 1, 784\)"),
    (Dense(4, 2), np.zeros((3, 4), np.float64), TypeError,
     r"Dense.*expected float32 input .*got float64.*model.to\(np.float64\)"),
    (Dense(4, 2), np.zeros((3, 4), np.int64), TypeError, r"float32 or float64 array, got dtype int64"),
    (Dense(4, 2), [[0.0] * 4], TypeError,
     r"Dense.*expected a numpy.ndarray( or a CUDA array)?, got list"),
    (Dense(4, 2), np.zeros((0, 4), f32), ValueError, r"empty input of shape \(0, 4\)"),
    (Conv2D(3, 8, 3), np.zeros((2, 1, 8, 8), f32), ValueError,
     r"Conv2D\(in_channels=3.*expected input of shape \(N, 3, \*, \*\), got \(2, 1, 8, 8\)"),
    (Conv2D(3, 8, 3), np.zeros((3, 8, 8), f32), ValueError, r"\(N, 3, \*, \*\), got \(3, 8, 8\)"),
    (Conv2D(1, 2, 5), np.zeros((1, 1, 4, 9), f32), ValueError,
     r"input of 4x9 is smaller than the 5x5 window with padding 0x0"),
    (MaxPool2D(3), np.zeros((1, 2, 2, 2), f32), ValueError, r"MaxPool2D.*smaller than the 3x3"),
    (AvgPool2D(2), np.zeros((4, 4), f32), ValueError, r"AvgPool2D.*\(N, \*, \*, \*\), got \(4, 4\)"),
    (ReLU(), np.zeros((), f32), ValueError, r"ReLU.*expected input of shape \(N,\), got \(\)"),
    (Softmax(), np.zeros((2, 3), np.int32), TypeError, r"Softmax.*got dtype int32"),
    (Softmax(), np.zeros((2, 3), np.float16), TypeError, r"Softmax.*got dtype float16"),
    (ReLU(), np.zeros((0, 3), f32), ValueError, r"ReLU.*empty input of shape \(0, 3\)"),
    (Flatten(), np.zeros((5,), f32), ValueError, r"Flatten.*\(N, \*\), got \(5,\)"),
    (Sequential(Flatten(), Dense(12, 3)), np.zeros((2, 13), f32), ValueError,
     r"Dense\(in_features=12.*got \(2, 13\)"),
])
def test_bad_input_is_rejected_with_a_clear_message(layer, x, error, pattern, device):
    layer.to(device)
    with pytest.raises(error, match=pattern):
        layer(x)


@pytest.mark.parametrize("make, shape", [
    (lambda: ReLU(), (3, 4, 5)),
    (lambda: Softmax(), (3, 4, 5)),
    (lambda: Softmax(), (4, 5)),
    (lambda: Dense(5, 3, activation="relu"), (4, 5)),
    (lambda: Conv2D(2, 3, 3, padding=1), (2, 2, 5, 5)),
])
def test_views_and_fortran_order_input_give_the_contiguous_result(make, shape):
    # CPU layers take C-contiguous input as it is (a fast path) and copy anything else
    layer = make()
    big = np.random.default_rng(0).standard_normal((2,) + shape, f32)
    x = big[1]  # contiguous
    for view in (big[..., ::1][1], np.asfortranarray(x), np.flip(np.flip(x, -1), -1)):
        np.testing.assert_array_equal(layer(view), layer(x))
        assert layer(view).flags.c_contiguous


@pytest.mark.parametrize("make, pattern", [
    (lambda: Dense(0, 3), r"Dense: in_features must be a positive int, got 0"),
    (lambda: Dense(3, 2.5), r"out_features must be a positive int, got 2.5"),
    (lambda: Dense(3, 2, activation="gelu"), r"activation must be one of .*got 'gelu'"),
    (lambda: Dense(3, 2, dtype=np.int32), r"dtype must be float32 or float64"),
    (lambda: Conv2D(3, 4, 0), r"Conv2D: kernel_size must be an int or a pair of ints >= 1, got 0"),
    (lambda: Conv2D(3, 4, 3, stride=(1, 0)), r"stride .* got \(1, 0\)"),
    (lambda: Conv2D(3, 4, 3, padding=-1), r"padding must be an int or a pair of ints >= 0"),
    (lambda: Conv2D(3, 4, (3, 3, 3)), r"kernel_size"),
    (lambda: MaxPool2D(2, padding=2), r"padding must be at most half the kernel size"),
    (lambda: Dropout(1.5), r"Dropout: p must be in \[0.0, 1.0\], got 1.5"),
    (lambda: LeakyReLU("a"), r"negative_slope must be a number"),
    (lambda: Softmax(dim=0), r"only dim=-1"),
    (lambda: Sequential(Dense(2, 2), "relu"), r"argument 1 is not a fastnet layer"),
])
def test_bad_constructor_arguments(make, pattern):
    with pytest.raises((ValueError, TypeError), match=pattern):
        make()


def test_backward_checks_the_gradient_shape_and_dtype(device):
    layer = Dense(4, 3).to(device)
    layer(np.zeros((2, 4), f32))
    with pytest.raises(ValueError, match=r"Dense.*backward: expected a gradient of shape \(2, 3\) "
                                         r"and dtype float32.*got \(2, 4\) float32"):
        layer.backward(np.zeros((2, 4), f32))
    layer(np.zeros((2, 4), f32))
    with pytest.raises(ValueError, match=r"Dense.*backward: .*got \(2, 3\) float64"):
        layer.backward(np.zeros((2, 3)))
    flat = Flatten().to(device)
    flat(np.zeros((2, 3, 2), f32))
    with pytest.raises(ValueError, match=r"Flatten.*expected a gradient of shape \(2, 6\)"):
        flat.backward(np.zeros((2, 5), f32))


def test_backward_before_forward_is_an_error():
    with pytest.raises(RuntimeError, match=r"Conv2D.*no forward pass"):
        Conv2D(1, 1, 1).backward(np.zeros((1, 1, 1, 1), f32))


@pytest.mark.parametrize("logits, labels, error, pattern", [
    (np.zeros((3, 4), f32), np.array([0, 4, 1]), ValueError, r"label 4 is out of range for 4 classes"),
    (np.zeros((3, 4), f32), np.array([0, -1, 1]), ValueError, r"label -1 is out of range"),
    (np.zeros((3, 4), f32), np.array([0, 2**63, 1], np.uint64), ValueError,
     r"label 9223372036854775808 is out of range"),
    (np.zeros((3, 4), f32), np.array([0.0, 1.0, 2.0]), TypeError, r"integer class indices, got dtype float64"),
    (np.zeros((3, 4), f32), np.array([0, 1]), ValueError, r"expected labels of shape \(3,\).*got \(2,\)"),
    (np.zeros((3, 4), f32), [0, 1, 2], TypeError, r"CrossEntropyLoss\(\) labels: expected a numpy.ndarray, got list"),
    # (N, C, T) logits take (N, T) labels, as PyTorch
    (np.zeros((3, 4, 1), f32), np.array([0, 1, 2]), ValueError,
     r"expected labels of shape \(3, 1\) for logits of shape \(3, 4, 1\), got \(3,\)"),
    (np.zeros((3, 4, 5), f32), np.zeros((3, 5), f32), TypeError, r"integer class indices"),
    (np.zeros((2, 4, 3), f32), np.array([[0, 1, 4], [0, 0, 0]]), ValueError,
     r"label 4 is out of range for 4 classes"),
    (np.zeros(4, f32), np.array(1), ValueError, r"CrossEntropyLoss.*\(N, \*\), got \(4,\)"),
])
def test_cross_entropy_rejects_bad_labels_and_logits(logits, labels, error, pattern, to_dev):
    """Labels from the host, logits on the test's device."""
    if isinstance(labels, list):
        pattern = pattern.replace("numpy.ndarray", "numpy.ndarray( or a CUDA array)?")
    with pytest.raises(error, match=pattern):
        CrossEntropyLoss()(to_dev(logits), labels)


def test_mse_rejects_mismatched_target_and_casts_dtype():
    with pytest.raises(ValueError, match=r"target shape \(3,\) does not match prediction shape \(3, 1\)"):
        MSELoss()(np.zeros((3, 1), f32), np.zeros(3))
    loss_fn = MSELoss()
    assert loss_fn(np.ones((2, 2), f32), np.zeros((2, 2))) == pytest.approx(1.0)
    assert loss_fn.backward().dtype == f32
    with pytest.raises(RuntimeError, match="call the loss on a batch first"):
        loss_fn.backward()


@pytest.mark.parametrize("target", [np.ones((2, 2), np.complex64) * 1j, np.array([["a", "b"]] * 2)],
                         ids=["complex", "str"])
def test_mse_refuses_a_non_real_target(target):
    """A complex target lost its imaginary part in a silent cast (issue 19)."""
    with pytest.raises(TypeError, match="target must be a real numeric array"):
        MSELoss()(np.ones((2, 2), f32), target)


@pytest.mark.parametrize("make, error, pattern", [
    (lambda ps: SGD(ps, lr=0), ValueError, r"SGD: lr must be in \(0.0"),
    (lambda ps: SGD(ps, lr=0.1, nesterov=True), ValueError, r"nesterov momentum needs momentum > 0"),
    (lambda ps: SGD(ps, lr=0.1, momentum=-0.5), ValueError, r"momentum must be in \[0.0"),
    (lambda ps: Adam(ps, betas=(0.9, 1.0)), ValueError, r"betas\[1\] must be in \[0.0, 1.0\)"),
    (lambda ps: AdamW(ps, eps=0), ValueError, r"AdamW: eps must be in \(0.0"),
    (lambda ps: SGD([], lr=0.1), ValueError, r"empty parameter list"),
    (lambda ps: SGD([np.zeros(3)], lr=0.1), TypeError, r"not a fastnet Parameter but ndarray"),
    (lambda ps: SGD(ps, lr="0.1"), TypeError, r"lr must be a number"),
])
def test_optimizer_arguments(make, error, pattern):
    with pytest.raises(error, match=pattern):
        make(Dense(2, 2).parameters())


def test_load_state_dict_checks_keys_and_shapes_and_changes_nothing_on_failure():
    layer = Sequential(Dense(3, 2))
    before = layer.state_dict()
    with pytest.raises(KeyError, match=r"missing keys \['0.bias'\], unexpected keys \['0.b'\]"):
        layer.load_state_dict({"0.weight": np.zeros((2, 3)), "0.b": np.zeros(2)})
    with pytest.raises(ValueError, match=r"'0.bias' has shape \(3,\), the model expects \(2,\)"):
        layer.load_state_dict({"0.weight": np.ones((2, 3)), "0.bias": np.zeros(3)})
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(v, before[k])   # the good weight was not half-loaded


def test_cuda_is_refused_clearly_when_unavailable(monkeypatch):
    import fastnet.cuda

    monkeypatch.setattr(fastnet.cuda, "unavailable_reason", lambda: "no GPU in this test")
    with pytest.raises(RuntimeError, match=r"device 'cuda' is not available: no GPU in this test"):
        Dense(2, 2).to("cuda")
    assert not fastnet.is_available("cuda")
    with pytest.raises(ValueError, match=r"unknown device 'tpu'"):
        Dense(2, 2).to("tpu")


@pytest.mark.cuda
def test_wrong_inputs_to_cuda_layers_are_refused_before_any_kernel(rng):
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


@pytest.mark.cuda
@pytest.mark.skipif(fcuda.simulator(), reason="the simulator has no __cuda_array_interface__")
def test_foreign_cuda_arrays_are_taken_without_a_copy(rng):
    from numba import cuda

    from fastnet.device import to_numpy
    from fastnet.layers import ReLU, Sequential

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
