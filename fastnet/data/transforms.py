"""Batch transforms for the DataLoader: seeded, vectorised NumPy on a whole (N, C, H, W) batch.

``DataLoader(dataset, ..., transform=t)`` calls ``t`` on every batch's features after they
are cast to the loader's dtype (float32 stays float32), with a ``numpy.random.Generator``
of its own for that batch. The generator is derived from the loader's seed, the epoch and
the batch's index in the epoch (and the rank), never from a shared stream: the augmented
batches of a resumed run (``load_state_dict``, ``Trainer.resume``) are bitwise those of an
uninterrupted one, and do not depend on background loading (``num_workers``) or on which
thread prepared a batch.

The random transforms draw one value per sample (as PyTorch's per-image transforms do,
but for the whole batch at once). A transform is:

* one of these classes, or ``Compose`` of them, called as ``t(x, rng)``;
* any callable ``f``. It is called as ``f(x, rng)`` when it takes a second positional
  argument without a default (or one named ``rng``), as ``f(x, rng=rng)`` when it takes a
  keyword-only ``rng``, else as ``f(x)``. It must return an
  array of the same number of samples; it is cast back to the loader's dtype.

Transforms run in the DataLoader's background thread when ``num_workers > 0``: keep them
NumPy (see DataLoader).
"""
from __future__ import annotations

import inspect
import numbers

import numpy as np

__all__ = ["Compose", "RandomCrop", "RandomHorizontalFlip", "Normalize", "apply"]


def _check_batch(x, who, ndim=4):
    if not isinstance(x, np.ndarray) or x.ndim != ndim or x.dtype.kind != "f":
        got = (f"{x.dtype} array of shape {x.shape}" if isinstance(x, np.ndarray)
               else type(x).__name__)
        raise TypeError(f"{who}: expected a float (N, C, H, W) batch, got a {got}")


def _pair(value, name, who, lo):
    """(a, b) from an int or a pair of ints, each >= lo."""
    pair = (value, value) if isinstance(value, numbers.Integral) else tuple(value) \
        if isinstance(value, (tuple, list)) else None
    if pair is None or len(pair) != 2 or any(
            isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo for v in pair):
        raise ValueError(f"{who}: {name} must be an int >= {lo} or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def takes_rng(f):
    """Whether ``apply`` calls ``f(x, rng)`` (else ``f(x)``): fastnet's transforms, and
    callables with a second positional parameter that has no default or is named rng."""
    if isinstance(f, _Transform):
        return True
    try:
        params = list(inspect.signature(f).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: one argument
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) >= 2:
        second = positional[1]
        return second.default is inspect.Parameter.empty or second.name == "rng"
    return any(p.kind == p.VAR_POSITIONAL for p in params) and len(positional) <= 1


def _rng_keyword(f):
    """Whether ``f`` takes a keyword-only ``rng`` (``def f(x, *, rng)``): then ``apply``
    calls ``f(x, rng=rng)``."""
    try:
        p = inspect.signature(f).parameters.get("rng")
    except (TypeError, ValueError):
        return False
    return p is not None and p.kind == p.KEYWORD_ONLY


def check_transform(t, who):
    if not callable(t):
        raise TypeError(f"{who}: transform must be callable as f(x, rng) or f(x), got "
                        f"{type(t).__name__}")
    return t


def apply(t, x, rng, who="transform"):
    """``t`` applied to the batch ``x`` with the generator ``rng``; the result checked."""
    out = t(x, rng) if takes_rng(t) else t(x, rng=rng) if _rng_keyword(t) else t(x)
    if not isinstance(out, np.ndarray) or out.ndim < 1 or len(out) != len(x) \
            or out.dtype.kind not in "biuf":
        got = (f"a {out.dtype} array of shape {out.shape}" if isinstance(out, np.ndarray)
               else type(out).__name__)
        raise TypeError(f"{who}: {t!r} returned {got}, expected a real array of "
                        f"{len(x)} samples")
    return out


class _Transform:
    """Base of fastnet's transforms: ``t(x, rng) -> x``, a new array (x is not changed)."""

    def __call__(self, x, rng):
        raise NotImplementedError


class Compose(_Transform):
    """The transforms in order, each given the same generator (they draw from it in turn),
    like ``torchvision.transforms.Compose``."""

    def __init__(self, transforms):
        transforms = list(transforms)
        for t in transforms:
            check_transform(t, "Compose")
        self.transforms = transforms

    def __call__(self, x, rng):
        for t in self.transforms:
            x = apply(t, x, rng, "Compose")
        return x

    def __repr__(self):
        return "Compose([" + ", ".join(map(repr, self.transforms)) + "])"


class RandomCrop(_Transform):
    """Pad every image by ``padding`` zeros on each side, then cut a ``size`` window at an
    offset drawn per sample, uniformly over every position that fits (as torchvision's
    ``RandomCrop(size, padding)`` with ``fill=0``, ``padding_mode="constant"``).

    ``size``: an int (square) or (height, width); ``padding``: an int (all sides) or, as
    torchvision's, (left and right, top and bottom). The crop must fit the padded image
    (ValueError when it does not).
    """

    def __init__(self, size, padding=0):
        self.size = _pair(size, "size", "RandomCrop", 1)
        self.padding = _pair(padding, "padding", "RandomCrop", 0)

    def __call__(self, x, rng):
        _check_batch(x, "RandomCrop")
        n, c, h, w = x.shape
        (th, tw), (pw, ph) = self.size, self.padding
        hp, wp = h + 2 * ph, w + 2 * pw
        if th > hp or tw > wp:
            raise ValueError(f"RandomCrop: crop size {(th, tw)} is larger than the padded "
                             f"image {(hp, wp)}")
        top = rng.integers(0, hp - th + 1, size=n)
        left = rng.integers(0, wp - tw + 1, size=n)
        padded = np.zeros((n, hp, wp, c), dtype=x.dtype)  # channels last: one gather
        padded[:, ph:ph + h, pw:pw + w, :] = x.transpose(0, 2, 3, 1)
        rows = (top[:, None] + np.arange(th))[:, :, None]    # (N, th, 1)
        cols = (left[:, None] + np.arange(tw))[:, None, :]   # (N, 1, tw)
        out = padded[np.arange(n)[:, None, None], rows, cols]  # (N, th, tw, C)
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2))

    def __repr__(self):
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip(_Transform):
    """Mirror each image left-right with probability ``p`` (a draw per sample)."""

    def __init__(self, p=0.5):
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p <= 1:
            raise ValueError(f"RandomHorizontalFlip: p must be a number in [0, 1], got {p!r}")
        self.p = float(p)

    def __call__(self, x, rng):
        _check_batch(x, "RandomHorizontalFlip")
        flip = rng.random(len(x)) < self.p
        out = x.copy()
        out[flip] = x[flip, :, :, ::-1]
        return out

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


class Normalize(_Transform):
    """``(x - mean[c]) / std[c]`` for each channel c of an (N, C, H, W) batch, as
    torchvision's ``Normalize``: mean and std are sequences of C numbers (or of one, for
    every channel), taken in the batch's dtype. Deterministic (it ignores the generator)."""

    def __init__(self, mean, std):
        self.mean = self._values(mean, "mean")
        self.std = self._values(std, "std")
        if len(self.mean) != len(self.std) and 1 not in (len(self.mean), len(self.std)):
            raise ValueError(f"Normalize: mean has {len(self.mean)} values but std has "
                             f"{len(self.std)}")
        if not np.all(self.std != 0):
            raise ValueError(f"Normalize: std must not be zero, got {self.std.tolist()}")

    @staticmethod
    def _values(v, name):
        try:
            a = None if isinstance(v, str) else np.atleast_1d(np.asarray(v, dtype=np.float64))
        except (TypeError, ValueError):
            a = None
        if a is None or a.ndim != 1 or len(a) == 0 or not np.isfinite(a).all():
            raise ValueError(f"Normalize: {name} must be a number or a sequence of finite "
                             f"numbers, got {v!r}")
        return a

    def __call__(self, x, rng=None):
        _check_batch(x, "Normalize")
        c = x.shape[1]
        for name, v in (("mean", self.mean), ("std", self.std)):
            if len(v) not in (1, c):
                raise ValueError(f"Normalize: {name} has {len(v)} values, the batch has {c} "
                                 "channels")
        mean = self.mean.astype(x.dtype).reshape(1, -1, 1, 1)  # constants in x's dtype
        std = self.std.astype(x.dtype).reshape(1, -1, 1, 1)
        return (x - mean) / std

    def __repr__(self):
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"
