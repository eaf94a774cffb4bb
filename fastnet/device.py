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


class Device:
    """``Device("cpu")`` or ``Device("cuda")``; compares equal to its name, prints as it."""

    __slots__ = ("type",)

    def __init__(self, name: "str | Device" = "cpu"):
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
        self.type = name

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
        if self.type == "cpu":
            return np.empty(shape, dtype=dtype)
        from . import cuda

        return cuda.empty(shape, dtype)

    def zeros(self, shape, dtype):
        if self.type == "cpu":
            return np.zeros(shape, dtype=dtype)
        from . import cuda

        return cuda.zeros(shape, dtype)

    def asarray(self, x, dtype=None):
        """``x`` on this device, C-contiguous (no copy when it is already there with that
        dtype). Changing the dtype of a CUDA array goes through the host."""
        if self.type == "cpu":
            return np.ascontiguousarray(to_numpy(x), dtype=dtype)
        from . import cuda

        if cuda.is_cuda_array(x):
            a = cuda.as_device_array(x)
            if (dtype is None or a.dtype == np.dtype(dtype)) and a.is_c_contiguous():
                return a
            x = a.copy_to_host()
        return cuda.to_device(np.asarray(x), dtype=dtype)

    def accept(self, x, owner, what=""):
        """``x`` as an array on this device, for ``owner`` (a layer or loss) and ``what``
        (e.g. " labels"), named in the errors: NumPy input is copied to a CUDA device; a
        CUDA array given to the CPU is an error (copies to the host are never implicit)."""
        if self.type == "cpu" and isinstance(x, np.ndarray):
            return x  # the hot path: no repr(owner) unless an error needs it
        owner = (owner if isinstance(owner, str) else repr(owner)) + what
        if self.type == "cpu":
            from . import cuda

            if cuda.is_cuda_array(x):
                raise TypeError(
                    f"{owner}: got a CUDA array but runs on the cpu; move the model with "
                    ".to('cuda'), or the data with fastnet.device.to_numpy(x)")
            raise TypeError(f"{owner}: expected a numpy.ndarray, got {type(x).__name__}")
        from . import cuda

        if isinstance(x, np.ndarray):
            return x  # validated by the caller, then copied with asarray()
        if cuda.is_cuda_array(x):
            a = cuda.as_device_array(x)
            if not a.is_c_contiguous():
                raise ValueError(
                    f"{owner}: expected a C-contiguous CUDA array, got shape "
                    f"{tuple(a.shape)} with strides {tuple(a.strides)}; make it contiguous "
                    "first (tensor.contiguous(), cupy.ascontiguousarray)")
            return a
        raise TypeError(f"{owner}: expected a numpy.ndarray or a CUDA array, got "
                        f"{type(x).__name__}")


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
