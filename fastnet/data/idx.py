"""The IDX format of MNIST and Fashion-MNIST (http://yann.lecun.com/exdb/mnist/).

Header, big-endian: two zero bytes, a type byte, the number of dimensions, then one
uint32 per dimension; the values follow, row-major and big-endian. Images are
0x00000803 (uint8, 3 dimensions), labels 0x00000801 (uint8, 1 dimension).
"""
from __future__ import annotations

import gzip
import math
import os
import zlib

import numpy as np

# type byte -> big-endian dtype
_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path):
    with open(path, "rb") as f:
        head = f.read(2)
        f.seek(0)
        if head != b"\x1f\x8b":  # not gzip: the raw file (whatever its name)
            return f.read()
        try:
            return gzip.GzipFile(fileobj=f).read()
        except (EOFError, OSError, zlib.error) as e:
            raise ValueError(f"{path}: corrupt or truncated gzip file: {e}") from e


def read_idx(path, ndim=None) -> np.ndarray:
    """The array stored in an IDX file (``.gz`` or raw), in native byte order.

    Raises ValueError naming the file when the magic number is wrong, the number of
    dimensions is not ``ndim`` (when given) or the file holds fewer or more bytes than
    its header promises.
    """
    path = os.fspath(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path}: truncated IDX file: {len(data)} bytes, expected at least a "
                         "4-byte header")
    magic = int.from_bytes(data[:4], "big")
    code, dims = data[2], data[3]
    if data[0] != 0 or data[1] != 0 or code not in _TYPES:
        raise ValueError(f"{path}: not an IDX file: magic number 0x{magic:08x}, expected "
                         "0x000008NN (e.g. 0x00000803 for images, 0x00000801 for labels)")
    if ndim is not None and dims != ndim:
        raise ValueError(f"{path}: expected an IDX file of {ndim} dimension(s) (magic "
                         f"0x0000080{ndim} for uint8), got {dims} (magic 0x{magic:08x})")
    header = 4 + 4 * dims
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX file: {len(data)} bytes, expected a "
                         f"{header}-byte header")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    dtype = np.dtype(_TYPES[code])
    expected = header + math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        what = "truncated IDX file" if len(data) < expected else "IDX file with trailing bytes"
        raise ValueError(f"{path}: {what}: expected {expected} bytes ({header}-byte header + "
                         f"{' x '.join(map(str, shape))} values of {dtype.itemsize} byte(s)), "
                         f"got {len(data)}")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def write_idx(path, array) -> None:
    """Write ``array`` (uint8, int8, int16, int32, float32 or float64) as an IDX file,
    gzip-compressed when ``path`` ends in ``.gz``. For tests and for making small sets."""
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _TYPES.items()}
    code = codes.get(array.dtype)
    if code is None:
        raise TypeError(f"write_idx: unsupported dtype {array.dtype}")
    header = bytes([0, 0, code, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.dtype(_TYPES[code])).tobytes()
    opener = gzip.open if os.fspath(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)
