"""The dispatch table: op name -> {device: kernel}.

Literal and greppable on purpose, one row per op. Layers look kernels up here with
``kernel(op, device)`` and never branch on the device themselves. The CUDA column is
filled in by the CUDA backend (``fastnet.kernels.cuda``), imported lazily.
"""
from .. import _threads
from . import activations, conv, dense, dropout, losses, optim, pool

KERNELS = {
    "dense_forward":                 {"cpu": dense.dense_forward},
    "dense_backward":                {"cpu": dense.dense_backward},
    "im2col":                        {"cpu": conv.im2col},
    "col2im":                        {"cpu": conv.col2im},
    "conv2d_forward":                {"cpu": conv.conv2d_forward},
    "conv2d_backward":               {"cpu": conv.conv2d_backward},
    "max_pool2d_forward":            {"cpu": pool.max_pool2d_forward},
    "max_pool2d_backward":           {"cpu": pool.max_pool2d_backward},
    "avg_pool2d_forward":            {"cpu": pool.avg_pool2d_forward},
    "avg_pool2d_backward":           {"cpu": pool.avg_pool2d_backward},
    "relu_forward":                  {"cpu": activations.relu_forward},
    "relu_backward":                 {"cpu": activations.relu_backward},
    "leaky_relu_forward":            {"cpu": activations.leaky_relu_forward},
    "leaky_relu_backward":           {"cpu": activations.leaky_relu_backward},
    "sigmoid_forward":               {"cpu": activations.sigmoid_forward},
    "sigmoid_backward":              {"cpu": activations.sigmoid_backward},
    "tanh_forward":                  {"cpu": activations.tanh_forward},
    "tanh_backward":                 {"cpu": activations.tanh_backward},
    "softmax_forward":               {"cpu": activations.softmax_forward},
    "softmax_backward":              {"cpu": activations.softmax_backward},
    "log_softmax_forward":           {"cpu": activations.log_softmax_forward},
    "log_softmax_backward":          {"cpu": activations.log_softmax_backward},
    "softmax_cross_entropy_forward": {"cpu": losses.softmax_cross_entropy_forward},
    "mse_forward":                   {"cpu": losses.mse_forward},
    "dropout_forward":               {"cpu": dropout.dropout_forward},
    "dropout_backward":              {"cpu": dropout.dropout_backward},
    "sgd_step":                      {"cpu": optim.sgd_step},
    "adam_step":                     {"cpu": optim.adam_step},
    "accumulate":                    {"cpu": optim.accumulate},
}

_locked = {}


def kernel(op, device="cpu"):
    """The kernel for ``op`` on ``device`` (a str or a fastnet.Device)."""
    try:
        fn = KERNELS[op][str(device)]
    except KeyError:
        raise RuntimeError(f"fastnet has no {device} kernel for {op!r}") from None
    _threads.start()
    if not _threads._SERIALISE:
        return fn
    # workqueue threading layer: one kernel at a time (see fastnet._threads)
    wrapped = _locked.get(fn)
    if wrapped is None:
        def wrapped(*args, _fn=fn):
            with _threads.kernel_lock():
                return _fn(*args)
        _locked[fn] = wrapped
    return wrapped
