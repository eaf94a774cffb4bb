"""``fastnet.save(model, path)`` / ``fastnet.load(path)``.

The file is a plain ``.npz``: one array per state_dict entry (PyTorch-style keys) plus
``__fastnet__``, a JSON description of the architecture. It is written to a temporary
file beside the target and renamed over it, so a crash never leaves a half-written
model where a good one was (and the next save to that directory removes what a killed
writer left; fastnet/_npz.py).

Reading treats the file as untrusted: the description is checked (types, nesting, known
layers and their arguments), the parameter shapes it implies are computed without
allocating anything and compared with the shapes in the arrays' headers, and only then
is any array read or any layer built. Every refusal is a ``FileFormatError`` (a
ValueError) that names the file.
"""
from __future__ import annotations

import inspect
import json
import math
import numbers
import os

import numpy as np

from . import _npz, _rng
from ._npz import NpzReader, file_mode
from .errors import FileFormatError
from . import layers as _layers
from .layers.module import Module
from .models import CharLSTM

FORMAT = "fastnet-model"
VERSION = 1
CHECKPOINT_FORMAT = "fastnet-checkpoint"  # written by fastnet.train: model + training state
CHECKPOINT_VERSION = 1
_META = "__fastnet__"
_REGISTRY = {name: getattr(_layers, name) for name in _layers.__all__
             if name not in ("Module", "Parameter", "Buffer")}
# models that are modules of their own (not Sequentials of layers), rebuilt from their config
_REGISTRY["CharLSTM"] = CharLSTM


def _describe(module: Module, check: bool = True) -> dict:
    """The JSON description of ``module`` that ``_build`` rebuilds. With ``check`` (the
    default), a model that ``fastnet.load`` would refuse (``expected_state``'s rules, e.g.
    a Conv2D padded past its kernel) is a ValueError: save and load agree."""
    desc = _description(module)
    if check:
        try:
            _walk(json.loads(json.dumps(desc)), "model", "", 0, {}, [0])  # as a file holds it
        except _Bad as e:
            raise ValueError(f"fastnet.save: cannot write this model: {e} (fastnet.load "
                             "refuses such files)") from None
    return desc


def _description(module: Module) -> dict:
    name = type(module).__name__
    if _REGISTRY.get(name) is not type(module):
        raise TypeError(
            f"fastnet.save: cannot describe a {name}: only fastnet's own layers and "
            "Sequential can be rebuilt; for a custom module save model.state_dict() instead"
        )
    if isinstance(module, _layers.Sequential):
        return {"type": name, "layers": [_description(m) for m in module]}
    desc = {"type": name, "config": module.config()}
    # a layer built from other layers (Residual) names them in SUBMODULES: each is
    # described in turn (None stays None) and passed back to the constructor by name
    for sub in getattr(type(module), "SUBMODULES", ()):
        child = getattr(module, sub)
        desc.setdefault("modules", {})[sub] = None if child is None else _description(child)
    return desc


def _build(desc: dict) -> Module:
    cls = _REGISTRY.get(desc.get("type"))
    if cls is None:
        raise ValueError(f"unknown layer type {desc.get('type')!r}")
    if cls is _layers.Sequential:
        return cls(*[_build(d) for d in desc["layers"]])
    subs = {k: None if d is None else _build(d) for k, d in desc.get("modules", {}).items()}
    return cls(**desc.get("config", {}), **subs)


def _model_meta(model: Module) -> dict:
    """The architecture and dtype of ``model``, as stored in model files and checkpoints."""
    dtypes = {str(p.dtype) for p in model.parameters()}
    dtypes |= {str(b.dtype) for b in model.buffers() if b.dtype.kind == "f"}
    return {"model": _describe(model), "dtype": dtypes.pop() if len(dtypes) == 1 else "float32"}


# ---- what a description implies, computed without building anything ----------------------
MAX_MODULE_DEPTH = 24     # layers inside layers (Sequential, Residual)
MAX_MODULES = 10_000      # layers in one model
_SCALARS = (type(None), bool, int, float, str)


class _Bad(Exception):
    """A problem with the description at ``where`` (turned into a FileFormatError)."""

    def __init__(self, where, problem):
        super().__init__(f"{where}: {problem}")


def _short(value, limit=60):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _positive(config, name, where):
    value = config[name]
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise _Bad(f"{where}.{name}", f"expected a positive int, got {_short(value)}")
    return int(value)


def _pair(config, name, where, minimum=1):
    value = config[name]
    v = [value, value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not (isinstance(v, list) and len(v) == 2
            and all(isinstance(e, int) and not isinstance(e, bool) and e >= minimum for e in v)):
        raise _Bad(f"{where}.{name}", f"expected an int or a pair of ints >= {minimum}, got "
                                      f"{_short(value)}")
    return tuple(v)


# state_dict entry -> shape, per layer class, from the constructor's arguments (with their
# defaults filled in): what building the layer would allocate. A layer class with
# parameters or buffers needs a row (tests/test_untrusted_files.py checks every layer).
def _dense_state(c, where):
    out, inp = _positive(c, "out_features", where), _positive(c, "in_features", where)
    return {"weight": (out, inp), **({"bias": (out,)} if c["bias"] else {})}


# the largest dilation a file may give a Conv2D (see _conv_state)
MAX_FILE_DILATION = 64


def _conv_state(c, where):
    out, inp = _positive(c, "out_channels", where), _positive(c, "in_channels", where)
    kernel = _pair(c, "kernel_size", where)
    groups = _positive(c, "groups", where)
    for name, size in (("in_channels", inp), ("out_channels", out)):
        if size % groups:
            raise _Bad(f"{where}.groups", f"{name}={size} is not divisible by groups={groups}")
    dilation = _pair(c, "dilation", where)
    if any(d > MAX_FILE_DILATION for d in dilation):
        raise _Bad(f"{where}.dilation", f"expected a dilation of at most {MAX_FILE_DILATION}, "
                                        f"got {list(dilation)}")
    # NOTE: the padding is not stored in any array, yet it sizes every output: [20000,
    # 20000] made evaluate allocate terabytes. Padding past the (dilated) kernel's span
    # d*(k-1) + 1 only adds outputs that see nothing but zeros, so a file may pad at most
    # by that span, its dilation at most MAX_FILE_DILATION (the layer's constructor, like
    # PyTorch's, takes more).
    span = [d * (k - 1) + 1 for d, k in zip(dilation, kernel)]
    padding = _pair(c, "padding", where, minimum=0)
    if any(p > k for p, k in zip(padding, span)):
        what = "kernel size" if dilation == (1, 1) else "dilated kernel's span"
        raise _Bad(f"{where}.padding", f"padding {list(padding)} is larger than the {what} "
                                       f"{span}; a fastnet file pads a Conv2D by at most its "
                                       f"{what} on each axis")
    return {"weight": (out, inp // groups, *kernel), **({"bias": (out,)} if c["bias"] else {})}


def _batch_norm_state(c, where):
    n = _positive(c, "num_features", where)
    state = {"weight": (n,), "bias": (n,)} if c["affine"] else {}
    if c["track_running_stats"]:
        state.update(running_mean=(n,), running_var=(n,), num_batches_tracked=())
    return state


def _layer_norm_state(c, where):
    value = c["normalized_shape"]
    shape = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not (isinstance(shape, list) and shape
            and all(isinstance(e, int) and not isinstance(e, bool) and e >= 1 for e in shape)):
        raise _Bad(f"{where}.normalized_shape", f"expected a positive int or a list of 1 to 4 "
                                                f"positive ints, got {_short(value)}")
    for name in ("elementwise_affine", "bias"):
        if not isinstance(c[name], bool):
            raise _Bad(f"{where}.{name}", f"expected true or false, got {_short(c[name])}")
    shape = tuple(shape)
    if not c["elementwise_affine"]:
        return {}
    return {"weight": shape, **({"bias": shape} if c["bias"] else {})}


# NOTE: num_layers sizes no array, yet it counts them: the shapes a file's description
# implies are listed before any array is compared, so a file may stack at most this many
# layers (a few bytes of JSON must not list millions of entries).
MAX_RECURRENT_LAYERS = 256


def _recurrent_state(cls):
    def state(c, where):
        h = _positive(c, "hidden_size", where)
        layers = _positive(c, "num_layers", where)
        if layers > MAX_RECURRENT_LAYERS:
            raise _Bad(f"{where}.num_layers", f"{layers} layers; a fastnet file stacks at most "
                                              f"{MAX_RECURRENT_LAYERS}")
        if not isinstance(c["bidirectional"], bool):
            raise _Bad(f"{where}.bidirectional",
                       f"expected true or false, got {_short(c['bidirectional'])}")
        dirs = ("", "_reverse") if c["bidirectional"] else ("",)
        g = cls.num_gates * h
        shapes = {}
        for k in range(layers):
            f = _positive(c, "input_size", where) if k == 0 else len(dirs) * h
            for sfx in dirs:
                shapes[f"weight_ih_l{k}{sfx}"] = (g, f)
                shapes[f"weight_hh_l{k}{sfx}"] = (g, h)
                if c["bias"]:
                    shapes[f"bias_ih_l{k}{sfx}"] = (g,)
                    shapes[f"bias_hh_l{k}{sfx}"] = (g,)
        return shapes
    return state


def _embedding_state(c, where):
    n, d = _positive(c, "num_embeddings", where), _positive(c, "embedding_dim", where)
    p = c["padding_idx"]
    if p is not None and (isinstance(p, bool) or not isinstance(p, int) or not -n <= p < n):
        raise _Bad(f"{where}.padding_idx", f"expected None or an int in [{-n}, {n}), got "
                                           f"{_short(p)}")
    return {"weight": (n, d)}


def _char_lstm_state(c, where):
    vocab = c["vocab"]
    if not isinstance(vocab, str) or not vocab or len(set(vocab)) != len(vocab):
        raise _Bad(f"{where}.vocab", f"expected a non-empty string of distinct characters, got "
                                     f"{_short(vocab)}")
    v, e = len(vocab), _positive(c, "embedding_dim", where)
    h = _positive(c, "hidden_size", where)
    lstm = _recurrent_state(_layers.LSTM)(
        {"input_size": e, "hidden_size": h, "num_layers": c["num_layers"],
         "bidirectional": False, "bias": True}, where)
    return {"embedding.weight": (v, e), **{f"lstm.{k}": s for k, s in lstm.items()},
            "head.weight": (v, h), "head.bias": (v,)}


_STATE_SHAPES = {
    _layers.Dense: _dense_state, _layers.Conv2D: _conv_state,
    _layers.BatchNorm1D: _batch_norm_state, _layers.BatchNorm2D: _batch_norm_state,
    _layers.LayerNorm: _layer_norm_state,
    _layers.Embedding: _embedding_state,
    **{cls: _recurrent_state(cls) for cls in (_layers.RNN, _layers.LSTM, _layers.GRU)},
    CharLSTM: _char_lstm_state,
}


def _config(cls, config, where):
    """The constructor's arguments: ``config`` checked (JSON scalars or short lists of
    them, known names) with the defaults filled in."""
    if not isinstance(config, dict):
        raise _Bad(where, f"expected a dict of arguments, got {_short(config)}")
    params = {name: p for name, p in inspect.signature(cls).parameters.items()
              if name not in getattr(cls, "SUBMODULES", ())
              and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    full = {}
    for name, p in params.items():
        if name in config:
            value = config[name]
            ok = isinstance(value, _SCALARS) or (
                isinstance(value, list) and len(value) <= 4
                and all(isinstance(e, _SCALARS) for e in value))
            if not ok:
                raise _Bad(f"{where}.{name}", f"expected a number, a string, a bool or a short "
                                              f"list of them, got {_short(value)}")
            full[name] = value
        elif p.default is not p.empty:
            full[name] = p.default
        else:
            raise _Bad(where, f"{cls.__name__} needs the argument {name!r}")
    unknown = sorted(set(config) - set(params))
    if unknown:
        raise _Bad(where, f"{cls.__name__} takes no argument {_short(unknown[0])}")
    return full


def _walk(desc, where, prefix, depth, state, count):
    """Check the description ``desc`` (of the module at ``where``) and add the shapes of
    the state_dict entries it implies to ``state`` (key -> shape)."""
    if depth > MAX_MODULE_DEPTH:
        raise _Bad(where, f"layers nested more than {MAX_MODULE_DEPTH} deep")
    count[0] += 1
    if count[0] > MAX_MODULES:
        raise _Bad(where, f"more than {MAX_MODULES} layers")
    if not isinstance(desc, dict):
        raise _Bad(where, f"expected a layer description (a dict), got {_short(desc)}")
    cls = _REGISTRY.get(desc.get("type")) if isinstance(desc.get("type"), str) else None
    if cls is None:
        raise _Bad(f"{where}.type", f"unknown layer type {_short(desc.get('type'))}")
    if cls is _layers.Sequential:
        allowed, layers = {"type", "layers"}, desc.get("layers")
        if not isinstance(layers, list):
            raise _Bad(f"{where}.layers", f"expected a list of layers, got {_short(layers)}")
        for i, d in enumerate(layers):
            _walk(d, f"{where}.layers[{i}]", f"{prefix}{i}.", depth + 1, state, count)
    else:
        allowed = {"type", "config", "modules"}
        config = _config(cls, desc.get("config", {}), f"{where}.config")
        rule = _STATE_SHAPES.get(cls)
        if rule is not None:
            state.update({prefix + k: v for k, v in rule(config, f"{where}.config").items()})
        subs = getattr(cls, "SUBMODULES", ())
        modules = desc.get("modules", {})
        if not isinstance(modules, dict) or not set(modules) <= set(subs):
            raise _Bad(f"{where}.modules", f"expected a dict with keys among {list(subs)}, got "
                                           f"{_short(modules)}")
        for sub in subs:  # the constructor's order, which is the state_dict's
            if modules.get(sub) is not None:
                _walk(modules[sub], f"{where}.modules.{sub}", f"{prefix}{sub}.", depth + 1,
                      state, count)
    extra = sorted(set(desc) - allowed)
    if extra:
        raise _Bad(where, f"unexpected key {_short(extra[0])} in a {cls.__name__} description")


def expected_state(meta, path, who) -> dict:
    """state_dict key -> shape of the model that ``meta`` describes, after checking the
    description; nothing is allocated. Raises FileFormatError naming ``path``."""
    try:
        if "model" not in meta:
            raise _Bad("model", "missing")
        dtype = meta.get("dtype", "float32")
        if dtype not in ("float32", "float64"):
            raise _Bad("dtype", f"expected 'float32' or 'float64', got {_short(dtype)}")
        state = {}
        _walk(meta["model"], "model", "", 0, state, [0])
    except _Bad as e:
        raise FileFormatError(path, f"{who}: {path} does not describe a model this fastnet can "
                                    f"rebuild: {e}") from None
    return state


def check_state_shapes(expected, shapes, path, who, what="the arrays"):
    """Refuse unless ``shapes`` (key -> shape, of the file's arrays) are exactly the entries
    and shapes ``expected`` (from ``expected_state``)."""
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected]
    if missing or unexpected:
        def listed(keys):
            more = f" and {len(keys) - 4} more" if len(keys) > 4 else ""
            return ", ".join(_short(k) for k in keys[:4]) + more

        parts = ([f"no array for {listed(missing)}"] if missing else []) + (
            [f"unexpected arrays {listed(unexpected)}"] if unexpected else [])
        raise FileFormatError(path, f"{who}: {path}: {what} do not match the model it describes: "
                                    f"{'; '.join(parts)}")
    for k, want in expected.items():
        if tuple(shapes[k]) != tuple(want):
            raise FileFormatError(path, f"{who}: {path}: {_short(k)} has shape {tuple(shapes[k])}, "
                                        f"the model it describes needs {tuple(want)}")


def build_model(meta: dict, state: dict, path, who: str) -> Module:
    """The model described by ``meta`` (from ``_model_meta``) with parameters ``state``.
    The description and the arrays' shapes are checked before any layer is built."""
    check_state_shapes(expected_state(meta, path, who), {k: np.shape(v) for k, v in state.items()},
                       path, who)
    try:
        with _rng.preserved():  # building a model must not shift the user's random stream
            model = _build(meta["model"])
        model.to(np.dtype(meta.get("dtype", "float32")))
        model.load_state_dict(state)
    except (KeyError, TypeError, ValueError) as e:
        raise FileFormatError(path, f"{who}: {path} does not describe a model this fastnet can "
                                    f"rebuild: {e}") from e
    return model


# ---- the checkpoint's training state ------------------------------------------------------
def _is_int(v, lo=0):
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _is_real(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _ints(v, lo, most):
    return isinstance(v, list) and len(v) <= most and all(_is_int(e, lo) for e in v)


# A sample's shape as checkpoints record it (``input_shape``), for predict to resize an
# image to: not an array in the file, so bounded here (a 2 KB checkpoint claiming
# [1, 20000, 20000] made predict allocate 23 GB).
MAX_INPUT_DIM = 65536
MAX_INPUT_SIZE = 1 << 24


def input_shape_ok(v) -> bool:
    """Whether ``v`` is a sample shape a checkpoint may record: a list of 1 to 3 positive
    ints, each at most MAX_INPUT_DIM, with at most MAX_INPUT_SIZE elements in all."""
    return (isinstance(v, list) and 1 <= len(v) <= 3 and _ints(v, 1, 3)
            and max(v) <= MAX_INPUT_DIM and math.prod(v) <= MAX_INPUT_SIZE)


# The numbers of a history record (Trainer._run_epoch writes them all), float or None
_RECORD_NUMBERS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "samples_per_s",
                   "seconds")


def _history_record(r):
    return (isinstance(r, dict) and _is_int(r.get("epoch"), 1)
            and all(isinstance(x, _SCALARS) for x in r.values())
            and all(r.get(k) is None or (isinstance(r[k], (int, float))
                                         and not isinstance(r[k], bool))
                    for k in _RECORD_NUMBERS)
            and isinstance(r.get("stopped", ""), str))


def _hyperparameter(v):
    return (v is None or isinstance(v, bool) or _is_real(v)
            or (isinstance(v, list) and len(v) <= 4 and all(_is_real(e) for e in v)))


_CHECKPOINT_ENTRIES = {  # entry -> (what it must be, check); checked where present
    "epoch": ("an int >= 0", _is_int),
    "bad_epochs": ("an int >= 0", _is_int),
    "steps": ("an int >= 0", lambda v: _is_int(v) and v >= 0),
    "clip_grad_norm": ("null or a number > 0", lambda v: v is None or (_is_real(v) and v > 0)),
    "base_lr": ("a finite number", _is_real),
    "input_shape": (f"null or a list of 1 to 3 positive ints, each at most {MAX_INPUT_DIM}, "
                    f"at most {MAX_INPUT_SIZE} elements in all",
                    lambda v: v is None or input_shape_ok(v)),
    "optimizer": ("{type: str, hyperparameters: {name: number}, param_steps: [int >= 0]}",
                  lambda v: isinstance(v, dict) and isinstance(v.get("type"), str)
                  and isinstance(v.get("hyperparameters"), dict)
                  and all(_hyperparameter(h) for h in v["hyperparameters"].values())
                  and _ints(v.get("param_steps"), 0, 1 << 20)),
    "schedule": ("null or a dict", lambda v: v is None or isinstance(v, dict)),
    "rng": ("a dict", lambda v: isinstance(v, dict)),
    "loaders": ("a dict of null or {generator: dict}", lambda v: isinstance(v, dict) and all(
        s is None or (isinstance(s, dict) and isinstance(s.get("generator"), dict))
        for s in v.values())),
    "modules": ("a dict of layer states", lambda v: isinstance(v, dict)),
    "history": ("a list of dicts {epoch: int >= 1, train_loss, train_acc, val_loss, val_acc, "
                "lr, samples_per_s, seconds: number or null, stopped: str, ...}",
                lambda v: isinstance(v, list) and all(_history_record(r) for r in v)),
    "best": ("null or {epoch: int, monitor: str, value: number}", lambda v: v is None or (
        isinstance(v, dict) and _is_int(v.get("epoch")) and isinstance(v.get("monitor"), str)
        and _is_real(v.get("value")))),
    "config": ("null or a dict", lambda v: v is None or isinstance(v, dict)),
}


def same_layout(theirs, mine) -> bool:
    """Whether the JSON value ``theirs`` (from a file) has the layout of ``mine``: the same
    dict keys and list lengths, ints where ``mine`` has ints, numbers where it has floats,
    bools, strings and None where it has them."""
    if isinstance(mine, dict):
        return (isinstance(theirs, dict) and theirs.keys() == mine.keys()
                and all(same_layout(theirs[k], mine[k]) for k in mine))
    if isinstance(mine, (list, tuple)):
        return (isinstance(theirs, list) and len(theirs) == len(mine)
                and all(same_layout(a, b) for a, b in zip(theirs, mine)))
    if isinstance(mine, (bool, np.bool_)):
        return isinstance(theirs, bool)
    if isinstance(mine, numbers.Integral):
        return _is_int(theirs, lo=-(1 << 64))
    if isinstance(mine, numbers.Real):
        return _is_real(theirs)
    return type(theirs) is type(mine)


def check_checkpoint_meta(meta, path, who):
    """Refuse a checkpoint whose training-state entries have the wrong types (each checked
    where present; ``Trainer.resume`` needs them all)."""
    for key, (want, ok) in _CHECKPOINT_ENTRIES.items():
        if key in meta and not ok(meta[key]):
            raise FileFormatError(path, f"{who}: {path} is not a valid checkpoint: {key!r} must "
                                        f"be {want}, got {_short(meta[key])}")


# ---- reading and writing ------------------------------------------------------------------
_file_mode = file_mode  # (fastnet.train's plot uses it)


def write_npz(path, meta: dict, arrays: dict, who: str) -> None:
    """Write ``arrays`` plus ``meta`` (as JSON) to ``path`` atomically: a temporary file in
    the same directory, fsync'ed, then renamed over the target."""
    _npz.write_npz(path, meta, arrays, who, _META)


def open_npz(path, who, kind="model"):
    """(an open NpzReader, meta) of a file written by ``write_npz``: the entries' shapes are
    known, no array is read yet. Close the reader (it is a context manager)."""
    reader = NpzReader(path, who, kind)
    try:
        meta = reader.read_meta(_META)
        if not isinstance(meta, dict) or meta.get("format") not in (FORMAT, CHECKPOINT_FORMAT):
            form = meta.get("format") if isinstance(meta, dict) else meta
            reader.bad(f"is not a fastnet {kind} file (format {_short(form)})")
    except BaseException:
        reader.close()
        raise
    return reader, meta


def read_npz(path, who: str, kind: str = "model"):
    """(meta, arrays) of a file written by ``write_npz``. A missing file raises
    FileNotFoundError; anything unreadable, truncated, foreign or oversized raises
    FileFormatError (a ValueError) that calls the expected file a fastnet ``kind`` file.
    Nothing larger than the file's own declared (and checked) sizes is allocated."""
    reader, meta = open_npz(path, who, kind)
    with reader:
        return meta, reader.read_arrays([k for k in reader.members if k != _META])


def save(model: Module, path) -> None:
    """Write ``model`` (architecture and parameters) to ``path`` (an .npz file)."""
    if not isinstance(model, Module):
        raise TypeError(f"fastnet.save: expected a fastnet Module, got {type(model).__name__}")
    meta = {"format": FORMAT, "version": VERSION, **_model_meta(model)}
    write_npz(path, meta, model.state_dict(), "fastnet.save")


def load(path) -> Module:
    """Rebuild a model written by ``fastnet.save``, or the model of a training checkpoint
    (``fastnet.train``). A file that is malformed, truncated, foreign, or whose arrays do
    not fit the architecture it describes raises ``fastnet.FileFormatError``."""
    return load_with_meta(path)[0]


def load_with_meta(path, who="fastnet.load"):
    """(model, the file's metadata) for a model file or a checkpoint. The description is
    checked against the arrays' shapes (from their headers) before any array is read or
    any layer is built."""
    path = os.fspath(path)
    reader, meta = open_npz(path, who)
    with reader:
        if meta["format"] == CHECKPOINT_FORMAT:
            check_version(meta, CHECKPOINT_VERSION, path, who)
            check_checkpoint_meta(meta, path, who)
            prefix = "model."
            names = [k for k in reader.members if k.startswith(prefix)]
        else:
            check_version(meta, VERSION, path, who)
            prefix = ""
            names = [k for k in reader.members if k != _META]
        check_state_shapes(expected_state(meta, path, who),
                           {k[len(prefix):]: reader.members[k].shape for k in names}, path, who)
        arrays = reader.read_arrays(names)
    state = {k[len(prefix):]: v for k, v in arrays.items()}
    return build_model(meta, state, path, who), meta


def check_version(meta, version, path, who):
    if meta.get("version") != version:
        raise FileFormatError(path, f"{who}: {path} has format version "
                                    f"{_short(meta.get('version'))}; this fastnet reads version "
                                    f"{version}")
