"""Inverted dropout kernels (CPU).

The mask is a pure function of (seed, flat index) through a counter-based hash
(SplitMix64's finaliser), not of a stateful generator: it is the same whatever the
thread count or schedule, and another backend can reproduce it bit for bit.
Element i is kept when the hash's top 24 bits are >= round(p * 2^24). Backward kernels
overwrite their outputs. Both multiply by the mask's factor (scale or 0) as PyTorch does,
so NaN and inf are never dropped to 0.
"""
import numpy as np
from numba import njit, prange

from ._jit import parallel_kernel

_U24 = 1 << 24


@njit(inline="always")
def keep_bits(seed, i):
    """24 uniform bits for element i of the mask drawn with ``seed`` (uint64)."""
    z = seed + np.uint64(i) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return z >> np.uint64(40)


@parallel_kernel
def _dropout_forward(out, mask, x, threshold, scale, seed):
    s = x.dtype.type(scale)
    for i in prange(x.size):
        keep = keep_bits(seed, i) >= threshold
        mask[i] = keep
        # NOTE: a dropped element is multiplied by 0, not replaced by it, as in PyTorch: a
        # NaN or inf input gives NaN wherever it lands (and -x gives -0.0)
        out[i] = x[i] * (s if keep else x.dtype.type(0))


@parallel_kernel
def _dropout_backward(dx, dout, mask, scale):
    s = dout.dtype.type(scale)
    for i in prange(dout.size):
        dx[i] = dout[i] * (s if mask[i] else dout.dtype.type(0))


def _scale(p):
    return 0.0 if p >= 1 else 1.0 / (1.0 - p)


def dropout_forward(out, mask, x, p, seed):
    """x (...) -> out (...) = x * mask / (1 - p), mask (...) uint8 (1 = kept);
    p in [0, 1], seed an int"""
    threshold = np.uint64(min(round(p * _U24), _U24))
    _dropout_forward(out.reshape(-1), mask.reshape(-1), x.reshape(-1), threshold,
                     _scale(p), np.uint64(seed % (1 << 64)))


def dropout_backward(dx, dout, mask, p):
    """dout (...), mask (...) -> dx (...) = dout * mask / (1 - p)"""
    _dropout_backward(dx.reshape(-1), dout.reshape(-1), mask.reshape(-1), _scale(p))
