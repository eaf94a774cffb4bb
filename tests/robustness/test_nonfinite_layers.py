"""NaN and inf propagate as in PyTorch through every activation, fused epilogue, pooling
layer, normalisation, recurrent layer, dropout and loss, forward and backward, float32 and
float64, on both devices (issue 19). The PyTorch side is stored in
tests/data/torch_nonfinite.npz (tests/data/make_torch_nonfinite.py, PyTorch 2.13): NaN
where PyTorch has NaN, the same infinities, and the finite values close. Large cases take
the vectorised CPU paths; they compare only where the NaN and inf are."""
import pathlib
import sys

import numpy as np
import pytest

import fastnet.kernels.conv.exact_dw

from fastnet import cuda as fcuda
from fastnet.device import to_numpy
from fastnet.layers import (GRU, LSTM, RNN, AvgPool2D, BatchNorm1D, BatchNorm2D, Conv2D, Dense,
                            Dropout, GlobalAvgPool2D, LeakyReLU, LogSoftmax, MaxPool2D, ReLU,
                            Sigmoid, Softmax, Tanh)
from fastnet.losses import CrossEntropyLoss, MSELoss

DATA = pathlib.Path(__file__).parent.parent / "data"
sys.path.insert(0, str(DATA))
from nonfinite_cases import CASES, classes, inputs, upstream  # noqa: E402

REF = np.load(DATA / "torch_nonfinite.npz")
TOL = {np.float32: (2e-4, 1e-5), np.float64: (1e-9, 1e-11)}


def layer_for(case):
    kind, a = case["kind"], case["args"]
    simple = {"relu": ReLU, "sigmoid": Sigmoid, "tanh": Tanh, "softmax": Softmax,
              "log_softmax": LogSoftmax, "global_avg_pool": GlobalAvgPool2D}
    if kind in simple:
        return simple[kind]()
    return {
        "leaky_relu": lambda: LeakyReLU(a.get("slope", 0.01)),
        "max_pool": lambda: MaxPool2D(a.get("k"), a.get("s"), a.get("p")),
        "avg_pool": lambda: AvgPool2D(a.get("k"), a.get("s"), a.get("p")),
        "dropout_p1": lambda: Dropout(1.0),
        "batch_norm1d": lambda: BatchNorm1D(a.get("c")),
        "batch_norm2d": lambda: BatchNorm2D(a.get("c")),
        "dense": lambda: Dense(a.get("fin"), a.get("fout"), activation=a.get("act")),
        "conv": lambda: Conv2D(a.get("cin"), a.get("cout"), a.get("k"), stride=a.get("s", 1), padding=a.get("p"),
                               activation=a.get("act")),
        "rnn": lambda: RNN(a.get("f"), a.get("h"), a.get("nonlinearity", "tanh")),
        "lstm": lambda: LSTM(a.get("f"), a.get("h")),
        "gru": lambda: GRU(a.get("f"), a.get("h")),
    }[kind]()


# PyTorch's own two CPU convolutions disagree when the gradient holds inf: the float64 one
# multiplies its zero padding by it (NaN in dw), the float32 one (oneDNN) does not. fastnet's
# CPU dw computes the products that exist (as float32 PyTorch), its CUDA dw multiplies the
# zero padding of im2col (as float64 PyTorch); either is PyTorch's answer for these keys.
EITHER_TORCH = {("conv_relu_badgrad", "pgrad.weight"), ("conv_tanh_badgrad", "pgrad.weight"),
                ("conv_1channel_relu_badgrad", "pgrad.weight")}


def check(got, name, key, dtype, large):
    want = REF[f"{name}.{dtype.__name__}.{key}"]
    got = np.asarray(got)
    if large:
        np.testing.assert_array_equal(classes(got), want, err_msg=f"{key}: NaN / inf positions")
        return
    if (name, key) in EITHER_TORCH:
        answers = [classes(REF[f"{name}.{d}.{key}"]) for d in ("float32", "float64")]
        assert any(np.array_equal(classes(got), a) for a in answers), f"{key}: NaN / inf positions"
        finite = np.isfinite(want) & np.isfinite(got)
        rtol, atol = TOL[dtype]
        np.testing.assert_allclose(got[finite], want[finite], rtol=rtol, atol=atol, err_msg=key)
        return
    assert got.shape == want.shape, key
    np.testing.assert_array_equal(classes(got), classes(want), err_msg=f"{key}: NaN / inf positions")
    finite = np.isfinite(want)
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(got[finite], want[finite], rtol=rtol, atol=atol, err_msg=key)


def run_case(name, dtype, device, to_dev):
    case = CASES[name]
    if case["large"] and device == "cuda" and fcuda.simulator():
        pytest.skip("large case: CPU paths (the CUDA simulator is too slow for it)")
    x, target = inputs(name, case, dtype)
    if case["kind"] in ("ce", "mse"):
        loss = CrossEntropyLoss() if case["kind"] == "ce" else MSELoss()
        value = loss(to_dev(x), target if case["kind"] == "ce" else to_dev(target))
        check(np.asarray(float(value)), name, "y", dtype, False)
        check(to_numpy(loss.backward()), name, "dx", dtype, False)
        return
    layer = layer_for(case).to(np.dtype(dtype))
    state = {k.split(".state.", 1)[1]: REF[k] for k in REF.files
             if k.startswith(f"{name}.{dtype.__name__}.state.")}
    if state:
        layer.load_state_dict(state)
    layer = layer.to(device)
    y = layer(to_dev(x))
    if isinstance(y, tuple):
        y = y[0]
    check(to_numpy(y), name, "y", dtype, case["large"])
    dx = layer.backward(to_dev(upstream(np.shape(y), dtype, case["args"].get("badgrad", False))))
    check(to_numpy(dx), name, "dx", dtype, case["large"])
    for pname, p in layer.named_parameters():
        key = f"{name}.{dtype.__name__}.pgrad.{pname}"
        if key in REF.files:
            check(to_numpy(p.grad), name, f"pgrad.{pname}", dtype, case["large"])


# NumPy's "invalid value" warnings from BLAS on NaN input are expected here
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(CASES))
def test_matches_pytorch(name, dtype, device, to_dev):
    run_case(name, dtype, device, to_dev)


def test_every_case_has_stored_results():
    for name in CASES:
        for dtype in ("float32", "float64"):
            assert f"{name}.{dtype}.y" in REF.files and f"{name}.{dtype}.dx" in REF.files, name


def test_finite_convolutions_never_take_the_exact_dw(monkeypatch):
    """The exact dw (kernels/conv/exact_dw.py) is for non-finite results only."""
    def refuse(*args):
        raise AssertionError("exact dw taken for finite input")

    monkeypatch.setattr(fastnet.kernels.conv.exact_dw, "weight_grad", refuse)
    rng = np.random.default_rng(0)
    for cin, stride in ((1, 1), (3, 1), (3, 2)):
        layer = Conv2D(cin, 4, 3, stride=stride, padding=1, activation="relu")
        y = layer(rng.standard_normal((2, cin, 9, 9)).astype(np.float32))
        layer.backward(np.ones_like(y))
        assert np.isfinite(layer.weight.grad).all()


@pytest.mark.parametrize("stride, padding, activation", [
    ((1, 1), (1, 1), None), ((2, 1), (0, 2), "relu"), ((2, 2), (1, 0), "tanh")])
def test_exact_dw_matches_the_reference_on_finite_input(stride, padding, activation):
    """exact_dw.py (the fallback dw) against the NumPy reference, float64, odd shapes; the
    reference's own gradients are checked by finite differences in tests/kernels/test_conv.py."""
    import tests.reference as ref
    from fastnet.kernels.codes import ACTIVATIONS
    from fastnet.kernels.conv import exact_dw

    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((3, 2, 7, 6)), rng.standard_normal((4, 2, 3, 2))
    y = ref.conv2d_forward(x, w, None, stride, padding, activation)
    dout = rng.standard_normal(y.shape)
    dw = np.empty_like(w)
    exact_dw.weight_grad(dw, dout, x, y, stride, padding,
                         ACTIVATIONS[activation])
    want = ref.conv2d_backward(dout, x, w, stride, padding, y, activation)[1]
    np.testing.assert_allclose(dw, want, rtol=1e-10, atol=1e-12)
