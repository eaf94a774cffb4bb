"""The fastnet side of each case, through the public API only (layers, losses, optim):
what a user's training loop runs. The builders return a ``Bench`` (see cases.py)."""
from fastnet.layers import (AvgPool2D, Conv2D, Dense, Flatten, MaxPool2D, Parameter, ReLU,
                            Sequential, Sigmoid, Softmax, Tanh)
from fastnet.layers import LSTM
from fastnet.losses import CrossEntropyLoss
from fastnet.optim import SGD, Adam

from .cases import MOMENTUM, Bench

_SIMPLE = {"relu": ReLU, "sigmoid": Sigmoid, "tanh": Tanh, "softmax": Softmax,
           "flatten": Flatten, "maxpool": MaxPool2D, "avgpool": AvgPool2D}


def _layer(s):
    if s[0] == "dense":
        return Dense(s[1], s[2], activation=s[3])
    if s[0] == "conv":
        return Conv2D(s[1], s[2], s[3], stride=s[4], padding=s[5], activation=s[6])
    return _SIMPLE[s[0]](*s[1:])


def build(spec, params):
    """The layer (one spec entry) or Sequential, holding ``params``."""
    layers = [_layer(s) for s in spec]
    net = layers[0] if len(layers) == 1 else Sequential(*layers)
    return net.load_state_dict(params)


def _named(net, what):
    return {f"{what}.{k}": getattr(p, what) for k, p in net.named_parameters()}


def layer_forward(spec, params, x):
    net = build(spec, params)
    return Bench(run=lambda: net(x), outputs=lambda y: {"y": y})


def layer_backward(spec, params, x, dout):
    net = build(spec, params)

    def setup():
        net.zero_grad()
        net(x)

    return Bench(setup=setup, run=lambda: net.backward(dout),
                 outputs=lambda dx: {"dx": dx, **_named(net, "grad")})


def cross_entropy(logits, labels):
    loss_fn = CrossEntropyLoss()

    def run():
        return loss_fn(logits, labels), loss_fn.backward()

    return Bench(run=run, outputs=lambda r: {"loss": r[0], "dlogits": r[1]})


def _optimizer_step(make, params, grads, lr):
    ps = {k: Parameter(v.copy()) for k, v in params.items()}
    for k, p in ps.items():
        p.grad = grads[k]
    opt = make(list(ps.values()), lr)
    return Bench(run=opt.step, outputs=lambda _: {"data." + k: p.data for k, p in ps.items()})


def sgd_momentum_step(params, grads, lr):
    return _optimizer_step(lambda ps, lr: SGD(ps, lr=lr, momentum=MOMENTUM), params, grads, lr)


def adam_step(params, grads, lr):
    return _optimizer_step(lambda ps, lr: Adam(ps, lr=lr), params, grads, lr)


def train_step(spec, params, x, labels, lr):
    model = build(spec, params)
    opt, loss_fn = SGD(model.parameters(), lr=lr, momentum=MOMENTUM), CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss = loss_fn(model(x), labels)
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()
        return loss

    return Bench(run=step, outputs=lambda loss: {"loss": loss, **_named(model, "grad"),
                                                 **_named(model, "data")})


def _lstm(params):
    h, f = params["weight_ih_l0"].shape
    return LSTM(f, h // 4).load_state_dict(params)


def lstm_forward(params, x):
    net = _lstm(params)

    def outputs(r):
        out, (h_n, c_n) = r
        return {"y": out, "h_n": h_n, "c_n": c_n}

    return Bench(run=lambda: net(x), outputs=outputs)


def lstm_backward(params, x, dout):
    net = _lstm(params)

    def setup():
        net.zero_grad()
        net(x)

    return Bench(setup=setup, run=lambda: net.backward(dout),
                 outputs=lambda dx: {"dx": dx, **_named(net, "grad")})
