"""Data sets and batching.

The embedded data set is the UCI handwritten digits (1797 real 8x8 images, 10 classes)
that scikit-learn ships inside its wheel: no network is ever needed. Install it with
``pip install "fastnet[train]"``. MNIST and Fashion-MNIST come from their IDX files
(fastnet/data/mnist.py); character-level text from Python's own documentation
(fastnet/data/text.py); ``DataLoader`` batches any vectorised dataset (loader.py), with
seeded batch transforms (transforms.py) and background threads.
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np

from .idx import read_idx, write_idx
from .loader import ArrayDataset, DataLoader, Dataset, Subset, train_val_split
from .mnist import DataUnavailableError, load_fashion_mnist, load_mnist
from .text import CharVocab, TextWindows, load_char_data, load_text, split_text
from . import transforms
from .transforms import Compose, Normalize, RandomCrop, RandomHorizontalFlip

__all__ = ["load_digits", "load_mnist", "load_fashion_mnist", "train_test_split",
           "train_val_split", "batches", "Dataset", "ArrayDataset", "Subset", "DataLoader",
           "read_idx", "write_idx", "DataUnavailableError", "load_text", "CharVocab",
           "split_text", "TextWindows", "load_char_data", "transforms", "Compose",
           "RandomCrop", "RandomHorizontalFlip", "Normalize"]


def _digits_file():
    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = os.path.join(root, "datasets", "data", "digits.csv.gz")
        if os.path.exists(path):
            return path
    return None


def load_digits(dtype=np.float32):
    """The 8x8 digits as (images (1797, 1, 8, 8) scaled to [0, 1], labels (1797,) int64)."""
    path = _digits_file()
    if path is not None:
        table = np.loadtxt(path, delimiter=",", dtype=np.float64)
        pixels, labels = table[:, :-1], table[:, -1]
    else:
        try:
            from sklearn.datasets import load_digits as sk_load
        except ImportError:
            raise ImportError(
                "the embedded digits data set comes with scikit-learn: "
                'pip install "fastnet[train]"'
            ) from None
        pixels, labels = sk_load(return_X_y=True)
    images = (pixels / 16.0).astype(dtype).reshape(-1, 1, 8, 8)
    return np.ascontiguousarray(images), labels.astype(np.int64)


def train_test_split(x, y, test_fraction=0.2, seed=0):
    """Stratified split: each class contributes ``test_fraction`` of its samples to the test
    set, chosen by ``seed``. Returns (x_train, y_train, x_test, y_test)."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        test.append(idx[: int(round(len(idx) * test_fraction))])
    test = np.sort(np.concatenate(test))
    train = np.setdiff1d(np.arange(len(y)), test)
    return x[train], y[train], x[test], y[test]


def batches(x, y, batch_size, shuffle=True, rng=None, drop_last=False):
    """Yield (x_batch, y_batch), contiguous copies taken by one fancy index per batch."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    n = len(x)
    order = (rng or np.random.default_rng()).permutation(n) if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_last else n
    for i in range(0, stop, batch_size):
        idx = order[i:i + batch_size]
        yield x[idx], y[idx]
