"""The dispatch table: op name -> {device: kernel}.

Literal and greppable on purpose, one row per op. ``kernel(op, device)``, the public
entry point, returns the kernel behind the argument checks of ``checks.py`` (shapes,
dtypes, layout, index ranges, scalars; a clear TypeError / ValueError before anything
runs). fastnet's layers, which validate their inputs themselves, look kernels up with
``_kernel(op, device)``: the same table, unchecked, one dict lookup. Neither branches on
the device for the caller. The CUDA column holds stand-ins that import the CUDA backend
(``fastnet.kernels.cuda``) on their first call. CPU kernels go through
``fastnet.runtime.prepare`` until the runtime is ready (it starts Numba's pool; see
fastnet/runtime.py).
"""
import importlib

from .. import runtime
from . import activations, checks, conv, dense, dropout, elementwise, embedding, losses, norm, optim, pool, recurrent


class CudaKernel:
    """The CUDA launcher ``fastnet.kernels.cuda.<family>.<name>``, imported on its first
    call: ``import fastnet`` must work without numba-cuda or a GPU."""

    __slots__ = ("family", "name", "_fn")

    def __init__(self, family, name):
        self.family, self.name, self._fn = family, name, None

    def resolve(self):
        if self._fn is None:
            from ..cuda import unavailable_reason

            reason = unavailable_reason()
            if reason is not None:
                raise RuntimeError(f"fastnet: cannot run the CUDA kernel {self.name}: {reason}")
            module = importlib.import_module(f"{__name__}.cuda.{self.family}")
            self._fn = getattr(module, self.name)
        return self._fn

    def __call__(self, *args):
        return self.resolve()(*args)

    def __repr__(self):
        return f"CudaKernel({self.family!r}, {self.name!r})"


KERNELS = {
    "dense_forward":                 {"cpu": dense.dense_forward,               "cuda": CudaKernel("dense", "dense_forward")},
    "dense_backward":                {"cpu": dense.dense_backward,              "cuda": CudaKernel("dense", "dense_backward")},
    "im2col":                        {"cpu": conv.im2col,                       "cuda": CudaKernel("conv", "im2col")},
    "col2im":                        {"cpu": conv.col2im,                       "cuda": CudaKernel("conv", "col2im")},
    "conv2d_forward":                {"cpu": conv.conv2d_forward,               "cuda": CudaKernel("conv", "conv2d_forward")},
    "conv2d_backward":               {"cpu": conv.conv2d_backward,              "cuda": CudaKernel("conv", "conv2d_backward")},
    "max_pool2d_forward":            {"cpu": pool.max_pool2d_forward,           "cuda": CudaKernel("pool", "max_pool2d_forward")},
    "max_pool2d_backward":           {"cpu": pool.max_pool2d_backward,          "cuda": CudaKernel("pool", "max_pool2d_backward")},
    "avg_pool2d_forward":            {"cpu": pool.avg_pool2d_forward,           "cuda": CudaKernel("pool", "avg_pool2d_forward")},
    "avg_pool2d_backward":           {"cpu": pool.avg_pool2d_backward,          "cuda": CudaKernel("pool", "avg_pool2d_backward")},
    "relu_forward":                  {"cpu": activations.relu_forward,          "cuda": CudaKernel("activations", "relu_forward")},
    "relu_backward":                 {"cpu": activations.relu_backward,         "cuda": CudaKernel("activations", "relu_backward")},
    "leaky_relu_forward":            {"cpu": activations.leaky_relu_forward,    "cuda": CudaKernel("activations", "leaky_relu_forward")},
    "leaky_relu_backward":           {"cpu": activations.leaky_relu_backward,   "cuda": CudaKernel("activations", "leaky_relu_backward")},
    "hardsigmoid_forward":           {"cpu": activations.hardsigmoid_forward,   "cuda": CudaKernel("activations", "hardsigmoid_forward")},
    "hardsigmoid_backward":          {"cpu": activations.hardsigmoid_backward,  "cuda": CudaKernel("activations", "hardsigmoid_backward")},
    "sigmoid_forward":               {"cpu": activations.sigmoid_forward,       "cuda": CudaKernel("activations", "sigmoid_forward")},
    "sigmoid_backward":              {"cpu": activations.sigmoid_backward,      "cuda": CudaKernel("activations", "sigmoid_backward")},
    "tanh_forward":                  {"cpu": activations.tanh_forward,          "cuda": CudaKernel("activations", "tanh_forward")},
    "tanh_backward":                 {"cpu": activations.tanh_backward,         "cuda": CudaKernel("activations", "tanh_backward")},
    "softmax_forward":               {"cpu": activations.softmax_forward,       "cuda": CudaKernel("activations", "softmax_forward")},
    "softmax_backward":              {"cpu": activations.softmax_backward,      "cuda": CudaKernel("activations", "softmax_backward")},
    "log_softmax_forward":           {"cpu": activations.log_softmax_forward,   "cuda": CudaKernel("activations", "log_softmax_forward")},
    "log_softmax_backward":          {"cpu": activations.log_softmax_backward,  "cuda": CudaKernel("activations", "log_softmax_backward")},
    "softmax_cross_entropy_forward": {"cpu": losses.softmax_cross_entropy_forward, "cuda": CudaKernel("losses", "softmax_cross_entropy_forward")},
    "mse_forward":                   {"cpu": losses.mse_forward,                "cuda": CudaKernel("losses", "mse_forward")},
    "cross_entropy_forward":         {"cpu": losses.cross_entropy_forward,       "cuda": CudaKernel("losses", "cross_entropy_forward")},
    "cross_entropy_backward":        {"cpu": losses.cross_entropy_backward,      "cuda": CudaKernel("losses", "cross_entropy_backward")},
    "bce_with_logits_forward":       {"cpu": losses.bce_with_logits_forward,     "cuda": CudaKernel("losses", "bce_with_logits_forward")},
    "bce_with_logits_backward":      {"cpu": losses.bce_with_logits_backward,    "cuda": CudaKernel("losses", "bce_with_logits_backward")},
    "pointwise_loss_forward":        {"cpu": losses.pointwise_loss_forward,      "cuda": CudaKernel("losses", "pointwise_loss_forward")},
    "pointwise_loss_backward":       {"cpu": losses.pointwise_loss_backward,     "cuda": CudaKernel("losses", "pointwise_loss_backward")},
    "dropout_forward":               {"cpu": dropout.dropout_forward,           "cuda": CudaKernel("dropout", "dropout_forward")},
    "dropout_backward":              {"cpu": dropout.dropout_backward,          "cuda": CudaKernel("dropout", "dropout_backward")},
    "sgd_step":                      {"cpu": optim.sgd_step,                    "cuda": CudaKernel("optim", "sgd_step")},
    "adam_step":                     {"cpu": optim.adam_step,                   "cuda": CudaKernel("optim", "adam_step")},
    "vector_norm":                   {"cpu": optim.vector_norm,                 "cuda": CudaKernel("optim", "vector_norm")},
    "scale":                         {"cpu": optim.scale,                       "cuda": CudaKernel("optim", "scale")},
    "clamp":                         {"cpu": optim.clamp,                       "cuda": CudaKernel("optim", "clamp")},
    "accumulate":                    {"cpu": elementwise.accumulate,            "cuda": CudaKernel("elementwise", "accumulate")},
    "add":                           {"cpu": elementwise.add,                   "cuda": CudaKernel("elementwise", "add")},
    "batch_norm_forward":            {"cpu": norm.batch_norm_forward,           "cuda": CudaKernel("norm", "batch_norm_forward")},
    "batch_norm_backward":           {"cpu": norm.batch_norm_backward,          "cuda": CudaKernel("norm", "batch_norm_backward")},
    "layer_norm_forward":            {"cpu": norm.layer_norm_forward,           "cuda": CudaKernel("norm", "layer_norm_forward")},
    "layer_norm_backward":           {"cpu": norm.layer_norm_backward,          "cuda": CudaKernel("norm", "layer_norm_backward")},
    "lp_pool2d_forward":             {"cpu": pool.lp_pool2d_forward,            "cuda": CudaKernel("pool", "lp_pool2d_forward")},
    "lp_pool2d_backward":            {"cpu": pool.lp_pool2d_backward,           "cuda": CudaKernel("pool", "lp_pool2d_backward")},
    "global_avg_pool2d_forward":     {"cpu": pool.global_avg_pool2d_forward,    "cuda": CudaKernel("pool", "global_avg_pool2d_forward")},
    "global_avg_pool2d_backward":    {"cpu": pool.global_avg_pool2d_backward,   "cuda": CudaKernel("pool", "global_avg_pool2d_backward")},
    "rnn_forward":                   {"cpu": recurrent.rnn_forward,             "cuda": CudaKernel("recurrent", "rnn_forward")},
    "rnn_backward":                  {"cpu": recurrent.rnn_backward,            "cuda": CudaKernel("recurrent", "rnn_backward")},
    "lstm_forward":                  {"cpu": recurrent.lstm_forward,            "cuda": CudaKernel("recurrent", "lstm_forward")},
    "lstm_backward":                 {"cpu": recurrent.lstm_backward,           "cuda": CudaKernel("recurrent", "lstm_backward")},
    "gru_forward":                   {"cpu": recurrent.gru_forward,             "cuda": CudaKernel("recurrent", "gru_forward")},
    "gru_backward":                  {"cpu": recurrent.gru_backward,            "cuda": CudaKernel("recurrent", "gru_backward")},
    "embedding_forward":             {"cpu": embedding.embedding_forward,       "cuda": CudaKernel("embedding", "embedding_forward")},
    "embedding_backward":            {"cpu": embedding.embedding_backward,      "cuda": CudaKernel("embedding", "embedding_backward")},
    "sequence_copy":                 {"cpu": recurrent.sequence_copy,           "cuda": CudaKernel("recurrent", "sequence_copy")},
}


# The prepared forms of a few CPU forward ops, for the layers' inference plans
# (fastnet/layers/plan.py): op -> f(the static arguments: shapes, dtype, geometry) ->
# run(the arrays), bitwise the op's result, with the path and geometry chosen once.
PLANS = {
    "conv2d_forward":     conv.conv2d_forward_plan,
    "max_pool2d_forward": pool.max_pool2d_forward_plan,
}


def _plan(op, *static):
    """``PLANS[op](*static)``, ready to call as ``_kernel`` hands out kernels (unchecked;
    under the lock when kernel calls are serialised)."""
    run = PLANS[op](*static)
    return run if runtime.READY else runtime.prepare(run)


def _kernel(op, device="cpu"):
    """The raw kernel for ``op`` on ``device``, ready to call, WITHOUT argument checks:
    for fastnet's layers, which validate their inputs (a wrong argument here can write
    outside the arrays or crash the process). Everyone else calls ``kernel()``."""
    try:
        fn = KERNELS[op][str(device)]
    except KeyError:
        raise RuntimeError(f"fastnet has no {device} kernel for {op!r}") from None
    if runtime.READY or type(fn) is CudaKernel:
        return fn
    return runtime.prepare(fn)


class CheckedKernel:
    """``kernel(op, device)``: validates every argument (``checks.SPECS[op]``), then
    calls the raw kernel with them and returns its result. Keyword arguments by the
    kernel's parameter names are accepted too."""

    __slots__ = ("op", "device")

    def __init__(self, op, device):
        self.op, self.device = op, device

    def __call__(self, *args, **kwargs):
        fn = _kernel(self.op, self.device)
        if type(fn) is CudaKernel:
            fn = fn.resolve()  # "CUDA cannot run here" comes before any argument error
        return fn(*checks.check(self.op, self.device, args, kwargs))

    def __repr__(self):
        return f"kernel({self.op!r}, {self.device!r})"


_CHECKED = {}


def kernel(op, device="cpu"):
    """The kernel for ``op`` on ``device`` (a str or a fastnet.Device), ready to call, behind
    its argument checks: shapes, dtypes, contiguity, index ranges and scalars are validated
    before it runs (TypeError / ValueError naming the op and the argument)."""
    key = (op, str(device))
    k = _CHECKED.get(key)
    if k is None:
        _kernel(op, device)  # names an unknown op or device
        k = _CHECKED[key] = CheckedKernel(*key)
    return k
