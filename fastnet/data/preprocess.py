"""Preparing a photographed or drawn digit the way MNIST's digits were prepared.

MNIST's images were made by scaling each digit to fit a 20x20 box (aspect ratio kept,
anti-aliased) and centring it by its centre of mass in a 28x28 field. A digit drawn on a
large canvas, off-centre, resized whole to 28x28 looks like none of them (a model is then
confidently wrong); ``mnist_style`` repeats MNIST's steps:

1. background: the median of the image's border pixels; dark ink (the darkest pixel
   farther below the background than the lightest is above it: ink on white or grey
   paper, whatever the paper's shade) is inverted, ``1 - x``, so that ink is light on dark
   as in MNIST;
2. contrast: ``(x - background) / (max - background)``, clipped to [0, 1] (ink reaches 1
   as MNIST's strokes do); an image whose ink differs from the background by less than
   ``MIN_CONTRAST`` is refused (ValueError: nothing drawn);
3. crop to the bounding box of the ink, the pixels above ``INK_THRESHOLD``;
4. scale the crop so that its longer side is ``round(box * H)`` (``box`` = 20/28: 20 px of
   28; the other side in proportion, at least 1 px) by area averaging (each output pixel
   the mean of the input area it covers: anti-aliased, no ringing);
5. paste it into an H x W canvas of zeros so that its centre of mass lands on the
   canvas's centre, ((H - 1) / 2, (W - 1) / 2), rounded to whole pixels and kept inside the
   canvas.

NumPy only (Pillow reads the file; the CLI's ``predict`` does that).
"""
from __future__ import annotations

import numpy as np

MNIST_BOX = 20 / 28
INK_THRESHOLD = 0.3
MIN_CONTRAST = 0.05


def area_resize(a, height, width):
    """``a`` (h, w) resampled to (height, width) by area averaging: output pixel (i, j) is
    the mean of the input over the rectangle it covers, [i * h / height, (i + 1) * h /
    height) x [j * w / width, ...), partial pixels weighted by their covered fraction."""
    return _area_weights(a.shape[0], height) @ a @ _area_weights(a.shape[1], width).T


def _area_weights(n, m):
    """(m, n): row i holds the overlap of output cell i ([i, i + 1) * n / m) with each input
    cell [j, j + 1), divided by the cell's length n / m (rows sum to 1)."""
    edges = np.arange(m + 1) * (n / m)
    lo = np.maximum(edges[:-1, None], np.arange(n)[None, :])
    hi = np.minimum(edges[1:, None], np.arange(1, n + 1)[None, :])
    return np.clip(hi - lo, 0, None) * (m / n)


def mnist_style(image, size=(28, 28), box=MNIST_BOX):
    """A grayscale image (2-D, values in [0, 1]) prepared as MNIST's digits were (see the
    module docstring): float32 (H, W) of ``size``. ``box``: the share of the canvas the
    digit's longer side takes (MNIST: 20/28; the 8x8 digits fill their box: 1.0)."""
    a = np.asarray(image, dtype=np.float64)
    if a.ndim != 2 or 0 in a.shape:
        raise ValueError(f"mnist_style: expected a 2-D grayscale image, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("mnist_style: the image holds NaN or infinite values")
    height, width = size
    if not 0 < box <= 1:
        raise ValueError(f"mnist_style: box must be in (0, 1], got {box!r}")
    border = np.concatenate([a[0], a[-1], a[1:-1, 0], a[1:-1, -1]])
    background = np.median(border)
    # NOTE: the ink's polarity from its distance to the background, not from the
    # background's shade: a photo of paper is often grey (0.4), its ink darker still
    if background - a.min() > a.max() - background:  # dark ink on a lighter ground
        a, background = 1.0 - a, 1.0 - background
    contrast = a.max() - background
    if contrast < MIN_CONTRAST:
        raise ValueError(f"mnist_style: found no ink: the image differs from its background "
                         f"by at most {contrast:.3f}")
    a = np.clip((a - background) / contrast, 0.0, 1.0)
    rows = np.flatnonzero((a > INK_THRESHOLD).any(axis=1))
    cols = np.flatnonzero((a > INK_THRESHOLD).any(axis=0))
    crop = a[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    h, w = crop.shape
    side = max(1, round(box * min(height, width)))  # the box is square, as MNIST's
    scale = side / max(h, w)
    nh, nw = max(1, min(height, round(h * scale))), max(1, min(width, round(w * scale)))
    digit = area_resize(crop, nh, nw)
    mass = digit.sum()
    cy = (digit.sum(axis=1) @ np.arange(nh)) / mass
    cx = (digit.sum(axis=0) @ np.arange(nw)) / mass
    top = int(np.clip(round((height - 1) / 2 - cy), 0, height - nh))
    left = int(np.clip(round((width - 1) / 2 - cx), 0, width - nw))
    out = np.zeros((height, width), dtype=np.float32)
    out[top:top + nh, left:left + nw] = digit
    return out
