"""Embedding kernels (CUDA): a row gather forward and a deterministic scatter-add backward.

Indices are flat, (M,), of any integer dtype, in [0, V) (checked before any kernel runs);
they may be a NumPy array (copied to the device for the forward). The backward sorts the
indices on the host (a stable sort: a device-to-host copy of M integers when they live
on the GPU), then one thread per (row, feature) of dweight adds its positions' gradients
in ascending position order: no atomics, no race, bitwise the CPU kernel's result.
"""
import numpy as np
from numba import cuda

from ... import cuda as fcuda
from ._launch import launch_1d


@cuda.jit
def _embedding_forward_kernel(out, indices, weight):
    m_count, d = out.shape
    for i in range(cuda.grid(1), m_count * d, cuda.gridsize(1)):
        m = i // d
        j = i - m * d
        out[m, j] = weight[indices[m], j]


@cuda.jit
def _embedding_backward_kernel(dweight, dout, order, starts, padding_idx):
    v_count, d = dweight.shape
    for i in range(cuda.grid(1), v_count * d, cuda.gridsize(1)):
        v = i // d
        j = i - v * d
        acc = dweight.dtype.type(0)
        if v != padding_idx:
            for k in range(starts[v], starts[v + 1]):
                acc += dout[order[k], j]
        dweight[v, j] = acc


def _on_device(a):
    return fcuda.to_device(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a


def embedding_forward(out, indices, weight):
    """indices (M,) int in [0, V), weight (V, D) -> out (M, D) = weight[indices]"""
    grid, threads = launch_1d(out.shape[0] * out.shape[1])
    _embedding_forward_kernel[grid, threads](out, _on_device(indices), _on_device(weight))


def embedding_backward(dweight, dout, indices, padding_idx):
    """dout (M, D), indices (M,) int in [0, V) -> dweight (V, D) = the sum of dout's rows
    per index (0 for unused rows and for row padding_idx; padding_idx None or in [0, V))"""
    v_count = dweight.shape[0]
    host = indices if isinstance(indices, np.ndarray) else indices.copy_to_host()
    host = host.astype(np.int64, copy=False)
    order = np.argsort(host, kind="stable")
    starts = np.zeros(v_count + 1, np.int64)
    np.cumsum(np.bincount(host, minlength=v_count), out=starts[1:])
    grid, threads = launch_1d(v_count * dweight.shape[1])
    _embedding_backward_kernel[grid, threads](
        dweight, _on_device(dout), fcuda.to_device(order.astype(np.int64)),
        fcuda.to_device(starts), np.int64(-1 if padding_idx is None else padding_idx))
