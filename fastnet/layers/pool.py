import numpy as np

from ..device import CPU
from ..kernels import _kernel, _plan
from ._args import check_spatial, pair, real
from .module import Module, check_grad, check_input
from .plan import Step


class _Pool2D(Module):
    def __init__(self, kernel_size, stride=None, padding=0):
        name = type(self).__name__
        self.kernel_size = pair(kernel_size, "kernel_size", name, 1)
        self.stride = self.kernel_size if stride is None else pair(stride, "stride", name, 1)
        self.padding = pair(padding, "padding", name, 0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(
                f"{name}: padding must be at most half the kernel size (as in PyTorch), got "
                f"padding {self.padding} for kernel_size {self.kernel_size}"
            )

    def config(self):
        return {"kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding}

    def _plan_shape(self, shape):
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return (shape[0], shape[1], (shape[2] + 2 * ph - kh) // sh + 1,
                (shape[3] + 2 * pw - kw) // sw + 1)

    def _output(self, x):
        x = check_input(self, x, (None, None, None, None))
        oh, ow = check_spatial(self, x, self.kernel_size, self.stride, self.padding)
        return x, self.device.empty(x.shape[:2] + (oh, ow), x.dtype)


class MaxPool2D(_Pool2D):
    """Max pooling over NCHW; stride defaults to the kernel size; padding acts as -inf;
    the gradient goes to the first maximum of each window (PyTorch's tie rule)."""

    def forward(self, x):
        x, out = self._output(x)
        argmax = self.device.empty(out.shape, np.int32)
        _kernel("max_pool2d_forward", self.device)(out, argmax, x, self.kernel_size,
                                                   self.stride, self.padding)
        if self.training:
            self._saved = (x.shape, x.dtype, argmax)
        return out

    def _plan_step(self, shape, dtype, following):
        pool = _plan("max_pool2d_forward", shape, dtype, self.kernel_size, self.stride,
                     self.padding)
        out_shape = self._plan_shape(shape)

        def run(out, x, argmax):  # argmax: per-thread scratch (only backward reads it)
            pool(out, argmax, x)
        return Step(run, out_shape, dtype, scratch=[(out_shape, np.int32)]), 0

    def backward(self, grad_out, input_grad=True):
        x_shape, dtype, argmax = self._saved_for_backward()
        grad_out = check_grad(self, grad_out, argmax.shape, dtype)
        if not input_grad:
            return None
        dx = self.device.empty(x_shape, dtype)
        _kernel("max_pool2d_backward", self.device)(dx, grad_out, argmax, self.kernel_size,
                                                    self.stride, self.padding)
        return dx


class AvgPool2D(_Pool2D):
    """Average pooling over NCHW; divides by the full window, padding included
    (PyTorch's count_include_pad=True)."""

    def forward(self, x):
        x, out = self._output(x)
        _kernel("avg_pool2d_forward", self.device)(out, x, self.kernel_size, self.stride,
                                                   self.padding)
        if self.training:
            self._saved = (x.shape, x.dtype, out.shape)
        return out

    def _plan_step(self, shape, dtype, following):
        k, geometry = _kernel("avg_pool2d_forward", CPU), (self.kernel_size, self.stride, self.padding)

        def run(out, x):
            k(out, x, *geometry)
        return Step(run, self._plan_shape(shape), dtype), 0

    def backward(self, grad_out, input_grad=True):
        x_shape, dtype, out_shape = self._saved_for_backward()
        grad_out = check_grad(self, grad_out, out_shape, dtype)
        if not input_grad:
            return None
        dx = self.device.empty(x_shape, dtype)
        _kernel("avg_pool2d_backward", self.device)(dx, grad_out, self.kernel_size,
                                                    self.stride, self.padding)
        return dx


class GlobalAvgPool2D(Module):
    """The mean over H and W of each channel: (N, C, H, W) -> (N, C), ready for a Dense
    head (torch.nn.AdaptiveAvgPool2d(1) followed by flatten(1))."""

    def forward(self, x):
        x = check_input(self, x, (None, None, None, None))
        out = self.device.empty(x.shape[:2], x.dtype)
        _kernel("global_avg_pool2d_forward", self.device)(out, x)
        if self.training:
            self._saved = (x.shape, x.dtype)
        return out

    def _plan_step(self, shape, dtype, following):
        return Step(_kernel("global_avg_pool2d_forward", CPU), shape[:2], dtype), 0

    def backward(self, grad_out, input_grad=True):
        x_shape, dtype = self._saved_for_backward()
        grad_out = check_grad(self, grad_out, x_shape[:2], dtype)
        if not input_grad:
            return None
        dx = self.device.empty(x_shape, dtype)
        _kernel("global_avg_pool2d_backward", self.device)(dx, grad_out)
        return dx


class LPPool2D(Module):
    """Power-average pooling over NCHW (PyTorch's LPPool2d): (sum over the window of
    x^p)^(1/p), p = norm_type; stride defaults to the kernel size; no padding, and only
    ceil_mode=False (PyTorch's default). As in PyTorch, a window whose sum is negative (odd p,
    negative inputs) gives NaN, and a window of zeros passes a zero gradient."""

    def __init__(self, norm_type, kernel_size, stride=None, ceil_mode=False):
        name = type(self).__name__
        p = real(norm_type, "norm_type", name)  # TypeError, or ValueError for NaN / inf
        if p <= 0:
            raise ValueError(f"{name}: norm_type must be a finite number > 0, got {norm_type!r}")
        self.norm_type = p
        self.kernel_size = pair(kernel_size, "kernel_size", name, 1)
        self.stride = self.kernel_size if stride is None else pair(stride, "stride", name, 1)
        if ceil_mode is not False:
            raise ValueError(f"{name}: only ceil_mode=False (PyTorch's default) is supported, "
                             f"got ceil_mode={ceil_mode!r}")
        self.ceil_mode = False

    def config(self):
        return {"norm_type": self.norm_type, "kernel_size": self.kernel_size,
                "stride": self.stride, "ceil_mode": self.ceil_mode}

    def forward(self, x):
        x = check_input(self, x, (None, None, None, None))
        oh, ow = check_spatial(self, x, self.kernel_size, self.stride, (0, 0))
        out = self.device.empty(x.shape[:2] + (oh, ow), x.dtype)
        _kernel("lp_pool2d_forward", self.device)(out, x, self.norm_type, self.kernel_size,
                                                  self.stride)
        if self.training:
            self._saved = (x, out.shape)
        return out

    def _plan_step(self, shape, dtype, following):
        k, args = _kernel("lp_pool2d_forward", CPU), (self.norm_type, self.kernel_size, self.stride)
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        out_shape = (shape[0], shape[1], (shape[2] - kh) // sh + 1, (shape[3] - kw) // sw + 1)

        def run(out, x):
            k(out, x, *args)
        return Step(run, out_shape, dtype), 0

    def backward(self, grad_out, input_grad=True):
        x, out_shape = self._saved_for_backward()
        grad_out = check_grad(self, grad_out, out_shape, x.dtype)
        if not input_grad:
            return None
        dx = self.device.empty(x.shape, x.dtype)
        _kernel("lp_pool2d_backward", self.device)(dx, grad_out, x, self.norm_type,
                                                   self.kernel_size, self.stride)
        return dx
