"""2-D convolution kernels (CPU), NCHW: the public ops and the choice of path.

- ``implicit_gemm.py`` (+ ``implicit_gemm_dw.py``): every forward, and every backward but
  one, as an implicit GEMM on the register-blocked tiles of _simd/tiles.py, over the
  padded, phase-split input of ``layout.py``; any stride and padding.
- ``direct.py``: backward with dx of a one-channel input at stride 1, where a tile would
  use one of its rows.
- ``im2col.py``: im2col / col2im, public ops for the CUDA twins (no CPU conv uses them).

``kernel_size``, ``stride`` and ``padding`` are (h, w) pairs. Backward kernels overwrite
their outputs; pass ``None`` for an output that is not needed (dx; db without bias).

Paths measured and removed in the restructuring of 2026-12 (both in git history): an
im2col + BLAS GEMM path (every geometry: 1.4-10x slower than the implicit GEMM, and the
NumPy twin of the benchmarks is that very algorithm) and a direct stride-1 forward
(slower on every layer with more than one input channel, no faster on LeNet's first).
"""
from ..codes import ACTIVATIONS
from . import direct, implicit_gemm
from .im2col import col2im, conv_output_size, im2col

__all__ = ["conv2d_forward", "conv2d_backward", "im2col", "col2im", "conv_output_size"]


def conv2d_forward(out, x, w, b, stride, padding, activation=None):
    """x (N, C, H, W), w (O, C, KH, KW), b (O,) | None -> out (N, O, OH, OW)
    = act(conv(x, w) + b); ``activation`` as for dense (None, "relu", ...)."""
    implicit_gemm.forward(out, x, w, b, stride, padding, ACTIVATIONS[activation])


def conv2d_backward(dx, dw, db, dout, x, w, out, stride, padding, activation=None):
    """dout (N, O, OH, OW), x (N, C, H, W), w (O, C, KH, KW), out (the forward output;
    None without activation) -> dx (N, C, H, W) | None, dw (O, C, KH, KW), db (O,) | None"""
    code = ACTIVATIONS[activation]
    if dx is not None and direct.takes_dx(stride, w.shape):
        direct.backward(dx, dw, db, dout, x, w, out, padding, code)
    else:
        implicit_gemm.backward(dx, dw, db, dout, x, w, out, stride, padding, code)
