import numpy as np

from ..kernels import _kernel
from ._args import positive_int, real
from .module import Buffer, Module, Parameter, _float_dtype, check_grad, check_input


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
        if dx is None and self.weight is None:
            return None
        dw = None if self.weight is None else self.weight.grad_slot(self.device)
        db = None if self.bias is None else self.bias.grad_slot(self.device)
        _kernel("batch_norm_backward", self.device)(
            None if dx is None else dx.reshape(x3.shape), dw, db, grad_out.reshape(x3.shape),
            x3, None if self.weight is None else self.weight.data, mean, invstd)
        if dw is not None:
            self.weight.grad_done(dw, self.device)
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
