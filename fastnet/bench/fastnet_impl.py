"""The fastnet side of each case, through the public API only (layers, losses, optim):
what a user's training loop runs. The builders return a ``Bench`` (see cases.py).

``device="cuda"``: the model moves to the GPU and the inputs are copied there once, before
anything is timed; outputs come back to the host only for the check."""
import numpy as np

from fastnet.device import Device, to_numpy
from fastnet.kernels import _kernel
from fastnet.layers import (AvgPool2D, BatchNorm1D, BatchNorm2D, Conv2D, Dense, Dropout,
                            Flatten, GlobalAvgPool2D, Hardsigmoid, LPPool2D, MaxPool2D, Parameter, ReLU, Residual,
                            Sequential, Sigmoid, Softmax, Tanh)
from fastnet.layers import GRU, LSTM, Embedding, LayerNorm
from fastnet.models import CharLSTM
from fastnet.losses import BCEWithLogitsLoss, CrossEntropyLoss
from fastnet.optim import SGD, Adam, clip_grad_norm_

from .cases import LAUNCHES, MOMENTUM, Bench, conv_bias, conv_dilation, conv_groups

_SIMPLE = {"relu": ReLU, "sigmoid": Sigmoid, "tanh": Tanh, "softmax": Softmax,
           "flatten": Flatten, "maxpool": MaxPool2D, "avgpool": AvgPool2D,
           "global_avgpool": GlobalAvgPool2D, "batchnorm1d": BatchNorm1D,
           "batchnorm2d": BatchNorm2D, "hardsigmoid": Hardsigmoid, "lppool": LPPool2D,
           "layernorm": LayerNorm}


def _layer(s):
    if s[0] == "dense":
        return Dense(s[1], s[2], activation=s[3])
    if s[0] == "conv":
        return Conv2D(s[1], s[2], s[3], stride=s[4], padding=s[5], activation=s[6],
                      bias=conv_bias(s), groups=conv_groups(s), dilation=conv_dilation(s))
    if s[0] == "residual":
        return Residual(_net(s[1]), None if s[2] is None else _net(s[2]))
    return _SIMPLE[s[0]](*s[1:])


def _net(spec):
    layers = [_layer(s) for s in spec]
    return layers[0] if len(layers) == 1 else Sequential(*layers)


def build(spec, params, device="cpu"):
    """The layer (one spec entry) or Sequential, holding ``params``, on ``device``."""
    return _net(spec).load_state_dict(params).to(device)


def _on(device, a):
    """A host array on ``device`` (the array itself on the CPU)."""
    return Device(device).asarray(a)


def _host(v):
    """A NumPy array or float of a result on any device (a CUDA loss is a device scalar)."""
    if isinstance(v, (np.ndarray, float)):
        return v
    if hasattr(v, "item") and not hasattr(v, "shape"):
        return v.item()
    return to_numpy(v)


def _named(net, what):
    return {f"{what}.{k}": _host(getattr(p, what)) for k, p in net.named_parameters()}


def layer_forward(spec, params, x, device="cpu"):
    net, x = build(spec, params, device), _on(device, x)
    return Bench(run=lambda: net(x), outputs=lambda y: {"y": _host(y)})


def layer_backward(spec, params, x, dout, device="cpu"):
    net, x, dout = build(spec, params, device), _on(device, x), _on(device, dout)

    def setup():
        net.zero_grad()
        net(x)

    return Bench(setup=setup, run=lambda: net.backward(dout),
                 outputs=lambda dx: {"dx": _host(dx), **_named(net, "grad")})


def _dropout(p, seed, device):
    """A Dropout layer in training mode whose first call draws the mask the case's
    inputs hold."""
    layer = Dropout(p).to(device)
    layer.seed = seed
    return layer


def dropout_forward(x, p, seed, mask, device="cpu"):
    layer, x = _dropout(p, seed, device), _on(device, x)
    return Bench(run=lambda: layer(x), outputs=lambda y: {"y": _host(y)})


def dropout_backward(x, p, seed, mask, dout, device="cpu"):
    layer, x, dout = _dropout(p, seed, device), _on(device, x), _on(device, dout)

    def setup():
        layer(x)

    return Bench(setup=setup, run=lambda: layer.backward(dout),
                 outputs=lambda dx: {"dx": _host(dx)})


def cross_entropy(logits, labels, device="cpu"):
    loss_fn = CrossEntropyLoss()
    logits, labels = _on(device, logits), _on(device, labels)

    def run():
        return loss_fn(logits, labels), loss_fn.backward()

    return Bench(run=run, outputs=lambda r: {"loss": _host(r[0]), "dlogits": _host(r[1])})


def cross_entropy_options(logits, labels, weight, label_smoothing, device="cpu"):
    loss_fn = CrossEntropyLoss(weight, label_smoothing=label_smoothing)
    logits, labels = _on(device, logits), _on(device, labels)

    def run():
        return loss_fn(logits, labels), loss_fn.backward()

    return Bench(run=run, outputs=lambda r: {"loss": _host(r[0]), "dlogits": _host(r[1])})


def bce_with_logits(logits, target, pos_weight, device="cpu"):
    loss_fn = BCEWithLogitsLoss(pos_weight=pos_weight)
    logits, target = _on(device, logits), _on(device, target)

    def run():
        return loss_fn(logits, target), loss_fn.backward()

    return Bench(run=run, outputs=lambda r: {"loss": _host(r[0]), "dlogits": _host(r[1])})


def _optimizer_step(make, params, grads, lr, device):
    ps = {k: Parameter(_on(device, v.copy())) for k, v in params.items()}
    for k, p in ps.items():
        p.grad = _on(device, grads[k])
    opt = make(list(ps.values()), lr)
    return Bench(run=opt.step, outputs=lambda _: {"data." + k: _host(p.data) for k, p in ps.items()})


def sgd_momentum_step(params, grads, lr, device="cpu"):
    return _optimizer_step(lambda ps, lr: SGD(ps, lr=lr, momentum=MOMENTUM), params, grads, lr,
                           device)


def adam_step(params, grads, lr, device="cpu"):
    return _optimizer_step(lambda ps, lr: Adam(ps, lr=lr), params, grads, lr, device)


def clip_grad_norm(grads, max_norm, device="cpu"):
    ps = {k: Parameter(_on(device, np.zeros_like(g))) for k, g in grads.items()}
    for k, p in ps.items():
        p.grad = _on(device, grads[k].copy())
    params = list(ps.values())
    return Bench(run=lambda: clip_grad_norm_(params, max_norm),
                 outputs=lambda total: {"total": np.array(total),
                                        **{"grad." + k: _host(p.grad) for k, p in ps.items()}})


def train_step(spec, params, x, labels, lr, device="cpu"):
    model = build(spec, params, device)
    x, labels = _on(device, x), _on(device, labels)
    opt, loss_fn = SGD(model.parameters(), lr=lr, momentum=MOMENTUM), CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss = loss_fn(model(x), labels)  # on a GPU not read: no host round trip
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()
        return loss

    return Bench(run=step, outputs=lambda loss: {"loss": _host(loss), **_named(model, "grad"),
                                                 **_named(model, "data")})


def inference(spec, params, x, device="cpu"):
    model, x = build(spec, params, device).eval(), _on(device, x)
    return Bench(run=lambda: model(x), outputs=lambda y: {"y": _host(y)})


def _lstm(params, device):
    h, f = params["weight_ih_l0"].shape
    return LSTM(f, h // 4).load_state_dict(params).to(device)


def lstm_forward(params, x, device="cpu"):
    net, x = _lstm(params, device), _on(device, x)

    def outputs(r):
        out, (h_n, c_n) = r
        return {"y": _host(out), "h_n": _host(h_n), "c_n": _host(c_n)}

    return Bench(run=lambda: net(x), outputs=outputs)


def _sequence_backward(net, x, dout, device):
    """A recurrent layer's backward through time (its forward untimed, in setup)."""
    x, dout = _on(device, x), _on(device, dout)

    def setup():
        net.zero_grad()
        net(x)

    return Bench(setup=setup, run=lambda: net.backward(dout),
                 outputs=lambda dx: {"dx": _host(dx), **_named(net, "grad")})


def lstm_backward(params, x, dout, device="cpu"):
    return _sequence_backward(_lstm(params, device), x, dout, device)


def _gru(params, device):
    h, f = params["weight_ih_l0"].shape
    return GRU(f, h // 3, bidirectional=True).load_state_dict(params).to(device)


def gru_forward(params, x, device="cpu"):
    net, x = _gru(params, device), _on(device, x)
    return Bench(run=lambda: net(x), outputs=lambda r: {"y": _host(r[0]), "h_n": _host(r[1])})


def gru_backward(params, x, dout, device="cpu"):
    return _sequence_backward(_gru(params, device), x, dout, device)


def char_vocab(v):
    """v distinct characters for a CharLSTM of v classes (the benchmark's ids are random)."""
    return "".join(chr(0x100 + i) for i in range(v))


def char_lstm_step(params, x, labels, lr, device="cpu"):
    v, e = params["embedding.weight"].shape
    h = params["lstm.weight_hh_l0"].shape[1]
    layers = sum(k.startswith("lstm.weight_hh_l") for k in params)
    model = CharLSTM(char_vocab(v), embedding_dim=e, hidden_size=h, num_layers=layers)
    model.load_state_dict(params).to(device)
    x, labels = _on(device, x), _on(device, labels)
    opt, loss_fn = Adam(model.parameters(), lr=lr), CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss = loss_fn(model(x), labels)
        model.backward(loss_fn.backward())
        opt.step()
        return loss

    return Bench(run=step, outputs=lambda loss: {"loss": _host(loss), **_named(model, "grad"),
                                                 **_named(model, "data")})


def _embedding(weight, device):
    return Embedding(*weight.shape).load_state_dict({"weight": weight}).to(device)


def embedding_forward(weight, indices, device="cpu"):
    net, ids = _embedding(weight, device), _on(device, indices)
    return Bench(run=lambda: net(ids), outputs=lambda y: {"y": _host(y)})


def embedding_backward(weight, indices, dout, device="cpu"):
    net, ids, dout = _embedding(weight, device), _on(device, indices), _on(device, dout)

    def setup():
        net.zero_grad()
        net(ids)

    return Bench(setup=setup, run=lambda: net.backward(dout),
                 outputs=lambda _: _named(net, "grad"))


# ---- GPU-only cases (cases.cuda_cases) --------------------------------------------------

def sgemm(a, b, device="cpu"):
    """a @ b through the dense kernel without bias or activation (x @ w.T with w = b.T):
    on CUDA fastnet's own tiled GEMM."""
    out = Device(device).empty((a.shape[0], b.shape[1]), np.float32)
    a, wt = _on(device, a), _on(device, np.ascontiguousarray(b.T))
    dense = _kernel("dense_forward", device)
    return Bench(run=lambda: dense(out, a, wt, None, None), outputs=lambda _: {"y": _host(out)})


def launch_overhead(x, device="cpu"):
    """LAUNCHES calls of the ReLU kernel on one element: the per-call cost from Python."""
    relu = _kernel("relu_forward", device)
    x = _on(device, x)
    out = Device(device).empty(x.shape, x.dtype)

    def run():
        for _ in range(LAUNCHES):
            relu(out, x)

    return Bench(run=run, outputs=lambda _: {"y": _host(out)})
