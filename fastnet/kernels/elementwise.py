"""Elementwise array arithmetic (CPU), one pass over flat views: ``add`` (a residual
block's sum and its input gradient) and ``accumulate`` (gradient accumulation across
backward passes). Arrays of one call have the same shape; the result has ``out``'s dtype.
"""
from numba import prange

from ._jit import parallel_kernel


@parallel_kernel
def _accumulate(out, x):
    for i in prange(out.size):
        out[i] += x[i]


def accumulate(out, x):
    """out (...), x (...) -> out (...) += x: gradient accumulation across backward passes"""
    _accumulate(out.reshape(-1), x.reshape(-1))


@parallel_kernel
def _add(out, a, b):
    for i in prange(out.size):
        out[i] = a[i] + b[i]


def add(out, a, b):
    """a (...), b (...) -> out (...) = a + b: a residual block's sum and its input gradient"""
    _add(out.reshape(-1), a.reshape(-1), b.reshape(-1))
