"""Embedding kernels (CPU): a row gather forward and a deterministic scatter-add backward.

Indices are flat, (M,), of any integer dtype, in [0, V): the layer flattens its indices
(any shape) and views the output as indices.shape + (D,). The kernels assume the indices
are in range (``Embedding`` and ``kernel()``'s checks refuse others before any kernel
runs). Backward kernels overwrite their outputs.
"""
import numpy as np
from numba import njit, prange

from ._jit import parallel_kernel, parallel_kernel_ordered


@parallel_kernel
def _embedding_forward(out, indices, weight):
    d = weight.shape[1]
    for m in prange(indices.size):
        src, dst = weight[indices[m]], out[m]
        for j in range(d):
            dst[j] = src[j]


def embedding_forward(out, indices, weight):
    """indices (M,) int in [0, V), weight (V, D) -> out (M, D) = weight[indices]"""
    _embedding_forward(out, indices, weight)


@njit(inline="always")
def _bucket(order, starts, indices):
    """A stable counting sort of the indices: the positions m with indices[m] == v are
    order[starts[v]:starts[v + 1]], ascending."""
    starts[:] = 0
    for m in range(indices.size):
        starts[np.int64(indices[m]) + 1] += 1  # (int64: uint64 + 1 would be a float)
    for v in range(1, starts.size):
        starts[v] += starts[v - 1]
    cursor = starts[:-1].copy()
    for m in range(indices.size):
        v = np.int64(indices[m])
        order[cursor[v]] = m
        cursor[v] += 1


# NOTE: ordered fast-math (no reassoc): each row of dweight is written by one thread, which
# adds its positions' gradients to 0 in ascending position order: bitwise the serial loop
# `for m: dweight[indices[m]] += dout[m]`, whatever the thread count or build.
@parallel_kernel_ordered
def _embedding_backward(dweight, dout, indices, order, starts, padding_idx):
    _bucket(order, starts, indices)  # (serial, before the parallel loop)
    v_count, d = dweight.shape
    zero = dweight.dtype.type(0)
    for v in prange(v_count):
        g = dweight[v]
        for j in range(d):
            g[j] = zero
        # NOTE: int64(v): a parallel loop's index is unsigned, and uint64 == int64 compares
        # as doubles in Numba
        if np.int64(v) == padding_idx:
            continue  # the padding row never receives a gradient (as PyTorch)
        for k in range(starts[v], starts[v + 1]):
            src = dout[order[k]]
            for j in range(d):
                g[j] += src[j]


def embedding_backward(dweight, dout, indices, padding_idx):
    """dout (M, D), indices (M,) int in [0, V) -> dweight (V, D) = the sum of dout's rows
    per index (0 for unused rows and for row padding_idx; padding_idx None or in [0, V))"""
    v_count = dweight.shape[0]
    order = np.empty(indices.size, np.int64)
    starts = np.empty(v_count + 1, np.int64)
    pad = -1 if padding_idx is None else int(padding_idx)
    _embedding_backward(dweight, dout, indices, order, starts, pad)
