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

    ``int_features=True`` is for features that are integer indices (token ids for a model
    whose first layer is an ``Embedding``): x is given as int64, never cast to float, and
    a dataset whose x is not integer is refused (TypeError). Without it integer features
    (uint8 images, say) are cast to ``dtype`` as before, and an ``Embedding`` refuses them.

    With ``shuffle``, each epoch (each ``iter(loader)``) takes a fresh permutation from
    the loader's own ``numpy.random.Generator``, seeded by ``seed`` (or, when seed is
    None, by a seed drawn from fastnet's generator, so ``fastnet.manual_seed`` fixes it).
    The generator's state is in ``state_dict()``, so a resumed run replays the same orders.

    With ``distributed=True`` (data-parallel training over MPI, fastnet.distributed) every
    rank draws the same epoch order from the shared seed (rank 0's, when ``seed`` is None)
    and takes a disjoint 1/world_size share of it: rank r the positions r, r + W, r + 2W,
    ... of the order, which is first padded by repeating its start to a multiple of W, so
    that every rank runs the same number of batches (as PyTorch's DistributedSampler).
    With ``drop_last`` the order is cut to a multiple of W instead, and each rank drops
    its last incomplete batch. ``batch_size`` is per rank: a step of W ranks sees W *
    batch_size samples, the same ones as one process with that batch size. ``rank`` and ``world_size`` default to the
    MPI job's. The state (the generator's) is the same on every rank and does not depend
    on W: a checkpoint resumes with any number of ranks.
    """

    def __init__(self, dataset, batch_size=32, shuffle=False, drop_last=False, seed=None,
                 dtype=np.float32, distributed=False, rank=None, world_size=None,
                 int_features=False):
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
        if not isinstance(int_features, (bool, np.bool_)):
            raise TypeError(f"DataLoader: int_features must be True or False, got "
                            f"{int_features!r}")
        self.int_features = bool(int_features)
        self.dataset = dataset
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        if not isinstance(distributed, (bool, np.bool_)):
            raise TypeError(f"DataLoader: distributed must be True or False, got {distributed!r}")
        self.distributed = bool(distributed)
        self.rank, self.world_size = self._placement(rank, world_size)
        if seed is None:  # only a shuffling loader draws from (and so shifts) fastnet's RNG
            seed = _rng.new_seed() if shuffle else 0
            if self.distributed and shuffle:  # the same order on every rank: rank 0's seed
                from .. import distributed as dist

                seed = dist.broadcast_object(seed)
        self.generator = np.random.default_rng(int(seed))
        if len(self) == 0:
            share = (f" ({self._share()} per rank of {self.world_size})"
                     if self.distributed and self.world_size > 1 else "")
            raise ValueError(f"DataLoader: {len(dataset)} samples{share} give no batch of "
                             f"{self.batch_size} with drop_last=True")

    def _placement(self, rank, world_size):
        if not self.distributed:
            if rank is not None or world_size is not None:
                raise ValueError("DataLoader: rank and world_size need distributed=True")
            return 0, 1
        if world_size is None:
            from .. import distributed as dist

            world_size = dist.world_size() if rank is None else None
            rank = dist.rank() if rank is None else rank
        if world_size is None:
            raise ValueError("DataLoader: give world_size together with rank")
        world_size = _positive_int(world_size, "world_size", "DataLoader")
        if rank is None:
            raise ValueError("DataLoader: give rank together with world_size")
        if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) \
                or not 0 <= rank < world_size:
            raise ValueError(f"DataLoader: rank must be an int in [0, {world_size}), got {rank!r}")
        return int(rank), world_size

    def _share(self):
        """The number of samples of each rank's share of an epoch: the order padded to a
        multiple of world_size, or with ``drop_last`` cut to one (as DistributedSampler)."""
        n, w = len(self.dataset), self.world_size
        return n // w if self.drop_last else -(-n // w)

    def __len__(self):
        n = self._share()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        n, bs = len(self.dataset), self.batch_size
        # The permutation is drawn when iteration starts, not lazily per batch, so the
        # generator state between epochs is exactly what a checkpoint records.
        order = self.generator.permutation(n) if self.shuffle else np.arange(n)
        if self.distributed:
            w = self.world_size
            share = self._share()
            # this rank's positions of the order padded with its start (cyclically when
            # n < W) or cut (drop_last), without building the padded order: a world_size
            # far above n costs this rank's share only
            order = order[np.arange(self.rank, share * w, w, dtype=np.int64) % n]
            n = share
        return self._batches(order, n - n % bs if self.drop_last else n)

    def _eval_batches(self, rank, world_size):
        """The batches of the whole dataset in order, unpadded and not shuffled, whose
        index is ``rank`` modulo ``world_size``: one rank's part of an evaluation over the
        whole set (the generator is not touched)."""
        n, bs = len(self.dataset), self.batch_size
        order = np.arange(n)
        for i, start in enumerate(range(0, n, bs)):
            if i % world_size == rank:
                yield from self._batches(order[start:start + bs], len(order[start:start + bs]))

    def _batches(self, order, stop):
        for start in range(0, stop, self.batch_size):
            x, y = self.dataset[order[start:start + self.batch_size]]
            x, y = np.asarray(x), np.asarray(y)
            for name, a in (("x", x), ("y", y)):
                if a.dtype.kind not in "biuf":  # a cast would drop an imaginary part
                    raise TypeError(f"DataLoader: the dataset gave a batch whose {name} holds "
                                    f"{a.dtype}, expected real numbers (bool, int or float)")
            ydtype = np.int64 if np.issubdtype(y.dtype, np.integer) else self.dtype
            if self.int_features:
                if x.dtype.kind not in "iu":  # never a silent cast of float / bool to indices
                    raise TypeError(f"DataLoader: int_features=True but the dataset gave x of "
                                    f"dtype {x.dtype}, expected integers (indices)")
                xdtype = np.int64
            else:
                xdtype = self.dtype
            yield np.ascontiguousarray(x, dtype=xdtype), np.ascontiguousarray(y, dtype=ydtype)

    def state_dict(self):
        """The shuffling generator's state (JSON-serialisable)."""
        return {"generator": self.generator.bit_generator.state}

    def load_state_dict(self, state):
        self.generator = _rng.generator_from_state(state["generator"], "DataLoader")

    def __repr__(self):
        extra = (f", distributed=True, rank={self.rank}, world_size={self.world_size}"
                 if self.distributed else "")
        return (f"DataLoader({self.dataset!r}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, drop_last={self.drop_last}{extra})")
