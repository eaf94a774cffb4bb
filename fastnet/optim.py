"""Optimizers over fastnet Parameters, each step one fused kernel per parameter.

Semantics follow torch.optim (see fastnet/kernels/optim.py). Parameters whose ``.grad``
is None (no backward reached them since ``zero_grad``) are skipped, as in PyTorch.
"""
import numbers

import numpy as np

from .device import device_of
from .kernels import kernel
from .layers.module import Parameter


def _number(value, name, owner, lo=0.0, hi=None, lo_open=False, hi_open=True):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a number, got {value!r}")
    v = float(value)
    ok = (v > lo if lo_open else v >= lo) and (hi is None or (v < hi if hi_open else v <= hi))
    if not ok or not np.isfinite(v):
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        raise ValueError(f"{owner}: {name} must be in {lb}{lo}, {hi if hi is not None else 'inf'}{rb}, got {value!r}")
    return v


class Optimizer:
    def __init__(self, params):
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        for i, p in enumerate(params):
            if not isinstance(p, Parameter):
                raise TypeError(f"{type(self).__name__}: parameter {i} is not a fastnet "
                                f"Parameter but {type(p).__name__}; pass model.parameters()")
        self.params = params
        self.state = [dict() for _ in params]  # per parameter: name -> buffer
        self.param_steps = [0] * len(params)  # updates each parameter has had (PyTorch's "step")

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def _buffer(self, i, name):
        """A zero-initialised state array for parameter i, on its device."""
        state = self.state[i]
        p = self.params[i]
        buf = state.get(name)
        if buf is None or buf.shape != p.shape or buf.dtype != p.dtype:
            buf = state[name] = device_of(p.data).zeros(p.shape, p.dtype)
        return buf

    def _updates(self):
        """(index, parameter, its step count) for each parameter with a gradient, counted."""
        for i, p in enumerate(self.params):
            g = p.grad
            if g is None:
                continue
            if g.shape != p.shape or g.dtype != p.dtype:
                raise ValueError(
                    f"{type(self).__name__}.step: parameter {i} has shape {p.shape} {p.dtype} "
                    f"but its grad is {tuple(g.shape)} {g.dtype}"
                )
            self.param_steps[i] += 1
            yield i, p, self.param_steps[i]

    def state_dict(self):
        """Step count and per-parameter buffers (NumPy copies), for checkpoints."""
        return {"param_steps": list(self.param_steps),
                "state": [{k: np.asarray(v).copy() for k, v in s.items()} for s in self.state]}

    def load_state_dict(self, state):
        if len(state["state"]) != len(self.params):
            raise ValueError(f"{type(self).__name__}.load_state_dict: state for "
                             f"{len(state['state'])} parameters, optimizer has {len(self.params)}")
        new = []
        for p, s in zip(self.params, state["state"]):
            for k, v in s.items():
                if np.shape(v) != p.shape:
                    raise ValueError(f"{type(self).__name__}.load_state_dict: buffer {k!r} has "
                                     f"shape {np.shape(v)}, parameter has {p.shape}")
            dev = device_of(p.data)
            new.append({k: dev.asarray(v, dtype=p.dtype).copy() for k, v in s.items()})
        self.state = new
        self.param_steps = [int(n) for n in state["param_steps"]]


class SGD(Optimizer):
    """SGD with optional momentum, Nesterov momentum and L2 weight decay."""

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params)
        self.lr = _number(lr, "lr", "SGD", lo_open=True)
        self.momentum = _number(momentum, "momentum", "SGD")
        self.weight_decay = _number(weight_decay, "weight_decay", "SGD")
        if nesterov and self.momentum == 0:
            raise ValueError("SGD: nesterov momentum needs momentum > 0")
        self.nesterov = bool(nesterov)

    def step(self):
        for i, p, _ in self._updates():
            velocity = self._buffer(i, "momentum_buffer") if self.momentum else None
            kernel("sgd_step", device_of(p.data))(p.data, velocity, p.grad, self.lr,
                                                  self.momentum, self.weight_decay, self.nesterov)


class Adam(Optimizer):
    """Adam (bias-corrected) with L2 weight decay added to the gradient."""

    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params)
        name = type(self).__name__
        self.lr = _number(lr, "lr", name, lo_open=True)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"{name}: betas must be a pair, got {betas!r}")
        self.betas = (_number(betas[0], "betas[0]", name, 0.0, 1.0),
                      _number(betas[1], "betas[1]", name, 0.0, 1.0))
        self.eps = _number(eps, "eps", name, lo_open=True)
        self.weight_decay = _number(weight_decay, "weight_decay", name)

    def step(self):
        for i, p, step in self._updates():
            kernel("adam_step", device_of(p.data))(
                p.data, self._buffer(i, "exp_avg"), self._buffer(i, "exp_avg_sq"), p.grad,
                self.lr, self.betas[0], self.betas[1], self.eps, self.weight_decay, step,
                self.decoupled)


class AdamW(Adam):
    """Adam with decoupled weight decay (p *= 1 - lr * weight_decay), PyTorch's default 1e-2."""

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)
