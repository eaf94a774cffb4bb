"""Module and Parameter: PyTorch's conventions over fastnet's kernels."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from ..device import CPU, FLOAT_DTYPES, Device, copy_into, device_of, to_numpy
from ..kernels import _kernel

# Bumped by every change that can invalidate an inference plan (fastnet/layers/plan.py):
# a public attribute of any Module set or deleted (mode, device, a layer's geometry, a
# Parameter or child replaced), a Parameter's or Buffer's array replaced. In-place edits
# of the arrays need no bump: plans read the arrays on every call.
GENERATION = [0]


class Parameter:
    """A trainable array: ``.data`` and ``.grad`` (None until a backward writes it).

    ``zero_grad()`` sets ``.grad`` to None, as PyTorch does by default; the next backward
    writes a new gradient array, and any further backward before the next ``zero_grad()``
    accumulates into it. Assigning ``.data`` or ``.grad`` keeps the shape fixed and
    stores a C-contiguous float array (a transposed view is copied), because kernels
    index the raw buffer.

    ``requires_grad`` (default True, as in PyTorch) freezes the parameter when False: the
    layers' backward passes compute no gradient for it (its ``.grad`` stays as it was,
    None for a parameter frozen from the start), ``zero_grad()`` and the optimizers
    leave it alone (no update, no state, no weight decay), and a DistributedDataParallel
    neither reduces nor waits for it. The input's gradient is still computed. Freezing
    does not change ``state_dict()``.
    """

    __slots__ = ("_data", "_grad", "_reducer", "_requires_grad")

    def __init__(self, data, requires_grad=True):
        self._data = None
        self._grad = None
        self._requires_grad = True
        self.requires_grad = requires_grad
        # a DistributedDataParallel's gradient averaging (fastnet/distributed.py): told
        # when a backward wrote this gradient, waited for when the gradient is read
        self._reducer = None
        self.data = data

    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, value):
        self._data = self._checked(value, "data")
        GENERATION[0] += 1

    @property
    def requires_grad(self):
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, flag):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"Parameter.requires_grad: expected a bool, got {flag!r}")
        self._requires_grad = bool(flag)

    def requires_grad_(self, requires_grad=True):
        """Set ``requires_grad`` in place and return the parameter, as PyTorch's method."""
        self.requires_grad = requires_grad
        return self

    @property
    def grad(self):
        reducer = self._reducer
        if reducer is not None and reducer.pending:
            reducer.finish()  # the average over the ranks, not this rank's own gradient
        return self._grad

    @grad.setter
    def grad(self, value):
        reducer = self._reducer
        if reducer is not None and reducer.pending:
            reducer.finish()  # (its results would land on top of this value)
        self._grad = None if value is None else self._checked(value, "grad")

    def _checked(self, value, what):
        try:
            device = device_of(value)
        except TypeError:
            raise TypeError(f"Parameter.{what}: expected a numpy.ndarray or a CUDA array, got "
                            f"{type(value).__name__}") from None
        if self._data is not None and device != device_of(self._data):
            raise TypeError(f"Parameter.{what}: expected an array on {device_of(self._data)} "
                            f"(where the parameter lives), got one on {device}")
        if value.dtype not in FLOAT_DTYPES:
            raise TypeError(f"Parameter.{what}: expected float32 or float64, got {value.dtype}")
        if self._data is not None and value.shape != self._data.shape:
            raise ValueError(f"Parameter.{what}: expected shape {self._data.shape}, got {value.shape}")
        if what == "grad" and value.dtype != self._data.dtype:
            raise TypeError(f"Parameter.grad: expected {self._data.dtype} (the data's dtype), got {value.dtype}")
        return device.asarray(value)

    @property
    def shape(self):
        return self._data.shape

    @property
    def dtype(self):
        return self._data.dtype

    def grad_slot(self, device):
        """An array for a backward kernel to overwrite with this parameter's gradient: a
        new one, or under a DistributedDataParallel on the CPU the gradient's place in its
        allreduce bucket."""
        reducer = self._reducer
        if reducer is not None and self._grad is None:
            place = reducer.slot_for(self)
            if place is not None:
                return place
        return device.empty(self._data.shape, self._data.dtype)

    def grad_done(self, slot, device):
        """Record the gradient a kernel wrote into ``slot`` (from ``grad_slot``)."""
        if self._reducer is not None and self._reducer.intercept(self, slot):
            return  # its bucket is on its way: the reducer adds this part at the end
        if self._grad is None:
            self._grad = slot
        else:
            _kernel("accumulate", device)(self._grad, slot)
        if self._reducer is not None:
            self._reducer.grad_ready(self)

    def __getstate__(self):  # copies and pickles leave the gradient averaging behind
        return {"_data": self._data, "_grad": self.grad, "requires_grad": self._requires_grad}

    def __setstate__(self, state):
        self._data, self._grad, self._reducer = state["_data"], state["_grad"], None
        self._requires_grad = bool(state.get("requires_grad", True))

    def __repr__(self):
        frozen = "" if self._requires_grad else ", requires_grad=False"
        return f"Parameter(shape={self.shape}, dtype={self.dtype}{frozen})"


def grad_slot(param, device):
    """Where a layer's backward kernel writes ``param``'s gradient (``Parameter.grad_slot``),
    or None, which the kernels take as "not needed", for an absent parameter (a layer
    without bias) or a frozen one (``requires_grad=False``). Pass each non-None slot to
    ``param.grad_done`` after the kernel."""
    if param is None or not param._requires_grad:
        return None
    return param.grad_slot(device)


class Buffer:
    """A non-trainable array saved with the model: BatchNorm's running statistics and
    batch counter (PyTorch's registered buffers). ``.data`` keeps its shape and dtype
    kind; buffers are in ``state_dict()`` (after the parameters of their module, as in
    PyTorch), move with ``to(device)``, follow ``to(dtype)`` when they hold floats (an
    integer counter stays int64), and are not in ``parameters()``: optimizers never see
    them.
    """

    __slots__ = ("_data",)

    def __init__(self, data):
        self._data = data if isinstance(data, np.ndarray) else np.asarray(data)

    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, value):
        device = device_of(value)
        if value.dtype.kind != self._data.dtype.kind:  # complex into float, float into int, ...
            raise TypeError(f"Buffer.data: expected a {self._data.dtype.kind}-kind array (like "
                            f"{self._data.dtype}), got {value.dtype}")
        if value.shape != self._data.shape:
            raise ValueError(f"Buffer.data: expected shape {self._data.shape}, got {value.shape}")
        self._data = device.asarray(value)
        GENERATION[0] += 1

    @property
    def shape(self):
        return self._data.shape

    @property
    def dtype(self):
        return self._data.dtype

    def __repr__(self):
        return f"Buffer(shape={self.shape}, dtype={self.dtype})"


def check_input(layer, x, shape, dtype=None, device=None):
    """Validate a layer's input before any kernel runs; returns it C-contiguous.

    ``shape`` is a tuple with None for free axes, e.g. (None, 784) or (None, 3, None, None);
    ``dtype`` the dtype the layer's parameters force, or None for any float dtype;
    ``device`` where it must end up (the layer's by default): a NumPy input to a CUDA
    layer is validated, then copied to the GPU.
    """
    device = device or layer.device
    if device.ready(x, shape, dtype):
        return x  # the hot path (what the checks below would return unchanged)
    x = device.accept(x, layer)
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{layer!r}: expected a float32 or float64 array, got dtype {x.dtype}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(
            f"{layer!r}: expected {np.dtype(dtype)} input (the dtype of its parameters), got "
            f"{x.dtype}; convert the input (x.astype(np.{np.dtype(dtype)})) or the model "
            f"(model.to(np.{x.dtype}))"
        )
    bad_shape = x.ndim != len(shape)
    if not bad_shape:
        for s, d in zip(shape, x.shape):  # (a loop: a generator costs more on this hot path)
            if s is not None and s != d:
                bad_shape = True
    if bad_shape:
        want = "(" + ", ".join("N" if i == 0 and s is None else "*" if s is None else str(s)
                               for i, s in enumerate(shape)) + ("," if len(shape) == 1 else "") + ")"
        raise ValueError(f"{layer!r}: expected input of shape {want}, got {tuple(x.shape)}")
    if x.size == 0:
        raise ValueError(f"{layer!r}: got an empty input of shape {tuple(x.shape)}")
    return device.asarray(x)


def check_grad(layer, grad, shape, dtype):
    """Validate the gradient handed to backward: the forward output's shape and dtype."""
    device = layer.device
    if device.ready_exact(grad, shape, dtype):
        return grad  # the hot path
    grad = device.accept(grad, layer, ".backward")
    if grad.dtype not in FLOAT_DTYPES:  # complex, integer, bool, object: not a real gradient
        raise TypeError(f"{layer!r}.backward: expected a {dtype} gradient (the forward "
                        f"output's dtype), got dtype {grad.dtype}")
    if grad.shape != tuple(shape) or grad.dtype != dtype:
        raise ValueError(
            f"{layer!r}.backward: expected a gradient of shape {tuple(shape)} and dtype "
            f"{dtype} (the forward output's), got {tuple(grad.shape)} {grad.dtype}"
        )
    return device.asarray(grad)


def _float_dtype(dtype, owner):
    dt = np.dtype(dtype)
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{owner}: dtype must be float32 or float64, got {dt}")
    return dt


class Module:
    """Base class of every layer.

    Parameters and sub-modules are attributes; ``named_parameters`` walks them in the
    order they were assigned, which gives PyTorch's state_dict keys ("0.weight").
    """

    training = True
    device = CPU

    # ---- the layer's own work -------------------------------------------------------
    def forward(self, x):
        raise NotImplementedError

    def _plan_step(self, shape, dtype, following):
        """This layer's eval-mode forward as a step of an inference plan (plan.py) for an
        input of ``shape`` and ``dtype`` that its forward accepts: ``(Step, fused)``,
        ``fused`` the number of layers after it that the step also computes (1: the
        ``following`` layer, fused in); None when the layer has no plan form."""
        return None

    def backward(self, grad_out, input_grad=True):
        """Gradients of the parameters (into ``.grad``) and, unless ``input_grad`` is
        False, d loss / d input, which is returned (None otherwise). Pass
        ``input_grad=False`` when the input is data, as PyTorch skips inputs that do not
        require grad: a model's first layer then skips its largest pass."""
        raise NotImplementedError

    def __call__(self, x):
        return self.forward(x)

    # public attributes that change with every training call and that no inference plan
    # reads (Dropout's call count, a recurrent layer's initial-state gradients): setting
    # them must not invalidate every model's plans
    _RUN_STATE = frozenset()

    def __setattr__(self, name, value):
        # (public names only: what forward keeps for backward, "_saved", costs nothing more)
        if name[0] != "_" and name not in self._RUN_STATE:
            GENERATION[0] += 1
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        GENERATION[0] += 1
        object.__delattr__(self, name)

    def config(self) -> dict:
        """Constructor arguments that rebuild this layer (used by fastnet.save)."""
        return {}

    # ---- tree -----------------------------------------------------------------------
    def named_children(self):
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value

    def children(self):
        return [m for _, m in self.named_children()]

    def named_parameters(self, prefix="", remove_duplicate=True):
        """(name, Parameter) pairs; a Parameter shared by several layers comes once,
        under its first name, unless ``remove_duplicate`` is False (as in PyTorch)."""
        seen = set()
        for name, p in self._walk_parameters(prefix):
            if remove_duplicate:
                if id(p) in seen:
                    continue
                seen.add(id(p))
            yield name, p

    def _walk_parameters(self, prefix):
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                yield prefix + name, value
        for name, child in self.named_children():
            yield from child._walk_parameters(prefix + name + ".")

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix=""):
        """(name, Buffer) pairs, in state_dict order; a buffer set to None is skipped."""
        for name, value in self._walk_state(prefix):
            if isinstance(value, Buffer):
                yield name, value

    def buffers(self):
        return [b for _, b in self.named_buffers()]

    def _walk_state(self, prefix=""):
        """What state_dict holds, PyTorch's order: each module's own parameters, then its
        own buffers, then its children's entries."""
        own = vars(self).items()
        for name, value in own:
            if isinstance(value, Parameter):
                yield prefix + name, value
        for name, value in own:
            if isinstance(value, Buffer):
                yield prefix + name, value
        for name, child in self.named_children():
            yield from child._walk_state(prefix + name + ".")

    def modules(self):
        yield self
        for child in self.children():
            yield from child.modules()

    def named_modules(self, prefix=""):
        """(name, module) pairs, this module first under ``prefix`` ("" for the root)."""
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    # ---- modes, devices, dtypes ---------------------------------------------------
    def train(self, mode: bool = True):
        for m in self.modules():
            m.training = bool(mode)
            if not mode:
                m._clear_cache()
        return self

    def eval(self):
        return self.train(False)

    def _saved_for_backward(self):
        saved = getattr(self, "_saved", None)
        if saved is None:
            raise RuntimeError(
                f"{self!r}.backward: no forward pass to differentiate; call forward in "
                "training mode (model.train()) before backward, once per forward (a layer "
                "object used twice in one model keeps only its last forward: use two layers, "
                "or share their Parameters)"
            )
        self._saved = None
        return saved

    def _clear_cache(self):
        """Drop what forward kept for backward."""
        self._saved = None

    def zero_grad(self):
        """Drop the gradients (``.grad = None``) of the parameters that require them; a
        frozen parameter (``requires_grad=False``) is left alone."""
        for p in self.parameters():
            if p.requires_grad:
                p.grad = None

    def requires_grad_(self, requires_grad=True):
        """Set ``requires_grad`` on every parameter of this module and its children (False
        freezes the whole module); returns self, as PyTorch's method."""
        if not isinstance(requires_grad, (bool, np.bool_)):
            raise TypeError(f"{type(self).__name__}.requires_grad_: expected a bool, got "
                            f"{requires_grad!r}")
        for p in self.parameters():
            p.requires_grad = requires_grad
        return self

    def apply(self, fn):
        """Call ``fn(module)`` on every child module (recursively, each child's children
        first), then on this module; returns self, as PyTorch's ``Module.apply``
        (e.g. re-initialising every Dense layer's weights)."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    def to(self, target):
        """Move to a device ("cpu", "cuda") or convert to a dtype (np.float32 / np.float64).
        Gradients are dropped; an optimizer's state follows its parameters at its next
        step."""
        if isinstance(target, (str, Device)):
            device = Device(target)
            for m in self.modules():
                if m.device != device:
                    m.device = device
                    m._clear_cache()
            for p in self.parameters():
                if device_of(p.data) != device:
                    moved = device.asarray(p.data)
                    p.grad = None
                    p._data = moved  # same shape and dtype, now on the other device
            for b in self.buffers():
                if device_of(b.data) != device:
                    b._data = device.asarray(b.data)
            GENERATION[0] += 1
            return self
        dtype = _float_dtype(target, type(self).__name__)
        changed = [p for p in self.parameters() if p.dtype != dtype]
        for p in changed:
            p.grad = None
            p.data = self.device.asarray(p.data, dtype=dtype)
        for b in self.buffers():  # float buffers follow; integer counters stay as they are
            if b.dtype.kind == "f" and b.dtype != dtype:
                b._data = self.device.asarray(b.data, dtype=dtype)
                changed.append(b)
        GENERATION[0] += 1
        if changed:  # what forward kept has the old dtype
            for m in self.modules():
                m._clear_cache()
        return self

    # ---- state ----------------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Parameter and buffer name -> a NumPy copy of its data, with PyTorch's keys and
        order (each module's parameters, then its buffers)."""
        return OrderedDict((k, to_numpy(p.data).copy()) for k, p in self._walk_state())

    def load_state_dict(self, state_dict, strict: bool = True):
        """Copy arrays (NumPy, or anything np.asarray takes: PyTorch CPU tensors, ...)
        into the parameters and buffers. Shapes must match; values are converted to the
        model's dtype (an integer buffer keeps its own). With ``strict`` the keys must
        match exactly."""
        own = dict(self._walk_state())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(
                f"{type(self).__name__}.load_state_dict: missing keys {missing}, "
                f"unexpected keys {unexpected}"
            )
        arrays = {}
        for k, p in own.items():
            if k not in state_dict:
                continue
            v = state_dict[k]
            if hasattr(v, "detach"):  # a torch.Tensor
                v = v.detach().cpu().numpy()
            a = np.asarray(v)
            if a.shape != p.shape:
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: {k!r} has shape {a.shape}, "
                    f"the model expects {p.shape}"
                )
            if a.dtype.kind not in "fiu":
                raise TypeError(f"{type(self).__name__}.load_state_dict: {k!r} holds {a.dtype}, "
                                "expected real numbers")
            arrays[k] = a
        for k, a in arrays.items():  # all checked first: a failed load changes nothing
            copy_into(own[k].data, a)  # in place, like PyTorch: references to .data stay valid
        return self

    def get_extra_state(self):
        """State other than parameters that a training checkpoint must restore (e.g.
        Dropout's seed and call counter), JSON-serialisable; None when there is none.
        Like PyTorch's hook of the same name."""
        return None

    def set_extra_state(self, state):
        """Restore what ``get_extra_state`` returned."""

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"
