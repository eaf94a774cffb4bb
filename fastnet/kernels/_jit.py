"""Shared compile options for the CPU kernels.

NOTE for developers: Numba's on-disk cache (cache=True) is keyed on each kernel's own
source file. A kernel that inlines a helper from another module (dense.py uses
activations.apply_activation) keeps its stale cached code when only the helper's module
changes: clear fastnet/kernels/__pycache__ after editing a shared helper.
"""
import functools
import types

import numpy as np
from numba import njit

# NOTE: every fast-math flag except nnan/ninf: max pooling pads with -inf and the stable
# softmax / sigmoid rely on exp() overflowing to inf and 1/inf == 0, which LLVM may
# otherwise assume never happens.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
# Without "reassoc", for kernels whose accuracy depends on evaluation order: LLVM would
# otherwise rewrite (x - m) - logsum as x - (m + logsum) (see row_max_logsumexp).
FASTMATH_ORDERED = FASTMATH - {"reassoc"}

# Below this many elements a kernel runs serially on the calling thread: waking Numba's
# thread pool costs microseconds (tens of them once its threads have gone to sleep),
# more than small tensors take to process.
PARALLEL_MIN_WORK = 1 << 15


class ParallelKernel:
    """A ``prange`` kernel compiled twice, parallel and serial, called as one function:
    the parallel build when the largest array argument has ``PARALLEL_MIN_WORK``
    elements or more, the serial one otherwise. Both builds are cached on disk
    (``cache=True``) and release the GIL (``nogil``), so several Python threads can run
    kernels at once."""

    def __init__(self, fn, fastmath):
        # NOTE: error_model="numpy": a float division by zero gives inf / NaN, as in
        # NumPy, instead of a check that raises ZeroDivisionError; that check kept the
        # serial builds' loops from vectorising (prange bodies already use this model).
        options = dict(cache=True, nogil=True, fastmath=fastmath, error_model="numpy")
        self.parallel = njit(parallel=True, **options)(fn)
        # a copy under another name: Numba's cache files are named after the function,
        # so the two builds must not share one
        serial_fn = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial",
                                       fn.__defaults__, fn.__closure__)
        serial_fn.__qualname__ = fn.__qualname__ + "_serial"
        self.serial = njit(**options)(serial_fn)
        self.py_func = fn
        functools.update_wrapper(self, fn)

    def __call__(self, *args):
        work = 0
        for a in args:
            if isinstance(a, np.ndarray) and a.size > work:
                work = a.size
        build = self.parallel if work >= PARALLEL_MIN_WORK else self.serial
        return build(*args)

    def dispatchers(self):
        return (self.parallel, self.serial)


def parallel_kernel(fn):
    return ParallelKernel(fn, FASTMATH)


def parallel_kernel_ordered(fn):
    return ParallelKernel(fn, FASTMATH_ORDERED)
