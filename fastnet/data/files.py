"""A user's own image classification data: ``load_files(path)``.

``path`` is either

* a directory holding the four IDX files in MNIST's layout: ``train-images-idx3-ubyte``,
  ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``,
  each raw or gzip-compressed (the name with or without ``.gz``; the raw one is taken when
  both are there), images (N, H, W) or (N, C, H, W), labels (N,); or
* an ``.npz`` file holding ``x_train``, ``y_train``, ``x_test``, ``y_test`` (other entries
  are ignored; never unpickled).

The files are only read: no checksum (they are not MNIST's), nothing renamed, written or
created beside them. Images (N, H, W) get one channel, (N, C, H, W) are taken as they are;
uint8 pixels are scaled to [0, 1] in float32 as MNIST's are (x / 255), bool to 0 / 1, float
values are taken as they are (as float32); other integer types are refused (their range is
unknown). Labels are integers >= 0; the number of classes is the largest training label
+ 1 (a class with no training sample is allowed: it is never predicted), and every test
label must be below it. Anything else raises ``FileFormatError`` (a ValueError) naming the
file.
"""
from __future__ import annotations

import os

import numpy as np

from .._npz import NpzReader
from ..errors import FileFormatError
from .idx import read_idx

IDX_FILES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
             "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
MAX_CLASSES = 1 << 16  # the output layer's width: a label above this is surely a mistake


def _idx_path(directory, name):
    raw = os.path.join(directory, name)
    for path in (raw, raw + ".gz"):
        if os.path.isfile(path):
            return path
    raise FileFormatError(raw, f"{raw} (or {name}.gz) is missing: a data directory holds the "
                               f"four IDX files of MNIST's layout: {', '.join(IDX_FILES.values())}"
                               " (each raw or .gz)")


def _read_dir(directory):
    arrays, where = {}, {}
    for key, name in IDX_FILES.items():
        path = where[key] = _idx_path(directory, name)
        arrays[key] = read_idx(path, ndim=1 if key.startswith("y") else None)
    return arrays, where


def _read_npz(path):
    arrays, where = {}, {}
    with NpzReader(path, "--data", kind="data") as npz:
        missing = [k for k in NPZ_KEYS if k not in npz.members]
        if missing:
            npz.bad(f"has no {', '.join(missing)}: a data .npz holds x_train, y_train, x_test "
                    f"and y_test (it holds {', '.join(sorted(npz.members)) or 'nothing'})")
        for key in NPZ_KEYS:
            dtype = npz.members[key].dtype
            if dtype.kind not in "biuf":
                npz.bad(f"entry {key} holds {dtype}, expected real numbers")
            arrays[key], where[key] = npz.read(key), path
    return arrays, where


def _images(x, path, key):
    if x.ndim not in (3, 4):
        raise FileFormatError(path, f"{path}: {key} has shape {x.shape}; expected images "
                                    "(N, H, W) or (N, C, H, W)")
    if 0 in x.shape[1:]:
        raise FileFormatError(path, f"{path}: {key} has shape {x.shape}: empty images")
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / np.float32(255)
    elif x.dtype.kind == "b":
        x = x.astype(np.float32)
    elif x.dtype.kind == "f":
        with np.errstate(over="ignore"):
            x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise FileFormatError(path, f"{path}: {key} holds NaN or infinite values (as "
                                        "float32)")
    else:
        raise FileFormatError(path, f"{path}: {key} holds {x.dtype}; expected uint8 pixels "
                                    "(scaled to [0, 1]) or float values (taken as they are)")
    if x.ndim == 3:
        x = x[:, None]
    return np.ascontiguousarray(x)


def _labels(y, path, key):
    if y.ndim != 1:
        raise FileFormatError(path, f"{path}: {key} has shape {y.shape}; expected labels (N,)")
    if y.dtype.kind not in "iu":
        raise FileFormatError(path, f"{path}: {key} holds {y.dtype}; expected integer class "
                                    "labels")
    if y.size and y.min() < 0:
        raise FileFormatError(path, f"{path}: {key} holds the label {y.min()}; labels must be "
                                    ">= 0")
    return y.astype(np.int64)


def load_files(path):
    """{"x_train", "y_train", "x_test", "y_test", "num_classes", "in_shape", "kind"} of a
    user's data (see the module docstring); FileFormatError naming the file when it cannot
    be used, FileNotFoundError when ``path`` does not exist."""
    path = os.fspath(path)
    if os.path.isdir(path):
        arrays, where = _read_dir(path)
        kind = "IDX files"
    elif os.path.isfile(path):
        with open(path, "rb") as f:
            head = f.read(4)
        if head[:2] != b"PK":  # a zip archive's first local header
            raise FileFormatError(path, f"{path} is neither a directory of IDX files nor an "
                                        ".npz file (x_train, y_train, x_test, y_test)")
        arrays, where = _read_npz(path)
        kind = ".npz"
    else:
        raise FileNotFoundError(f"{path}: no such file or directory")
    data = {}
    for split in ("train", "test"):
        xk, yk = f"x_{split}", f"y_{split}"
        x = _images(arrays[xk], where[xk], xk)
        y = _labels(arrays[yk], where[yk], yk)
        if len(x) != len(y):
            raise FileFormatError(where[yk], f"{where[xk]} holds {len(x)} images ({xk}) but "
                                             f"{where[yk]} {len(y)} labels ({yk})")
        if len(x) == 0:
            raise FileFormatError(where[xk], f"{where[xk]}: {xk} holds no images")
        data[xk], data[yk] = x, y
    if data["x_train"].shape[1:] != data["x_test"].shape[1:]:
        raise FileFormatError(where["x_test"], f"{where['x_test']}: the test images are "
                                               f"{data['x_test'].shape[1:]}, the training "
                                               f"images {data['x_train'].shape[1:]}")
    num_classes = int(data["y_train"].max()) + 1
    if num_classes > MAX_CLASSES:
        raise FileFormatError(where["y_train"], f"{where['y_train']}: y_train holds the label "
                                                f"{num_classes - 1}; at most {MAX_CLASSES} "
                                                f"classes (0 to {MAX_CLASSES - 1}) are taken")
    if data["y_test"].max() >= num_classes:
        raise FileFormatError(where["y_test"], f"{where['y_test']}: y_test holds the label "
                                               f"{data['y_test'].max()}, out of the training "
                                               f"labels' range [0, {num_classes})")
    data.update(num_classes=num_classes, in_shape=tuple(data["x_train"].shape[1:]), kind=kind)
    return data
