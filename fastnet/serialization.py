"""``fastnet.save(model, path)`` / ``fastnet.load(path)``.

The file is a plain ``.npz``: one array per state_dict entry (PyTorch-style keys) plus
``__fastnet__``, a JSON description of the architecture. It is written to a temporary
file beside the target and renamed over it, so a crash never leaves a half-written
model where a good one was.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

from . import _rng
from . import layers as _layers
from .layers.module import Module

FORMAT = "fastnet-model"
VERSION = 1
CHECKPOINT_FORMAT = "fastnet-checkpoint"  # written by fastnet.train: model + training state
CHECKPOINT_VERSION = 1
_META = "__fastnet__"
_REGISTRY = {name: getattr(_layers, name) for name in _layers.__all__
             if name not in ("Module", "Parameter", "Buffer")}


def _describe(module: Module) -> dict:
    name = type(module).__name__
    if _REGISTRY.get(name) is not type(module):
        raise TypeError(
            f"fastnet.save: cannot describe a {name}: only fastnet's own layers and "
            "Sequential can be rebuilt; for a custom module save model.state_dict() instead"
        )
    if isinstance(module, _layers.Sequential):
        return {"type": name, "layers": [_describe(m) for m in module]}
    desc = {"type": name, "config": module.config()}
    # a layer built from other layers (Residual) names them in SUBMODULES: each is
    # described in turn (None stays None) and passed back to the constructor by name
    for sub in getattr(type(module), "SUBMODULES", ()):
        child = getattr(module, sub)
        desc.setdefault("modules", {})[sub] = None if child is None else _describe(child)
    return desc


def _build(desc: dict) -> Module:
    cls = _REGISTRY.get(desc.get("type"))
    if cls is None:
        raise ValueError(f"unknown layer type {desc.get('type')!r}")
    if cls is _layers.Sequential:
        return cls(*[_build(d) for d in desc["layers"]])
    subs = {k: None if d is None else _build(d) for k, d in desc.get("modules", {}).items()}
    return cls(**desc.get("config", {}), **subs)


def _file_mode(path):
    """The permission bits of the file being replaced, else the umask's default."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _model_meta(model: Module) -> dict:
    """The architecture and dtype of ``model``, as stored in model files and checkpoints."""
    dtypes = {str(p.dtype) for p in model.parameters()}
    dtypes |= {str(b.dtype) for b in model.buffers() if b.dtype.kind == "f"}
    return {"model": _describe(model), "dtype": dtypes.pop() if len(dtypes) == 1 else "float32"}


def write_npz(path, meta: dict, arrays: dict, who: str) -> None:
    """Write ``arrays`` plus ``meta`` (as JSON) to ``path`` atomically: a temporary file in
    the same directory, fsync'ed, then renamed over the target."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{who}: directory {directory} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=".fastnet-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{_META: np.array(json.dumps(meta))}, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode(path))  # mkstemp makes 0600; give what open() would
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_npz(path, who: str, kind: str = "model"):
    """(meta, arrays) of a file written by ``write_npz``. A missing file raises
    FileNotFoundError; anything unreadable, truncated or foreign raises ValueError that
    calls the expected file a fastnet ``kind`` file."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise ValueError(f"{who}: {path} is a .npy array, not a fastnet {kind} file")
            if _META not in data.files:
                raise ValueError(f"{who}: {path} is an .npz file but not a fastnet {kind} file "
                                 f"(no {_META} entry)")
            meta = json.loads(str(data[_META]))
            arrays = {k: data[k] for k in data.files if k != _META}
    except (FileNotFoundError, IsADirectoryError):
        raise
    except ValueError as e:
        if str(e).startswith(who):
            raise
        raise ValueError(f"{who}: {path} is not a readable fastnet {kind} file "
                         f"(truncated or not an .npz): {e}") from e
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"{who}: {path} is not a readable fastnet {kind} file "
                         f"(truncated or corrupt): {e}") from e
    if not isinstance(meta, dict) or meta.get("format") not in (FORMAT, CHECKPOINT_FORMAT):
        raise ValueError(f"{who}: {path} is not a fastnet {kind} file (format "
                         f"{meta.get('format') if isinstance(meta, dict) else meta!r})")
    return meta, arrays


def build_model(meta: dict, state: dict, path, who: str) -> Module:
    """The model described by ``meta`` (from ``_model_meta``) with parameters ``state``."""
    try:
        with _rng.preserved():  # building a model must not shift the user's random stream
            model = _build(meta["model"])
        model.to(np.dtype(meta.get("dtype", "float32")))
        model.load_state_dict(state)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{who}: {path} does not describe a model this fastnet can "
                         f"rebuild: {e}") from e
    return model


def save(model: Module, path) -> None:
    """Write ``model`` (architecture and parameters) to ``path`` (an .npz file)."""
    if not isinstance(model, Module):
        raise TypeError(f"fastnet.save: expected a fastnet Module, got {type(model).__name__}")
    meta = {"format": FORMAT, "version": VERSION, **_model_meta(model)}
    write_npz(path, meta, model.state_dict(), "fastnet.save")


def load(path) -> Module:
    """Rebuild a model written by ``fastnet.save``, or the model of a training checkpoint
    (``fastnet.train``)."""
    return load_with_meta(path)[0]


def load_with_meta(path, who="fastnet.load"):
    """(model, the file's metadata) for a model file or a checkpoint."""
    meta, arrays = read_npz(path, who)
    if meta["format"] == CHECKPOINT_FORMAT:
        check_version(meta, CHECKPOINT_VERSION, path, who)
        state = {k[len("model."):]: v for k, v in arrays.items() if k.startswith("model.")}
    else:
        check_version(meta, VERSION, path, who)
        state = arrays
    return build_model(meta, state, path, who), meta


def check_version(meta, version, path, who):
    if meta.get("version") != version:
        raise ValueError(f"{who}: {path} has format version {meta.get('version')}; "
                         f"this fastnet reads version {version}")
