import numpy as np

from ..device import CPU
from ..kernels import _kernel
from ._args import real
from .module import Module, check_grad, check_input
from .plan import Step


def _check_any(layer, x):
    """Any shape with a leading batch axis, any float dtype."""
    if layer.device.ready_any(x):
        return x  # the hot path: what check_input would return unchanged
    if getattr(x, "ndim", 0) < 1:
        return check_input(layer, x, (None,))  # raises the right TypeError / ValueError
    return check_input(layer, x, (None,) * x.ndim)


class _Elementwise(Module):
    """An activation whose derivative is a function of its output."""

    op = ""
    rows = False  # whether the kernels see (rows, last axis) rather than any shape

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        cls._ops = (cls.op + "_forward", cls.op + "_backward")

    @staticmethod
    def _view(a):
        """``a`` as the (rows, C) array the row kernels take."""
        c = a.shape[a.ndim - 1]  # (not shape[-1]: the CUDA simulator's shapes refuse it)
        return a.reshape(a.size // c, c)

    def forward(self, x):
        x = _check_any(self, x)
        out = self.device.empty(x.shape, x.dtype)
        k = _kernel(self._ops[0], self.device)
        if self.rows and x.ndim != 2:
            k(self._view(out), self._view(x))
        else:
            k(out, x)
        if self.training:
            self._saved = out
        return out

    def _plan_step(self, shape, dtype, following):
        if self.rows and len(shape) != 2:
            return None  # (the row kernels take a (rows, C) view: left to forward)
        return Step(_kernel(self._ops[0], CPU), shape, dtype), 0

    def backward(self, grad_out, input_grad=True):
        out = self._saved_for_backward()
        grad_out = check_grad(self, grad_out, out.shape, out.dtype)
        if not input_grad:
            return None
        dx = self.device.empty(out.shape, out.dtype)
        k = _kernel(self._ops[1], self.device)
        if self.rows and out.ndim != 2:
            k(self._view(dx), self._view(grad_out), self._view(out))
        else:
            k(dx, grad_out, out)
        return dx


class ReLU(_Elementwise):
    """max(x, 0)"""
    op = "relu"


class Sigmoid(_Elementwise):
    """1 / (1 + exp(-x)), finite for any finite x"""
    op = "sigmoid"


class Tanh(_Elementwise):
    op = "tanh"


class _LastAxis(_Elementwise):
    """softmax-like ops over the last axis of an input of any rank (PyTorch's dim=-1)."""

    def __init__(self, dim=-1):
        if dim != -1:
            raise ValueError(
                f"{type(self).__name__}: only dim=-1 (the last axis) is supported, got "
                f"dim={dim!r}; move the axis last first"
            )
        self.dim = -1

    rows = True

    def config(self):
        return {"dim": self.dim}


class Softmax(_LastAxis):
    """exp(x) / sum(exp(x)) over the last axis, stable for logits of +-1e4."""
    op = "softmax"


class LogSoftmax(_LastAxis):
    """x - logsumexp(x) over the last axis, stable for logits of +-1e4."""
    op = "log_softmax"


class LeakyReLU(Module):
    """x if x > 0 else negative_slope * x"""

    def __init__(self, negative_slope=0.01):
        self.negative_slope = real(negative_slope, "negative_slope", "LeakyReLU")

    def config(self):
        return {"negative_slope": self.negative_slope}

    def forward(self, x):
        x = _check_any(self, x)
        out = self.device.empty(x.shape, x.dtype)
        _kernel("leaky_relu_forward", self.device)(out, x, self.negative_slope)
        if self.training:
            self._saved = (x, out)
        return out

    def backward(self, grad_out, input_grad=True):
        x, out = self._saved_for_backward()
        grad_out = check_grad(self, grad_out, out.shape, out.dtype)
        if not input_grad:
            return None
        dx = self.device.empty(x.shape, x.dtype)
        _kernel("leaky_relu_backward", self.device)(dx, grad_out, x, self.negative_slope)
        return dx


class Hardsigmoid(Module):
    """min(max(x + 3, 0), 6) / 6 (PyTorch's Hardsigmoid); gradient 1/6 inside (-3, 3),
    0 outside and at x = +-3, as PyTorch's."""

    def forward(self, x):
        x = _check_any(self, x)
        out = self.device.empty(x.shape, x.dtype)
        _kernel("hardsigmoid_forward", self.device)(out, x)
        if self.training:
            self._saved = x
        return out

    def _plan_step(self, shape, dtype, following):
        return Step(_kernel("hardsigmoid_forward", CPU), shape, dtype), 0

    def backward(self, grad_out, input_grad=True):
        x = self._saved_for_backward()
        grad_out = check_grad(self, grad_out, x.shape, x.dtype)
        if not input_grad:
            return None
        dx = self.device.empty(x.shape, x.dtype)
        _kernel("hardsigmoid_backward", self.device)(dx, grad_out, x)
        return dx
