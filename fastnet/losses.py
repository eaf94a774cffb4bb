"""Loss functions: ``loss = fn(pred, target)`` returns a float, ``fn.backward()`` returns
d loss / d pred. Both use mean reduction, like PyTorch's defaults.

Contract: inputs are finite. A NaN or inf in the predictions gives a NaN or inf loss
(it is not checked for on every call, which would cost a pass over the data).
"""
import numpy as np

from .device import device_of
from .kernels import kernel
from .layers.module import check_input


class _Loss:
    def __init__(self):
        self._grad = None

    def backward(self):
        """d loss / d pred of the last call (once per call)."""
        if self._grad is None:
            raise RuntimeError(f"{type(self).__name__}.backward: call the loss on a batch first")
        grad, self._grad = self._grad, None
        return grad

    def __repr__(self):
        return f"{type(self).__name__}()"


class CrossEntropyLoss(_Loss):
    """Softmax cross-entropy of logits (N, C) against integer class labels (N,) in [0, C),
    fused with its gradient (softmax(logits) - onehot(labels)) / N."""

    def __call__(self, logits, labels):
        logits = check_input(self, logits, (None, None))
        if not isinstance(labels, np.ndarray):
            raise TypeError(f"{self!r}: labels must be a numpy.ndarray of ints, got {type(labels).__name__}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(f"{self!r}: labels must be integer class indices, got dtype {labels.dtype}")
        n, c = logits.shape
        if labels.shape != (n,):
            raise ValueError(
                f"{self!r}: expected labels of shape ({n},) for logits of shape {(n, c)}, "
                f"got {tuple(labels.shape)}"
            )
        lo, hi = labels.min(), labels.max()
        if lo < 0 or hi >= c:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{self!r}: label {bad} is out of range for {c} classes [0, {c})")
        device = device_of(logits)
        grad = device.empty(logits.shape, logits.dtype)
        loss = kernel("softmax_cross_entropy_forward", device)(
            grad, logits, np.ascontiguousarray(labels, dtype=np.int64))
        self._grad = grad
        return loss


class MSELoss(_Loss):
    """mean((pred - target)^2) over all elements; target is converted to pred's dtype."""

    def __call__(self, pred, target):
        if getattr(pred, "ndim", 0) < 1:
            check_input(self, pred, (None,))
        pred = check_input(self, pred, (None,) * pred.ndim)
        if not isinstance(target, np.ndarray):
            raise TypeError(f"{self!r}: target must be a numpy.ndarray, got {type(target).__name__}")
        if target.shape != pred.shape:
            raise ValueError(
                f"{self!r}: target shape {tuple(target.shape)} does not match prediction shape "
                f"{tuple(pred.shape)}"
            )
        device = device_of(pred)
        target = device.asarray(target, dtype=pred.dtype)
        grad = device.empty(pred.shape, pred.dtype)
        loss = kernel("mse_forward", device)(grad, pred, target)
        self._grad = grad
        return loss
