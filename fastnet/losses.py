"""Loss functions: ``loss = fn(pred, target)`` returns the loss, ``fn.backward()`` returns
d loss / d pred. Both use mean reduction, like PyTorch's defaults.

On the CPU the loss is a Python float. On CUDA it stays on the GPU until read
(``float(loss)``, ``loss.item()``, ``f"{loss:.4f}"``), like a PyTorch tensor: a training
step that does not read it makes no host round trip. Targets follow the predictions:
NumPy labels for CUDA logits are checked on the host, then copied.

Contract: inputs are finite. A NaN or inf in the predictions gives a NaN or inf loss
(it is not checked for on every call, which would cost a pass over the data).
"""
import numpy as np

from .device import device_of
from .kernels import _kernel
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


def _device(loss, pred):
    """Where the loss runs: where the predictions are."""
    try:
        return device_of(pred)
    except TypeError:
        raise TypeError(f"{loss!r}: expected a numpy.ndarray or a CUDA array of predictions, "
                        f"got {type(pred).__name__}") from None


class CrossEntropyLoss(_Loss):
    """Softmax cross-entropy of logits (N, C) against integer class labels (N,) in [0, C),
    fused with its gradient (softmax(logits) - onehot(labels)) / N; or, as PyTorch, of
    logits (N, C, d1, ...) (a sequence: (N, C, T)) against labels (N, d1, ...), the mean
    over all N * d1 * ... positions, with the gradient in the logits' layout.

    The (N, C, T) form is the (N, C) one on rows of classes: the logits are copied to
    (N*T, C), the gradient copied back (``Device.swap_last_axes``); (N, C, T) logits that
    are a view of C-contiguous (N, T, C) rows (``x.transpose(0, 2, 1)``, what
    ``CharLSTM`` returns on the CPU) are taken as they are, and the gradient is the same
    kind of view.

    Labels already on the GPU are range-checked there: a label out of range raises
    ValueError when the loss is read."""

    def __call__(self, logits, labels):
        device = _device(self, logits)
        ndim = getattr(logits, "ndim", 0)
        # (N, C, T) logits that view C-contiguous (N, T, C) rows (CharLSTM's on the CPU):
        # the rows as they are, and the gradient as the same kind of view
        rows = device.unswapped(logits) if ndim == 3 else None
        if rows is not None:
            rows = check_input(self, rows, (None, None, None), device=device)
            logits = rows.transpose(0, 2, 1)
        else:
            logits = check_input(self, logits, (None,) * max(ndim, 2), device=device)
        labels = device.accept(labels, self, " labels")
        if not hasattr(labels, "dtype"):
            raise TypeError(f"{self!r}: labels must be an array of ints, got {type(labels).__name__}")
        if labels.dtype.kind not in "iu":  # (np.issubdtype(.., np.integer), 10x cheaper)
            raise TypeError(f"{self!r}: labels must be integer class indices, got dtype {labels.dtype}")
        shape = tuple(logits.shape)
        n, c = shape[0], shape[1]
        want = (n,) + shape[2:]
        if tuple(labels.shape) != want:
            raise ValueError(
                f"{self!r}: expected labels of shape {want} for logits of shape {shape}, "
                f"got {tuple(labels.shape)}"
            )
        if isinstance(labels, np.ndarray):
            # checked before the copy to the GPU, or before uint64 labels past int64's
            # range wrap (otherwise a kernel that raises at the call checks them itself)
            if not device.eager_errors or labels.dtype == np.uint64:
                lo, hi = labels.min(), labels.max()
                if lo < 0 or hi >= c:
                    bad = lo if lo < 0 else hi
                    raise ValueError(f"{self!r}: label {bad} is out of range for {c} classes "
                                     f"[0, {c})")
            labels = device.asarray(labels, dtype=np.int64)
        positions = None
        if len(shape) > 2:  # rows of classes: (N, C, R) -> (N*R, C)
            positions = labels.size // n
            if rows is not None:
                logits = rows.reshape(-1, c)
            else:
                logits = device.swap_last_axes(logits.reshape(n, c, positions)).reshape(-1, c)
            labels = labels.reshape(labels.size)
        grad = device.empty(logits.shape, logits.dtype)
        try:
            loss = _kernel("softmax_cross_entropy_forward", device)(grad, logits, labels)
        except ValueError as e:
            raise ValueError(f"{self!r}: {e}") from None
        if rows is not None:
            grad = grad.reshape(n, positions, c).transpose(0, 2, 1)
        elif positions is not None:
            grad = device.swap_last_axes(grad.reshape(n, positions, c)).reshape(shape)
        self._grad = grad
        return loss


class MSELoss(_Loss):
    """mean((pred - target)^2) over all elements; target is converted to pred's dtype."""

    def __call__(self, pred, target):
        device = _device(self, pred)
        if getattr(pred, "ndim", 0) < 1:
            check_input(self, pred, (None,), device=device)
        pred = check_input(self, pred, (None,) * pred.ndim, device=device)
        target = device.accept(target, self, " target")
        if target.dtype.kind not in "fiub":  # complex, object, strings: no silent cast
            raise TypeError(f"{self!r}: target must be a real numeric array, got dtype "
                            f"{target.dtype}")
        if target.shape != pred.shape:
            raise ValueError(
                f"{self!r}: target shape {tuple(target.shape)} does not match prediction shape "
                f"{tuple(pred.shape)}"
            )
        target = device.asarray(target, dtype=pred.dtype)
        grad = device.empty(pred.shape, pred.dtype)
        loss = _kernel("mse_forward", device)(grad, pred, target)
        self._grad = grad
        return loss
