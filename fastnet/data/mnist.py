"""MNIST and Fashion-MNIST from their standard IDX files.

The four ``.gz`` files of a data set live in ``<data_dir>/<name>/`` (the two sets use
the same file names), where data_dir is the argument, else ``$FASTNET_DATA``, else
``~/.cache/fastnet``. A missing file is downloaded from the public mirrors when the
network allows; every file, downloaded or found, is checked against the SHA-256 in
``FILES`` before it is parsed.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import urllib.request

import numpy as np

from .._npz import temporary_file
from ..errors import FileFormatError
from .idx import read_idx

MIRRORS = {
    "mnist": ["https://ossci-datasets.s3.amazonaws.com/mnist/",
              "https://storage.googleapis.com/cvdf-datasets/mnist/"],
    "fashion-mnist": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
}

# SHA-256 of the published .gz files. NOTE: fastnet could not download them when this
# table was written (no network); the digests are the ones published and repeated by
# several independent projects (TensorFlow Datasets-style checksum lists and others),
# not recomputed here. See README ("Training", data sets).
FILES = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc",
        "train-labels-idx1-ubyte.gz": "b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc",
        "t10k-images-idx3-ubyte.gz": "78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229",
        "t10k-labels-idx1-ubyte.gz": "42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf",
    },
}

CLASS_NAMES = {
    "mnist": [str(i) for i in range(10)],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"],
}

TIMEOUT_S = 30
_urlopen = urllib.request.urlopen  # one place for tests to replace


class DataUnavailableError(OSError):
    """A data set's files are neither in the data directory nor downloadable."""


def data_dir(path=None) -> str:
    """The data directory: ``path``, else $FASTNET_DATA, else ~/.cache/fastnet."""
    path = path or os.environ.get("FASTNET_DATA") or os.path.join("~", ".cache", "fastnet")
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download(url, target):
    """Download ``url`` to a temporary file beside ``target``; return its path."""
    fd, tmp = temporary_file(os.path.dirname(os.path.abspath(target)))  # swept if we die
    try:
        with os.fdopen(fd, "wb") as out, _urlopen(url, timeout=TIMEOUT_S) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def fetch(name, filename, directory=None, download=True) -> str:
    """The verified local path of one file of data set ``name``, downloading it if needed.

    A file whose SHA-256 does not match is never used: a downloaded one is deleted, one
    found in the directory is renamed to ``<file>.corrupt`` (kept for inspection).
    """
    if name not in FILES:
        raise ValueError(f"unknown data set {name!r}: expected one of {', '.join(FILES)}")
    expected = FILES[name][filename]
    folder = os.path.join(data_dir(directory), name)
    path = os.path.join(folder, filename)
    if os.path.exists(path):
        actual = _sha256(path)
        if actual != expected:
            os.replace(path, path + ".corrupt")
            raise ValueError(
                f"{path}: SHA-256 mismatch: expected {expected}, got {actual}; the file was "
                f"renamed to {path}.corrupt and not used. Run again to download a fresh copy, "
                f"or place the right file there")
        return path
    how = (f"place {', '.join(FILES[name])} (from {MIRRORS[name][0]}) in {folder}, or set "
           "--data-dir / $FASTNET_DATA to a directory holding a "
           f"'{name}' folder with them")
    if not download:
        raise DataUnavailableError(f"{path} is missing and downloading is off: {how}")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise DataUnavailableError(f"cannot create {folder} ({e}): {how}") from e
    errors = []
    for mirror in MIRRORS[name]:
        url = mirror + filename
        try:
            tmp = _download(url, path)
        except (OSError, http.client.HTTPException, ValueError) as e:  # offline, HTTP error, timeout
            errors.append(f"{url}: {getattr(e, 'reason', e)}")
            continue
        actual = _sha256(tmp)
        if actual != expected:
            os.unlink(tmp)
            errors.append(f"{url}: SHA-256 mismatch: expected {expected}, got {actual} "
                          "(download discarded)")
            continue
        os.chmod(tmp, 0o666 & ~_umask())  # created 0600; give what open() would
        os.replace(tmp, path)  # only a verified file ever gets the real name
        return path
    raise DataUnavailableError(
        f"could not download {filename} for {name} (offline?):\n  " + "\n  ".join(errors)
        + f"\nTo use {name} without network, {how}")


def load(name, split="train", directory=None, download=True):
    """(images (N, 1, 28, 28) float32 in [0, 1], labels (N,) int64) of ``name``
    ("mnist" or "fashion-mnist"), ``split`` "train" (60000) or "test" (10000)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    prefix = "train" if split == "train" else "t10k"
    images_path = fetch(name, f"{prefix}-images-idx3-ubyte.gz", directory, download)
    labels_path = fetch(name, f"{prefix}-labels-idx1-ubyte.gz", directory, download)
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if len(images) != len(labels):
        raise FileFormatError(labels_path, f"{images_path} holds {len(images)} images but "
                                           f"{labels_path} {len(labels)} labels")
    if labels.size and labels.max() >= 10:
        raise FileFormatError(labels_path, f"{labels_path}: label {labels.max()} is out of "
                                           "range [0, 10)")
    x = (images.astype(np.float32) / np.float32(255)).reshape(len(images), 1, *images.shape[1:])
    return np.ascontiguousarray(x), labels.astype(np.int64)


def load_mnist(split="train", data_dir=None, download=True):
    """MNIST handwritten digits: see ``load``."""
    return load("mnist", split, data_dir, download)


def load_fashion_mnist(split="train", data_dir=None, download=True):
    """Fashion-MNIST (Zalando article images, 10 classes in CLASS_NAMES): see ``load``."""
    return load("fashion-mnist", split, data_dir, download)
