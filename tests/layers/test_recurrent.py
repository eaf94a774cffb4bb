"""RNN, LSTM, GRU layers and the ImageRows / LastHidden adapters: API, parameters,
validation, train / eval, save / load, gradient accumulation, the lstm model."""
import numpy as np
import pytest

import fastnet
from fastnet.device import device_of, to_numpy
from fastnet.layers import GRU, LSTM, RNN, ImageRows, LastHidden, Sequential
from fastnet.losses import CrossEntropyLoss
from fastnet.models import MODELS
from fastnet.optim import SGD
from tests import reference as ref

f32, f64 = np.float32, np.float64
LAYERS = {"rnn": lambda **k: RNN(3, 5, **k), "rnn_relu": lambda **k: RNN(3, 5, "relu", **k),
          "lstm": lambda **k: LSTM(3, 5, **k), "gru": lambda **k: GRU(3, 5, **k)}
GATES = {"rnn": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}


def _ref(layer, x, h0=None, c0=None):
    p = {k: v for k, v in layer.state_dict().items()}
    w = (p["weight_ih_l0"], p["weight_hh_l0"], p.get("bias_ih_l0"), p.get("bias_hh_l0"))
    h0 = None if h0 is None else h0[0]
    c0 = None if c0 is None else c0[0]
    if isinstance(layer, LSTM):
        return ref.lstm_forward(x, h0, c0, *w)
    if isinstance(layer, GRU):
        return ref.gru_forward(x, h0, *w)
    return ref.rnn_forward(x, h0, *w, layer.nonlinearity)


@pytest.mark.parametrize("name", list(LAYERS))
def test_parameters_have_pytorch_names_layouts_and_init(name):
    layer = LAYERS[name]()
    g = GATES[name]
    sd = layer.state_dict()
    assert list(sd) == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
    assert sd["weight_ih_l0"].shape == (g * 5, 3) and sd["weight_hh_l0"].shape == (g * 5, 5)
    assert sd["bias_ih_l0"].shape == sd["bias_hh_l0"].shape == (g * 5,)
    bound = 1 / np.sqrt(5)
    for v in sd.values():
        assert v.dtype == f32 and np.all(np.abs(v) <= bound)
    assert list(LAYERS[name](bias=False).state_dict()) == ["weight_ih_l0", "weight_hh_l0"]


@pytest.mark.parametrize("name", list(LAYERS))
def test_forward_returns_pytorch_structure_and_values(name, rng, device):
    layer = LAYERS[name](dtype=f64).to(device)
    x = rng.standard_normal((2, 4, 3))
    h0 = rng.standard_normal((1, 2, 5))
    if name == "lstm":
        c0 = rng.standard_normal((1, 2, 5))
        out, (h_n, c_n) = layer(x, (h0, c0))
        r_out, r_h, r_c = _ref(layer, x, h0, c0)
        np.testing.assert_allclose(to_numpy(c_n)[0], r_c, rtol=1e-10, atol=1e-12)
    else:
        out, h_n = layer(x, h0)
        r_out, r_h = _ref(layer, x, h0)
    assert out.shape == (2, 4, 5) and h_n.shape == (1, 2, 5)
    assert device_of(out) == device_of(h_n) == device
    out, h_n = to_numpy(out), to_numpy(h_n)
    np.testing.assert_allclose(out, r_out, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(h_n[0], r_h, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(out[:, -1], h_n[0])


@pytest.mark.parametrize("name", list(LAYERS))
def test_backward_gradients_and_initial_state_grads(name, rng, device):
    """Parameter grads, dx and grad_h0 / grad_c0 against the reference backward; the
    tuple form of the gradient gives the same result as the keyword form."""
    layer = LAYERS[name](dtype=f64).to(device)
    x = rng.standard_normal((3, 2, 3))
    h0 = rng.standard_normal((1, 3, 5))
    c0 = rng.standard_normal((1, 3, 5))
    dout = rng.standard_normal((3, 2, 5))
    dh = rng.standard_normal((1, 3, 5))
    dc = rng.standard_normal((1, 3, 5))
    sd = layer.state_dict()
    w = (sd["weight_ih_l0"], sd["weight_hh_l0"], sd["bias_ih_l0"], sd["bias_hh_l0"])
    if name == "lstm":
        layer(x, (h0, c0))
        dx = layer.backward(dout, dh, dc)
        r = ref.lstm_backward(dout, dh[0], dc[0], x, h0[0], c0[0], *w)
        np.testing.assert_allclose(to_numpy(layer.grad_c0)[0], r[2], rtol=1e-9, atol=1e-12)
        rdx, rdh0, rw = r[0], r[1], r[3:]
    else:
        layer(x, h0)
        dx = layer.backward(dout, dh)
        if name == "gru":
            r = ref.gru_backward(dout, dh[0], x, h0[0], *w)
        else:
            r = ref.rnn_backward(dout, dh[0], x, h0[0], *w, layer.nonlinearity)
        rdx, rdh0, rw = r[0], r[1], r[2:]
    assert device_of(dx) == device
    dx = to_numpy(dx)
    np.testing.assert_allclose(dx, rdx, rtol=1e-9, atol=1e-12)
    assert layer.grad_h0.shape == (1, 3, 5)
    np.testing.assert_allclose(to_numpy(layer.grad_h0)[0], rdh0, rtol=1e-9, atol=1e-12)
    for p, g in zip(layer.parameters(), rw):
        np.testing.assert_allclose(to_numpy(p.grad), g, rtol=1e-9, atol=1e-12)
    grads = [to_numpy(p.grad).copy() for p in layer.parameters()]
    layer.zero_grad()
    layer(x, (h0, c0) if name == "lstm" else h0)
    tup = (dout, (dh, dc)) if name == "lstm" else (dout, dh)
    np.testing.assert_array_equal(to_numpy(layer.backward(tup)), dx)
    for p, g in zip(layer.parameters(), grads):
        np.testing.assert_array_equal(to_numpy(p.grad), g)


@pytest.mark.parametrize("name", list(LAYERS))
def test_no_initial_state_means_zeros_and_no_state_grad(name, rng):
    layer = LAYERS[name](dtype=f64)
    x = rng.standard_normal((2, 3, 3))
    zeros = np.zeros((1, 2, 5))
    out = layer(x)[0]
    out_zero = layer(x, (zeros, zeros) if name == "lstm" else zeros)[0]
    np.testing.assert_array_equal(out, out_zero)
    layer(x)
    layer.backward(np.ones((2, 3, 5)))
    assert layer.grad_h0 is None and layer.grad_c0 is None


@pytest.mark.parametrize("name", list(LAYERS))
def test_gradients_accumulate_and_input_grad_false(name, rng):
    layer = LAYERS[name]()
    x = rng.standard_normal((2, 3, 3)).astype(f32)
    g = rng.standard_normal((2, 3, 5)).astype(f32)
    layer(x)
    assert layer.backward(g, input_grad=False) is None
    once = [p.grad.copy() for p in layer.parameters()]
    layer(x)
    layer.backward(g, input_grad=False)
    for p, o in zip(layer.parameters(), once):
        np.testing.assert_allclose(p.grad, 2 * o, rtol=1e-6, atol=1e-7)
        assert p.grad.dtype == f32


@pytest.mark.parametrize("name", list(LAYERS))
def test_eval_keeps_nothing_and_backward_needs_training_forward(name, rng):
    layer = LAYERS[name]().eval()
    x = rng.standard_normal((2, 3, 3)).astype(f32)
    layer(x)
    assert layer._saved is None
    with pytest.raises(RuntimeError, match="no forward pass"):
        layer.backward(np.ones((2, 3, 5), f32))
    layer.train()
    layer(x)
    with pytest.raises(RuntimeError, match="no forward pass"):
        layer.backward(np.ones((2, 3, 5), f32))
        layer.backward(np.ones((2, 3, 5), f32))


@pytest.mark.parametrize("call, error, pattern", [
    (lambda l: l(np.zeros((2, 3), f32)), ValueError,
     r"expected input of shape \(N, \*, 3\), got \(2, 3\)"),
    (lambda l: l(np.zeros((2, 4, 7), f32)), ValueError, r"\(N, \*, 3\), got \(2, 4, 7\)"),
    (lambda l: l(np.zeros((2, 0, 3), f32)), ValueError, r"empty input of shape \(2, 0, 3\)"),
    (lambda l: l(np.zeros((2, 4, 3), f64)), TypeError, r"expected float32 input"),
    (lambda l: l(np.zeros((2, 4, 3), np.int32)), TypeError, r"got dtype int32"),
    (lambda l: l([[[0.0] * 3]]), TypeError, r"expected a numpy.ndarray, got list"),
])
@pytest.mark.parametrize("name", list(LAYERS))
def test_bad_input_is_rejected(name, call, error, pattern):
    layer = LAYERS[name]()
    with pytest.raises(error, match=pattern):
        call(layer)


@pytest.mark.parametrize("name", ["rnn", "gru", "lstm"])
def test_bad_initial_state_is_rejected(name):
    layer = LAYERS[name]()
    x = np.zeros((2, 4, 3), f32)
    good = np.zeros((1, 2, 5), f32)

    def state(h):
        return (h, good) if name == "lstm" else h

    with pytest.raises(ValueError,
                       match=r"h0 of shape \(1, N, hidden_size\) = \(1, 2, 5\), got \(2, 5\)"):
        layer(x, state(np.zeros((2, 5), f32)))
    with pytest.raises(ValueError, match=r"got \(1, 3, 5\)"):
        layer(x, state(np.zeros((1, 3, 5), f32)))
    with pytest.raises(TypeError, match=r"h0 of dtype float32.*got float64"):
        layer(x, state(np.zeros((1, 2, 5), f64)))
    if name == "lstm":
        with pytest.raises(TypeError, match=r"hx = \(h0, c0\)"):
            layer(x, good)
        with pytest.raises(ValueError, match=r"c0 of shape"):
            layer(x, (good, np.zeros((1, 2, 4), f32)))


@pytest.mark.parametrize("name", ["rnn", "lstm"])
def test_bad_gradients_are_rejected(name):
    layer = LAYERS[name]()
    layer(np.zeros((2, 4, 3), f32))
    with pytest.raises(ValueError, match=r"expected a gradient of shape \(2, 4, 5\)"):
        layer.backward(np.zeros((2, 4, 6), f32))
    layer(np.zeros((2, 4, 3), f32))
    with pytest.raises(ValueError, match=r"expected a gradient of shape \(1, 2, 5\)"):
        layer.backward(None, np.zeros((2, 5), f32))
    layer(np.zeros((2, 4, 3), f32))
    with pytest.raises(ValueError, match=r"got no gradient"):
        layer.backward(None)
    layer(np.zeros((2, 4, 3), f32))
    with pytest.raises(TypeError, match=r"tuple gradient must be"):
        layer.backward((np.zeros((2, 4, 5), f32),))


@pytest.mark.parametrize("make, pattern", [
    (lambda: LSTM(3, 5, num_layers=2), r"LSTM: only num_layers=1 is implemented, got 2"),
    (lambda: GRU(3, 5, bidirectional=True), r"GRU: only unidirectional"),
    (lambda: RNN(3, 5, batch_first=False), r"RNN: only batch_first=True is implemented"),
    (lambda: RNN(3, 5, nonlinearity="sigmoid"), r"nonlinearity must be 'tanh' or 'relu'"),
    (lambda: LSTM(0, 5), r"LSTM: input_size must be a positive int, got 0"),
    (lambda: GRU(3, 2.5), r"GRU: hidden_size must be a positive int"),
    (lambda: LSTM(3, 5, bias="yes"), r"bias must be True or False"),
    (lambda: LSTM(3, 5, dtype=np.int32), r"dtype must be float32 or float64"),
])
def test_bad_constructor_arguments(make, pattern):
    with pytest.raises((ValueError, TypeError), match=pattern):
        make()


def test_adapters_and_their_validation(rng):
    rows, last = ImageRows(), LastHidden()
    x = rng.standard_normal((2, 1, 4, 3)).astype(f32)
    seq = rows(x)
    assert seq.shape == (2, 4, 3)
    np.testing.assert_array_equal(rows.backward(seq), x)
    with pytest.raises(ValueError, match=r"ImageRows.*\(N, 1, \*, \*\), got \(2, 3, 4, 3\)"):
        rows(np.zeros((2, 3, 4, 3), f32))
    with pytest.raises(TypeError, match=r"LastHidden.*return value of an RNN, LSTM or GRU"):
        last(np.zeros((2, 4, 5), f32))
    lstm = LSTM(3, 5)
    out = lstm(seq)
    h = last(out)
    np.testing.assert_array_equal(h, out[1][0][0])
    g = last.backward(np.ones((2, 5), f32))
    assert g[0] is None and g[1][1] is None and g[1][0].shape == (1, 2, 5)


def test_lstm_model_trains_saves_and_loads(tmp_path, rng):
    """The registered 'lstm' model: a Sequential of registered layers, which fastnet.save /
    load rebuild; a few SGD steps lower the loss on a fixed batch."""
    fastnet.manual_seed(0)
    model = MODELS["lstm"](in_shape=(1, 6, 5), num_classes=3)
    assert isinstance(model, Sequential)
    x = rng.random((8, 1, 6, 5)).astype(f32)
    y = rng.integers(0, 3, 8)
    loss_fn = CrossEntropyLoss()
    opt = SGD(model.parameters(), lr=0.5, momentum=0.9)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        losses.append(float(loss))
        assert model.backward(loss_fn.backward(), input_grad=False) is None
        opt.step()
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    path = tmp_path / "lstm.npz"
    fastnet.save(model, path)
    loaded = fastnet.load(path).eval()
    assert [type(m).__name__ for m in loaded] == ["ImageRows", "LSTM", "LastHidden", "Dense"]
    np.testing.assert_array_equal(loaded(x), model(x))
    with pytest.raises(ValueError, match="single-channel"):
        MODELS["lstm"](in_shape=(3, 8, 8))


@pytest.mark.parametrize("name", list(LAYERS))
def test_save_load_round_trip_and_dtype(tmp_path, name, rng):
    layer = LAYERS[name](bias=False).to(f64)
    path = tmp_path / "m.npz"
    fastnet.save(Sequential(layer), path)
    loaded = fastnet.load(path)[0]
    assert type(loaded) is type(layer) and loaded.config() == layer.config()
    x = rng.standard_normal((2, 3, 3))
    np.testing.assert_array_equal(loaded(x)[0], layer(x)[0])
    assert repr(loaded).startswith(type(layer).__name__ + "(input_size=3, hidden_size=5")


def test_loads_pytorch_state_dict_layout():
    """A state dict with PyTorch's keys loads unchanged (values cast to the layer dtype)."""
    layer = GRU(3, 5)
    sd = {k: np.arange(v.size, dtype=f64).reshape(v.shape) for k, v in layer.state_dict().items()}
    layer.load_state_dict(sd)
    np.testing.assert_array_equal(layer.weight_hh_l0.data, sd["weight_hh_l0"].astype(f32))
