"""Devices: where arrays live and kernels run.

A ``Device`` allocates arrays and moves them in and out. CPU arrays are NumPy arrays.
The CUDA backend (``fastnet[cuda]``) is not part of this build yet: asking for it
raises a clear error instead of failing later inside a kernel.
"""
from __future__ import annotations

import numpy as np

_NAMES = ("cpu", "cuda")


def is_available(name: str = "cuda") -> bool:
    """Whether kernels can run on ``name`` in this process."""
    return name == "cpu"


class Device:
    """``Device("cpu")``; compares equal to its name, prints as its name."""

    __slots__ = ("type",)

    def __init__(self, name: "str | Device" = "cpu"):
        if isinstance(name, Device):
            name = name.type
        if not isinstance(name, str) or name.split(":")[0] not in _NAMES:
            raise ValueError(f"unknown device {name!r}: expected one of {', '.join(_NAMES)}")
        name = name.split(":")[0]
        if not is_available(name):
            raise RuntimeError(
                f"device {name!r} is not available: this fastnet build has no CUDA "
                "backend yet; use device 'cpu'"
            )
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
        return np.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype=dtype)

    def asarray(self, x, dtype=None):
        """``x`` on this device (no copy when it is already there with that dtype)."""
        return np.ascontiguousarray(x, dtype=dtype)


CPU = Device("cpu")


def device_of(array) -> Device:
    """The device an array lives on."""
    if isinstance(array, np.ndarray):
        return CPU
    raise TypeError(f"expected a numpy.ndarray, got {type(array).__name__}")


def to_numpy(array) -> np.ndarray:
    """A host (NumPy) copy or view of ``array``."""
    return np.asarray(array)
