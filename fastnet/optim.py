"""Optimizers over fastnet Parameters, each step one fused kernel per parameter.

Semantics follow torch.optim (see fastnet/kernels/optim.py). Parameters whose ``.grad``
is None (no backward reached them since ``zero_grad``) are skipped, as in PyTorch; so are
frozen ones (``requires_grad=False``): no update, no state created, no weight decay, even
when a gradient from before the freezing is still there (PyTorch would apply that one).
"""
import math
import numbers

import numpy as np

from .device import device_of, to_numpy
from .kernels import _kernel
from .layers.module import Module, Parameter


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


def _lr(value, owner):
    # NOTE: [0, inf) once the optimizer exists: a schedule may take the lr to 0 (CosineLR's
    # min_lr); the constructors ask for lr > 0 on top of this.
    return _number(value, "lr", owner)


def _non_negative(name):
    return lambda value, owner: _number(value, name, owner)


def _betas(betas, owner):
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"{owner}: betas must be a pair, got {betas!r}")
    return (_number(betas[0], "betas[0]", owner, 0.0, 1.0),
            _number(betas[1], "betas[1]", owner, 0.0, 1.0))


class Optimizer:
    """The base: ``step()`` in the subclasses. The hyper-parameters (``lr`` and the
    others in ``hyperparameters``) are plain attributes, checked whenever they are set
    (by the constructor, by assignment, by ``load_state_dict``) with ``rules``."""

    buffers = ()       # names of the per-parameter state arrays
    hyperparameters = ()  # attributes saved by state_dict
    rules = {}         # hyper-parameter -> check(value, owner): the value to keep, or raise

    def __init__(self, params):
        name = type(self).__name__
        if isinstance(params, Module):
            raise TypeError(f"{name}: expected parameters, got a {type(params).__name__} "
                            "module; pass model.parameters()")
        params = list(params)
        if not params:
            raise ValueError(f"{name}: got an empty parameter list")
        for i, p in enumerate(params):
            if not isinstance(p, Parameter):
                raise TypeError(f"{name}: parameter {i} is not a fastnet "
                                f"Parameter but {type(p).__name__}; pass model.parameters()")
        if len({id(p) for p in params}) != len(params):
            raise ValueError(f"{name}: a parameter appears more than once")
        self.params = params
        self.state = [dict() for _ in params]  # per parameter: name -> buffer
        self.param_steps = [0] * len(params)  # updates each parameter has had (PyTorch's "step")

    def __setattr__(self, name, value):
        # NOTE: only sets are checked; step() reads plain attributes (no property cost).
        if name in type(self).rules:
            value = self.check_hyperparameters({name: value})[name]
        object.__setattr__(self, name, value)

    def check_hyperparameters(self, values):
        """``values`` (hyper-parameter -> value) checked by the rules the constructor
        applies, together with the current values of the others (e.g. SGD's nesterov needs
        momentum > 0); returns the values to keep. Changes nothing; TypeError / ValueError
        as the constructor raises them."""
        owner, rules = type(self).__name__, type(self).rules
        checked = {k: rules[k](v, owner) if k in rules else v for k, v in values.items()}
        current = {k: self.__dict__[k] for k in self.hyperparameters if k in self.__dict__}
        self._check_together({**current, **checked}, owner)
        return checked

    def _check_together(self, values, owner):
        """Rules between hyper-parameters (``values`` may lack some while constructing)."""

    def _set_hyperparameters(self, **values):
        """Check all of ``values``, then set them (the constructors: one check together)."""
        for k, v in self.check_hyperparameters(values).items():
            object.__setattr__(self, k, v)

    def zero_grad(self):
        for p in self.params:
            if p.requires_grad:  # a frozen parameter is left alone, as by Module.zero_grad
                p.grad = None

    def _buffer(self, i, name):
        """State array ``name`` of parameter i: zeros at first, then kept; converted (not
        reset) when the model changed dtype or device since."""
        p = self.params[i]
        buf = self.state[i].get(name)
        if buf is None:
            buf = self.state[i][name] = device_of(p.data).zeros(p.shape, p.dtype)
        elif buf.dtype != p.dtype or device_of(buf) != device_of(p.data):
            buf = self.state[i][name] = device_of(p.data).asarray(buf, dtype=p.dtype)
        return buf

    def _updates(self):
        """(index, parameter, its step count) for each parameter with a gradient that is not
        frozen, counted."""
        for i, p in enumerate(self.params):
            if not p.requires_grad:
                continue
            g = p.grad
            if g is None:
                continue
            self.param_steps[i] += 1
            yield i, p, self.param_steps[i]

    def state_dict(self):
        """Hyper-parameters, step counts and per-parameter buffers (NumPy copies)."""
        return {"type": type(self).__name__,
                "hyperparameters": {k: getattr(self, k) for k in self.hyperparameters},
                "param_steps": list(self.param_steps),
                "state": [{k: to_numpy(v).copy() for k, v in s.items()} for s in self.state]}

    def load_state_dict(self, state):
        """Restore what ``state_dict`` returned, for the same parameters in the same order."""
        name = type(self).__name__
        if state.get("type", name) != name:
            raise ValueError(f"{name}.load_state_dict: the state is a {state['type']}'s")
        if len(state["state"]) != len(self.params) or len(state["param_steps"]) != len(self.params):
            raise ValueError(f"{name}.load_state_dict: state for {len(state['state'])} "
                             f"parameters, the optimizer has {len(self.params)}")
        hyper = self.check_hyperparameters(  # a JSON list stands for a tuple (betas)
            {k: tuple(v) if isinstance(v, list) else v
             for k, v in state.get("hyperparameters", {}).items() if k in self.hyperparameters})
        new = []
        for i, (p, s) in enumerate(zip(self.params, state["state"])):
            unknown = set(s) - set(self.buffers)
            if unknown:
                raise ValueError(f"{name}.load_state_dict: unknown buffers {sorted(unknown)} "
                                 f"for parameter {i}; {name} keeps {list(self.buffers)}")
            host = {k: np.asarray(to_numpy(v)) for k, v in s.items()}
            for k, v in host.items():
                if v.shape != p.shape:
                    raise ValueError(f"{name}.load_state_dict: buffer {k!r} of parameter {i} "
                                     f"has shape {v.shape}, the parameter {p.shape}")
                if v.dtype.kind not in "fiu":
                    raise TypeError(f"{name}.load_state_dict: buffer {k!r} of parameter {i} "
                                    f"holds {v.dtype}, expected real numbers")
            dev = device_of(p.data)
            # np.array copies on the host, so the optimizer never shares the caller's arrays
            new.append({k: dev.asarray(np.array(v, dtype=p.dtype)) for k, v in host.items()})
        self.state = new  # all checked first: a failed load changes nothing
        self.param_steps = [int(n) for n in state["param_steps"]]
        self._set_hyperparameters(**hyper)


class SGD(Optimizer):
    """SGD with optional momentum, Nesterov momentum and L2 weight decay."""

    buffers = ("momentum_buffer",)
    hyperparameters = ("lr", "momentum", "weight_decay", "nesterov")
    rules = {"lr": _lr, "momentum": _non_negative("momentum"),
             "weight_decay": _non_negative("weight_decay"), "nesterov": lambda v, owner: bool(v)}

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params)
        self._set_hyperparameters(lr=_number(lr, "lr", "SGD", lo_open=True), momentum=momentum,
                                  weight_decay=weight_decay, nesterov=nesterov)

    def _check_together(self, values, owner):
        if values.get("nesterov") and values.get("momentum") == 0:
            raise ValueError(f"{owner}: nesterov momentum needs momentum > 0")

    def step(self):
        for i, p, _ in self._updates():
            velocity = self._buffer(i, "momentum_buffer") if self.momentum else None
            _kernel("sgd_step", device_of(p.data))(p.data, velocity, p.grad, self.lr,
                                                  self.momentum, self.weight_decay, self.nesterov)


class Adam(Optimizer):
    """Adam (bias-corrected) with L2 weight decay added to the gradient."""

    decoupled = False
    buffers = ("exp_avg", "exp_avg_sq")
    hyperparameters = ("lr", "betas", "eps", "weight_decay")
    rules = {"lr": _lr, "betas": _betas,
             "eps": lambda v, owner: _number(v, "eps", owner, lo_open=True),
             "weight_decay": _non_negative("weight_decay")}

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params)
        self._set_hyperparameters(lr=_number(lr, "lr", type(self).__name__, lo_open=True),
                                  betas=betas, eps=eps, weight_decay=weight_decay)

    def step(self):
        for i, p, step in self._updates():
            _kernel("adam_step", device_of(p.data))(
                p.data, self._buffer(i, "exp_avg"), self._buffer(i, "exp_avg_sq"), p.grad,
                self.lr, self.betas[0], self.betas[1], self.eps, self.weight_decay, step,
                self.decoupled)


class AdamW(Adam):
    """Adam with decoupled weight decay (p *= 1 - lr * weight_decay), PyTorch's default 1e-2."""

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)


# ---- gradient clipping (torch.nn.utils.clip_grad_norm_ / clip_grad_value_) ----------------
def _grads(parameters, owner):
    """The gradients of ``parameters`` (a Parameter or an iterable of them) that are not
    None, in order, frozen parameters left out: ``zero_grad`` keeps a frozen parameter's
    stale gradient, which PyTorch's zero_grad would have dropped (so neither counts it)."""
    if isinstance(parameters, Parameter):
        parameters = [parameters]
    elif isinstance(parameters, Module):
        raise TypeError(f"{owner}: expected parameters, got a {type(parameters).__name__} "
                        "module; pass model.parameters()")
    try:
        parameters = list(parameters)
    except TypeError:
        raise TypeError(f"{owner}: expected a Parameter or an iterable of Parameters, got "
                        f"{type(parameters).__name__}") from None
    for i, p in enumerate(parameters):
        if not isinstance(p, Parameter):
            raise TypeError(f"{owner}: parameter {i} is not a fastnet Parameter but "
                            f"{type(p).__name__}")
    return [g for p in parameters if p.requires_grad and (g := p.grad) is not None]


def _norm_type(norm_type, owner):
    if isinstance(norm_type, bool) or not isinstance(norm_type, numbers.Real):
        raise TypeError(f"{owner}: norm_type must be a number (or inf), got {norm_type!r}")
    p = float(norm_type)
    if not p > 0:
        raise ValueError(f"{owner}: norm_type must be > 0 (2, 1, inf or any p > 0), got "
                         f"{norm_type!r}")
    return p


def _total_norm(norms, p, dtype):
    """The p-norm of the per-array norms (PyTorch: vector_norm of their stack), in dtype."""
    n = np.asarray(norms, dtype=dtype)
    if p == math.inf:
        return n.max()
    if p == 1:
        return n.sum(dtype=dtype)
    if p == 2:
        return np.sqrt((n * n).sum(dtype=dtype))
    t = dtype.type
    return (np.abs(n) ** t(p)).sum(dtype=dtype) ** (t(1) / t(p))


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False,
                    foreach=None):
    """Scale the gradients of ``parameters`` (a Parameter or an iterable) in place so that
    their total ``norm_type``-norm is at most ``max_norm``, as
    ``torch.nn.utils.clip_grad_norm_``: the total is the norm of the per-gradient norms,
    each gradient is multiplied by min(1, max_norm / (total + 1e-6)) (in the gradients'
    dtype; nothing is written when that is exactly 1). Gradients that are None (no
    backward since ``zero_grad``) and those of frozen parameters (``requires_grad=False``:
    a stale one that ``zero_grad`` kept) are skipped.

    Returns the total norm (before clipping) as a Python float, on every device (on CUDA:
    one copy of the per-gradient norms to the host, which the clip coefficient needs
    anyway); 0.0 when no parameter has a gradient. ``norm_type``: 2, 1, inf or any p > 0
    (PyTorch also takes 0 and -inf; fastnet refuses them). ``error_if_nonfinite``: raise
    RuntimeError when the total is NaN or inf (otherwise the gradients become NaN, as in
    PyTorch). ``foreach`` is accepted for PyTorch's signature and ignored (every gradient
    is one kernel call either way). A negative or NaN max_norm is refused (ValueError;
    PyTorch would flip the gradients' sign). The norms are computed in a fixed order: the same
    bits for any thread count or launch."""
    owner = "clip_grad_norm_"
    p = _norm_type(norm_type, owner)
    if isinstance(max_norm, bool) or not isinstance(max_norm, numbers.Real):
        raise TypeError(f"{owner}: max_norm must be a number, got {max_norm!r}")
    if foreach is not None and not isinstance(foreach, bool):
        raise TypeError(f"{owner}: foreach must be None, True or False, got {foreach!r}")
    max_norm = float(max_norm)
    if not max_norm >= 0:  # (PyTorch takes a negative max_norm and flips the gradients)
        raise ValueError(f"{owner}: max_norm must be >= 0, got {max_norm!r}")
    grads = _grads(parameters, owner)
    if not grads:
        return 0.0
    # per (device, dtype): each gradient's norm into its slot of one array, one host copy
    groups = {}
    for g in grads:
        groups.setdefault((device_of(g), g.dtype), []).append(g)
    norms = []
    for (dev, dtype), group in groups.items():
        out = dev.empty((len(group),), dtype)
        norm = _kernel("vector_norm", dev)
        for j, g in enumerate(group):
            norm(out[j:j + 1], g, p)
        norms.append(to_numpy(out))
    dtype = np.result_type(*(d for _, d in groups))
    with np.errstate(all="ignore"):  # inf and NaN go on as in PyTorch
        total = _total_norm(np.concatenate(norms), p, dtype)
    if error_if_nonfinite and not np.isfinite(total):
        raise RuntimeError(
            f"The total norm of order {p} for gradients from `parameters` is non-finite, so "
            "it cannot be clipped. To disable this error and scale the gradients by the "
            "non-finite norm anyway, set `error_if_nonfinite=False`")
    t = dtype.type
    # NOTE: PyTorch's steps in the norm's dtype: max_norm / (total + 1e-6) is
    # reciprocal(total + 1e-6) * max_norm, then clamp(max=1) (a NaN stays NaN)
    with np.errstate(all="ignore"):
        coef = (t(1) / (total + t(1e-6))) * t(max_norm)
    if coef > 1:
        coef = t(1)
    if coef != 1:  # (x * 1 is x: nothing to write)
        for g in grads:
            _kernel("scale", device_of(g))(g, float(coef))
    return float(total)


def clip_grad_value_(parameters, clip_value, foreach=None):
    """Clamp the gradients of ``parameters`` (a Parameter or an iterable) in place to
    [-clip_value, clip_value], as ``torch.nn.utils.clip_grad_value_`` (NaN stays NaN;
    gradients that are None or frozen are skipped). Returns None. A negative or NaN clip_value is
    refused (ValueError); PyTorch would set every gradient to -clip_value."""
    owner = "clip_grad_value_"
    if isinstance(clip_value, bool) or not isinstance(clip_value, numbers.Real):
        raise TypeError(f"{owner}: clip_value must be a number, got {clip_value!r}")
    if foreach is not None and not isinstance(foreach, bool):
        raise TypeError(f"{owner}: foreach must be None, True or False, got {foreach!r}")
    v = float(clip_value)
    if not v >= 0:  # (PyTorch's clamp(min=v, max=-v) would set every gradient to -v)
        raise ValueError(f"{owner}: clip_value must be >= 0, got {clip_value!r}")
    for g in _grads(parameters, owner):
        if v != math.inf:
            _kernel("clamp", device_of(g))(g, -v, v)
