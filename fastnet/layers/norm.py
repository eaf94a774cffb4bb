import numpy as np

from ..device import CPU
from ..kernels import _kernel
from ._args import is_int, positive_int, real
from .module import (Buffer, Module, Parameter, _float_dtype, check_grad, check_input,
                     grad_slot)
from .plan import Step


class _BatchNorm(Module):
    """Shared by BatchNorm1D and BatchNorm2D: the input viewed as (N, C, L)."""

    shapes = ()  # accepted input shapes, None for a free axis (C filled in)

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, dtype="float32"):
        name = type(self).__name__
        self.num_features = positive_int(num_features, "num_features", name)
        self.eps = real(eps, "eps", name)
        if self.eps <= 0:
            raise ValueError(f"{name}: eps must be > 0, got {eps!r}")
        self.momentum = None if momentum is None else real(momentum, "momentum", name, 0.0, 1.0)
        if not isinstance(affine, bool) or not isinstance(track_running_stats, bool):
            raise TypeError(f"{name}: affine and track_running_stats must be bools, got "
                            f"{affine!r} and {track_running_stats!r}")
        self.affine, self.track_running_stats = affine, track_running_stats
        dtype = _float_dtype(dtype, name)
        c = self.num_features
        # PyTorch's initialisation and state_dict order: weight, bias, running_mean,
        # running_var, num_batches_tracked (None where affine / tracking is off)
        self.weight = Parameter(np.ones(c, dtype)) if affine else None
        self.bias = Parameter(np.zeros(c, dtype)) if affine else None
        if track_running_stats:
            self.running_mean = Buffer(np.zeros(c, dtype))
            self.running_var = Buffer(np.ones(c, dtype))
            self.num_batches_tracked = Buffer(np.array(0, np.int64))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def config(self):
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum,
                "affine": self.affine, "track_running_stats": self.track_running_stats}

    def _dtype(self):
        if self.weight is not None:
            return self.weight.dtype
        return None if self.running_mean is None else self.running_mean.dtype

    def forward(self, x):
        c = self.num_features
        ndim = getattr(x, "ndim", None)
        shape = next((s for s in self.shapes if len(s) == ndim), None)
        if shape is None and ndim is not None:
            want = " or ".join("(" + ", ".join(["N", str(c)] + ["*"] * (len(s) - 2)) + ")"
                               for s in self.shapes)
            raise ValueError(f"{self!r}: expected input of shape {want}, got {tuple(x.shape)}")
        shape = shape or self.shapes[-1]
        x = check_input(self, x, tuple(c if i == 1 else None for i in range(len(shape))),
                        self._dtype())
        n = x.shape[0]
        length = x.size // (n * c)
        batch_stats = self.training or not self.track_running_stats
        if batch_stats and n * length == 1:
            when = "training" if self.training else "using batch statistics"
            raise ValueError(f"{self!r}: expected more than 1 value per channel when {when}, "
                             f"got input of shape {tuple(x.shape)}")
        x3 = x.reshape(n, c, length)
        out = self.device.empty(x.shape, x.dtype)
        mean = self.device.empty((c,), x.dtype)
        invstd = self.device.empty((c,), x.dtype)
        update = self.training and self.track_running_stats
        w = None if self.weight is None else self.weight.data
        b = None if self.bias is None else self.bias.data
        _kernel("batch_norm_forward", self.device)(
            out.reshape(n, c, length), mean, invstd,
            self.running_mean.data if self.track_running_stats else None,
            self.running_var.data if self.track_running_stats else None,
            self.num_batches_tracked.data if update else None,
            x3, w, b, batch_stats, self.momentum, self.eps)
        if self.training:
            self._saved = (x3, mean, invstd, x.shape)
        return out

    def backward(self, grad_out, input_grad=True):
        x3, mean, invstd, shape = self._saved_for_backward()
        grad_out = check_grad(self, grad_out, shape, x3.dtype)
        dx = self.device.empty(shape, x3.dtype) if input_grad else None
        dw = grad_slot(self.weight, self.device)
        db = grad_slot(self.bias, self.device)
        if dx is None and dw is None and db is None:
            return None
        # (the kernel writes dweight and dbias together: a frozen one's goes to scratch)
        kw, kb = dw, db
        if (kw is None) != (kb is None):
            scratch = self.device.empty((self.num_features,), x3.dtype)
            kw, kb = (scratch, kb) if kw is None else (kw, scratch)
        _kernel("batch_norm_backward", self.device)(
            None if dx is None else dx.reshape(x3.shape), kw, kb, grad_out.reshape(x3.shape),
            x3, None if self.weight is None else self.weight.data, mean, invstd)
        if dw is not None:
            self.weight.grad_done(dw, self.device)
        if db is not None:
            self.bias.grad_done(db, self.device)
        return dx


class BatchNorm1D(_BatchNorm):
    """Batch normalisation over (N, C) or (N, C, L) input, per channel C, as
    torch.nn.BatchNorm1d: training normalises with the batch statistics and updates the
    running ones (``momentum=None``: a cumulative average); eval uses the running ones
    (the batch's with ``track_running_stats=False``). Buffers ``running_mean``,
    ``running_var`` and ``num_batches_tracked`` (int64) are in state_dict. In training
    mode forward keeps a reference to its input for backward: do not modify that array
    in place before backward."""

    shapes = ((None, None), (None, None, None))


class BatchNorm2D(_BatchNorm):
    """Batch normalisation over (N, C, H, W) input, per channel, as torch.nn.BatchNorm2d
    (see BatchNorm1D)."""

    shapes = ((None, None, None, None),)


class LayerNorm(Module):
    """Layer normalisation over the trailing ``normalized_shape`` axes of the input, as
    torch.nn.LayerNorm: each sample's last len(normalized_shape) axes normalised by their
    own mean and biased variance, out = (x - mean) / sqrt(var + eps) * weight + bias, the
    same in training and eval mode (no running statistics). ``normalized_shape`` is an int
    or a tuple of ints; ``weight`` (ones) and ``bias`` (zeros) have that shape
    (``elementwise_affine=False``: neither; ``bias=False``: no bias). The input is
    (*, *normalized_shape), any number of leading axes (none: one sample). In training
    mode forward keeps a reference to its input for backward: do not modify that array in
    place before backward."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True,
                 dtype="float32"):
        name = type(self).__name__
        shape = (normalized_shape,) if is_int(normalized_shape) else normalized_shape
        if not isinstance(shape, (tuple, list)) or not shape:
            raise TypeError(f"{name}: normalized_shape must be a positive int or a non-empty "
                            f"tuple of positive ints, got {normalized_shape!r}")
        self.normalized_shape = tuple(positive_int(s, "normalized_shape", name) for s in shape)
        self.eps = real(eps, "eps", name)
        if self.eps < 0:
            raise ValueError(f"{name}: eps must be >= 0, got {eps!r}")
        if not isinstance(elementwise_affine, bool) or not isinstance(bias, bool):
            raise TypeError(f"{name}: elementwise_affine and bias must be bools, got "
                            f"{elementwise_affine!r} and {bias!r}")
        self.elementwise_affine = elementwise_affine
        self.has_bias = bias  # (``bias`` is the Parameter, as in PyTorch)
        dtype = _float_dtype(dtype, name)
        self.weight = Parameter(np.ones(self.normalized_shape, dtype)) if elementwise_affine else None
        self.bias = (Parameter(np.zeros(self.normalized_shape, dtype))
                     if elementwise_affine and bias else None)

    def config(self):
        return {"normalized_shape": list(self.normalized_shape), "eps": self.eps,
                "elementwise_affine": self.elementwise_affine, "bias": self.has_bias}

    def _param_dtype(self):
        return None if self.weight is None else self.weight.dtype

    def _arrays(self):
        return (None if self.weight is None else self.weight.data,
                None if self.bias is None else self.bias.data)

    def forward(self, x):
        k = len(self.normalized_shape)
        ndim = getattr(x, "ndim", None)
        if ndim is not None and ndim < k:
            want = ", ".join(["*"] + [str(s) for s in self.normalized_shape])
            raise ValueError(f"{self!r}: expected input of shape ({want}), got "
                             f"{tuple(x.shape)}")
        lead = k + 1 if ndim is None else ndim
        x = check_input(self, x, (None,) * (lead - k) + self.normalized_shape,
                        self._param_dtype())
        d = int(np.prod(self.normalized_shape))
        m = x.size // d
        x2 = x.reshape(m, d)
        out = self.device.empty(x.shape, x.dtype)
        mean = self.device.empty((m,), x.dtype)
        rstd = self.device.empty((m,), x.dtype)
        w, b = self._arrays()
        _kernel("layer_norm_forward", self.device)(
            out.reshape(m, d), mean, rstd, x2, None if w is None else w.reshape(d),
            None if b is None else b.reshape(d), self.eps)
        if self.training:
            self._saved = (x2, mean, rstd, x.shape)
        return out

    def _plan_step(self, shape, dtype, following):
        d = int(np.prod(self.normalized_shape))
        m = int(np.prod(shape)) // d
        w, b = self._arrays()
        w = None if w is None else w.reshape(d)
        b = None if b is None else b.reshape(d)
        k, eps = _kernel("layer_norm_forward", CPU), self.eps

        def run(out, x, mean, rstd):
            k(out.reshape(m, d), mean, rstd, x.reshape(m, d), w, b, eps)
        return Step(run, shape, dtype, scratch=(((m,), dtype), ((m,), dtype))), 0

    def backward(self, grad_out, input_grad=True):
        x2, mean, rstd, shape = self._saved_for_backward()
        grad_out = check_grad(self, grad_out, shape, x2.dtype)
        dx = self.device.empty(shape, x2.dtype) if input_grad else None
        dw = grad_slot(self.weight, self.device)
        db = grad_slot(self.bias, self.device)
        if dx is None and dw is None and db is None:
            return None
        d = x2.shape[1]
        w = self.weight
        _kernel("layer_norm_backward", self.device)(
            None if dx is None else dx.reshape(x2.shape), None if dw is None else dw.reshape(d),
            None if db is None else db.reshape(d), grad_out.reshape(x2.shape), x2,
            None if w is None else w.data.reshape(d), mean, rstd)
        if dw is not None:
            self.weight.grad_done(dw, self.device)
        if db is not None:
            self.bias.grad_done(db, self.device)
        return dx
