"""fastnet's RNN / LSTM / GRU against numbers PyTorch computed (tests/data/torch_recurrent.npz,
written by tests/data/make_torch_recurrent.py with PyTorch 2.13, float64): PyTorch's state
dicts load unchanged, and the outputs, final states and every gradient (input, initial
states, parameters) agree to ~1e-10."""
import pathlib

import numpy as np
import pytest

from fastnet.layers import GRU, LSTM, RNN

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
