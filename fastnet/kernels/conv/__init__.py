"""2-D convolution kernels (CPU), NCHW: the public ops and the choice of path.

- ``implicit_gemm.py`` (+ ``implicit_gemm_dw.py``): every forward, and every backward but
  one, as an implicit GEMM on the register-blocked tiles of _simd/tiles.py, over the
  padded, phase-split input of ``layout.py``; any stride and padding.
- ``direct.py``: backward with dx of a one-channel input at stride 1, where a tile would
  use one of its rows.
- ``im2col.py``: im2col / col2im, public ops for the CUDA twins (no CPU conv uses them).
- ``exact_dw.py``: dw from the valid products only, when the fast dw is not finite (an
  inf or NaN input would otherwise spread NaN through the junk columns; see there).
- ``grouped.py``: every conv with dilation > 1 or groups > 1 (torch.nn.Conv2d's options),
  a direct kernel on whole rows; the depthwise conv (groups == C) is its fast case.

With dilation (1, 1) and groups 1 (the defaults) the paths above run exactly as before
these options came (bitwise the same results).

``kernel_size``, ``stride``, ``padding`` and ``dilation`` are (h, w) pairs; ``groups``
splits the channels as in torch.nn.Conv2d: w is (O, C/groups, KH, KW). Backward kernels overwrite
their outputs; pass ``None`` for an output that is not needed (dx; db without bias).

Measured in the restructuring of 2026-12 (2-core AVX-512 development machine, medians of
alternating runs; the removed code is in git history before commit 45c1ad4):
- an im2col + BLAS GEMM path, never taken since the implicit GEMM became the default,
  was removed: forward + backward 1.6-4.0x slower on LeNet-5's, VGG's and the strided
  layers and a ResNet 3x3, equal on the 8x8 digits; but 12-22% *faster* on 1x1 convs
  (ResNet shortcuts), plain GEMMs. A 1x1 path on BLAS is a lead for the speed work, measured
  by the 1x1 stride-2 case of the benchmarks.
- a direct stride-1 forward, never taken either, was removed: 1.3-2.3x slower than the
  implicit GEMM, equal on the 8x8 digits.
- the direct backward for dx of a one-channel input stays: 1.37x faster on the 8x8 digits
  (LeNet's first layer in the default CLI run, when dx is wanted), but 1.02-1.45x slower
  from 28x28 planes on; a size rule would change those cases' rounding, so it is left to
  the speed work.
"""
from ..codes import ACTIVATIONS
from . import direct, exact_dw, grouped, implicit_gemm
from .im2col import col2im, conv_output_size, im2col

__all__ = ["conv2d_forward", "conv2d_forward_plan", "conv2d_backward", "im2col", "col2im",
           "conv_output_size"]


def conv2d_forward(out, x, w, b, stride, padding, activation=None, dilation=(1, 1), groups=1):
    """x (N, C, H, W), w (O, C/groups, KH, KW), b (O,) | None -> out (N, O, OH, OW)
    = act(conv(x, w) + b); ``activation`` as for dense (None, "relu", ...)."""
    if grouped.takes(dilation, groups):
        grouped.forward(out, x, w, b, stride, padding, dilation, groups, ACTIVATIONS[activation])
        return
    implicit_gemm.forward(out, x, w, b, stride, padding, ACTIVATIONS[activation])


def conv2d_backward(dx, dw, db, dout, x, w, out, stride, padding, activation=None,
                    dilation=(1, 1), groups=1):
    """dout (N, O, OH, OW), x (N, C, H, W), w (O, C/groups, KH, KW), out (the forward
    output; None without activation) -> dx (N, C, H, W) | None, dw (O, C/groups, KH, KW) |
    None (a frozen weight), db (O,) | None"""
    code = ACTIVATIONS[activation]
    if grouped.takes(dilation, groups):
        # only the valid products: NaN / inf as PyTorch without exact_dw
        grouped.backward(dx, dw, db, dout, x, w, out, stride, padding, dilation, groups, code)
        return
    if dx is not None and direct.takes_dx(stride, w.shape):
        direct.backward(dx, dw, db, dout, x, w, out, padding, code)
    else:
        implicit_gemm.backward(dx, dw, db, dout, x, w, out, stride, padding, code)
    # NOTE: NaN / inf as PyTorch: the fast paths multiply junk-column inputs by zero
    # gradients, so a non-finite input can make dw NaN where it is finite or +-inf
    if dw is not None and not exact_dw.all_finite(dw):
        exact_dw.weight_grad(dw, dout, x, dout if out is None else out, stride, padding, code)


def conv2d_forward_plan(x_shape, w_shape, dtype, stride, padding, activation=None,
                        dilation=(1, 1), groups=1):
    """conv2d_forward for one geometry, prepared once (an inference plan's step): returns
    ``run(out, x, w, b)``, bitwise what conv2d_forward computes, for C-contiguous x of
    ``x_shape`` and ``dtype`` (the caller has checked them), with per-thread buffers."""
    if grouped.takes(dilation, groups):
        code = ACTIVATIONS[activation]

        def run(out, x, w, b):
            grouped.forward(out, x, w, b, stride, padding, dilation, groups, code)
        return run
    return implicit_gemm.forward_plan(x_shape, w_shape, dtype, stride, padding,
                                      ACTIVATIONS[activation])
