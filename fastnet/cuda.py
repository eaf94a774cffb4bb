"""The CUDA backend's runtime: availability, device memory, transfers.

Everything here imports numba-cuda lazily: ``import fastnet`` works without it.
``pip install "fastnet[cuda]"`` installs numba-cuda (the maintained CUDA target for
Numba); ``NUMBA_ENABLE_CUDASIM=1`` (set before Numba is imported) runs the same kernels
in Numba's CUDA simulator, on the CPU, which is how the test suite checks them without
a GPU.

Device memory comes from a caching allocator, as in PyTorch: an array's block goes back
to fastnet's pool when the last array or view on it is garbage-collected, and the next
request of that size takes it from there. A training loop therefore allocates device
memory during its first step only; ``memory_stats()`` shows it and ``empty_cache()``
gives the cached blocks back to the driver. All fastnet kernels run on the default
stream, in order, so a block released by one step is never reused while a kernel that
reads it is still queued.
"""
from __future__ import annotations

import collections
import importlib.util
import math
import os
import threading
import weakref

import numpy as np

__all__ = ["is_available", "unavailable_reason", "synchronize", "memory_stats",
           "empty_cache", "is_cuda_array", "simulator"]


def simulator() -> bool:
    """Whether Numba's CUDA simulator was chosen (``NUMBA_ENABLE_CUDASIM=1``)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"


def unavailable_reason() -> "str | None":
    """None when CUDA kernels can run here, else why not (one sentence)."""
    if importlib.util.find_spec("numba_cuda") is None:
        return ('numba-cuda is not installed: pip install "fastnet[cuda]" (it brings '
                "numba-cuda[cu12]; a CUDA driver and an NVIDIA GPU are needed to run kernels)")
    try:
        from numba import cuda
    except Exception as e:  # a broken CUDA toolkit install
        return f"numba-cuda failed to import: {e}"
    if simulator():
        return None
    try:
        if cuda.is_available():
            return None
    except Exception as e:  # pragma: no cover - driver errors
        return f"the CUDA driver failed: {e}"
    return ("no usable CUDA GPU and driver were found (numba.cuda.is_available() is False; "
            "numba.cuda.detect() says why)")


def is_available() -> bool:
    """Whether fastnet can run CUDA kernels in this process (a GPU, or the simulator)."""
    return unavailable_reason() is None


def synchronize():
    """Wait for every queued kernel and copy to finish (for timing)."""
    from numba import cuda

    cuda.synchronize()


def is_cuda_array(x) -> bool:
    """A Numba device array or any object with ``__cuda_array_interface__`` (CuPy,
    PyTorch CUDA tensors)."""
    if isinstance(x, np.ndarray):
        return False
    if hasattr(x, "__cuda_array_interface__"):
        return True
    # the simulator's device arrays have no interface, only this marker
    return bool(getattr(x, "__cuda_ndarray__", False)) and simulator()


# ---- the caching allocator ------------------------------------------------------------

_GRANULE = 512  # bytes: every block is a multiple of this, so close sizes share blocks


class _Pool:
    """Device blocks by rounded size; a block is lent out wrapped in a "lease" object
    that every array and view on it references, and comes back when the lease dies."""

    def __init__(self):
        self._free = {}  # rounded size -> [raw blocks]
        self._returned = collections.deque()  # (size, raw) given back, not yet in _free
        self._lock = threading.Lock()
        self.device_allocations = 0  # blocks asked of the driver, ever
        self.reserved_bytes = 0      # bytes held: lent out plus cached
        self.cached_bytes = 0

    def _give_back(self, size, raw):
        # NOTE: called by a lease's finalizer, which the garbage collector can run at any
        # point, also inside this pool's locked regions: taking the lock here deadlocked
        # (seen in the simulator). An append to a deque is atomic; _drain files it later.
        self._returned.append((size, raw))

    def _drain(self):
        """Move the returned blocks into the free lists (the caller holds the lock)."""
        while self._returned:
            size, raw = self._returned.popleft()
            self._free.setdefault(size, []).append(raw)
            self.cached_bytes += size

    def stats(self):
        with self._lock:
            self._drain()
            return {"device_allocations": self.device_allocations,
                    "reserved_bytes": self.reserved_bytes, "cached_bytes": self.cached_bytes}

    def empty(self, shape, dtype):
        dtype = np.dtype(dtype)
        shape = tuple(int(s) for s in (shape if isinstance(shape, (tuple, list)) else (shape,)))
        nbytes = math.prod(shape) * dtype.itemsize
        size = max(_GRANULE, -(-nbytes // _GRANULE) * _GRANULE)
        with self._lock:
            self._drain()
            blocks = self._free.get(size)
            raw = blocks.pop() if blocks else None
            if raw is not None:
                self.cached_bytes -= size
        if raw is None:
            raw = self._allocate(size)
        return (_sim_lease if simulator() else _gpu_lease)(self, raw, size, shape, dtype)

    def _allocate(self, size):
        try:
            raw = _raw_alloc(size)
        except Exception as e:
            if "OUT_OF_MEMORY" not in str(e).upper().replace(" ", "_"):
                raise
            self.empty_cache()  # give the driver back what we cache, then try once more
            raw = _raw_alloc(size)
        with self._lock:
            self.device_allocations += 1
            self.reserved_bytes += size
        return raw

    def empty_cache(self):
        with self._lock:
            self._drain()
            freed = sum(size * len(b) for size, b in self._free.items())
            self._free.clear()
            self.cached_bytes = 0
            self.reserved_bytes -= freed


def _raw_alloc(size):
    if simulator():
        return np.empty(size, dtype=np.uint8)
    from numba import cuda

    return cuda.current_context().memalloc(size)


class _SimLease:
    """The simulator's lease: NumPy views taken through ``__array_interface__`` keep this
    object as their base, so the block stays lent while any view lives."""

    def __init__(self, raw, size):
        self.raw = raw
        self.__array_interface__ = {"data": (raw.ctypes.data, False), "shape": (size,),
                                    "typestr": "|u1", "version": 3}


def _sim_lease(pool, raw, size, shape, dtype):
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    lease = _SimLease(raw, size)
    weakref.finalize(lease, pool._give_back, size, raw)
    count = math.prod(shape)
    host = np.asarray(lease)[:count * dtype.itemsize].view(dtype).reshape(shape)
    return FakeCUDAArray(host)


def _gpu_lease(pool, raw, size, shape, dtype):
    from numba.cuda.cudadrv.devicearray import DeviceNDArray
    from numba.cuda.cudadrv.driver import MemoryPointer

    # NOTE: views and slices of the array point at this MemoryPointer as their owner, so
    # its finalizer (the block's return to the pool) runs only when the last one dies.
    lease = MemoryPointer(raw.context, raw.device_pointer, size,
                          finalizer=_Releaser(pool, size, raw))
    return DeviceNDArray(shape, _c_strides(shape, dtype.itemsize), dtype, gpu_data=lease)


def _c_strides(shape, itemsize):
    strides, step = [], itemsize
    for d in reversed(shape):
        strides.append(step)
        step *= d
    return tuple(reversed(strides))


class _Releaser:
    __slots__ = ("pool", "size", "raw")

    def __init__(self, pool, size, raw):
        self.pool, self.size, self.raw = pool, size, raw

    def __call__(self):
        self.pool._give_back(self.size, self.raw)


_POOL = _Pool()


def empty(shape, dtype):
    """An uninitialised device array from the pool."""
    return _POOL.empty(shape, dtype)


def zeros(shape, dtype):
    a = _POOL.empty(shape, dtype)
    if simulator():
        a._ary[...] = 0
    elif a.size:
        a.gpu_data.memset(0, a.nbytes)
    return a


def to_device(host, dtype=None):
    """A device copy of a host array (C-contiguous, ``dtype`` if given)."""
    host = np.ascontiguousarray(host, dtype=dtype)
    a = _POOL.empty(host.shape, host.dtype)
    if host.size:
        a.copy_to_device(host)
    return a


def as_device_array(x):
    """A Numba device array over ``x`` (a device array, or any object with
    ``__cuda_array_interface__``), sharing its memory."""
    if hasattr(x, "copy_to_host"):  # already one (or the simulator's)
        return x
    from numba import cuda

    return cuda.as_cuda_array(x)


def memory_stats() -> dict:
    """``device_allocations``: blocks fastnet asked the driver for so far (flat across
    training steps after the first); ``reserved_bytes``: device memory fastnet holds;
    ``cached_bytes``: the part of it free for reuse."""
    return _POOL.stats()


def empty_cache():
    """Give the cached (free) blocks back to the driver."""
    _POOL.empty_cache()
