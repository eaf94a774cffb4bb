"""Datasets and the DataLoader.

A dataset here is vectorised: ``dataset[idx]`` takes an integer index *array* and returns
the whole batch ``(x, y)`` at once, so a DataLoader makes one fancy-index copy per batch
and never loops over samples in Python.
"""
from __future__ import annotations

import numbers

import numpy as np

from .. import _rng


def _positive_int(value, name, owner):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")
    return int(value)


class Dataset:
    """The protocol: ``len(dataset)`` and ``dataset[idx] -> (x, y)`` for an int array ``idx``."""

    def __len__(self):
        raise NotImplementedError

    def __getitem__(self, idx):
        raise NotImplementedError


class ArrayDataset(Dataset):
    """Samples ``x[i]`` with targets ``y[i]``, held in two arrays of equal length."""

    def __init__(self, x, y):
        x, y = np.asarray(x), np.asarray(y)
        if x.ndim < 1 or y.ndim < 1:
            raise ValueError(f"ArrayDataset: x and y must have a sample axis, got shapes "
                             f"{x.shape} and {y.shape}")
        if len(x) != len(y):
            raise ValueError(f"ArrayDataset: x has {len(x)} samples but y has {len(y)}")
        for name, a in (("x", x), ("y", y)):
            if a.dtype.kind not in "biuf":  # complex, strings, objects: not real data
                raise TypeError(f"ArrayDataset: {name} must hold real numbers (bool, int or "
                                f"float), got dtype {a.dtype}")
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, idx):
        return self.x[idx], self.y[idx]

    def __repr__(self):
        return f"ArrayDataset(x={self.x.shape} {self.x.dtype}, y={self.y.shape} {self.y.dtype})"


class Subset(Dataset):
    """The samples of ``dataset`` at ``indices``, in that order."""

    def __init__(self, dataset, indices):
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, idx):
        return self.dataset[self.indices[idx]]

    @property
    def y(self):
        """The targets, when the underlying dataset exposes them (used for stratifying)."""
        return self.dataset.y[self.indices]


def _stratified(y, fraction, rng):
    """Sorted indices of ``round(fraction * count)`` samples of each class of y."""
    picked = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        picked.append(idx[: int(round(len(idx) * fraction))])
    return np.sort(np.concatenate(picked))


def train_val_split(dataset, val_fraction=0.1, seed=0):
    """(train, val) Subsets of ``dataset``; stratified by class when the dataset exposes
    integer targets as ``.y`` (ArrayDataset does), else a plain random split."""
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real) \
            or not 0 < val_fraction < 1:
        raise ValueError(f"train_val_split: val_fraction must be in (0, 1), got {val_fraction!r}")
    n = len(dataset)
    rng = np.random.default_rng(seed)
    y = getattr(dataset, "y", None)
    if y is not None and np.issubdtype(np.asarray(y).dtype, np.integer):
        val = _stratified(np.asarray(y), val_fraction, rng)
    else:
        val = np.sort(rng.permutation(n)[: int(round(n * val_fraction))])
    if len(val) == 0 or len(val) == n:
        raise ValueError(f"train_val_split: val_fraction {val_fraction} of {n} samples leaves "
                         f"{len(val)} for validation and {n - len(val)} for training")
    return Subset(dataset, np.setdiff1d(np.arange(n), val)), Subset(dataset, val)


class DataLoader:
    """Batches of a dataset: ``for x, y in loader`` gives contiguous float32 features
    (``dtype``) and int64 labels (float targets keep ``dtype``).

    With ``shuffle``, each epoch (each ``iter(loader)``) takes a fresh permutation from
    the loader's own ``numpy.random.Generator``, seeded by ``seed`` (or, when seed is
    None, by a seed drawn from fastnet's generator, so ``fastnet.manual_seed`` fixes it).
    The generator's state is in ``state_dict()``, so a resumed run replays the same orders.
    """

    def __init__(self, dataset, batch_size=32, shuffle=False, drop_last=False, seed=None,
                 dtype=np.float32):
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise TypeError(f"DataLoader: expected a dataset with __len__ and __getitem__, "
                            f"got {type(dataset).__name__}")
        self.batch_size = _positive_int(batch_size, "batch_size", "DataLoader")
        for name, flag in (("shuffle", shuffle), ("drop_last", drop_last)):
            if not isinstance(flag, (bool, np.bool_)):
                raise TypeError(f"DataLoader: {name} must be True or False, got {flag!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
                                 or seed < 0):
            raise ValueError(f"DataLoader: seed must be a non-negative int or None, got {seed!r}")
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"DataLoader: dtype must be float32 or float64, got {self.dtype}")
        self.dataset = dataset
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        if seed is None:  # only a shuffling loader draws from (and so shifts) fastnet's RNG
            seed = _rng.new_seed() if shuffle else 0
        self.generator = np.random.default_rng(int(seed))
        if len(self) == 0:
            raise ValueError(f"DataLoader: {len(dataset)} samples give no batch of "
                             f"{self.batch_size} with drop_last=True")

    def __len__(self):
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        n, bs = len(self.dataset), self.batch_size
        # The permutation is drawn when iteration starts, not lazily per batch, so the
        # generator state between epochs is exactly what a checkpoint records.
        order = self.generator.permutation(n) if self.shuffle else np.arange(n)
        return self._batches(order, n - n % bs if self.drop_last else n)

    def _batches(self, order, stop):
        for start in range(0, stop, self.batch_size):
            x, y = self.dataset[order[start:start + self.batch_size]]
            x, y = np.asarray(x), np.asarray(y)
            for name, a in (("x", x), ("y", y)):
                if a.dtype.kind not in "biuf":  # a cast would drop an imaginary part
                    raise TypeError(f"DataLoader: the dataset gave a batch whose {name} holds "
                                    f"{a.dtype}, expected real numbers (bool, int or float)")
            ydtype = np.int64 if np.issubdtype(y.dtype, np.integer) else self.dtype
            yield np.ascontiguousarray(x, dtype=self.dtype), np.ascontiguousarray(y, dtype=ydtype)

    def state_dict(self):
        """The shuffling generator's state (JSON-serialisable)."""
        return {"generator": self.generator.bit_generator.state}

    def load_state_dict(self, state):
        self.generator = _rng.generator_from_state(state["generator"], "DataLoader")

    def __repr__(self):
        return (f"DataLoader({self.dataset!r}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, drop_last={self.drop_last})")
