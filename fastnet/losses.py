"""Loss functions with PyTorch's arguments: ``loss = fn(pred, target)`` returns the loss,
``fn.backward()`` returns d loss / d pred.

``reduction`` is PyTorch's: "mean" (the default), "sum", or "none". With "mean" and "sum"
the loss is a scalar: on the CPU a Python float; on CUDA it stays on the GPU until read
(``float(loss)``, ``loss.item()``, ``f"{loss:.4f}"``), like a PyTorch tensor: a training
step that does not read it makes no host round trip. With "none" the loss is the array of
per-element (per-sample) losses, on the predictions' device, and
``fn.backward(grad_output=None)`` takes the upstream gradient d L / d loss of that array's
shape (default: ones, i.e. the gradient of ``loss.sum()``), as ``loss.backward(grad_output)``
does in PyTorch. Targets follow the predictions: NumPy targets for CUDA predictions are
checked on the host, then copied.

Where fastnet differs from PyTorch: the deprecated ``size_average`` / ``reduce`` arguments
do not exist (the others are keyword-only after the first); targets must have the
predictions' shape (PyTorch broadcasts a differently shaped target with a warning);
``NLLLoss`` and ``CrossEntropyLoss`` take class-index targets only, with a batch axis.

Contract: inputs are finite. A NaN or inf in the predictions gives a NaN or inf loss
(it is not checked for on every call, which would cost a pass over the data).
"""
import numbers

import numpy as np

from .device import device_of, to_numpy
from .kernels import _kernel
from .layers.module import check_input

__all__ = ["CrossEntropyLoss", "NLLLoss", "BCEWithLogitsLoss", "MSELoss", "L1Loss",
           "SmoothL1Loss", "HuberLoss"]

REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(owner, reduction):
    if not isinstance(reduction, str):
        raise TypeError(f"{owner}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{owner}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def _check_real(owner, name, value, lo, hi=None, lo_open=False):
    """A finite real number in [lo, hi] ((lo, hi] when lo_open), as a float."""
    if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{owner}: {name} must be a real number, got {value!r}")
    v = float(value)
    want = (f"in ({lo}, {hi}]" if lo_open else f"in [{lo}, {hi}]") if hi is not None else (
        f"> {lo}" if lo_open else f">= {lo}")
    if v != v or v in (float("inf"), float("-inf")) or (v <= lo if lo_open else v < lo) or (
            hi is not None and v > hi):
        raise ValueError(f"{owner}: {name} must be a finite real number {want}, got {value!r}")
    return v


def _check_weight(owner, name, weight, ndim=None):
    """A host copy of a weight array (NumPy or CUDA), validated: real, ``ndim`` axes."""
    if weight is None:
        return None
    try:
        w = np.asarray(to_numpy(weight)) if not isinstance(weight, np.ndarray) else weight
    except TypeError:
        raise TypeError(f"{owner}: {name} must be an array of floats, got "
                        f"{type(weight).__name__}") from None
    if w.dtype.kind not in "fiu":
        raise TypeError(f"{owner}: {name} must be a real numeric array, got dtype {w.dtype}")
    if ndim is not None and w.ndim != ndim:
        raise ValueError(f"{owner}: {name} must have {ndim} axis, got shape {tuple(w.shape)}")
    return np.array(w, dtype=np.float64)


class _Loss:
    def __init__(self, reduction="mean"):
        self.reduction = _check_reduction(type(self).__name__, reduction)
        self._grad = None
        self._none = None  # reduction "none": (shape of the loss, dtype, backward(dout))
        self._consts = {}  # weights converted to a device and dtype

    def backward(self, grad_output=None):
        """d loss / d pred of the last call (once per call). With reduction "none",
        ``grad_output`` is d L / d loss, an array of the loss's shape (default ones); with
        "mean" and "sum" it must be None (the loss is the scalar L)."""
        if self._none is not None:
            shape, dtype, device, run = self._none
            if grad_output is None:
                grad_output = device.asarray(np.ones(shape, dtype))
            else:
                grad_output = device.accept(grad_output, self, ".backward grad_output")
                if grad_output.dtype.kind not in "fiu":
                    raise TypeError(f"{self!r}.backward: grad_output must be a real array, "
                                    f"got dtype {grad_output.dtype}")
                if tuple(grad_output.shape) != tuple(shape):
                    raise ValueError(f"{self!r}.backward: grad_output must have the loss's "
                                     f"shape {tuple(shape)}, got {tuple(grad_output.shape)}")
                grad_output = device.asarray(grad_output, dtype=dtype)
            self._none = None
            return run(grad_output)
        if self._grad is None:
            raise RuntimeError(f"{type(self).__name__}.backward: call the loss on a batch first")
        if grad_output is not None:
            raise ValueError(f"{self!r}.backward: grad_output is only for reduction='none' "
                             f"(this loss is a scalar), got {type(grad_output).__name__}")
        grad, self._grad = self._grad, None
        return grad

    def _extra_repr(self):
        return ""

    def __repr__(self):
        parts = [self._extra_repr()]
        if self.reduction != "mean":
            parts.append(f"reduction={self.reduction!r}")
        return f"{type(self).__name__}({', '.join(p for p in parts if p)})"

    def _const(self, host, device, dtype):
        """``host`` (a NumPy array) on ``device`` as ``dtype``, converted once."""
        key = (id(host), str(device), np.dtype(dtype))
        a = self._consts.get(key)
        if a is None:
            a = self._consts[key] = device.asarray(host, dtype=dtype)
        return a

    def _finish(self, loss, out, grad, out_shape, dtype, device, run):
        """What the call returns and what backward will: the scalar loss and its gradient,
        or ("none") the losses and the backward of their upstream gradient."""
        if self.reduction == "none":
            self._grad = None
            self._none = (out_shape, dtype, device, run)
            return out.reshape(out_shape)
        self._none = None
        self._grad = grad
        return loss


def _device(loss, pred):
    """Where the loss runs: where the predictions are."""
    try:
        return device_of(pred)
    except TypeError:
        raise TypeError(f"{loss!r}: expected a numpy.ndarray or a CUDA array of predictions, "
                        f"got {type(pred).__name__}") from None


def _bad_labels(labels, c, ignore_index):
    """The first label (host array) outside [0, c) that is not ignore_index, or None."""
    bad = (labels < 0) | (labels >= c)
    if ignore_index is not None:
        bad &= labels != ignore_index
    i = np.flatnonzero(bad.reshape(-1))
    return None if i.size == 0 else labels.reshape(-1)[i[0]]


def _class_rows(device, rows, logits, labels, shape):
    """(logits as (M, C) rows of classes, labels as (M,), the positions per sample or None):
    (N, C, R) logits -> (N*R, C) (``rows``: their (N, R, C) view, taken as it is; else a
    copy), (N, C) ones as they are."""
    if len(shape) <= 2:
        return logits, labels, None
    n, c = shape[0], shape[1]
    positions = labels.size // n
    if rows is not None:
        logits = rows.reshape(-1, c)
    else:
        logits = device.swap_last_axes(logits.reshape(n, c, positions)).reshape(-1, c)
    return logits, labels.reshape(labels.size), positions


class _ClassLoss(_Loss):
    """CrossEntropyLoss and NLLLoss: rows of classes (N, C) or (N, C, d1, ...) against
    integer labels (N,) / (N, d1, ...), class weights, ignore_index."""

    _log_probs = False

    def __init__(self, weight=None, *, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        super().__init__(reduction)
        name = type(self).__name__
        self.weight = _check_weight(name, "weight", weight, ndim=1)
        if self.weight is not None and self.weight.size == 0:
            raise ValueError(f"{name}: weight must not be empty")
        if not isinstance(ignore_index, numbers.Integral) or isinstance(ignore_index, (bool, np.bool_)):
            raise TypeError(f"{name}: ignore_index must be an int, got {ignore_index!r}")
        self.ignore_index = int(ignore_index)
        self.label_smoothing = _check_real(name, "label_smoothing", label_smoothing, 0.0, 1.0)
        # the fused fast path: its kernel refuses a negative label (ignore_index's default),
        # and the call then takes the general path
        self._fast = (self.weight is None and self.label_smoothing == 0 and reduction == "mean"
                      and self.ignore_index < 0)

    def _extra_repr(self):
        parts = []
        if self.weight is not None:
            parts.append(f"weight=<{self.weight.size} classes>")
        if self.ignore_index != -100:
            parts.append(f"ignore_index={self.ignore_index}")
        if self.label_smoothing:
            parts.append(f"label_smoothing={self.label_smoothing}")
        return ", ".join(parts)

    def _rows(self, logits, labels):
        """(device, rows (N*R, C) or None, logits (N, C, ...), labels, shape, n, c)."""
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
        return device, rows, logits, labels, shape, n, c

    def _general(self, device, rows, logits, labels, shape, n, c):
        """Weights, ignore_index, label smoothing, any reduction (the cross_entropy op)."""
        weight = None
        if self.weight is not None:
            if self.weight.size != c:
                raise ValueError(f"{self!r}: weight has {self.weight.size} entries for "
                                 f"{c} classes (expected shape ({c},))")
            weight = self._const(self.weight, device, logits.dtype)
        if isinstance(labels, np.ndarray) or self.reduction == "none":
            # checked before the copy to the GPU (a CUDA array's, for "none", on the host:
            # a "none" loss has no scalar to raise from when read)
            host = to_numpy(labels)
            bad = _bad_labels(host, c, self.ignore_index)
            if bad is not None:
                raise ValueError(f"{self!r}: label {bad} is out of range for {c} classes "
                                 f"[0, {c}) and is not ignore_index ({self.ignore_index})")
            if isinstance(labels, np.ndarray):
                labels = device.asarray(labels, dtype=np.int64)
        x, labels, positions = _class_rows(device, rows, logits, labels, shape)

        def unrows(g):  # the gradient of the rows in the logits' layout
            if rows is not None:
                return g.reshape(n, positions, c).transpose(0, 2, 1)
            if positions is not None:
                return device.swap_last_axes(g.reshape(n, positions, c)).reshape(shape)
            return g

        none = self.reduction == "none"
        out = device.empty(x.shape[0], x.dtype) if none else None
        grad = None if none else device.empty(x.shape, x.dtype)
        args = (x, labels, weight, self.ignore_index, self.label_smoothing, self._log_probs)
        loss = _kernel("cross_entropy_forward", device)(out, grad, *args, self.reduction)

        def run(dout):
            g = device.empty(x.shape, x.dtype)
            _kernel("cross_entropy_backward", device)(g, dout.reshape(-1), *args)
            return unrows(g)

        return self._finish(loss, out, None if none else unrows(grad), (n,) + shape[2:],
                            x.dtype, device, run)


class CrossEntropyLoss(_ClassLoss):
    """Softmax cross-entropy of logits (N, C) against integer class labels (N,) in [0, C),
    as PyTorch's ``CrossEntropyLoss(weight=None, *, ignore_index=-100, reduction="mean",
    label_smoothing=0.0)``; or of logits (N, C, d1, ...) (a sequence: (N, C, T)) against
    labels (N, d1, ...), over all N * d1 * ... positions, with the gradient in the logits'
    layout.

    ``weight`` (C,): class weights (the "mean" divides by the sum of the weights of the
    non-ignored targets). A label equal to ``ignore_index`` gives a loss of 0 and a
    gradient of 0 (all ignored and "mean": NaN, as PyTorch). ``label_smoothing`` in [0, 1]
    mixes the target with the uniform distribution (with weights, PyTorch's formula).

    The defaults (no weight, no smoothing, "mean", a negative ignore_index that no label
    equals) run the
    fused fast path: the gradient (softmax(logits) - onehot(labels)) / N in the same pass.
    The (N, C, T) form is the (N, C) one on rows of classes: the logits are copied to
    (N*T, C), the gradient copied back (``Device.swap_last_axes``); (N, C, T) logits that
    are a view of C-contiguous (N, T, C) rows (``x.transpose(0, 2, 1)``, what
    ``CharLSTM`` returns on the CPU) are taken as they are, and the gradient is the same
    kind of view.

    Labels already on the GPU take the general path (it honours ignore_index) and are
    range-checked there: a label out of range raises ValueError when the loss is read
    (with reduction "none": at the call, from a host copy)."""

    def __call__(self, logits, labels):
        device, rows, logits, labels, shape, n, c = self._rows(logits, labels)
        if not self._fast or not isinstance(labels, np.ndarray):
            return self._general(device, rows, logits, labels, shape, n, c)
        # checked before the copy to the GPU, or before uint64 labels past int64's
        # range wrap (otherwise a kernel that raises at the call checks them itself)
        if not device.eager_errors or labels.dtype == np.uint64:
            lo, hi = labels.min(), labels.max()
            if lo < 0 or hi >= c:
                return self._general(device, rows, logits, labels, shape, n, c)
        host_labels, whole = labels, logits
        labels = device.asarray(labels, dtype=np.int64)
        logits, labels, positions = _class_rows(device, rows, logits, labels, shape)
        grad = device.empty(logits.shape, logits.dtype)
        try:
            loss = _kernel("softmax_cross_entropy_forward", device)(grad, logits, labels)
        except ValueError:  # a label out of range: ignore_index, or the general path's error
            return self._general(device, rows, whole, host_labels, shape, n, c)
        if rows is not None:
            grad = grad.reshape(n, positions, c).transpose(0, 2, 1)
        elif positions is not None:
            grad = device.swap_last_axes(grad.reshape(n, positions, c)).reshape(shape)
        self._grad = grad
        self._none = None
        return loss


class NLLLoss(_ClassLoss):
    """Negative log-likelihood of log-probabilities (N, C) (or (N, C, d1, ...)) against
    integer class labels (N,) (or (N, d1, ...)), as PyTorch's ``NLLLoss(weight=None, *,
    ignore_index=-100, reduction="mean")``: the loss of row i is -weight[y_i] x[i, y_i];
    "mean" divides by the sum of the weights of the non-ignored targets. Use it after
    ``LogSoftmax`` (``CrossEntropyLoss`` fuses the two)."""

    _log_probs = True

    def __init__(self, weight=None, *, ignore_index=-100, reduction="mean"):
        super().__init__(weight, ignore_index=ignore_index, reduction=reduction)

    def __call__(self, log_probs, labels):
        return self._general(*self._rows(log_probs, labels))


def _check_target(loss, device, pred, target, kinds="fiub"):
    target = device.accept(target, loss, " target")
    if target.dtype.kind not in kinds:  # complex, object, strings: no silent cast
        raise TypeError(f"{loss!r}: target must be a real numeric array, got dtype "
                        f"{target.dtype}")
    if tuple(target.shape) != tuple(pred.shape):
        raise ValueError(
            f"{loss!r}: target shape {tuple(target.shape)} does not match prediction shape "
            f"{tuple(pred.shape)}"
        )
    return device.asarray(target, dtype=pred.dtype)


def _check_pred(loss, pred):
    device = _device(loss, pred)
    if getattr(pred, "ndim", 0) < 1:
        check_input(loss, pred, (None,), device=device)
    return device, check_input(loss, pred, (None,) * pred.ndim, device=device)


class _PointwiseLoss(_Loss):
    """A loss of pred - target elementwise (the pointwise_loss op): pred and target of
    one shape, target converted to pred's dtype; "mean" over all elements."""

    _kind = None

    def _beta(self):
        return 1.0

    def __call__(self, pred, target):
        device, pred = _check_pred(self, pred)
        target = _check_target(self, device, pred, target)
        none = self.reduction == "none"
        out = device.empty(pred.shape, pred.dtype) if none else None
        grad = None if none else device.empty(pred.shape, pred.dtype)
        kind, beta = self._kind, self._beta()
        loss = _kernel("pointwise_loss_forward", device)(out, grad, pred, target, kind, beta,
                                                         self.reduction)

        def run(dout):
            g = device.empty(pred.shape, pred.dtype)
            _kernel("pointwise_loss_backward", device)(g, dout, pred, target, kind, beta)
            return g

        return self._finish(loss, out, grad, pred.shape, pred.dtype, device, run)


class MSELoss(_PointwiseLoss):
    """(pred - target)^2, as PyTorch's ``MSELoss(reduction="mean")``; target is converted
    to pred's dtype. "mean" runs the fused mse_forward kernel, gradient 2 (pred - target)
    / pred.size."""

    _kind = "mse"

    def __call__(self, pred, target):
        if self.reduction != "mean":
            return super().__call__(pred, target)
        device, pred = _check_pred(self, pred)
        target = _check_target(self, device, pred, target)
        grad = device.empty(pred.shape, pred.dtype)
        loss = _kernel("mse_forward", device)(grad, pred, target)
        self._grad = grad
        self._none = None
        return loss


class L1Loss(_PointwiseLoss):
    """|pred - target|, as PyTorch's ``L1Loss(reduction="mean")``; the gradient
    sign(pred - target), 0 where they are equal."""

    _kind = "l1"


class SmoothL1Loss(_PointwiseLoss):
    """As PyTorch's ``SmoothL1Loss(*, reduction="mean", beta=1.0)``: with d = pred - target,
    0.5 d^2 / beta where |d| < beta, |d| - 0.5 beta elsewhere; beta = 0 is L1Loss."""

    def __init__(self, *, reduction="mean", beta=1.0):
        super().__init__(reduction)
        self.beta = _check_real("SmoothL1Loss", "beta", beta, 0.0)
        self._kind = "smooth_l1" if self.beta > 0 else "l1"

    def _beta(self):
        return self.beta if self.beta > 0 else 1.0

    def _extra_repr(self):
        return "" if self.beta == 1.0 else f"beta={self.beta}"


class HuberLoss(_PointwiseLoss):
    """As PyTorch's ``HuberLoss(reduction="mean", delta=1.0)``: with d = pred - target,
    0.5 d^2 where |d| < delta, delta (|d| - 0.5 delta) elsewhere; delta > 0."""

    _kind = "huber"

    def __init__(self, reduction="mean", delta=1.0):
        super().__init__(reduction)
        self.delta = _check_real("HuberLoss", "delta", delta, 0.0, lo_open=True)

    def _beta(self):
        return self.delta

    def _extra_repr(self):
        return "" if self.delta == 1.0 else f"delta={self.delta}"


class BCEWithLogitsLoss(_Loss):
    """Sigmoid and binary cross-entropy fused, as PyTorch's ``BCEWithLogitsLoss(weight=None,
    *, reduction="mean", pos_weight=None)``: with x the logits and y the targets (floats in
    [0, 1]: soft targets too), weight[...] * ((1 - y) x - (1 + (pos_weight - 1) y)
    log_sigmoid(x)), computed in the stable form max(x, 0) - x y + log1p(exp(-|x|)): finite
    and exact at logits of +-1e4. ``weight`` broadcasts to the logits' shape;
    ``pos_weight`` (C,) (or one value) to their last (class) axis."""

    def __init__(self, weight=None, *, reduction="mean", pos_weight=None):
        super().__init__(reduction)
        self.weight = _check_weight("BCEWithLogitsLoss", "weight", weight)
        self.pos_weight = _check_weight("BCEWithLogitsLoss", "pos_weight", pos_weight)
        if self.pos_weight is not None and self.pos_weight.ndim > 1:
            raise ValueError(f"BCEWithLogitsLoss: pos_weight must be (C,), one weight per class "
                             f"of the last axis, got shape {tuple(self.pos_weight.shape)}")
        self._broadcast = {}

    def _extra_repr(self):
        parts = []
        if self.weight is not None:
            parts.append(f"weight=<shape {tuple(self.weight.shape)}>")
        if self.pos_weight is not None:
            parts.append(f"pos_weight=<{self.pos_weight.size} classes>")
        return ", ".join(parts)

    def _expanded(self, name, host, shape, device, dtype):
        """``host`` broadcast to ``shape`` on the device (cached per shape)."""
        key = (name, tuple(shape))
        a = self._broadcast.get(key)
        if a is None:
            try:
                a = np.ascontiguousarray(np.broadcast_to(host, shape))
            except ValueError:
                raise ValueError(f"{self!r}: {name} of shape {tuple(host.shape)} does not "
                                 f"broadcast to {tuple(shape)}") from None
            a = self._broadcast[key] = a
        return self._const(a, device, dtype)

    def __call__(self, logits, target):
        device, x = _check_pred(self, logits)
        target = _check_target(self, device, x, target, kinds="fiu")
        shape = tuple(x.shape)
        c = shape[-1] if len(shape) else 1
        rows = (x.size // c, c)
        weight = pos_weight = None
        if self.weight is not None:
            weight = self._expanded("weight", self.weight, shape, device, x.dtype).reshape(rows)
        if self.pos_weight is not None:
            pos_weight = self._expanded("pos_weight", self.pos_weight, (c,), device, x.dtype)
        x2, t2 = x.reshape(rows), target.reshape(rows)
        none = self.reduction == "none"
        out = device.empty(rows, x.dtype) if none else None
        grad = None if none else device.empty(rows, x.dtype)
        loss = _kernel("bce_with_logits_forward", device)(out, grad, x2, t2, weight, pos_weight,
                                                          self.reduction)

        def run(dout):
            g = device.empty(rows, x.dtype)
            _kernel("bce_with_logits_backward", device)(g, dout.reshape(rows), x2, t2, weight,
                                                        pos_weight)
            return g.reshape(shape)

        return self._finish(loss, out, None if none else grad.reshape(shape), shape, x.dtype,
                            device, run)
