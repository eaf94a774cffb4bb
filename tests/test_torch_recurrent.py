"""fastnet's RNN / LSTM / GRU against numbers PyTorch computed (tests/data/torch_recurrent.npz,
written by tests/data/make_torch_recurrent.py with PyTorch 2.13, float64): PyTorch's state
dicts load unchanged, and the outputs, final states and every gradient (input, initial
states, parameters) agree to ~1e-10. The structured cases (stacked, bidirectional, time
first: their constructor arguments stored with them) also run in float32, the same inputs
rounded, against PyTorch's float64 numbers within float32's rounding."""
import json
import pathlib

import numpy as np
import pytest

from fastnet.layers import GRU, LSTM, RNN, LastHidden

REF = np.load(pathlib.Path(__file__).parent / "data" / "torch_recurrent.npz")
N, T, F, H = 3, 4, 3, 5
CASES = {
    "rnn_tanh": lambda: RNN(F, H, "tanh"),
    "rnn_relu": lambda: RNN(F, H, "relu"),
    "lstm": lambda: LSTM(F, H),
    "gru": lambda: GRU(F, H),
    "lstm_nobias_noh0": lambda: LSTM(F, H, bias=False),
    "gru_nobias_noh0": lambda: GRU(F, H, bias=False),
}


def _get(case, key):
    k = f"{case}.{key}"
    return REF[k] if k in REF.files else None


def _state(case, prefix):
    p = f"{case}.{prefix}."
    return {k[len(p):]: REF[k] for k in REF.files if k.startswith(p)}


def close(got, want, what):
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12, err_msg=what)


@pytest.mark.parametrize("case", list(CASES))
def test_matches_pytorch(case):
    layer = CASES[case]().to(np.float64)
    sd = _state(case, "state")
    assert list(sd) == list(layer.state_dict()), "PyTorch's keys, in PyTorch's order"
    layer.load_state_dict(sd)  # unchanged: same keys, same layouts
    x, h0, c0 = _get(case, "x"), _get(case, "h0"), _get(case, "c0")
    lstm = isinstance(layer, LSTM)
    if lstm:
        out, (h_n, c_n) = layer(x, None if h0 is None else (h0, c0))
        close(c_n, _get(case, "c_n"), "c_n")
        dx = layer.backward(_get(case, "dout"), _get(case, "dh_n"), _get(case, "dc_n"))
    else:
        out, h_n = layer(x, h0)
        dx = layer.backward(_get(case, "dout"), _get(case, "dh_n"))
    close(out, _get(case, "out"), "output")
    close(h_n, _get(case, "h_n"), "h_n")
    close(dx, _get(case, "dx"), "dx")
    if h0 is None:
        assert layer.grad_h0 is None
    else:
        close(layer.grad_h0, _get(case, "dh0"), "grad_h0")
    if lstm and c0 is not None:
        close(layer.grad_c0, _get(case, "dc0"), "grad_c0")
    grads = _state(case, "grad")
    for name, p in layer.named_parameters():
        close(p.grad, grads[name], f"grad of {name}")


STRUCTURED = sorted(k[:-len(".config")] for k in REF.files if k.endswith(".config"))


def _structured(case):
    c = json.loads(str(REF[f"{case}.config"]))
    kw = dict(num_layers=c["num_layers"], bidirectional=c["bidirectional"],
              batch_first=c["batch_first"], bias=c["bias"])
    if c["cell"] == "rnn":
        return RNN(F, H, c["nonlinearity"], **kw)
    return (LSTM if c["cell"] == "lstm" else GRU)(F, H, **kw)


def test_structured_cases_cover_every_feature():
    configs = [json.loads(str(REF[f"{c}.config"])) for c in STRUCTURED]
    for cell in ("rnn", "lstm", "gru"):
        mine = [c for c in configs if c["cell"] == cell]
        assert {c["num_layers"] for c in mine} == {1, 2, 3}
        assert {c["bidirectional"] for c in mine} == {False, True}
        assert {c["batch_first"] for c in mine} == {False, True}


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", STRUCTURED)
def test_structured_matches_pytorch(case, dtype):
    """num_layers, bidirectional and batch_first as torch.nn: the same state_dict keys in
    the same order, outputs, final states and every gradient."""
    layer = _structured(case).to(dtype)
    sd = _state(case, "state")
    assert list(sd) == list(layer.state_dict()), "PyTorch's keys, in PyTorch's order"
    layer.load_state_dict({k: v.astype(dtype) for k, v in sd.items()})
    if dtype == np.float64:
        check = close
    else:
        def check(got, want, what):
            scale = max(1.0, float(np.abs(want).max()))
            np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5 * scale, err_msg=what)

    def get(key):
        v = _get(case, key)
        return None if v is None else v.astype(dtype)

    x, h0, c0 = get("x"), get("h0"), get("c0")
    lstm = isinstance(layer, LSTM)
    if lstm:
        out, (h_n, c_n) = layer(x, None if h0 is None else (h0, c0))
        check(c_n, _get(case, "c_n"), "c_n")
        dx = layer.backward(get("dout"), get("dh_n"), get("dc_n"))
    else:
        out, h_n = layer(x, h0)
        dx = layer.backward(get("dout"), get("dh_n"))
    assert out.dtype == dtype and dx.dtype == dtype
    check(out, _get(case, "out"), "output")
    check(h_n, _get(case, "h_n"), "h_n")
    check(dx, _get(case, "dx"), "dx")
    if h0 is None:
        assert layer.grad_h0 is None
    else:
        check(layer.grad_h0, _get(case, "dh0"), "grad_h0")
    if lstm and c0 is not None:
        check(layer.grad_c0, _get(case, "dc0"), "grad_c0")
    grads = _state(case, "grad")
    for name, p in layer.named_parameters():
        check(p.grad, grads[name], f"grad of {name}")


@pytest.mark.parametrize("case", ["lstm_l3_bi_tf", "gru_l2_tf"])
def test_last_hidden_is_the_last_layers_final_state(case):
    """LastHidden: h_n[-1] (unidirectional) or h_n[-2] and h_n[-1] side by side
    (bidirectional), as PyTorch users write torch.cat((h_n[-2], h_n[-1]), 1); its
    gradient reaches the recurrent layer as PyTorch's does through that expression."""
    layer = _structured(case).to(np.float64)
    layer.load_state_dict(_state(case, "state"))
    x, h0, c0 = _get(case, "x"), _get(case, "h0"), _get(case, "c0")
    lstm = isinstance(layer, LSTM)
    ret = layer(x, (h0, c0) if lstm else h0)
    last = LastHidden()
    got = last(ret)
    h_n = _get(case, "h_n")
    want = np.concatenate([h_n[-2], h_n[-1]], 1) if layer.bidirectional else h_n[-1]
    close(got, want, "LastHidden")
    g = np.random.default_rng(0).standard_normal(got.shape)
    grad = last.backward(g)
    dh_n = np.zeros_like(h_n)
    if layer.bidirectional:
        dh_n[-2], dh_n[-1] = g[:, :H], g[:, H:]
    else:
        dh_n[-1] = g
    dx = layer.backward(grad)
    layer(x, (h0, c0) if lstm else h0)
    if lstm:
        want_dx = layer.backward(None, dh_n, None)
    else:
        want_dx = layer.backward(None, dh_n)
    np.testing.assert_array_equal(dx, want_dx)
