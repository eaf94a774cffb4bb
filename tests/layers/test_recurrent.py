"""RNN, LSTM, GRU layers and the ImageRows / LastHidden adapters: API, parameters,
validation, train / eval, save / load, gradient accumulation, the lstm model."""
import numpy as np
import pytest

import fastnet
from fastnet.device import device_of, to_numpy
from fastnet.layers import GRU, LSTM, RNN, Dense, ImageRows, LastHidden, Sequential
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

    with pytest.raises(ValueError, match=r"h0 of shape \(num_layers\*num_directions, N, "
                                         r"hidden_size\) = \(1, 2, 5\), got \(2, 5\)"):
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
    (lambda: LSTM(3, 5, num_layers=0), r"LSTM: num_layers must be a positive int, got 0"),
    (lambda: LSTM(3, 5, num_layers=True), r"LSTM: num_layers must be a positive int"),
    (lambda: GRU(3, 5, bidirectional=1), r"GRU: bidirectional must be True or False"),
    (lambda: RNN(3, 5, batch_first=None), r"RNN: batch_first must be True or False"),
    (lambda: GRU(3, 5, num_layers=2, dropout=1.5), r"GRU: dropout must be in \[0.0, 1.0\]"),
    (lambda: LSTM(3, 5, dropout="0.1"), r"LSTM: dropout must be a number"),
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


# ---- stacked, bidirectional, time-first layers, dropout between layers ----------------------
# (PyTorch's numbers for every feature: tests/test_torch_recurrent.py)

def _stack(name, **k):
    """A small stacked layer of kind ``name`` (LAYERS' names): input 2, hidden 3."""
    if name.startswith("rnn"):
        return RNN(2, 3, "relu" if name == "rnn_relu" else "tanh", **k)
    return (LSTM if name == "lstm" else GRU)(2, 3, **k)


def _run(layer, x, states, grads=None):
    """forward (and backward with grads = (dout, dh_n[, dc_n])) -> host arrays."""
    lstm = isinstance(layer, LSTM)
    if lstm:
        out, (h_n, c_n) = layer(x, None if states is None else tuple(states))
        res = [out, h_n, c_n]
    else:
        out, h_n = layer(x, None if states is None else states[0])
        res = [out, h_n]
    if grads is not None:
        res.append(layer.backward(*grads))
        res += [layer.grad_h0] + ([layer.grad_c0] if lstm else [])
        res += [p.grad for p in layer.parameters()]
    return [None if r is None else np.array(to_numpy(r)) for r in res]  # copies: grads grow


@pytest.mark.parametrize("name", ["rnn", "lstm", "gru"])
def test_stacked_bidirectional_parameters_in_pytorch_order(name):
    layer = _stack(name, num_layers=2, bidirectional=True)
    g = GATES[name]
    keys = [f"{w}_l{k}{s}" for k in range(2) for s in ("", "_reverse")
            for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    sd = layer.state_dict()
    assert list(sd) == keys
    assert sd["weight_ih_l0_reverse"].shape == (g * 3, 2)
    assert sd["weight_ih_l1"].shape == sd["weight_ih_l1_reverse"].shape == (g * 3, 6)
    assert sd["weight_hh_l1_reverse"].shape == (g * 3, 3)
    nobias = _stack(name, num_layers=3, bias=False)
    assert list(nobias.state_dict()) == [f"weight_{a}_l{k}" for k in range(3) for a in ("ih", "hh")]


@pytest.mark.parametrize("name", ["rnn", "lstm", "gru"])
def test_one_layer_path_calls_the_kernels_unchanged(name, rng):
    """num_layers=1, unidirectional, batch first: bitwise the kernels' own results (no copy
    on the way), and h_n is output[:, -1]."""
    layer = _stack(name)
    x = rng.standard_normal((3, 4, 2)).astype(f32)
    h0 = rng.standard_normal((1, 3, 3)).astype(f32)
    dout = rng.standard_normal((3, 4, 3)).astype(f32)
    dh = rng.standard_normal((1, 3, 3)).astype(f32)
    lstm = name == "lstm"
    got = _run(layer, x, [h0, h0] if lstm else [h0], (dout, dh, dh) if lstm else (dout, dh))
    w = [p.data for p in layer.parameters()]
    k = fastnet.kernels.kernel
    out, h_n, c_n = np.empty((3, 4, 3), f32), np.empty((3, 3), f32), np.empty((3, 3), f32)
    dx, dh0, dc0 = np.empty_like(x), np.empty((3, 3), f32), np.empty((3, 3), f32)
    dw = [np.empty_like(a) for a in w]
    if name == "rnn":
        k("rnn_forward")(out, h_n, x, h0[0], *w, "tanh")
        k("rnn_backward")(dx, dh0, *dw, dout, dh[0], x, h0[0], w[0], w[1], out, "tanh")
        want = [out, h_n, dx, dh0]
    elif lstm:
        saved = np.empty((3, 4, 12), f32), np.empty((3, 4, 3), f32)
        k("lstm_forward")(out, h_n, c_n, *saved, x, h0[0], h0[0], *w)
        k("lstm_backward")(dx, dh0, dc0, *dw, dout, dh[0], dh[0], x, h0[0], h0[0], w[0], w[1],
                           out, *saved)
        want = [out, h_n, c_n, dx, dh0, dc0]
    else:
        saved = np.empty((3, 4, 9), f32), np.empty((3, 4, 3), f32)
        k("gru_forward")(out, h_n, *saved, x, h0[0], *w)
        k("gru_backward")(dx, dh0, *dw, dout, dh[0], x, h0[0], w[0], w[1], out, *saved)
        want = [out, h_n, dx, dh0]
    want = [a.reshape(1, 3, 3) if a.shape == (3, 3) else a for a in want] + dw
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(got[0][:, -1], got[1][0])


@pytest.mark.parametrize("name", ["rnn_relu", "lstm", "gru"])
def test_stacked_bidirectional_matches_finite_differences(name, rng):
    """float64 central differences of sum(output*R) + sum(h_n*S) (+ sum(c_n*U)) with
    respect to x, the initial states and one parameter of each kind, through two time-first
    bidirectional layers with dropout between them (the mask held fixed)."""
    from tests.gradcheck import numerical_grad

    fastnet.manual_seed(3)
    layer = _stack(name, num_layers=2, bidirectional=True, batch_first=False, dropout=0.4,
                   dtype=f64)
    lstm = name == "lstm"
    x = rng.standard_normal((3, 2, 2))  # (T, N, F)
    states = [rng.standard_normal((4, 2, 3)) for _ in range(2 if lstm else 1)]
    r = rng.standard_normal((3, 2, 6))
    s = [rng.standard_normal((4, 2, 3)) for _ in states]

    def loss(*_):
        layer.calls = 0  # the same dropout masks every time
        res = _run(layer, x, states)
        return np.sum(res[0] * r) + sum(np.sum(a * b) for a, b in zip(res[1:], s))

    layer.calls = 0
    got = _run(layer, x, states, (r, *s))
    n_out = 1 + len(states)
    dx, dinit = got[n_out], got[n_out + 1:n_out + 1 + len(states)]
    grads = dict(zip([n for n, _ in layer.named_parameters()], got[n_out + 1 + len(states):]))
    np.testing.assert_allclose(dx, numerical_grad(loss, x), rtol=1e-6, atol=1e-8)
    for a, g in zip(states, dinit):
        np.testing.assert_allclose(g, numerical_grad(loss, a), rtol=1e-6, atol=1e-8)
    for pname in ("weight_ih_l1_reverse", "weight_hh_l0", "bias_hh_l1"):
        p = getattr(layer, pname).data
        np.testing.assert_allclose(grads[pname], numerical_grad(loss, p), rtol=1e-6, atol=1e-8,
                                   err_msg=pname)
    assert np.any(np.abs(got[0]) > 0)


def test_dropout_between_layers_is_seeded_and_only_in_training(rng):
    x = rng.standard_normal((4, 5, 2)).astype(f32)

    def make():
        fastnet.manual_seed(11)
        return LSTM(2, 3, num_layers=3, dropout=0.5)

    a, b = make(), make()
    plain = LSTM(2, 3, num_layers=3)
    plain.load_state_dict(a.state_dict())
    first = _run(a, x, None)
    assert a.calls == 1
    np.testing.assert_array_equal(first[0], _run(b, x, None)[0])  # same seed, same masks
    second = _run(a, x, None)
    assert not np.array_equal(first[0], second[0])  # a new mask per call
    assert not np.array_equal(first[0], _run(plain, x, None)[0])
    a.eval()
    evaluated = _run(a, x, None)
    assert a.calls == 2  # eval mode draws no mask
    for got, want in zip(evaluated, _run(plain.eval(), x, None)):
        np.testing.assert_array_equal(got, want)
    # one layer: nothing between layers to drop (as PyTorch)
    one = LSTM(2, 3, dropout=0.5)
    ref_one = LSTM(2, 3)
    ref_one.load_state_dict(one.state_dict())
    np.testing.assert_array_equal(_run(one, x, None)[0], _run(ref_one, x, None)[0])


def test_dropout_state_resumes_the_mask_stream(rng):
    """get_extra_state / set_extra_state (what a checkpoint keeps): a copy restored from
    the state draws the masks the original draws next; without dropout there is no
    state, and building the layer leaves fastnet's random stream where it was."""
    x = rng.standard_normal((2, 3, 2)).astype(f32)
    fastnet.manual_seed(5)
    a = GRU(2, 3, num_layers=2, bidirectional=True, dropout=0.3)
    _run(a, x, None)
    state = a.get_extra_state()
    assert state == {"seed": a.seed, "calls": 1}
    b = GRU(2, 3, num_layers=2, bidirectional=True, dropout=0.3)
    b.load_state_dict(a.state_dict())
    b.set_extra_state(state)
    np.testing.assert_array_equal(_run(a, x, None)[0], _run(b, x, None)[0])
    plain = GRU(2, 3, num_layers=2)
    assert plain.get_extra_state() is None and plain.seed is None
    # the seed is one draw after the parameters' (which are as without dropout)
    fastnet.manual_seed(5)
    with_dropout = GRU(2, 3, num_layers=2, dropout=0.3)
    after = Dense(2, 2).weight.data.copy()
    fastnet.manual_seed(5)
    without = GRU(2, 3, num_layers=2)
    assert fastnet._rng.new_seed() == with_dropout.seed
    np.testing.assert_array_equal(Dense(2, 2).weight.data, after)
    for a, b in zip(with_dropout.parameters(), without.parameters()):
        np.testing.assert_array_equal(a.data, b.data)


@pytest.mark.parametrize("name", ["rnn", "lstm"])
def test_stacked_bad_states_and_gradients_are_rejected(name):
    layer = _stack(name, num_layers=2, bidirectional=True, batch_first=False)
    x = np.zeros((4, 2, 2), f32)  # (T, N, F)
    good = np.zeros((4, 2, 3), f32)

    def state(h):
        return (h, good) if name == "lstm" else h

    with pytest.raises(ValueError, match=r"h0 of shape \(num_layers\*num_directions, N, "
                                         r"hidden_size\) = \(4, 2, 3\), got \(2, 2, 3\)"):
        layer(x, state(np.zeros((2, 2, 3), f32)))
    with pytest.raises(ValueError, match=r"= \(4, 2, 3\), got \(4, 4, 3\)"):
        layer(x, state(np.zeros((4, 4, 3), f32)))  # N read from axis 1 when time first
    with pytest.raises(ValueError, match=r"expected input of shape"):
        layer(np.zeros((4, 2, 3), f32))
    layer(x)
    with pytest.raises(ValueError, match=r"expected a gradient of shape \(4, 2, 6\)"):
        layer.backward(np.zeros((2, 4, 6), f32))
    layer(x)
    with pytest.raises(ValueError, match=r"expected a gradient of shape \(4, 2, 3\)"):
        layer.backward(None, np.zeros((1, 2, 3), f32))
    layer(x)
    assert layer.backward(np.ones((4, 2, 6), f32), input_grad=False) is None
    assert all(p.grad is not None for p in layer.parameters())


def test_last_hidden_validation_and_stacked_shapes(rng):
    last = LastHidden()
    x = rng.standard_normal((2, 4, 2)).astype(f32)
    out, h_n = GRU(2, 3, num_layers=3)(x)
    np.testing.assert_array_equal(last((out, h_n)), h_n[2])
    g = last.backward(np.ones((2, 3), f32))[1]
    assert g.shape == (3, 2, 3) and np.all(g[2] == 1) and np.all(g[:2] == 0)
    with pytest.raises(ValueError, match=r"not 1 or 2 directions"):
        last((np.zeros((2, 4, 9), f32), h_n))


@pytest.mark.parametrize("name", ["rnn", "lstm", "gru"])
def test_stacked_on_device_matches_cpu(name, rng, device):
    """Two time-first bidirectional layers with dropout, forward and backward, and
    LastHidden: the device gives the CPU's results (tiny shapes for the simulator)."""
    lstm = name == "lstm"
    x = rng.standard_normal((3, 2, 2))
    states = [rng.standard_normal((4, 2, 3)) for _ in range(2 if lstm else 1)]
    grads = (rng.standard_normal((3, 2, 6)),) + tuple(rng.standard_normal((4, 2, 3))
                                                      for _ in states)
    g_last = rng.standard_normal((2, 6))
    results = []
    for dev in ("cpu", device):
        fastnet.manual_seed(2)
        layer = _stack(name, num_layers=2, bidirectional=True, batch_first=False, dropout=0.5,
                       dtype=f64).to(dev)
        res = _run(layer, x, states, grads)
        last = LastHidden().to(dev)
        ret = layer(x)
        res.append(to_numpy(last(ret)))
        layer.backward(last.backward(g_last))
        res += [to_numpy(p.grad) for p in layer.parameters()]
        results.append(res)
    for a, b in zip(*results):
        if a is None:
            assert b is None
        else:
            np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", ["rnn", "lstm", "gru"])
def test_save_load_keeps_the_structure(tmp_path, name, rng):
    layer = _stack(name, num_layers=2, bidirectional=True, batch_first=False, dropout=0.25)
    model = Sequential(layer, LastHidden())
    path = tmp_path / "m.npz"
    fastnet.save(model, path)
    loaded = fastnet.load(path)
    assert loaded[0].config() == layer.config()
    assert (loaded[0].num_layers, loaded[0].bidirectional, loaded[0].batch_first,
            loaded[0].dropout) == (2, True, False, 0.25)
    x = rng.standard_normal((4, 2, 2)).astype(f32)
    np.testing.assert_array_equal(loaded.eval()(x), model.eval()(x))


def test_load_refuses_absurd_layer_counts():
    from fastnet.errors import FileFormatError
    from fastnet.serialization import expected_state

    desc = {"type": "LSTM", "config": {"input_size": 2, "hidden_size": 3,
                                       "num_layers": 10**9}}
    with pytest.raises(FileFormatError, match=r"num_layers.*stacks at most 256"):
        expected_state({"model": desc}, "f.npz", "load")
    desc["config"].update(num_layers=2, bidirectional="yes")
    with pytest.raises(FileFormatError, match=r"bidirectional"):
        expected_state({"model": desc}, "f.npz", "load")
    desc["config"].update(bidirectional=True)
    assert len(expected_state({"model": desc}, "f.npz", "load")) == 16


def test_trainer_resume_continues_the_dropout_stream(tmp_path):
    """A checkpoint keeps a stacked layer's dropout seed and call count: training 1 epoch,
    then resuming in a "new process" (another seed) for a second, ends bitwise where two
    uninterrupted epochs end."""
    from fastnet.data import ArrayDataset, DataLoader
    from fastnet.train import Trainer

    rng = np.random.default_rng(0)
    x = rng.random((24, 1, 4, 3)).astype(f32)
    y = (x[:, 0, 0, 0] > 0.5).astype(np.int64)
    data = ArrayDataset(x, y)

    def setup(seed, **kw):
        fastnet.manual_seed(seed)
        model = Sequential(ImageRows(), GRU(3, 4, num_layers=2, bidirectional=True,
                                            dropout=0.5), LastHidden(), Dense(8, 2))
        trainer = Trainer(model, SGD(model.parameters(), lr=0.1), progress=False, log=None,
                          **kw)
        return trainer, DataLoader(data, 8, shuffle=True, seed=seed)

    whole, loader = setup(0)
    whole.fit(loader, epochs=2)
    first, loader = setup(0, checkpoint_dir=tmp_path)
    first.fit(loader, epochs=1)
    assert first.model[1].calls == 3
    second, loader = setup(7)
    second.fit(loader, epochs=2, resume=tmp_path / "checkpoint.npz")
    assert second.model[1].calls == whole.model[1].calls == 6
    assert second.model[1].seed == whole.model[1].seed
    for (k, a), (_, b) in zip(whole.model.state_dict().items(), second.model.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=k)
