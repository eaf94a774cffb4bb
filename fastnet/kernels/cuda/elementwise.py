"""Elementwise array arithmetic (CUDA), one thread per element over flat views, the CPU
kernels' maths (``fastnet/kernels/elementwise.py``): ``add`` and ``accumulate``.
All arrays of one call are C-contiguous device arrays with the same shape (but
``swap_axes12``'s, a layout copy).
"""
from numba import cuda

from . import _launch
from ._launch import launch_1d


@cuda.jit
def _accumulate_kernel(out, x):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] += x[i]


def accumulate(out, x):
    """out (...), x (...) -> out (...) += x: gradient accumulation across backward passes"""
    grid, threads = launch_1d(out.size)
    _accumulate_kernel[grid, threads](_launch.flat(out), _launch.flat(x))


@cuda.jit
def _add_kernel(out, a, b):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = a[i] + b[i]


def add(out, a, b):
    """a (...), b (...) -> out (...) = a + b: a residual block's sum and its input gradient"""
    grid, threads = launch_1d(out.size)
    _add_kernel[grid, threads](_launch.flat(out), _launch.flat(a), _launch.flat(b))


@cuda.jit
def _divide_kernel(out, x, d):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = x[i] / d


def divide_into(out, x, d):
    """x (...), d scalar -> out (...) = x / d: the average of gradients summed over MPI
    ranks in CUDA buffers (fastnet/distributed.py; not an op of the dispatch table)"""
    grid, threads = launch_1d(out.size)
    _divide_kernel[grid, threads](_launch.flat(out), _launch.flat(x), out.dtype.type(d))


@cuda.jit
def _swap_axes12_kernel(out, x):
    _, b, c = x.shape
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        a = i // (c * b)
        r = i - a * (c * b)
        k = r // b
        out[a, k, r - k * b] = x[a, r - k * b, k]


def swap_axes12(out, x):
    """x (A, B, C) -> out (A, C, B), a C-contiguous copy with the last two axes swapped:
    the layout change of the (N, C, T) cross-entropy (Device.swap_last_axes; not an op of
    the dispatch table). One thread per output element (coalesced writes)."""
    grid, threads = launch_1d(out.size)
    _swap_axes12_kernel[grid, threads](out, x)
