"""Devices: where arrays live and kernels run.

A ``Device`` allocates arrays and moves them in and out. CPU arrays are NumPy arrays;
CUDA arrays are Numba device arrays from fastnet's caching allocator (``fastnet.cuda``,
``pip install "fastnet[cuda]"``). A CUDA layer also takes any object with
``__cuda_array_interface__`` (CuPy arrays, PyTorch CUDA tensors) without a copy, and
NumPy arrays, which it copies to the GPU once.
"""
from __future__ import annotations

import numpy as np

_NAMES = ("cpu", "cuda")


def is_available(name: str = "cuda") -> bool:
    """Whether kernels can run on ``name`` ("cpu" or "cuda") in this process."""
    if name == "cpu":
        return True
    if name == "cuda":
        from . import cuda

        return cuda.is_available()
    return False


FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))  # what kernels compute in


class Device:
    """``Device("cpu")`` or ``Device("cuda")``; compares equal to its name, prints as it.

    Each backend is a subclass (``CPUDevice``, ``CUDADevice``; ``Device(name)`` makes the
    right one): layers and losses call these methods and never test ``device.type``.
    The ``ready*`` methods are the hot path of input validation: True only when an array
    can go to this device's kernels as is (what the full checks would return unchanged);
    False sends the caller through the full checks, which also raise the errors.
    """

    __slots__ = ("type",)
    eager_errors = False
    """Whether kernels raise bad-input errors (a label out of range) when called, rather
    than when their result is read."""

    def __new__(cls, name: "str | Device" = "cpu"):
        if isinstance(name, Device):
            name = name.type
        if not isinstance(name, str) or name.split(":")[0] not in _NAMES:
            raise ValueError(f"unknown device {name!r}: expected one of {', '.join(_NAMES)}")
        name = name.split(":")[0]
        if name == "cuda":
            from . import cuda

            reason = cuda.unavailable_reason()
            if reason is not None:
                raise RuntimeError(f"device 'cuda' is not available: {reason}")
        self = object.__new__(CUDADevice if name == "cuda" else CPUDevice)
        self.type = name
        return self

    def __reduce__(self):
        return Device, (self.type,)

    def __str__(self):
        return self.type

    def __repr__(self):
        return f"Device({self.type!r})"

    def __eq__(self, other):
        if isinstance(other, Device):
            return self.type == other.type
        if isinstance(other, str):
            return self.type == other.split(":")[0]
        return NotImplemented

    def __hash__(self):
        return hash(self.type)

    def empty(self, shape, dtype):
        raise NotImplementedError

    def zeros(self, shape, dtype):
        raise NotImplementedError

    def asarray(self, x, dtype=None):
        """``x`` on this device, C-contiguous (no copy when it is already there with that
        dtype)."""
        raise NotImplementedError

    def accept(self, x, owner, what=""):
        """``x`` as an array for this device, for ``owner`` (a layer or loss) and ``what``
        (e.g. " labels"), named in the errors."""
        raise NotImplementedError

    def swap_last_axes(self, x):
        """A new C-contiguous array (A, C, B) of the C-contiguous (A, B, C) ``x``: a layout
        change (CrossEntropyLoss's (N, C, T) logits to rows of classes, and back)."""
        raise NotImplementedError

    def last_axes_view(self, x):
        """(A, C, B) of the C-contiguous (A, B, C) ``x``: a view where the device's arrays
        have them (no copy), else ``swap_last_axes``."""
        return self.swap_last_axes(x)

    def unswapped(self, x):
        """The C-contiguous (A, B, C) array that the (A, C, B) ``x`` views with its last two
        axes swapped (what ``last_axes_view`` returns), or None: its rows of classes as
        they are, without the copy of ``swap_last_axes``."""
        return None

    # ---- the hot path of input validation (layers.module.check_input, check_grad) ----
    def ready(self, x, shape, dtype=None) -> bool:
        """``x`` is this device's C-contiguous, non-empty float array (of ``dtype`` unless
        None) whose shape fits ``shape`` (None for a free axis)."""
        return False

    def ready_any(self, x) -> bool:
        """As ``ready`` for any shape with at least one axis (truthy or falsy)."""
        return False

    def ready_exact(self, x, shape, dtype) -> bool:
        """``x`` is this device's C-contiguous array of exactly ``shape`` and ``dtype``."""
        return False


def _owner_name(owner, what):
    return (owner if isinstance(owner, str) else repr(owner)) + what


class CPUDevice(Device):
    """NumPy arrays, Numba CPU kernels."""

    __slots__ = ()
    eager_errors = True

    def empty(self, shape, dtype):
        return np.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype=dtype)

    def asarray(self, x, dtype=None):
        return np.ascontiguousarray(to_numpy(x), dtype=dtype)

    def swap_last_axes(self, x):
        return np.ascontiguousarray(x.transpose(0, 2, 1))

    def last_axes_view(self, x):
        return x.transpose(0, 2, 1)

    def unswapped(self, x):
        if x.__class__ is np.ndarray and x.ndim == 3 and not x.flags.c_contiguous:
            base = x.transpose(0, 2, 1)
            if base.flags.c_contiguous:
                return base
        return None

    def accept(self, x, owner, what=""):
        """A CUDA array given to the CPU is an error (copies to the host are never
        implicit)."""
        if isinstance(x, np.ndarray):
            return x  # the hot path: no repr(owner) unless an error needs it
        from . import cuda

        if cuda.is_cuda_array(x):
            raise TypeError(
                f"{_owner_name(owner, what)}: got a CUDA array but runs on the cpu; move the "
                "model with .to('cuda'), or the data with fastnet.device.to_numpy(x)")
        raise TypeError(f"{_owner_name(owner, what)}: expected a numpy.ndarray, got "
                        f"{type(x).__name__}")

    def ready(self, x, shape, dtype=None):
        if (x.__class__ is np.ndarray and x.dtype in FLOAT_DTYPES
                and (dtype is None or x.dtype == dtype) and x.ndim == len(shape) and x.size
                and x.flags.c_contiguous):
            for s, d in zip(shape, x.shape):  # (a loop: a generator costs more here)
                if s is not None and s != d:
                    return False
            return True
        return False

    def ready_any(self, x):
        return (x.__class__ is np.ndarray and x.ndim and x.size and x.dtype in FLOAT_DTYPES
                and x.flags.c_contiguous)

    def ready_exact(self, x, shape, dtype):
        return (x.__class__ is np.ndarray and x.shape == shape and x.dtype == dtype
                and x.flags.c_contiguous)


class CUDADevice(Device):
    """Numba device arrays from fastnet's caching allocator, numba-cuda kernels. Takes any
    ``__cuda_array_interface__`` array without a copy, and NumPy arrays, which it copies
    once. No ``ready*`` fast path: a kernel launch outweighs the full checks."""

    __slots__ = ()

    def empty(self, shape, dtype):
        from . import cuda

        return cuda.empty(shape, dtype)

    def zeros(self, shape, dtype):
        from . import cuda

        return cuda.zeros(shape, dtype)

    def asarray(self, x, dtype=None):
        """Changing the dtype of a CUDA array goes through the host."""
        from . import cuda

        if cuda.is_cuda_array(x):
            a = cuda.as_device_array(x)
            if (dtype is None or a.dtype == np.dtype(dtype)) and a.is_c_contiguous():
                return a
            x = a.copy_to_host()
        return cuda.to_device(np.asarray(x), dtype=dtype)

    def swap_last_axes(self, x):
        from . import cuda
        from .kernels.cuda.elementwise import swap_axes12

        a, b, c = x.shape
        out = cuda.empty((a, c, b), x.dtype)
        swap_axes12(out, x)
        return out

    def accept(self, x, owner, what=""):
        """NumPy input is returned for the caller to validate, then copy with
        ``asarray``; a CUDA array must be C-contiguous."""
        from . import cuda

        if isinstance(x, np.ndarray):
            return x
        if cuda.is_cuda_array(x):
            a = cuda.as_device_array(x)
            if not a.is_c_contiguous():
                raise ValueError(
                    f"{_owner_name(owner, what)}: expected a C-contiguous CUDA array, got shape "
                    f"{tuple(a.shape)} with strides {tuple(a.strides)}; make it contiguous "
                    "first (tensor.contiguous(), cupy.ascontiguousarray)")
            return a
        raise TypeError(f"{_owner_name(owner, what)}: expected a numpy.ndarray or a CUDA "
                        f"array, got {type(x).__name__}")


CPU = Device("cpu")
_CUDA = []  # Device("cuda"), made on first use (checking availability once)


def _cuda_device():
    if not _CUDA:
        _CUDA.append(Device("cuda"))
    return _CUDA[0]


def device_of(array) -> Device:
    """The device an array lives on."""
    if isinstance(array, np.ndarray):
        return CPU
    from . import cuda

    if cuda.is_cuda_array(array):
        return _cuda_device()
    raise TypeError(f"expected a numpy.ndarray or a CUDA array, got {type(array).__name__}")


def to_numpy(array) -> np.ndarray:
    """A host (NumPy) copy of a CUDA array, or ``array`` itself as NumPy."""
    if isinstance(array, np.ndarray):
        return array
    from . import cuda

    if cuda.is_cuda_array(array):
        return cuda.as_device_array(array).copy_to_host()
    return np.asarray(array)


def copy_into(dst, src):
    """Overwrite the array ``dst`` (on any device) with the values of ``src`` (host)."""
    if isinstance(dst, np.ndarray):
        dst[...] = src
    else:
        dst.copy_to_device(np.ascontiguousarray(np.broadcast_to(to_numpy(src), dst.shape),
                                                dtype=dst.dtype))
