"""Shared compile options for the CPU kernels, and what the JIT costs this process.

NOTE for developers: Numba's on-disk cache (cache=True) is keyed on each kernel's own
source file. A kernel that inlines a helper from another module (dense.py uses
activations.apply_activation) keeps its stale cached code when only the helper's module
changes: clear fastnet/kernels/__pycache__ after editing a shared helper.
"""
import contextlib
import functools
import sys
import threading
import time
import types

import numpy as np
from numba import njit
from numba.core import event

# NOTE: every fast-math flag except nnan/ninf: max pooling pads with -inf and the stable
# softmax / sigmoid rely on exp() overflowing to inf and 1/inf == 0, which LLVM may
# otherwise assume never happens.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
# Without "reassoc", for kernels whose accuracy depends on evaluation order: LLVM would
# otherwise rewrite (x - m) - logsum as x - (m + logsum) (see row_max_logsumexp).
FASTMATH_ORDERED = FASTMATH - {"reassoc"}

# Below this many elements a kernel runs serially on the calling thread, where starting
# the pool costs more than it saves. Under Numba's OpenMP layer with workers asleep that
# was ~35 us, and 1 << 18 was measured as the break-even (relu ~1M elements, SGD ~400K,
# sigmoid and Adam ~300K); TBB's pool (fastnet/runtime.py) starts in 1.5-18 us, and
# 1 << 16 measured best on the training steps (2026-12, 2-core development machine,
# alternating in one process: MLP 1.60 -> 1.48 ms, LeNet-5 3.84 -> 3.69 ms, ResNet-small
# 87.8 -> 87.2 ms; LeNet-5 inference at batch 64 the same, at batch 1 within noise).
# Compute-heavy kernels (the convolutions and GEMMs: many multiply-adds per element of
# their largest array) parallelise from COMPUTE_FACTOR times fewer elements: 32768, as
# before (a factor of 8 measured the same on the steps, but the first CLI run on the 8x8
# digits then compiled the parallel convolutions too: 25 s instead of 10.6 s).
PARALLEL_MIN_WORK = 1 << 16
COMPUTE_FACTOR = 2


def serial_only():
    """From now on every kernel of this process runs its serial build (a child forked after
    Numba's pool started: see fastnet/runtime.py)."""
    global PARALLEL_MIN_WORK
    PARALLEL_MIN_WORK = sys.maxsize


def _parallel_kernel(fn, fastmath, compute=False):
    """A ``prange`` kernel compiled twice, parallel and serial, called as one function:
    the parallel build when an array argument has ``PARALLEL_MIN_WORK`` elements or more
    (fewer for compute kernels), the serial one otherwise. Both builds are cached on disk
    (``cache=True``) and release the GIL (``nogil``), so several Python threads can run
    kernels at once. The function has ``.parallel``, ``.serial`` (the two Numba
    dispatchers), ``.py_func`` and ``.dispatchers()``.

    (A plain function rather than an object with ``__call__``: a kernel call on a small
    array costs ~0.5 us of Python, and the class's call took half of that.)"""
    # NOTE: error_model="numpy": a float division by zero gives inf / NaN, as in
    # NumPy, instead of a check that raises ZeroDivisionError; that check kept the
    # serial builds' loops from vectorising (prange bodies already use this model).
    # NOTE: no_cfunc_wrapper: Numba otherwise also builds, optimises and machine-codes a C
    # wrapper of every kernel, for passing it as a first-class function to other jitted
    # code, which fastnet never does (~4% of a first run's compile time; the kernel itself
    # and its Python wrapper are unchanged).
    options = dict(cache=True, nogil=True, fastmath=fastmath, error_model="numpy",
                   no_cfunc_wrapper=True)
    parallel = njit(parallel=True, **options)(fn)
    # a copy under another name: Numba's cache files are named after the function,
    # so the two builds must not share one
    serial_fn = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial",
                                   fn.__defaults__, fn.__closure__)
    serial_fn.__qualname__ = fn.__qualname__ + "_serial"
    serial = njit(**options)(serial_fn)
    factor = COMPUTE_FACTOR if compute else 1
    ndarray = np.ndarray

    def call(*args):
        threshold = PARALLEL_MIN_WORK // factor  # (read per call: tests change it)
        for a in args:
            if isinstance(a, ndarray) and a.size >= threshold:
                return parallel(*args)
        return serial(*args)

    functools.update_wrapper(call, fn)
    call.parallel, call.serial, call.py_func = parallel, serial, fn
    call.dispatchers = lambda: (parallel, serial)
    return call


def is_parallel_kernel(obj):
    """Whether obj was made by parallel_kernel / compute_kernel / parallel_kernel_ordered."""
    return callable(getattr(obj, "dispatchers", None)) and hasattr(obj, "serial")


def parallel_kernel(fn):
    return _parallel_kernel(fn, FASTMATH)


def compute_kernel(fn):
    """A parallel_kernel with many operations per element (see COMPUTE_FACTOR)."""
    return _parallel_kernel(fn, FASTMATH, compute=True)


def parallel_kernel_ordered(fn):
    return _parallel_kernel(fn, FASTMATH_ORDERED)


def parallel_kernel_exact(fn):
    """A parallel_kernel without fast-math: IEEE divisions, square roots and inf / NaN
    rules, for kernels that reproduce PyTorch's arithmetic step by step (hardsigmoid's
    division by 6, lp_pool2d's 1 / sqrt(0) = inf and its divisions by the window area;
    "afn" and "arcp" turn these into reciprocal estimates and products)."""
    return _parallel_kernel(fn, False)


class KernelFamily:
    """Parallel kernels specialised on compile-time constants: ``family[key]`` is the
    kernel ``make(*key)`` returns (a closure over the constants), wrapped as
    ``compute_kernel`` / ``parallel_kernel``, built on first use.

    A kernel with runtime switches between many inlined code paths (tile shapes, the
    activation of an epilogue, a layout) compiles all of them for every signature; one
    kernel per key compiles only the paths a model uses (the first LeNet-5 step with
    an empty cache went from 47-50 s to 20-22 s). Numba's cache keys a closure on the values it closes over, so
    every member is cached on disk under its key."""

    def __init__(self, make, compute=False, fastmath=FASTMATH):
        self._make = make
        self._compute = compute
        self._fastmath = fastmath
        self._members = {}
        functools.update_wrapper(self, make)

    def __getitem__(self, key):
        k = self._members.get(key)
        if k is None:
            fn = self._make(*key) if isinstance(key, tuple) else self._make(key)
            k = self._members[key] = _parallel_kernel(fn, self._fastmath, compute=self._compute)
        return k

    def members(self):
        """{key: kernel} of the members built so far."""
        return dict(self._members)

    def dispatchers(self):
        return tuple(d for k in self._members.values() for d in k.dispatchers())


def compute_family(make):
    """A KernelFamily of compute kernels (see compute_kernel)."""
    return KernelFamily(make, compute=True)


def parallel_family(make):
    """A KernelFamily of memory-bound kernels (see parallel_kernel)."""
    return KernelFamily(make)


def parallel_family_ordered(make):
    """A KernelFamily of parallel_kernel_ordered kernels."""
    return KernelFamily(make, fastmath=FASTMATH_ORDERED)


# ---- what the JIT costs: the Trainer's samples/s leaves it out, the first run says so ----
class _JitClock(event.Listener):
    """Seconds spent under Numba's compiler lock, which Numba takes to compile a kernel for
    a new signature and to load one from its on-disk cache; nested acquisitions (a kernel
    compiling its callees) count once per thread."""

    def __init__(self):
        self.seconds = 0.0
        self._local = threading.local()

    def on_start(self, ev):
        depth = getattr(self._local, "depth", 0)
        if depth == 0:
            self._local.start = time.perf_counter()
        self._local.depth = depth + 1

    def on_end(self, ev):
        self._local.depth -= 1
        if self._local.depth == 0:
            self.seconds += time.perf_counter() - self._local.start


_clock = None


def jit_seconds():
    """Seconds this process has spent compiling kernels or loading them from Numba's cache
    since the first call of this function (which starts the count and returns 0.0)."""
    global _clock
    if _clock is None:
        _clock = _JitClock()
        event.register("numba:compiler_lock", _clock)
    return _clock.seconds


class _FirstCompile(event.Listener):
    def __init__(self, callback):
        self.callback = callback
        self.fired = False

    def on_start(self, ev):
        # "numba:compile" fires on a cache miss only: a kernel found in the cache is loaded
        # without it. A user's own Numba functions are not fastnet's to announce.
        data = ev.data if isinstance(ev.data, dict) else {}
        module = getattr(getattr(data.get("dispatcher"), "py_func", None), "__module__", None)
        if not self.fired and (module or "").startswith("fastnet."):
            self.fired = True
            self.callback()

    def on_end(self, ev):
        pass


@contextlib.contextmanager
def on_first_compile(callback):
    """Within the block, ``callback()`` runs (once, in the compiling thread, before the
    compilation) when Numba starts compiling one of fastnet's kernels because its on-disk
    cache does not have it: on a fresh install, after an upgrade, or for a shape of
    arguments (dtype, layout, a new family member) not seen before."""
    listener = _FirstCompile(callback)
    with event.install_listener("numba:compile", listener):
        yield listener
