"""The same maths in PyTorch (CPU, float32): nn modules and autograd, as a PyTorch user
trains. Imported only when a torch case is built; call ``set_threads`` first so that
PyTorch uses as many threads as Numba (see benchmarks/conftest.py and torch_worker.py).
"""
import torch
import torch.nn.functional as F
from torch import nn

from .cases import MOMENTUM, Bench

_SIMPLE = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "flatten": nn.Flatten,
           "maxpool": nn.MaxPool2d, "avgpool": nn.AvgPool2d}


def set_threads(n):
    torch.set_num_threads(n)


def _modules(s):
    """The module(s) of one spec entry, the one holding its parameters first."""
    if s[0] == "dense":
        return [nn.Linear(s[1], s[2])] + ([nn.ReLU()] if s[3] == "relu" else [])
    if s[0] == "conv":
        return [nn.Conv2d(s[1], s[2], s[3], stride=s[4], padding=s[5])] + \
            ([nn.ReLU()] if s[6] == "relu" else [])
    if s[0] == "softmax":
        return [nn.Softmax(dim=-1)]
    return [_SIMPLE[s[0]](*s[1:])]


def build(spec, params):
    """(module, {fastnet's parameter name: tensor}); a fused dense or conv + ReLU is two
    modules."""
    modules, named = [], {}
    for i, s in enumerate(spec):
        group = _modules(s)
        prefix = f"{i}." if len(spec) > 1 else ""
        for name in ("weight", "bias"):
            if prefix + name in params:
                p = getattr(group[0], name)
                with torch.no_grad():
                    p.copy_(torch.from_numpy(params[prefix + name]))
                named[prefix + name] = p
        modules += group
    return (modules[0] if len(modules) == 1 else nn.Sequential(*modules)), named


def _grads(named):
    return {"grad." + k: p.grad.numpy() for k, p in named.items()}


def layer_forward(spec, params, x):
    net, _ = build(spec, params)
    xt = torch.from_numpy(x).requires_grad_()  # a training forward: autograd records it
    return Bench(run=lambda: net(xt), outputs=lambda y: {"y": y.detach().numpy()})


def layer_backward(spec, params, x, dout):
    net, named = build(spec, params)
    xt, dt = torch.from_numpy(x).requires_grad_(), torch.from_numpy(dout)
    graph = {}

    def setup():
        for t in [xt, *named.values()]:
            t.grad = None
        graph["y"] = net(xt)

    return Bench(setup=setup, run=lambda: graph["y"].backward(dt),
                 outputs=lambda _: {"dx": xt.grad.numpy(), **_grads(named)})


def cross_entropy(logits, labels):
    lt, yt = torch.from_numpy(logits).requires_grad_(), torch.from_numpy(labels)

    def setup():
        lt.grad = None

    def run():
        loss = F.cross_entropy(lt, yt)
        loss.backward()
        return loss

    return Bench(setup=setup, run=run,
                 outputs=lambda loss: {"loss": loss.item(), "dlogits": lt.grad.numpy()})


def _optimizer_step(make, params, grads, lr):
    ps = {k: torch.from_numpy(v.copy()).requires_grad_() for k, v in params.items()}
    for k, p in ps.items():
        p.grad = torch.from_numpy(grads[k])
    opt = make(list(ps.values()), lr)
    return Bench(run=opt.step,
                 outputs=lambda _: {"data." + k: p.detach().numpy() for k, p in ps.items()})


def sgd_momentum_step(params, grads, lr):
    return _optimizer_step(lambda ps, lr: torch.optim.SGD(ps, lr=lr, momentum=MOMENTUM),
                           params, grads, lr)


def adam_step(params, grads, lr):
    return _optimizer_step(lambda ps, lr: torch.optim.Adam(ps, lr=lr), params, grads, lr)


def train_step(spec, params, x, labels, lr):
    model, named = build(spec, params)
    xt, yt = torch.from_numpy(x), torch.from_numpy(labels)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM)

    def step():
        opt.zero_grad()
        loss = F.cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()
        return loss

    return Bench(run=step, outputs=lambda loss: {
        "loss": loss.item(), **_grads(named),
        **{"data." + k: p.detach().numpy() for k, p in named.items()}})


def _lstm(params):
    h, f = params["weight_ih_l0"].shape
    net = nn.LSTM(f, h // 4, batch_first=True)
    with torch.no_grad():
        for k, p in net.named_parameters():
            p.copy_(torch.from_numpy(params[k]))
    return net


def lstm_forward(params, x):
    net = _lstm(params)
    xt = torch.from_numpy(x).requires_grad_()  # a training forward: autograd records it

    def outputs(r):
        out, (h_n, c_n) = r
        return {"y": out.detach().numpy(), "h_n": h_n.detach().numpy(),
                "c_n": c_n.detach().numpy()}

    return Bench(run=lambda: net(xt), outputs=outputs)


def lstm_backward(params, x, dout):
    net = _lstm(params)
    xt, dt = torch.from_numpy(x).requires_grad_(), torch.from_numpy(dout)
    graph = {}

    def setup():
        for t in [xt, *net.parameters()]:
            t.grad = None
        graph["y"] = net(xt)[0]

    return Bench(setup=setup, run=lambda: graph["y"].backward(dt),
                 outputs=lambda _: {"dx": xt.grad.numpy(),
                                    **{"grad." + k: p.grad.numpy()
                                       for k, p in net.named_parameters()}})
