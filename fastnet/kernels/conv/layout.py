"""The input layout of the CPU convolutions: the batch zero-padded once and split into its
stride phases, and the offsets of the kernel taps in it.

Phase (a, b) of channel c is the plane xp[n, c, a::SH, b::SW] of the padded input (Hq x
Wq; stride 1: one phase, the padded input itself). Output (oh, ow) is column q = oh*Wq +
ow of a run of L = (OH-1)*Wq + OW columns (the Wq - OW columns at the end of each row are
junk), and tap (c, i, j) of every output position reads the *contiguous* run that starts
at ``tap_offsets``[k] + q: the plane of phase (i % SH, j % SW), row i // SH, column
j // SW. Buffers are per-thread workspaces, reused across calls.
"""
import functools
import threading

import numpy as np
from numba import prange

from .._jit import parallel_kernel

_workspaces = threading.local()


def workspace(name, size, dtype):
    """A per-thread, grow-only 1-D scratch buffer of at least ``size`` elements."""
    bufs = _workspaces.__dict__
    key = (name, np.dtype(dtype))
    buf = bufs.get(key)
    if buf is None or buf.size < size:
        buf = bufs[key] = np.empty(size, dtype)
    return buf[:size]


@parallel_kernel
def _pad_phases(xs, x, sh, sw, ph, pw, pb):
    # x (N, C, H, W) -> xs (N, C, PA*PB, Hq, Wq), its zero-padded planes split into the
    # stride phases a < PA, b < PB (those a kernel tap lands on: PA = min(SH, KH)):
    # xs[n, c, a*PB + b, i, j] = x[n, c, SH*i + a - ph, SW*j + b - pw], 0 outside x.
    # Stride 1: one phase, the plain zero-padded input.
    # NOTE: flat unsigned indices: a signed index keeps Numba's wraparound check (and a
    # view per row costs more than the copy on small planes), and the strided gather of
    # a stride-2 conv ran 3x slower through views.
    n_, c_, h, w = x.shape
    p_, hq, wq = xs.shape[2], xs.shape[3], xs.shape[4]
    zero = xs.dtype.type(0)
    xf = x.ravel()
    xsf = xs.ravel()
    swu = np.uint64(sw)
    for nc in prange(n_ * c_):
        for p in range(p_):
            a = p // pb
            b = p - a * pb
            # rows i and columns j that land inside x: [ilo, ihi) x [jlo, jhi)
            ilo = (ph - a + sh - 1) // sh if ph > a else 0
            ihi = min(hq, (h - 1 + ph - a) // sh + 1) if h - 1 + ph - a >= 0 else 0
            jlo = (pw - b + sw - 1) // sw if pw > b else 0
            jhi = min(wq, (w - 1 + pw - b) // sw + 1) if w - 1 + pw - b >= 0 else 0
            cnt = max(jhi - jlo, 0)
            for i in range(hq):
                d0 = np.uint64(((nc * p_ + p) * hq + i) * wq)
                if i < ilo or i >= ihi or cnt == 0:
                    for t in range(wq):
                        xsf[d0 + np.uint64(t)] = zero
                    continue
                for t in range(jlo):
                    xsf[d0 + np.uint64(t)] = zero
                for t in range(jhi, wq):
                    xsf[d0 + np.uint64(t)] = zero
                d0 += np.uint64(jlo)
                s0 = np.uint64((nc * h + sh * i + a - ph) * w + sw * jlo + b - pw)
                if sw == 1:
                    for t in range(cnt):
                        xsf[d0 + np.uint64(t)] = xf[s0 + np.uint64(t)]
                else:
                    for t in range(cnt):
                        xsf[d0 + np.uint64(t)] = xf[s0 + swu * np.uint64(t)]


def phases_of(stride, kernel):
    """(PA, PB): the stride phases of the input that kernel taps land on."""
    return min(stride[0], kernel[0]), min(stride[1], kernel[1])


@functools.lru_cache(maxsize=256)
def tap_offsets(c_, kh, kw, stride, hq, wq, pad_to=1):
    """Offset of tap (c, i, j) from an output position in a phase-split padded image
    (``padded_phases``: C x PA*PB planes of Hq x Wq): the plane of channel c and phase
    (i % SH, j % SW), then row i // SH and column j // SW, for k = (c*KH + i)*KW + j
    (stride 1: c*Hq*Wq + i*Wq + j). Padded with copies of the last offset to a multiple of
    ``pad_to`` taps. Cached per geometry (read-only)."""
    sh, sw = stride
    pa, pb = phases_of(stride, (kh, kw))
    i = np.arange(kh, dtype=np.intp)
    j = np.arange(kw, dtype=np.intp)
    plane = (np.arange(c_, dtype=np.intp)[:, None, None] * (pa * pb)
             + (i % sh)[None, :, None] * pb + (j % sw)[None, None, :])
    offs = (plane * (hq * wq) + (i // sh)[None, :, None] * wq + (j // sw)[None, None, :]).ravel()
    k = offs.size
    offs = np.concatenate([offs, np.full(-(-k // pad_to) * pad_to - k, offs[-1], np.intp)])
    offs.flags.writeable = False
    return offs


def phase_shape(x_shape, stride, padding):
    """(Hq, Wq): the size of each stride phase of the padded input."""
    return (-(-(x_shape[2] + 2 * padding[0]) // stride[0]),
            -(-(x_shape[3] + 2 * padding[1]) // stride[1]))


def padded_phases(x, stride, padding, kernel, slack=0):
    """x (N, C, H, W) zero-padded and split into the stride phases its taps read,
    (N, C, PA*PB, Hq, Wq) (see ``_pad_phases``; stride 1: the padded input), in a workspace,
    returned flat and followed by ``slack`` zeros that the last partial micro-kernel tile
    may read. The whole batch at once: one parallel pass rather than one per chunk."""
    n_, c_ = x.shape[:2]
    hq, wq = phase_shape(x.shape, stride, padding)
    pa, pb = phases_of(stride, kernel)
    size = n_ * c_ * pa * pb * hq * wq
    flat = workspace("xp", size + slack, x.dtype)
    flat[size:] = 0
    _pad_phases(flat[:size].reshape(n_, c_, pa * pb, hq, wq), np.ascontiguousarray(x),
         stride[0], stride[1], padding[0], padding[1], pb)
    return flat
