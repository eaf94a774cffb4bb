import math

import numpy as np

from ..device import CPU
from ..kernels import _kernel
from . import plan as _plans
from .module import GENERATION, Module, check_grad, check_input


class Flatten(Module):
    """(N, d1, d2, ...) -> (N, d1*d2*...), a view; like torch.nn.Flatten(start_dim=1)."""

    def forward(self, x):
        if getattr(x, "ndim", 0) < 2:
            check_input(self, x, (None, None))
        x = check_input(self, x, (None,) * x.ndim)
        if self.training:
            self._saved = (x.shape, x.dtype)
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))

    def _plan_step(self, shape, dtype, following):
        flat = (shape[0], math.prod(shape[1:]))
        return _plans.Step(lambda x: x.reshape(flat), flat, dtype, view=True), 0

    def backward(self, grad_out, input_grad=True):
        shape, dtype = self._saved_for_backward()
        flat = (shape[0], math.prod(shape[1:]))
        grad_out = check_grad(self, grad_out, flat, dtype)
        return grad_out.reshape(shape) if input_grad else None


# input shapes with an inference plan per model (a server's few batch sizes, the last
# batch of an epoch); with 4 and every plan dropped when full, 5 sizes in turn rebuilt a
# plan on every call, slower than none
MAX_PLANS = 16


class Sequential(Module):
    """Layers applied in order; children are named "0", "1", ... as in PyTorch."""

    def __init__(self, *layers):
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: argument {i} is not a fastnet layer: {layer!r}")
            setattr(self, str(i), layer)

    @property
    def layers(self):
        return self.children()

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def __iter__(self):
        return iter(self.layers)

    def append(self, layer):
        if not isinstance(layer, Module):
            raise TypeError(f"Sequential.append: not a fastnet layer: {layer!r}")
        setattr(self, str(len(self)), layer)
        return self

    _plans = None  # input shape -> InferencePlan (or None: no plan form), per instance

    def forward(self, x):
        if not self.training and x.__class__ is np.ndarray:
            # eval mode: the inference plan for this input shape (see plan.py)
            plans = self._plans
            if plans is not None:
                plan = plans.get(x.shape, False)
                if (plan is not False and plan.generation == GENERATION[0]
                        and x.dtype == plan.dtype and x.flags.c_contiguous):
                    if plan.steps is not None:
                        return plan.run(x)
                    return self._forward_layers(x)
            return self._plan_and_forward(x)
        return self._forward_layers(x)

    def _forward_layers(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def _plan_and_forward(self, x):
        """The layer-by-layer forward (its checks raise the errors), then the plan for
        inputs like ``x`` when it is a C-contiguous array on the CPU that was accepted."""
        generation = GENERATION[0]
        out = self._forward_layers(x)
        if x.flags.c_contiguous and self.device == CPU:
            plans = self._plans
            if plans is None:
                plans = self._plans = {}
            elif len(plans) >= MAX_PLANS:  # the oldest shape goes
                plans.pop(next(iter(plans)))
            steps = _plans.build(self.layers, x.shape, x.dtype)
            plans[x.shape] = _plans.InferencePlan(x.shape, x.dtype, generation, steps)
        return out

    def __getstate__(self):  # (copies and pickles leave the plans behind)
        state = dict(vars(self))
        state.pop("_plans", None)
        return state

    def backward(self, grad_out, input_grad=True):
        layers = self.layers
        # Layers up to the first one with parameters need no input gradient unless the
        # caller asked for it: the first conv of a CNN skips its col2im, the largest one.
        first = next((i for i, m in enumerate(layers) if m.parameters()), len(layers))
        for i in range(len(layers) - 1, -1, -1):
            grad_out = layers[i].backward(grad_out, input_grad=input_grad or i > first)
            if grad_out is None:
                for m in layers[:i]:  # parameterless: only their forward state to drop
                    for sub in m.modules():
                        sub._clear_cache()
                return None
        return grad_out

    def __repr__(self):
        inner = "".join(f"\n  ({i}): " + repr(layer).replace("\n", "\n  ")
                        for i, layer in enumerate(self.layers))
        return f"Sequential({inner}\n)"


class Residual(Module):
    """out = block(x) + shortcut(x), or block(x) + x without a shortcut: a residual
    connection (a ResNet basic block is ``Residual(Sequential(conv, bn, relu, conv, bn),
    Sequential(conv1x1, bn))`` followed by a ReLU). Both branches must give the same
    shape. Backward sends the gradient through both branches and sums their input
    gradients. state_dict keys are ``block.*`` and ``shortcut.*``."""

    SUBMODULES = ("block", "shortcut")  # fastnet.save describes and rebuilds these

    def __init__(self, block, shortcut=None):
        if not isinstance(block, Module):
            raise TypeError(f"Residual: block must be a fastnet layer, got {block!r}")
        if shortcut is not None and not isinstance(shortcut, Module):
            raise TypeError(f"Residual: shortcut must be a fastnet layer or None, got {shortcut!r}")
        self.block = block
        self.shortcut = shortcut

    def forward(self, x):
        x = check_input(self, x, (None,) * max(getattr(x, "ndim", 0), 1))
        y = self.block(x)
        s = x if self.shortcut is None else self.shortcut(x)
        if tuple(y.shape) != tuple(s.shape) or y.dtype != s.dtype:
            what = "the input" if self.shortcut is None else "the shortcut's output"
            raise ValueError(f"{self!r}: the block's output {tuple(y.shape)} {y.dtype} does "
                             f"not match {what} {tuple(s.shape)} {s.dtype}; give the block "
                             "a shortcut (e.g. a 1x1 Conv2D with the block's stride)")
        out = self.device.empty(y.shape, y.dtype)
        _kernel("add", self.device)(out, y, s)
        if self.training:
            self._saved = (out.shape, out.dtype)
        return out

    def backward(self, grad_out, input_grad=True):
        shape, dtype = self._saved_for_backward()
        grad_out = check_grad(self, grad_out, shape, dtype)
        g = self.block.backward(grad_out, input_grad=input_grad)
        s = grad_out if self.shortcut is None else self.shortcut.backward(grad_out, input_grad)
        if not input_grad:
            return None
        dx = self.device.empty(g.shape, g.dtype)
        _kernel("add", self.device)(dx, g, s)
        return dx

    def __repr__(self):
        inner = "\n  (block): " + repr(self.block).replace("\n", "\n  ")
        if self.shortcut is not None:
            inner += "\n  (shortcut): " + repr(self.shortcut).replace("\n", "\n  ")
        return f"Residual({inner}\n)"
