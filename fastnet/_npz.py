"""Bounded readers and atomic writers for the files fastnet keeps its arrays in.

Reading never trusts a size a file declares: an ``.npz`` is opened with ``zipfile``, every
member's ``.npy`` header (shape, dtype) is read and checked against the member's declared
size, and the declared sizes together against the file's size, before any array data is
decompressed; the data is then streamed into arrays of exactly the checked size, so a zip
member that inflates to more than it declared stops at its declared size. Pickles are
never loaded. Every refusal is a ``FileFormatError`` naming the file.

Writing goes to a temporary ``.fastnet-<host>-<pid>-<random>.tmp`` beside the target,
fsync'ed and renamed over it; a writer killed before the rename leaves that file, and the
next write to the same directory removes it once its process is gone.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
import secrets
import socket
import struct
import zipfile
import zlib

import numpy as np
from numpy.lib import format as npy_format

from .errors import FileFormatError

NPY_MAGIC = b"\x93NUMPY"
# The arrays of an .npz may together decompress to at most this many times the file's
# size, plus MIN_ALLOWANCE: fastnet writes uncompressed members (about 1:1), random
# weights do not compress, and a few-KB file can never claim more than about a MB.
MAX_EXPANSION = 64
MIN_ALLOWANCE = 1 << 20
MAX_MEMBERS = 1 << 16
MAX_HEADER = 10_000  # NumPy's own limit for a .npy header
# The JSON entry (an architecture, a checkpoint's training state): json.loads builds an
# object per container, so a small deflated entry of "[{},{},...]" cost hundreds of MB
# before any check ran. Its size (UTF-32: 4 bytes a character) and its containers are
# counted first. A checkpoint takes about 900 bytes an epoch of history (some 4,000 epochs
# fit) and one dict an epoch; a model description, a few dicts a layer.
MAX_JSON_BYTES = 4 << 20
MAX_JSON_CONTAINERS = 100_000
ARRAY_KINDS = "fiu"  # parameters, buffers and optimizer state: real numbers
_CHUNK = 1 << 20


def _members_limit(file_size):
    return MAX_EXPANSION * file_size + MIN_ALLOWANCE


# ---- reading ------------------------------------------------------------------------------
class Member:
    """One ``.npy`` member of an .npz, checked but not yet read."""

    __slots__ = ("info", "offset", "shape", "dtype", "fortran")

    def __init__(self, info, offset, shape, dtype, fortran):
        self.info, self.offset, self.shape = info, offset, shape
        self.dtype, self.fortran = dtype, fortran

    @property
    def nbytes(self):
        return math.prod(self.shape) * self.dtype.itemsize


def _quoted(name):
    text = repr(name)
    return text if len(text) <= 80 else text[:80] + "..."


def _entry(name):
    return f"entry {_quoted(name)}"


def _read_exact(f, n, what):
    data = b""
    while len(data) < n:
        chunk = f.read(n - len(data))
        if not chunk:
            raise ValueError(f"{what} ends inside its .npy header")
        data += chunk
    return data


def _npy_header(f, what):
    """(header length, shape, dtype, fortran_order) of the .npy stream ``f``, checked. The
    header's declared length is checked before it is read (NumPy reads first)."""
    prefix = _read_exact(f, len(NPY_MAGIC) + 2, what)
    if prefix[:len(NPY_MAGIC)] != NPY_MAGIC:
        raise ValueError(f"{what} is not a .npy array (magic {prefix[:len(NPY_MAGIC)]!r})")
    major = prefix[len(NPY_MAGIC)]
    if major not in (1, 2, 3):
        raise ValueError(f"{what}: .npy format version {major} is not supported")
    length_field = _read_exact(f, 2 if major == 1 else 4, what)
    length = int.from_bytes(length_field, "little")
    if length > MAX_HEADER:
        raise ValueError(f"{what}: its .npy header claims {length} bytes (at most {MAX_HEADER})")
    header = io.BytesIO(prefix + length_field + _read_exact(f, length, what))
    npy_format.read_magic(header)
    read = npy_format.read_array_header_1_0 if major == 1 else npy_format.read_array_header_2_0
    shape, fortran, dtype = read(header, max_header_size=MAX_HEADER)
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise ValueError(f"{what} holds {dtype} (objects or records), expected plain numbers")
    if not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError(f"{what}: its .npy header has the shape {shape!r}")
    check_shape(shape, dtype, what)
    return header.tell(), tuple(shape), dtype, bool(fortran)


def check_shape(shape, dtype, what):
    """ValueError naming ``what`` unless NumPy can make an array of ``shape`` and ``dtype``:
    at most its number of dimensions (64), and, for a shape with a zero in it, a size that
    fits its index type (NumPy multiplies the other dimensions too). Allocates nothing: an
    array with elements is checked against the file's size by the caller instead."""
    try:
        if shape:  # (a 0-d array has one element: never made here)
            np.empty((0,) * len(shape), dtype)
        if 0 in shape:
            np.empty(shape, dtype)
    except ValueError as e:  # "maximum supported dimension ...", "array is too big ..."
        raise ValueError(f"{what}: NumPy cannot hold an array of shape "
                         f"{_quoted(tuple(shape))}: {e}") from None


class NpzReader:
    """An .npz file opened for checking: ``members`` (name -> Member: shape and dtype,
    from the headers) is known before ``read`` decompresses anything.

    ``bad(what)`` raises FileFormatError for this file. Use as a context manager."""

    def __init__(self, path, who, kind="model"):
        self.path, self.who, self.kind = os.fspath(path), who, kind
        self._file = open(self.path, "rb")  # FileNotFoundError, IsADirectoryError stay as they are
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def bad(self, what, cause=None):
        raise FileFormatError(self.path, f"{self.who}: {self.path} {what}") from cause

    def _open(self):
        f = self._file
        size = os.fstat(f.fileno()).st_size
        head = f.read(len(NPY_MAGIC))
        f.seek(0)
        if head == NPY_MAGIC:
            self.bad(f"is a .npy array, not a fastnet {self.kind} file")
        try:
            self._zip = zipfile.ZipFile(f)
            infos = self._zip.infolist()
            if len(infos) > MAX_MEMBERS:
                self.bad(f"has {len(infos)} entries; a fastnet {self.kind} file has far fewer")
            self.members = {}
            for info in infos:
                name = info.filename
                if not name.endswith(".npy"):
                    self.bad(f"is not a fastnet {self.kind} file: {_entry(name)} is not a "
                             ".npy array")
                if name[:-4] in self.members:
                    self.bad(f"is not a readable fastnet {self.kind} file: {_entry(name)} "
                             "appears twice")
                self.members[name[:-4]] = self._member(info)
        except FileFormatError:
            raise
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError,
                RuntimeError, ValueError, struct.error, OverflowError) as e:
            self.bad(f"is not a readable fastnet {self.kind} file (truncated or corrupt): {e}", e)
        total = sum(m.info.file_size for m in self.members.values())
        if total > _members_limit(size):
            self.bad(f"declares {total} bytes of arrays in a file of {size} bytes; refusing to "
                     f"expand it more than {MAX_EXPANSION}-fold")

    def _member(self, info):
        what = _entry(info.filename)
        if info.flag_bits & 0x1:
            self.bad(f"is not a readable fastnet {self.kind} file: {what} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            self.bad(f"is not a readable fastnet {self.kind} file: {what} uses compression "
                     f"method {info.compress_type}; fastnet reads stored or deflated entries")
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            self.bad(f"is not a readable fastnet {self.kind} file: {what} is stored with "
                     f"{info.compress_size} bytes but declares {info.file_size}")
        with self._zip.open(info) as f:
            offset, shape, dtype, fortran = _npy_header(f, what)
        member = Member(info, offset, shape, dtype, fortran)
        if offset + member.nbytes != info.file_size:
            self.bad(f"is not a readable fastnet {self.kind} file: {what} declares "
                     f"{info.file_size} bytes, but its header ({dtype} {shape}) needs "
                     f"{offset + member.nbytes}")
        return member

    def read(self, name):
        """The array ``name``, read in chunks into an array of its checked size."""
        m = self.members[name]
        what = _entry(m.info.filename)
        try:
            array = np.empty(m.shape[::-1] if m.fortran else m.shape, m.dtype)
            flat = array.reshape(-1).view(np.uint8)
            with self._zip.open(m.info) as f:
                f.read(m.offset)
                done = 0
                while done < m.nbytes:
                    chunk = f.read(min(_CHUNK, m.nbytes - done))
                    if not chunk:
                        self.bad(f"is truncated: {what} ends after {done} of {m.nbytes} bytes")
                    flat[done:done + len(chunk)] = np.frombuffer(chunk, np.uint8)
                    done += len(chunk)
                if f.read(1):  # also completes the CRC check
                    self.bad(f"is corrupt: {what} holds more than {m.nbytes} bytes")
        except FileFormatError:
            raise
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
            self.bad(f"is not a readable fastnet {self.kind} file (truncated or corrupt): "
                     f"{what}: {e}", e)
        return array.T if m.fortran else array

    def read_meta(self, entry):
        """The JSON document stored as a 0-d string array in ``entry``, depth-checked."""
        m = self.members.get(entry)
        if m is None:
            self.bad(f"is an .npz file but not a fastnet {self.kind} file (no {entry} entry)")
        if m.dtype.kind != "U" or m.shape != ():
            self.bad(f"is not a fastnet {self.kind} file: {entry} holds {m.dtype} {m.shape}, "
                     "expected a JSON string")
        if m.nbytes > MAX_JSON_BYTES:
            self.bad(f"is not a fastnet {self.kind} file: its {entry} entry holds {m.nbytes} "
                     f"bytes, more than the {MAX_JSON_BYTES} a description may have")
        text = str(self.read(entry)[()])
        containers = text.count("{") + text.count("[")  # (braces in strings count too)
        if containers > MAX_JSON_CONTAINERS:
            self.bad(f"is not a fastnet {self.kind} file: its {entry} JSON has {containers} "
                     f"lists and dicts, more than the {MAX_JSON_CONTAINERS} a description may "
                     "have")
        try:
            meta = json.loads(text)
        except RecursionError as e:
            self.bad(f"is not a fastnet {self.kind} file: its {entry} JSON is nested too deeply", e)
        except ValueError as e:  # JSONDecodeError, or an integer with too many digits
            self.bad(f"is not a readable fastnet {self.kind} file (corrupt {entry} JSON): {e}", e)
        if json_depth(meta) > MAX_JSON_DEPTH:
            self.bad(f"is not a fastnet {self.kind} file: its {entry} JSON is nested more than "
                     f"{MAX_JSON_DEPTH} levels deep")
        return meta

    def read_arrays(self, names):
        """{name: array}, each checked to hold real numbers."""
        for name in names:
            kind = self.members[name].dtype.kind
            if kind not in ARRAY_KINDS:
                self.bad(f"is not a fastnet {self.kind} file: {_quoted(name)} holds "
                         f"{self.members[name].dtype}, expected real numbers")
        return {name: self.read(name) for name in names}

    def close(self):
        zf = getattr(self, "_zip", None)
        if zf is not None:
            zf.close()
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


MAX_JSON_DEPTH = 64


def json_depth(value):
    """How deeply lists and dicts nest in ``value`` (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        items = v.values() if isinstance(v, dict) else v if isinstance(v, list) else None
        if items is None:
            continue
        deepest = max(deepest, d)
        if d <= MAX_JSON_DEPTH:  # deeper is refused anyway: stop counting there
            stack.extend((item, d + 1) for item in items)
    return deepest


def read_npy(path):
    """The array of a .npy file (no pickles), its header checked against the file's size
    before anything is allocated."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        try:
            offset, shape, dtype, fortran = _npy_header(f, "the file")
        except ValueError as e:
            raise FileFormatError(path, f"{path}: not a readable .npy file: {e}") from e
        expected = offset + math.prod(shape) * dtype.itemsize
        if size != expected:
            what = "is truncated" if size < expected else "has trailing bytes"
            raise FileFormatError(path, f"{path} {what}: its header ({dtype} {shape}) "
                                        f"needs {expected} bytes, the file has {size}")
        array = np.fromfile(f, dtype=dtype, count=math.prod(shape))
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)


# ---- writing ------------------------------------------------------------------------------
_TMP = re.compile(r"^\.fastnet-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")


def _host():
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "localhost"


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process (or a pid we cannot ask about): leave it
    return True


def remove_stale_temporaries(directory):
    """Remove ``.fastnet-<host>-<pid>-*.tmp`` files left in ``directory`` by writers on
    this host whose process is gone (a save killed before its rename)."""
    host = _host()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        match = _TMP.match(entry.name) if entry.name.startswith(".fastnet-") else None
        if match and match["host"] == host and not _alive(int(match["pid"])):
            try:
                os.unlink(entry.path)
            except OSError:
                pass


def file_mode(path):
    """The permission bits of the file being replaced, else the umask's default."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def temporary_file(directory):
    """(fd, path) of a new ``.fastnet-<host>-<pid>-<random>.tmp`` file (mode 0600) in
    ``directory``, after removing the ones dead writers left there: every temporary file
    fastnet writes (saves, checkpoints, plots, downloads) has this name, so an interrupted
    one is swept by the next."""
    remove_stale_temporaries(directory)
    tmp = os.path.join(directory, f".fastnet-{_host()}-{os.getpid()}-{secrets.token_hex(4)}.tmp")
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                   0o600), tmp


def atomic_write(path, write, who):
    """Call ``write(f)`` on a binary file that replaces ``path`` only once complete and
    fsync'ed: a crash never leaves a half-written file where a good one was."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{who}: directory {directory} does not exist")
    fd, tmp = temporary_file(directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode(path))  # created 0600; give what open() would
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_npz(path, meta: dict, arrays: dict, who: str, meta_entry: str) -> None:
    """``arrays`` plus ``meta`` (as JSON, in ``meta_entry``) as an uncompressed .npz,
    written atomically. A ``meta`` that the readers would refuse as too large is a
    ValueError, and nothing is written."""
    document = json.dumps(meta)
    text = np.array(document)
    containers = document.count("{") + document.count("[")
    if text.nbytes > MAX_JSON_BYTES or containers > MAX_JSON_CONTAINERS:
        raise ValueError(f"{who}: the description of {path} would take {text.nbytes} bytes "
                         f"with {containers} lists and dicts; fastnet reads at most "
                         f"{MAX_JSON_BYTES} bytes and {MAX_JSON_CONTAINERS} of them")
    atomic_write(path, lambda f: np.savez(f, **{meta_entry: text}, **arrays), who)
