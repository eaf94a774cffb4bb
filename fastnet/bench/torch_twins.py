"""The same maths in PyTorch (float32): nn modules and autograd, as a PyTorch user
trains; eval mode under ``torch.inference_mode()``, as one serves a model. Imported only
in the twins' worker process (worker.py), torch first there; ``set_threads`` makes PyTorch
use as many threads as Numba does in the fastnet process.

``device="cuda"``: the module and the inputs on the GPU (copied once, before timing), and
plain FP32 arithmetic (TF32 off for matmuls and cuDNN convolutions, as fastnet computes).
"""
import torch
import torch.nn.functional as F
from torch import nn

from .cases import LAUNCHES, MOMENTUM, Bench, conv_bias, conv_dilation, conv_groups, key_prefix

_SIMPLE = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "flatten": nn.Flatten,
           "maxpool": nn.MaxPool2d, "avgpool": nn.AvgPool2d, "batchnorm1d": nn.BatchNorm1d,
           "batchnorm2d": nn.BatchNorm2d, "hardsigmoid": nn.Hardsigmoid, "lppool": nn.LPPool2d,
           "layernorm": nn.LayerNorm}


def set_threads(n):
    torch.set_num_threads(n)


def _device(device):
    if device != "cpu":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return torch.device(device)


def _on(device, a):
    """A tensor of the host array ``a`` on ``device`` (sharing its memory on the CPU)."""
    return torch.from_numpy(a).to(device)


def _np(t):
    return t.detach().cpu().numpy()


class Residual(nn.Module):
    """block(x) + shortcut(x), or block(x) + x without a shortcut (torchvision's
    BasicBlock without its final ReLU)."""

    def __init__(self, block, shortcut):
        super().__init__()
        self.block, self.shortcut = block, shortcut

    def forward(self, x):
        return self.block(x) + (x if self.shortcut is None else self.shortcut(x))


def _modules(s, params, at, dev, named):
    """The module(s) of one spec entry, the one holding its parameters first; its
    parameters (into ``named``) and buffers taken from ``params`` under ``at``."""
    if s[0] == "residual":
        block, shortcut = (None if b is None else _build(b, params, dev, named, f"{at}{name}.")
                           for name, b in zip(("block", "shortcut"), s[1:]))
        return [Residual(block, shortcut)]
    if s[0] == "dense":
        group = [nn.Linear(s[1], s[2])] + ([nn.ReLU()] if s[3] == "relu" else [])
    elif s[0] == "conv":
        group = [nn.Conv2d(s[1], s[2], s[3], stride=s[4], padding=s[5], bias=conv_bias(s),
                           groups=conv_groups(s), dilation=conv_dilation(s))] + \
            ([nn.ReLU()] if s[6] == "relu" else [])
    elif s[0] == "softmax":
        group = [nn.Softmax(dim=-1)]
    elif s[0] == "global_avgpool":
        group = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    else:
        group = [_SIMPLE[s[0]](*s[1:])]
    group = [m.to(dev) for m in group]
    for name, t in group[0].state_dict(keep_vars=True).items():
        with torch.no_grad():
            t.copy_(torch.from_numpy(params[at + name]))
        if name in ("weight", "bias"):
            named[at + name] = t
    return group


def _build(spec, params, dev, named, outer=""):
    modules = [m for i, s in enumerate(spec)
               for m in _modules(s, params, key_prefix(spec, i, outer), dev, named)]
    return modules[0] if len(modules) == 1 else nn.Sequential(*modules)


def build(spec, params, device="cpu"):
    """(module, {fastnet's parameter name: tensor}) on ``device``; a fused dense or conv +
    ReLU is two modules. A batch norm's buffers come from ``params`` too."""
    named = {}
    return _build(spec, params, _device(device), named), named


def _grads(named):
    return {"grad." + k: _np(p.grad) for k, p in named.items()}


def layer_forward(spec, params, x, device="cpu"):
    net, _ = build(spec, params, device)
    xt = _on(device, x).requires_grad_()  # a training forward: autograd records it
    return Bench(run=lambda: net(xt), outputs=lambda y: {"y": _np(y)})


def layer_backward(spec, params, x, dout, device="cpu"):
    net, named = build(spec, params, device)
    xt, dt = _on(device, x).requires_grad_(), _on(device, dout)
    graph = {}

    def setup():
        for t in [xt, *named.values()]:
            t.grad = None
        graph["y"] = net(xt)

    return Bench(setup=setup, run=lambda: graph["y"].backward(dt),
                 outputs=lambda _: {"dx": _np(xt.grad), **_grads(named)})


def dropout_forward(x, p, seed, mask, device="cpu"):
    """Timed: F.dropout with PyTorch's own random mask. Checked: fastnet's mask applied by
    PyTorch's kernel for a given mask (native_dropout_backward: input * mask * scale);
    the two generators draw different masks."""
    xt, keep = _on(device, x).requires_grad_(), _on(device, mask)
    scale = 1.0 / (1.0 - p)
    return Bench(run=lambda: F.dropout(xt, p, training=True),
                 check=lambda: torch.ops.aten.native_dropout_backward(xt.detach(), keep, scale),
                 outputs=lambda y: {"y": _np(y)})


def dropout_backward(x, p, seed, mask, dout, device="cpu"):
    """Timed: autograd through F.dropout. Checked: PyTorch's dropout backward kernel
    (grad * mask * scale) given fastnet's mask."""
    xt, dt, keep = _on(device, x).requires_grad_(), _on(device, dout), _on(device, mask)
    graph = {}

    def setup():
        xt.grad = None
        graph["y"] = F.dropout(xt, p, training=True)

    def run():
        graph["y"].backward(dt)
        return xt.grad

    def check():
        return torch.ops.aten.native_dropout_backward(dt, keep, 1.0 / (1.0 - p))

    return Bench(setup=setup, run=run, check=check, outputs=lambda dx: {"dx": _np(dx)})


def cross_entropy(logits, labels, device="cpu"):
    lt, yt = _on(device, logits).requires_grad_(), _on(device, labels)

    def setup():
        lt.grad = None

    def run():
        loss = F.cross_entropy(lt, yt)
        loss.backward()
        return loss

    return Bench(setup=setup, run=run,
                 outputs=lambda loss: {"loss": loss.item(), "dlogits": _np(lt.grad)})


def cross_entropy_options(logits, labels, weight, label_smoothing, device="cpu"):
    lt, yt = _on(device, logits).requires_grad_(), _on(device, labels)
    wt = _on(device, weight)

    def setup():
        lt.grad = None

    def run():
        loss = F.cross_entropy(lt, yt, weight=wt, label_smoothing=label_smoothing)
        loss.backward()
        return loss

    return Bench(setup=setup, run=run,
                 outputs=lambda loss: {"loss": loss.item(), "dlogits": _np(lt.grad)})


def bce_with_logits(logits, target, pos_weight, device="cpu"):
    lt, tt = _on(device, logits).requires_grad_(), _on(device, target)
    pt = _on(device, pos_weight)

    def setup():
        lt.grad = None

    def run():
        loss = F.binary_cross_entropy_with_logits(lt, tt, pos_weight=pt)
        loss.backward()
        return loss

    return Bench(setup=setup, run=run,
                 outputs=lambda loss: {"loss": loss.item(), "dlogits": _np(lt.grad)})


def _optimizer_step(make, params, grads, lr, device):
    ps = {k: _on(device, v.copy()).requires_grad_() for k, v in params.items()}
    for k, p in ps.items():
        p.grad = _on(device, grads[k])
    opt = make(list(ps.values()), lr)
    return Bench(run=opt.step, outputs=lambda _: {"data." + k: _np(p) for k, p in ps.items()})


def sgd_momentum_step(params, grads, lr, device="cpu"):
    return _optimizer_step(lambda ps, lr: torch.optim.SGD(ps, lr=lr, momentum=MOMENTUM),
                           params, grads, lr, device)


def adam_step(params, grads, lr, device="cpu"):
    return _optimizer_step(lambda ps, lr: torch.optim.Adam(ps, lr=lr), params, grads, lr, device)


def clip_grad_norm(grads, max_norm, device="cpu"):
    ps = {k: torch.zeros_like(_on(device, g)).requires_grad_() for k, g in grads.items()}
    for k, p in ps.items():
        p.grad = _on(device, grads[k].copy())
    params = list(ps.values())
    return Bench(run=lambda: torch.nn.utils.clip_grad_norm_(params, max_norm),
                 outputs=lambda total: {"total": _np(total),
                                        **{"grad." + k: _np(p.grad) for k, p in ps.items()}})


def train_step(spec, params, x, labels, lr, device="cpu"):
    model, named = build(spec, params, device)
    xt, yt = _on(device, x), _on(device, labels)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM)

    def step():
        opt.zero_grad()
        loss = F.cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()
        return loss

    return Bench(run=step, outputs=lambda loss: {
        "loss": loss.item(), **_grads(named), **{"data." + k: _np(p) for k, p in named.items()}})


def inference(spec, params, x, device="cpu"):
    net, _ = build(spec, params, device)
    net.eval()
    xt = _on(device, x)

    def run():
        with torch.inference_mode():
            return net(xt)

    return Bench(run=run, outputs=lambda y: {"y": _np(y)})


def _holding(net, params, device):
    """``net`` on ``device`` with its parameters set to ``params`` (state_dict keys)."""
    net = net.to(_device(device))
    with torch.no_grad():
        for k, p in net.named_parameters():
            p.copy_(torch.from_numpy(params[k]))
    return net


def _lstm(params, device):
    h, f = params["weight_ih_l0"].shape
    return _holding(nn.LSTM(f, h // 4, batch_first=True), params, device)


def _sequence_backward(net, x, dout, device):
    """A recurrent layer's backward through time: its output sequence's gradient into the
    input and the parameters (the forward, recorded by autograd, untimed)."""
    xt, dt = _on(device, x).requires_grad_(), _on(device, dout)
    graph = {}

    def setup():
        for t in [xt, *net.parameters()]:
            t.grad = None
        graph["y"] = net(xt)[0]

    return Bench(setup=setup, run=lambda: graph["y"].backward(dt),
                 outputs=lambda _: {"dx": _np(xt.grad),
                                    **{"grad." + k: _np(p.grad) for k, p in net.named_parameters()}})


def _embedding(weight, device):
    net = nn.Embedding(*weight.shape).to(_device(device))
    with torch.no_grad():
        net.weight.copy_(torch.from_numpy(weight))
    return net


def embedding_forward(weight, indices, device="cpu"):
    """Timed: a training forward (autograd records it)."""
    net, ids = _embedding(weight, device), _on(device, indices)
    return Bench(run=lambda: net(ids), outputs=lambda y: {"y": _np(y)})


def embedding_backward(weight, indices, dout, device="cpu"):
    net, ids, dt = _embedding(weight, device), _on(device, indices), _on(device, dout)
    graph = {}

    def setup():
        net.weight.grad = None
        graph["y"] = net(ids)

    return Bench(setup=setup, run=lambda: graph["y"].backward(dt),
                 outputs=lambda _: {"grad.weight": _np(net.weight.grad)})


def lstm_forward(params, x, device="cpu"):
    net = _lstm(params, device)
    xt = _on(device, x).requires_grad_()  # a training forward: autograd records it

    def outputs(r):
        out, (h_n, c_n) = r
        return {"y": _np(out), "h_n": _np(h_n), "c_n": _np(c_n)}

    return Bench(run=lambda: net(xt), outputs=outputs)


def lstm_backward(params, x, dout, device="cpu"):
    return _sequence_backward(_lstm(params, device), x, dout, device)


def _gru(params, device):
    h, f = params["weight_ih_l0"].shape
    return _holding(nn.GRU(f, h // 3, batch_first=True, bidirectional=True), params, device)


def gru_forward(params, x, device="cpu"):
    net = _gru(params, device)
    xt = _on(device, x).requires_grad_()  # a training forward: autograd records it
    return Bench(run=lambda: net(xt), outputs=lambda r: {"y": _np(r[0]), "h_n": _np(r[1])})


def gru_backward(params, x, dout, device="cpu"):
    return _sequence_backward(_gru(params, device), x, dout, device)


class CharLSTM(nn.Module):
    """fastnet.models.CharLSTM's twin: Embedding -> LSTM (batch first) -> Linear at every
    position, the logits as (N, V, T)."""

    def __init__(self, v, e, h, layers):
        super().__init__()
        self.embedding = nn.Embedding(v, e)
        self.lstm = nn.LSTM(e, h, layers, batch_first=True)
        self.head = nn.Linear(h, v)

    def forward(self, x):
        out, _ = self.lstm(self.embedding(x))
        return self.head(out).transpose(1, 2)


def char_lstm_step(params, x, labels, lr, device="cpu"):
    v, e = params["embedding.weight"].shape
    h = params["lstm.weight_hh_l0"].shape[1]
    layers = sum(k.startswith("lstm.weight_hh_l") for k in params)
    model = _holding(CharLSTM(v, e, h, layers), params, device)
    named = dict(model.named_parameters())
    xt, yt = _on(device, x), _on(device, labels)
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def step():
        opt.zero_grad()
        loss = F.cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()
        return loss

    return Bench(run=step, outputs=lambda loss: {
        "loss": loss.item(), **_grads(named), **{"data." + k: _np(p) for k, p in named.items()}})


# ---- GPU-only cases (cases.cuda_cases) --------------------------------------------------

def sgemm(a, b, device="cpu"):
    at, bt = _on(_device(device), a), _on(device, b)
    return Bench(run=lambda: torch.matmul(at, bt), outputs=lambda y: {"y": _np(y)})


def launch_overhead(x, device="cpu"):
    xt = _on(device, x)

    def run():
        for _ in range(LAUNCHES):
            y = torch.relu(xt)
        return y

    return Bench(run=run, outputs=lambda y: {"y": _np(y)})
