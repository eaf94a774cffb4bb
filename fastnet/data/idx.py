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

from .._npz import check_shape
from ..errors import FileFormatError

# type byte -> big-endian dtype
_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# deflate expands at most 1032:1 (a 258-byte match per 2 bits): a gzip file of n bytes can
# never hold more than this many times n bytes
GZIP_MAX_RATIO = 1032
_CHUNK = 1 << 20


def _read_up_to(stream, n, path):
    """At most ``n`` bytes of ``stream`` (fewer at its end), read in bounded chunks."""
    data = bytearray()
    try:
        while len(data) < n:
            chunk = stream.read(min(_CHUNK, n - len(data)))
            if not chunk:
                break
            data += chunk
    except (EOFError, OSError, zlib.error) as e:  # a cut or corrupt gzip stream
        raise FileFormatError(path, f"{path}: corrupt or truncated gzip file: {e}") from e
    return data


def read_idx(path, ndim=None) -> np.ndarray:
    """The array stored in an IDX file (``.gz`` or raw), in native byte order.

    Raises ``fastnet.FileFormatError`` (a ValueError) naming the file when the magic number
    is wrong, the number of dimensions is not ``ndim`` (when given) or the file holds fewer
    or more bytes than its header promises. The header is read first and the data size it
    promises checked against the file (a raw file must match it exactly, a gzip file cannot
    expand more than 1032-fold) before anything is allocated; a gzip stream is decompressed
    only up to that size (plus one byte, to notice trailing data).
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        gz = f.read(2) == b"\x1f\x8b"  # else the raw file (whatever its name)
        f.seek(0)
        stream = gzip.GzipFile(fileobj=f) if gz else f
        data = _read_up_to(stream, 4, path)
        if len(data) < 4:
            raise FileFormatError(path, f"{path}: truncated IDX file: {len(data)} bytes, "
                                        "expected at least a 4-byte header")
        magic = int.from_bytes(data[:4], "big")
        code, dims = data[2], data[3]
        if data[0] != 0 or data[1] != 0 or code not in _TYPES:
            raise FileFormatError(path, f"{path}: not an IDX file: magic number 0x{magic:08x}, "
                                        "expected 0x000008NN (e.g. 0x00000803 for images, "
                                        "0x00000801 for labels)")
        if ndim is not None and dims != ndim:
            raise FileFormatError(path, f"{path}: expected an IDX file of {ndim} dimension(s) "
                                        f"(magic 0x0000080{ndim} for uint8), got {dims} (magic "
                                        f"0x{magic:08x})")
        header = 4 + 4 * dims
        data += _read_up_to(stream, header - 4, path)
        if len(data) < header:
            raise FileFormatError(path, f"{path}: truncated IDX file: {len(data)} bytes, "
                                        f"expected a {header}-byte header")
        shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
        dtype = np.dtype(_TYPES[code])
        try:
            check_shape(shape, dtype, "its header")
        except ValueError as e:
            raise FileFormatError(path, f"{path}: not a readable IDX file: {e}") from None
        expected = header + math.prod(shape) * dtype.itemsize
        promised = (f"{expected} bytes ({header}-byte header + {' x '.join(map(str, shape))} "
                    f"values of {dtype.itemsize} byte(s))")
        if gz and expected > GZIP_MAX_RATIO * size:
            raise FileFormatError(path, f"{path}: IDX header promises {promised}, more than a "
                                        f"gzip file of {size} bytes can hold (at most "
                                        f"{GZIP_MAX_RATIO}:1)")
        if not gz and size != expected:
            got = size
        else:
            data += _read_up_to(stream, expected + 1 - len(data), path)
            got = len(data)
    if got != expected:
        what = "truncated IDX file" if got < expected else "IDX file with trailing bytes"
        raise FileFormatError(path, f"{path}: {what}: expected {promised}, got {got}")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


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
