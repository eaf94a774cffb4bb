"""Datasets and the DataLoader.

A dataset here is vectorised: ``dataset[idx]`` takes an integer index *array* and returns
the whole batch ``(x, y)`` at once, so a DataLoader makes one fancy-index copy per batch
and never loops over samples in Python.
"""
from __future__ import annotations

import numbers
import threading

import numpy as np

from .. import _rng
from . import transforms as _transforms

# the generator of a batch's transform: SeedSequence([seed, _TRAIN, epoch, rank, batch]) or
# SeedSequence([seed, _EVAL, batch]) (an evaluation over the whole set, _eval_batches)
_TRAIN, _EVAL = 1, 2


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

    ``transform`` (fastnet.data.transforms: ``Compose``, ``RandomCrop``,
    ``RandomHorizontalFlip``, ``Normalize``, or any ``f(x, rng)`` / ``f(x)``) is applied to
    each batch's features after the cast to ``dtype``. Its generator is derived from
    (seed, epoch, rank, batch index): the same seed gives the same augmented batches, also
    after ``load_state_dict`` / a Trainer resume (the state holds the epoch count) and with
    or without background loading.

    ``num_workers`` > 0 prepares batches in that many background threads (index gather,
    cast, copy, transform), up to ``prefetch_factor`` batches per thread ahead of the
    training step, delivered in order. Threads, not processes as in PyTorch: the batch
    work is NumPy, which releases the GIL for copies and arithmetic, and fastnet's kernels
    release it too (nogil), so a thread overlaps with the step without pickling the
    dataset or copying batches between processes. The threads run no fastnet kernel (a
    user transform that calls one is still safe: under Numba's workqueue layer every CPU
    kernel call holds fastnet.runtime's kernel lock). An exception in a thread is raised
    in the loop at the batch that raised it; leaving the loop (break, an exception, Ctrl-C)
    stops and joins the threads.
    """

    def __init__(self, dataset, batch_size=32, shuffle=False, drop_last=False, seed=None,
                 dtype=np.float32, distributed=False, rank=None, world_size=None,
                 int_features=False, transform=None, num_workers=0, prefetch_factor=2):
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
        self.seed = int(seed)
        self.generator = np.random.default_rng(self.seed)
        self._epoch = 0  # iterations started: the transforms' generators depend on it
        self.transform = (None if transform is None
                          else _transforms.check_transform(transform, "DataLoader"))
        if isinstance(num_workers, bool) or not isinstance(num_workers, numbers.Integral) \
                or num_workers < 0:
            raise ValueError(f"DataLoader: num_workers must be an int >= 0, got {num_workers!r}")
        self.num_workers = int(num_workers)
        self.prefetch_factor = _positive_int(prefetch_factor, "prefetch_factor", "DataLoader")
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
        epoch, self._epoch = self._epoch, self._epoch + 1
        if self.distributed:
            w = self.world_size
            share = self._share()
            # this rank's positions of the order padded with its start (cyclically when
            # n < W) or cut (drop_last), without building the padded order: a world_size
            # far above n costs this rank's share only
            order = order[np.arange(self.rank, share * w, w, dtype=np.int64) % n]
            n = share
        stop = n - n % bs if self.drop_last else n
        keys = [(self.seed, _TRAIN, epoch, self.rank, b) for b in range(-(-stop // bs))]
        return self._run(order, range(0, stop, bs), keys)

    def _eval_batches(self, rank, world_size):
        """The batches of the whole dataset in order, unpadded and not shuffled, whose
        index is ``rank`` modulo ``world_size``: one rank's part of an evaluation over the
        whole set (the generator is not touched)."""
        n, bs = len(self.dataset), self.batch_size
        starts = range(rank * bs, n, world_size * bs)
        keys = [(self.seed, _EVAL, start // bs) for start in starts]
        return self._run(np.arange(n), starts, keys)

    def _run(self, order, starts, keys):
        """The batches at ``starts`` of ``order``, prepared here or in background threads."""
        if self.num_workers == 0 or len(starts) == 0:
            return (self._batch(order, start, key) for start, key in zip(starts, keys))
        return _Prefetch(lambda i: self._batch(order, starts[i], keys[i]), len(starts),
                         self.num_workers, self.num_workers * self.prefetch_factor)

    def _batch(self, order, start, key):
        """One batch: ``order[start:start + batch_size]`` gathered, cast, transformed
        (NumPy only: it may run in a background thread)."""
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
        x = np.ascontiguousarray(x, dtype=xdtype)
        if self.transform is not None:
            rng = np.random.default_rng(np.random.SeedSequence(key))
            x = _transforms.apply(self.transform, x, rng, "DataLoader transform")
            x = np.ascontiguousarray(x, dtype=xdtype)
        return x, np.ascontiguousarray(y, dtype=ydtype)

    def state_dict(self):
        """The shuffling generator's state, the seed and the number of epochs started
        (JSON-serialisable)."""
        return {"generator": self.generator.bit_generator.state, "seed": self.seed,
                "epoch": self._epoch}

    @staticmethod
    def check_state(state, owner="DataLoader"):
        """Raise ValueError when ``state`` is not a DataLoader state (a state of a version
        before transforms, without seed and epoch, is one)."""
        if not isinstance(state, dict) or "generator" not in state:
            raise ValueError(f"{owner}: not a DataLoader state: {state!r:.200}")
        _rng.generator_from_state(state["generator"], owner)
        for key in ("seed", "epoch"):
            v = state.get(key, 0)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not 0 <= v < 1 << 63:
                raise ValueError(f"{owner}: the DataLoader state's {key} must be an int in "
                                 f"[0, 2**63), got {v!r:.40}")

    def load_state_dict(self, state):
        self.check_state(state)
        self.generator = _rng.generator_from_state(state["generator"], "DataLoader")
        self.seed = int(state.get("seed", self.seed))
        self._epoch = int(state.get("epoch", self._epoch))

    def __repr__(self):
        extra = (f", distributed=True, rank={self.rank}, world_size={self.world_size}"
                 if self.distributed else "")
        if self.transform is not None:
            extra += f", transform={self.transform!r}"
        if self.num_workers:
            extra += f", num_workers={self.num_workers}"
        return (f"DataLoader({self.dataset!r}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, drop_last={self.drop_last}{extra})")


class _Prefetch:
    """An iterator over ``make(0), ..., make(n - 1)``, computed by ``workers`` daemon threads
    at most ``depth`` items ahead of the consumer and given in order. An exception of
    ``make(i)`` is raised by the i-th ``next``. ``close()`` (also on garbage collection:
    a loop left by break or by an exception) stops the threads and joins them; the threads
    hold no reference to this object, only to the shared state."""

    def __init__(self, make, n, workers, depth):
        self._state = state = _PrefetchState(make, n, depth)
        self._threads = [threading.Thread(target=state.work, name=f"fastnet-loader-{k}",
                                          daemon=True) for k in range(min(workers, n))]
        for t in self._threads:
            t.start()

    def __iter__(self):
        return self

    def __next__(self):
        try:
            ok, value = self._state.take()
        except BaseException:  # StopIteration at the end; KeyboardInterrupt while waiting
            self.close()
            raise
        if not ok:
            self.close()
            raise value
        return value

    def __len__(self):
        return self._state.n - self._state.taken

    def close(self):
        self._state.close()
        current = threading.current_thread()
        for t in self._threads:
            if t is not current:
                t.join()
        self._threads = []

    def __del__(self):
        try:
            self.close()
        except Exception:  # (at interpreter exit)
            pass


class _PrefetchState:
    def __init__(self, make, n, depth):
        self.make, self.n, self.depth = make, n, depth
        self.cond = threading.Condition()
        self.results = {}      # index -> (True, batch) or (False, exception)
        self.next_task = 0     # the next index a thread takes
        self.taken = 0         # the next index the consumer takes
        self.closed = False

    def work(self):
        while True:
            with self.cond:
                while not self.closed and self.next_task < self.n \
                        and self.next_task - self.taken >= self.depth:
                    self.cond.wait()
                if self.closed or self.next_task >= self.n:
                    return
                i = self.next_task
                self.next_task += 1
            try:
                item = (True, self.make(i))
            except StopIteration as e:  # raised by __next__ it would end the loop quietly
                err = RuntimeError(f"a batch raised StopIteration: {e!r}")
                err.__cause__ = e
                item = (False, err)     # (num_workers=0's generator: RuntimeError, PEP 479)
            except BaseException as e:  # raised in the consumer's thread, at batch i
                item = (False, e)
            with self.cond:
                self.results[i] = item
                self.cond.notify_all()
                if not item[0]:  # nothing after a failed batch is needed
                    self.n = min(self.n, i + 1)
                    return

    def take(self):
        with self.cond:
            if self.taken >= self.n:
                raise StopIteration
            while self.taken not in self.results:
                # a timeout, so that Ctrl-C reaches the main thread promptly everywhere
                self.cond.wait(0.1)
            item = self.results.pop(self.taken)
            self.taken += 1
            self.cond.notify_all()
            return item

    def close(self):
        with self.cond:
            self.closed = True
            self.results.clear()
            self.cond.notify_all()
