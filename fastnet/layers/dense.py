from ..device import CPU
from ..kernels import _kernel
from .activation import ReLU
from .module import Module, Parameter, _float_dtype, check_grad, check_input, grad_slot
from .plan import Step
from ._init import kaiming_uniform
from ._args import check_activation, positive_int


class _FusedAffine(Module):
    """Shared by Dense and Conv2D: act(op(x, weight) + bias) through the kernels
    ``{op}_forward(out, x, w, b, *geometry, activation, *options)`` and
    ``{op}_backward(dx, dw, db, dout, x, w, out, *geometry, activation, *options)``."""

    op = None

    def _geometry(self):
        return ()

    def _options(self):
        """The kernels' scalars after the activation (a Conv2D's dilation and groups)."""
        return ()

    def _run_forward(self, x, out):
        b = None if self.bias is None else self.bias.data
        _kernel(self.op + "_forward", self.device)(out, x, self.weight.data, b,
                                                   *self._geometry(), self.activation,
                                                   *self._options())
        if self.training:  # the output only matters to backward through an activation
            self._saved = (x, out if self.activation else None, out.shape)
        return out

    def _plan_step(self, shape, dtype, following):
        w = self.weight.data
        b = None if self.bias is None else self.bias.data
        activation, fused = self.activation, 0
        if activation is None and type(following) is ReLU:
            activation, fused = "relu", 1  # act(v + b) in the epilogue: bitwise the same
        return (Step(self._plan_run(shape, w, b, activation), self._plan_shape(shape), w.dtype),
                fused)

    def backward(self, grad_out, input_grad=True):
        x, out, out_shape = self._saved_for_backward()
        grad_out = check_grad(self, grad_out, out_shape, x.dtype)
        dx = self.device.empty(x.shape, x.dtype) if input_grad else None
        dw = grad_slot(self.weight, self.device)
        db = grad_slot(self.bias, self.device)
        if dx is None and dw is None and db is None:
            return None  # all frozen, and no input gradient wanted: nothing to compute
        _kernel(self.op + "_backward", self.device)(dx, dw, db, grad_out, x, self.weight.data,
                                                    out, *self._geometry(), self.activation,
                                                    *self._options())
        if dw is not None:
            self.weight.grad_done(dw, self.device)
        if db is not None:
            self.bias.grad_done(db, self.device)
        return dx


class Dense(_FusedAffine):
    """y = act(x @ weight.T + bias); weight (out_features, in_features) as torch.nn.Linear.

    ``activation`` (None, "relu", "sigmoid", "tanh") is fused into the GEMM's epilogue.
    """

    op = "dense"

    def __init__(self, in_features, out_features, bias=True, activation=None, dtype="float32"):
        self.in_features = positive_int(in_features, "in_features", "Dense")
        self.out_features = positive_int(out_features, "out_features", "Dense")
        self.activation = check_activation(activation, "Dense")
        dtype = _float_dtype(dtype, "Dense")
        self.weight = Parameter(kaiming_uniform((out_features, in_features), in_features, dtype))
        self.bias = (Parameter(kaiming_uniform((out_features,), in_features, dtype))
                     if bias else None)

    def config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "activation": self.activation}

    def forward(self, x):
        w = self.weight.data
        x = check_input(self, x, (None, self.in_features), w.dtype)
        out = self.device.empty((x.shape[0], self.out_features), w.dtype)
        return self._run_forward(x, out)

    def _plan_shape(self, shape):
        return (shape[0], self.out_features)

    def _plan_run(self, shape, w, b, activation):
        k = _kernel("dense_forward", CPU)

        def run(out, x):
            k(out, x, w, b, activation)
        return run
