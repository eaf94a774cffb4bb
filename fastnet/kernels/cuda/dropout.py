"""Inverted dropout kernels (CUDA).

The mask is the CPU kernels' bit for bit: a pure function of (seed, flat index) through
SplitMix64's finaliser; element i is kept when the hash's top 24 bits are
>= round(p * 2^24). Backward kernels overwrite their outputs; ``dx`` may alias ``dout``.
"""
import numpy as np
from numba import cuda, uint64

from . import _launch
from ._launch import launch_1d

_U24 = 1 << 24


@cuda.jit(device=True, inline=True)
def _keep_bits(seed, i):
    """24 uniform bits for element i of the mask drawn with ``seed``.

    NOTE: uint64 throughout, wrapping like the CPU's: numba types uint64 mixed with a
    signed integer as float64, hence the explicit uint64 constants and index.
    """
    z = seed + uint64(i) * uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> uint64(30))) * uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> uint64(27))) * uint64(0x94D049BB133111EB)
    z = z ^ (z >> uint64(31))
    return z >> uint64(40)


@cuda.jit
def _dropout_forward_kernel(out, mask, x, threshold, scale, seed):
    zero = x.dtype.type(0)
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        keep = _keep_bits(seed, i) >= threshold
        mask[i] = keep
        out[i] = x[i] * (scale if keep else zero)  # NaN * 0 stays NaN, as on the CPU


@cuda.jit
def _dropout_backward_kernel(dx, dout, mask, scale):
    zero = dout.dtype.type(0)
    for i in range(cuda.grid(1), dout.size, cuda.gridsize(1)):
        dx[i] = dout[i] * (scale if mask[i] else zero)


def _scale(p, dtype):
    return _launch.scalar(0.0 if p >= 1 else 1.0 / (1.0 - p), dtype)


def dropout_forward(out, mask, x, p, seed):
    """x (...) -> out (...) = x * mask / (1 - p), mask (...) uint8 (1 = kept);
    p in [0, 1], seed an int"""
    threshold = np.uint64(min(round(p * _U24), _U24))
    x = _launch.flat(x)
    grid, threads = launch_1d(x.size)
    _dropout_forward_kernel[grid, threads](_launch.flat(out), _launch.flat(mask), x, threshold,
                                           _scale(p, x.dtype), np.uint64(int(seed) % (1 << 64)))


def dropout_backward(dx, dout, mask, p):
    """dout (...), mask (...) -> dx (...) = dout * mask / (1 - p)"""
    dout = _launch.flat(dout)
    grid, threads = launch_1d(dout.size)
    _dropout_backward_kernel[grid, threads](_launch.flat(dx), dout, _launch.flat(mask),
                                            _scale(p, dout.dtype))
