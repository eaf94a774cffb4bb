"""Writes torch_recurrent.npz, the PyTorch side of tests/test_torch_recurrent.py.

Run by hand where PyTorch is installed (the test suite itself never needs torch):
    python tests/data/make_torch_recurrent.py
float64 throughout, so the comparison tests fastnet's maths, not rounding. For each case:
the state dict, the input and initial state(s), the outputs, the gradients handed to
backward (for the output sequence and the final states) and every resulting gradient.
"""
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

out = {"torch_version": np.array(torch.__version__)}
for name, (make, with_state) in CASES.items():
    net = make()
    lstm = isinstance(net, nn.LSTM)
    x = torch.randn(N, T, F, requires_grad=True)
    h0 = torch.randn(1, N, H, requires_grad=True)
    c0 = torch.randn(1, N, H, requires_grad=True)
    if with_state:
        y, state = net(x, (h0, c0) if lstm else h0)
    else:
        y, state = net(x)
    h_n, c_n = state if lstm else (state, None)
    dout, dh_n, dc_n = torch.randn(N, T, H), torch.randn(1, N, H), torch.randn(1, N, H)
    loss = (y * dout).sum() + (h_n * dh_n).sum() + ((c_n * dc_n).sum() if lstm else 0.0)
    loss.backward()
    p = name + "."
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

np.savez(os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_recurrent.npz"), **out)
