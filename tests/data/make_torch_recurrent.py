"""Writes torch_recurrent.npz, the PyTorch side of tests/test_torch_recurrent.py.

Run by hand where PyTorch is installed (the test suite itself never needs torch):
    python tests/data/make_torch_recurrent.py
float64 throughout, so the comparison tests fastnet's maths, not rounding. For each case:
the state dict, the input and initial state(s), the outputs, the gradients handed to
backward (for the output sequence and the final states) and every resulting gradient.
The stacked / bidirectional / time-first cases (STRUCTURED, after the first six so that
those keep their numbers) also store their constructor arguments as JSON ("config").
"""
import json
import os

import numpy as np
import torch
from torch import nn

torch.manual_seed(0)
torch.set_default_dtype(torch.float64)

N, T, F, H = 3, 4, 3, 5
# name -> (module, initial state given)
CASES = {
    "rnn_tanh": (lambda: nn.RNN(F, H, nonlinearity="tanh", batch_first=True), True),
    "rnn_relu": (lambda: nn.RNN(F, H, nonlinearity="relu", batch_first=True), True),
    "lstm": (lambda: nn.LSTM(F, H, batch_first=True), True),
    "gru": (lambda: nn.GRU(F, H, batch_first=True), True),
    "lstm_nobias_noh0": (lambda: nn.LSTM(F, H, bias=False, batch_first=True), False),
    "gru_nobias_noh0": (lambda: nn.GRU(F, H, bias=False, batch_first=True), False),
}

# name -> (cell, nonlinearity, num_layers, bidirectional, batch_first, bias, initial state)
STRUCTURED = {
    "rnn_tanh_l2": ("rnn", "tanh", 2, False, True, True, True),
    "rnn_relu_bi_tf": ("rnn", "relu", 1, True, False, True, True),
    "rnn_tanh_l3_bi_tf": ("rnn", "tanh", 3, True, False, True, True),
    "rnn_tanh_tf": ("rnn", "tanh", 1, False, False, True, True),
    "lstm_l2": ("lstm", None, 2, False, True, True, True),
    "lstm_bi": ("lstm", None, 1, True, True, True, True),
    "lstm_tf": ("lstm", None, 1, False, False, True, True),
    "lstm_l3_bi_tf": ("lstm", None, 3, True, False, True, True),
    "lstm_l2_bi_nobias_noh0": ("lstm", None, 2, True, True, False, False),
    "gru_l2_tf": ("gru", None, 2, False, False, True, True),
    "gru_bi": ("gru", None, 1, True, True, True, True),
    "gru_l3_bi": ("gru", None, 3, True, True, True, True),
    "gru_l2_bi_tf_noh0": ("gru", None, 2, True, False, True, False),
}


def structured(cell, nonlinearity, num_layers, bidirectional, batch_first, bias):
    kw = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
              bias=bias)
    if cell == "rnn":
        return nn.RNN(F, H, nonlinearity=nonlinearity, **kw)
    return (nn.LSTM if cell == "lstm" else nn.GRU)(F, H, **kw)


def run(name, net, with_state, num_states=1, batch_first=True, config=None):
    lstm = isinstance(net, nn.LSTM)
    d = 2 if net.bidirectional else 1
    xs = (N, T, F) if batch_first else (T, N, F)
    ys = (N, T, d * H) if batch_first else (T, N, d * H)
    hs = (net.num_layers * d, N, H)
    x = torch.randn(*xs, requires_grad=True)
    h0 = torch.randn(*hs, requires_grad=True)
    c0 = torch.randn(*hs, requires_grad=True)
    if with_state:
        y, state = net(x, (h0, c0) if lstm else h0)
    else:
        y, state = net(x)
    h_n, c_n = state if lstm else (state, None)
    dout, dh_n, dc_n = torch.randn(*ys), torch.randn(*hs), torch.randn(*hs)
    loss = (y * dout).sum() + (h_n * dh_n).sum() + ((c_n * dc_n).sum() if lstm else 0.0)
    loss.backward()
    p = name + "."
    if config is not None:
        out[p + "config"] = np.array(json.dumps(config))
    out.update({p + "state." + k: v.detach().numpy().copy() for k, v in net.state_dict().items()})
    out.update({p + "grad." + k: v.grad.numpy().copy() for k, v in net.named_parameters()})
    out.update({p + "x": x.detach().numpy(), p + "out": y.detach().numpy(),
                p + "h_n": h_n.detach().numpy(), p + "dout": dout.numpy(),
                p + "dh_n": dh_n.numpy(), p + "dx": x.grad.numpy()})
    if with_state:
        out.update({p + "h0": h0.detach().numpy(), p + "dh0": h0.grad.numpy()})
    if lstm:
        out.update({p + "c_n": c_n.detach().numpy(), p + "dc_n": dc_n.numpy()})
        if with_state:
            out.update({p + "c0": c0.detach().numpy(), p + "dc0": c0.grad.numpy()})


out = {"torch_version": np.array(torch.__version__)}
for name, (make, with_state) in CASES.items():
    run(name, make(), with_state)
for name, (cell, nonlin, layers, bi, bf, bias, with_state) in STRUCTURED.items():
    config = dict(cell=cell, nonlinearity=nonlin, num_layers=layers, bidirectional=bi,
                  batch_first=bf, bias=bias)
    run(name, structured(cell, nonlin, layers, bi, bf, bias), with_state, batch_first=bf,
        config=config)

np.savez(os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_recurrent.npz"), **out)
