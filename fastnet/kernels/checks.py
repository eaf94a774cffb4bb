"""The argument checks of ``kernel(op, device)``: one spec per op of the dispatch table.

A spec lists the kernel's parameters in order, as data: an array (its role: ``In``,
``Out`` or ``InOut``; its element kind; its shape; whether it may be None and whether a
strided view is accepted) or a scalar (its type and range), then what data cannot say:
the derived shape of a sliding window, pairs of arguments that come together, the range
of index arrays. ``check(op, device, args, kwargs)`` validates one call before the kernel
runs and returns the positional arguments for it, or raises ``TypeError`` (a wrong type
or dtype) / ``ValueError`` (a wrong shape, value, layout or aliasing) that names the op,
the argument, what was expected and what came. Nothing is written before that.

Shapes are space-separated tokens. A symbol (``N``) takes its size from the first array
that has it (in-place state, then inputs, then outputs) and every other array must agree;
``4*H`` is a product; ``*S`` is the whole shape of an array of any rank (elementwise ops);
``1`` is one element (a counter: 0-d or (1,)); ``OH`` / ``OW`` are derived from the input
plane, the window, stride and padding (PyTorch's floor convention). Every named
dimension is at least 1. Float arrays are float32 or float64, one
dtype per call; index arrays have their own integer dtype. Arrays are C-contiguous,
aligned and (outputs) writeable; ``strided=True`` marks the arguments whose kernels take
any strides on the CPU (documented and tested there). An output may not overlap another
argument, except the same array where the kernel runs in place (``inplace``).

fastnet's layers validate their inputs once and call the unchecked lookup
(``fastnet.kernels._kernel``): these checks cost microseconds per call, which the batch-1
inference path does not pay.

CUDA: the same checks, on Numba device arrays; anything else with
``__cuda_array_interface__`` is taken as one without a copy, and host NumPy arrays are
accepted as the launchers accept them (Numba copies them to the device and back). Every
array must be C-contiguous there. The index checks (max-pooling argmax, loss labels) copy
the index array to the host: a synchronisation that the checked path pays, the layers not.
"""
import numbers

import numpy as np

from .codes import ACTIVATIONS

# geometry integers (kernel size, stride, padding, padded planes) stay in int32's range,
# so that no index computation of a kernel can overflow
MAX_INT = 2**31 - 1
FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_NO_DEFAULT = object()


# ---- argument kinds ---------------------------------------------------------------------

class Array:
    """An array argument. ``kind``: "float" (float32 / float64, one dtype per call),
    "index" (int32 or int64), "int" (any integer dtype), or a dtype name ("uint8")."""

    __slots__ = ("role", "tokens", "kind", "optional", "strided")

    def __init__(self, role, shape, kind="float", optional=False, strided=False):
        self.role, self.kind, self.optional, self.strided = role, kind, optional, strided
        self.tokens = tuple(shape.split())

    @property
    def written(self):
        return self.role != "in"

    def whole(self):
        """The symbol of a whole-shape array (``*S`` -> "S"), or None."""
        t = self.tokens
        return t[0][1:] if len(t) == 1 and t[0].startswith("*") else None


def In(shape, **kw):
    return Array("in", shape, **kw)


def Out(shape, **kw):
    return Array("out", shape, **kw)


def InOut(shape, **kw):
    return Array("inout", shape, **kw)


class Scalar:
    default = _NO_DEFAULT
    binds = ()

    def check(self, op, name, value):
        """The value to pass on, or raise."""
        raise NotImplementedError


def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def _is_real(v):
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


class Pair(Scalar):
    """A (h, w) pair of ints >= ``minimum`` (tuple or list), binding ``binds`` symbols."""

    def __init__(self, minimum, binds="", default=_NO_DEFAULT):
        self.minimum, self.binds, self.default = minimum, tuple(binds.split()), default

    def check(self, op, name, value):
        want = f"a pair (h, w) of ints in [{self.minimum}, {MAX_INT}]"
        if not (isinstance(value, (tuple, list)) and len(value) == 2
                and all(_is_int(v) for v in value)):
            raise TypeError(f"{op}: argument {name!r} must be {want}, got {value!r}")
        if not all(self.minimum <= v <= MAX_INT for v in value):
            raise ValueError(f"{op}: argument {name!r} must be {want}, got {value!r}")
        return value


class Real(Scalar):
    """A finite real number (not a bool) in [lo, hi] (``hi_open``: [lo, hi)); ``optional``:
    None is accepted too. Python and NumPy numbers pass unchanged, others (Fraction) as
    a float."""

    def __init__(self, lo=None, hi=None, hi_open=False, optional=False):
        self.lo, self.hi, self.hi_open, self.optional = lo, hi, hi_open, optional

    def describe(self):
        if self.lo is None and self.hi is None:
            return "a finite real number"
        if self.hi is None:
            return f"a finite real number >= {self.lo}"
        return f"a real number in [{self.lo}, {self.hi}{')' if self.hi_open else ']'}"

    def check(self, op, name, value):
        if value is None and self.optional:
            return value
        want = self.describe() + (" or None" if self.optional else "")
        if not _is_real(value):
            raise TypeError(f"{op}: argument {name!r} must be {want}, got {value!r}")
        v = float(value)
        if (v != v or v in (float("inf"), float("-inf"))
                or (self.lo is not None and v < self.lo)
                or (self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi))):
            raise ValueError(f"{op}: argument {name!r} must be {want}, got {value!r}")
        return value if isinstance(value, (int, float, np.number)) else v


class NormOrder(Scalar):
    """A vector norm's order p: a real number > 0 (not a bool), or inf."""

    def check(self, op, name, value):
        want = "a real number > 0 or inf"
        if not _is_real(value):
            raise TypeError(f"{op}: argument {name!r} must be {want}, got {value!r}")
        v = float(value)
        if not (v > 0):  # (NaN too)
            raise ValueError(f"{op}: argument {name!r} must be {want}, got {value!r}")
        return v


class Integer(Scalar):
    """An int (Python or NumPy, not a bool) >= ``lo`` (any when None), passed on as a
    Python int; ``optional``: None is accepted too (and is the default)."""

    def __init__(self, lo=None, optional=False, default=_NO_DEFAULT):
        self.lo, self.optional = lo, optional
        if optional:
            self.default = None
        elif default is not _NO_DEFAULT:
            self.default = default

    def check(self, op, name, value):
        if value is None and self.optional:
            return value
        want = "an int" if self.lo is None else f"an int >= {self.lo}"
        if self.optional:
            want += " or None"
        if not _is_int(value):
            raise TypeError(f"{op}: argument {name!r} must be {want}, got {value!r}")
        if self.lo is not None and value < self.lo:
            raise ValueError(f"{op}: argument {name!r} must be {want}, got {value!r}")
        return int(value)


class Flag(Scalar):
    """True or False (a Python or NumPy bool)."""

    def check(self, op, name, value):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{op}: argument {name!r} must be True or False, got {value!r}")
        return value


class Choice(Scalar):
    """One of ``choices`` (None and strings)."""

    def __init__(self, choices, default=_NO_DEFAULT):
        self.choices, self.default = tuple(choices), default

    def check(self, op, name, value):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{op}: argument {name!r} must be one of {self.choices}, "
                            f"got {value!r}")
        if value not in self.choices:
            raise ValueError(f"{op}: argument {name!r} must be one of {self.choices}, "
                             f"got {value!r}")
        return value


# ---- the spec of one op -------------------------------------------------------------------

class Op:
    """The parameters of one kernel, in order (keyword arguments: name=Array | Scalar), with
    ``derive(op, dims, values, source)`` adding derived symbols, ``rules`` (callables
    ``rule(op, values, dims)`` that raise) and ``inplace``: pairs of parameter names that
    may be the very same array."""

    def __init__(self, *, derive=None, rules=(), inplace=(), **params):
        self.params = params
        self.names = tuple(params)
        self.derive, self.rules = derive, tuple(rules)
        self.inplace = {frozenset(p) for p in inplace}
        self.arrays = {n: p for n, p in params.items() if isinstance(p, Array)}
        self.scalars = {n: p for n, p in params.items() if isinstance(p, Scalar)}
        # symbols bind from the arguments updated in place (parameters, optimizer and
        # running state), then the inputs, then the outputs: the one named in an error is
        # the one that disagrees with those before it
        rank = {"inout": 0, "in": 1, "out": 2}
        self.bind_order = sorted(self.arrays, key=lambda n: rank[self.arrays[n].role])

    def signature(self):
        return ", ".join(self.names)

    def bind(self, op, args, kwargs):
        """{name: value} for a call, defaults filled in."""
        if len(args) > len(self.names):
            raise TypeError(f"{op} takes {len(self.names)} arguments ({self.signature()}), "
                            f"got {len(args)}")
        values = dict(zip(self.names, args))
        for k, v in kwargs.items():
            if k not in self.params:
                raise TypeError(f"{op}: unexpected argument {k!r} (it takes {self.signature()})")
            if k in values:
                raise TypeError(f"{op}: argument {k!r} given twice")
            values[k] = v
        for name in self.names:
            if name not in values:
                default = getattr(self.params[name], "default", _NO_DEFAULT)
                if default is _NO_DEFAULT:
                    raise TypeError(f"{op}: missing argument {name!r} (it takes "
                                    f"{self.signature()})")
                values[name] = default
        return values


# ---- arrays of either device ------------------------------------------------------------

def _host_memory(a):
    """The NumPy array holding ``a``'s elements in host memory (the simulator's device
    arrays are NumPy arrays underneath), or None for GPU memory."""
    if isinstance(a, np.ndarray):
        return a
    return getattr(a, "_ary", None)


def _to_host(a):
    """A NumPy copy (or ``a`` itself) of an index array, for the range checks."""
    return a if isinstance(a, np.ndarray) else a.copy_to_host()


def _device_extent(a):
    """[start, end) byte addresses of a GPU array, from its __cuda_array_interface__."""
    cai = a.__cuda_array_interface__
    lo = hi = cai["data"][0]
    strides = cai.get("strides") or a.strides
    for n, s in zip(a.shape, strides):
        if s < 0:
            lo += (n - 1) * s
        else:
            hi += (n - 1) * s
    return lo, hi + np.dtype(a.dtype).itemsize


def _size(a):
    n = 1
    for d in a.shape:
        n *= d
    return n


def _overlap(a, b):
    """Whether two arrays share any element's memory."""
    if _size(a) == 0 or _size(b) == 0:
        return False
    ha, hb = _host_memory(a), _host_memory(b)
    if ha is not None or hb is not None:
        if ha is None or hb is None:
            return False  # host and GPU memory
        if not np.may_share_memory(ha, hb):
            return False
        if ha.flags.c_contiguous and hb.flags.c_contiguous:
            return True  # overlapping bounds of two dense blocks
        try:
            return bool(np.shares_memory(ha, hb, max_work=10_000))
        except np.exceptions.TooHardError:
            return True
    (alo, ahi), (blo, bhi) = _device_extent(a), _device_extent(b)
    return alo < bhi and blo < ahi


def _address(a):
    h = _host_memory(a)
    return h.__array_interface__["data"][0] if h is not None else _device_extent(a)[0]


def _same_array(a, b):
    """The very same elements in the same layout (an exact alias)."""
    return (tuple(a.shape) == tuple(b.shape) and tuple(a.strides) == tuple(b.strides)
            and np.dtype(a.dtype) == np.dtype(b.dtype) and _address(a) == _address(b))


def _accept(op, name, a, cuda):
    """The array to check and pass on, or TypeError for something that is not one."""
    if isinstance(a, np.ndarray) and not isinstance(a, np.matrix):
        return a
    if cuda:
        from .. import cuda as fcuda

        if fcuda.is_cuda_array(a):
            return fcuda.as_device_array(a)
        raise TypeError(f"{op}: argument {name!r} must be a CUDA array (a Numba device array "
                        f"or an object with __cuda_array_interface__) or a numpy.ndarray, "
                        f"got {type(a).__name__}")
    raise TypeError(f"{op}: argument {name!r} must be a numpy.ndarray, got {type(a).__name__}")


def _kind_ok(kind, dtype):
    if kind == "float":
        return dtype in FLOATS
    if kind == "index":
        return dtype in (np.dtype(np.int32), np.dtype(np.int64))
    if kind == "int":
        return dtype.kind in "iu"
    return dtype == np.dtype(kind)


_KIND_NAMES = {"float": "float32 or float64", "index": "int32 or int64",
               "int": "an integer dtype"}


def _layout(op, name, spec, a, cuda):
    if isinstance(a, np.ndarray):
        if not a.flags.aligned:
            raise ValueError(f"{op}: argument {name!r} must be an aligned array (its address "
                             f"and strides multiples of {a.itemsize} bytes)")
        if not (spec.strided and not cuda) and not a.flags.c_contiguous:
            raise ValueError(f"{op}: argument {name!r} must be C-contiguous, got a view with "
                             f"strides {a.strides} for shape {a.shape} "
                             "(np.ascontiguousarray makes a contiguous copy)")
        if spec.written and not a.flags.writeable:
            raise ValueError(f"{op}: argument {name!r} is written by the kernel but is "
                             "read-only")
    elif not a.is_c_contiguous():
        raise ValueError(f"{op}: argument {name!r} must be a C-contiguous CUDA array, got "
                         f"strides {tuple(a.strides)} for shape {tuple(a.shape)}")


# ---- checking one call --------------------------------------------------------------------

def _expected(tokens, dims):
    shape = []
    for t in tokens:
        n = 1
        for f in t.split("*"):
            n *= int(f) if f.isdigit() else dims[f]
        shape.append(n)
    return tuple(shape)


def _describe(tokens, dims, source, skip):
    """'(N=2, C=3, OH=4, OW=4) (N, C from x; OH, OW from the window)'"""
    parts = [f"{t}={v}" for t, v in zip(tokens, _expected(tokens, dims))]
    notes = {}
    for t in tokens:
        for f in t.split("*"):
            if not f.isdigit() and source.get(f) not in (None, skip):
                notes.setdefault(source[f], []).append(f)
    why = "; ".join(f"{', '.join(dict.fromkeys(v))} from {k if k.startswith('the ') else repr(k)}"
                    for k, v in notes.items())
    return f"({', '.join(parts)}{',' if len(parts) == 1 else ''})" + (f" ({why})" if why else "")


def check(op, device, args, kwargs):
    """Validate a call of ``op`` on ``device`` ("cpu" or "cuda"); returns the arguments
    for the raw kernel, in order."""
    spec = SPECS[op]
    cuda = device == "cuda"
    values = spec.bind(op, args, kwargs)
    dims, source = {}, {}

    for name, p in spec.scalars.items():
        values[name] = p.check(op, name, values[name])
        if p.binds:
            for sym, v in zip(p.binds, values[name]):
                dims[sym], source[sym] = int(v), name

    arrays = spec.arrays
    present = {}
    float_dtype = float_from = None
    for name in spec.bind_order:
        p, a = arrays[name], values[name]
        if a is None:
            if p.optional:
                continue
            raise TypeError(f"{op}: argument {name!r} must be an array, got None")
        a = values[name] = _accept(op, name, a, cuda)
        dtype = np.dtype(a.dtype)
        if not _kind_ok(p.kind, dtype):
            raise TypeError(f"{op}: argument {name!r} must be "
                            f"{_KIND_NAMES.get(p.kind, p.kind)}, got {dtype}")
        if p.kind == "float":
            if float_dtype is None:
                float_dtype, float_from = dtype, name
            elif dtype != float_dtype:
                raise TypeError(f"{op}: argument {name!r} must be {float_dtype} (the dtype of "
                                f"{float_from!r}: float arrays of one call share a dtype), "
                                f"got {dtype}")
        shape = tuple(int(d) for d in a.shape)
        whole = p.whole()
        if whole is not None:
            if whole not in dims:
                dims[whole], source[whole] = shape, name
        else:
            if p.tokens == ("1",) and shape == ():
                pass  # a counter: 0-d, or (1,) as fastnet.cuda.to_device makes it
            elif len(shape) != len(p.tokens):
                want = ("a 0-d array or one of shape (1,)" if p.tokens == ("1",)
                        else f"a {len(p.tokens)}-d array ({', '.join(p.tokens)})")
                raise ValueError(f"{op}: argument {name!r} must be {want}, got shape {shape}")
            for t, d in zip(p.tokens, shape):
                if "*" not in t and not t.isdigit() and t not in dims and t not in DERIVED:
                    if d < 1:
                        raise ValueError(f"{op}: argument {name!r}: dimension {t} must be at "
                                         f"least 1, got shape {shape}")
                    dims[t], source[t] = d, name
        _layout(op, name, p, a, cuda)
        present[name] = a

    if spec.derive is not None:
        spec.derive(op, dims, values, source)

    for name, a in present.items():
        p = arrays[name]
        shape = tuple(int(d) for d in a.shape)
        whole = p.whole()
        if whole is not None:
            if shape != dims[whole]:
                raise ValueError(f"{op}: argument {name!r} must have shape {dims[whole]} (the "
                                 f"shape of {source[whole]!r}), got {shape}")
        elif shape != _expected(p.tokens, dims) and not (p.tokens == ("1",) and shape == ()):
            raise ValueError(f"{op}: argument {name!r} must have shape "
                             f"{_describe(p.tokens, dims, source, name)}, got {shape}")

    for rule in spec.rules:
        rule(op, values, dims)

    names = list(present)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            o, q = (first, second) if arrays[first].written else (second, first)
            if not arrays[o].written:
                continue  # two inputs may share memory
            if _overlap(present[o], present[q]):
                if frozenset((o, q)) in spec.inplace and _same_array(present[o], present[q]):
                    continue
                pairs = sorted(" and ".join(map(repr, sorted(p))) for p in spec.inplace)
                why = (f"only {' or '.join(pairs)} may be the same array" if pairs
                       else f"{op} does not run in place")
                raise ValueError(f"{op}: arguments {o!r} and {q!r} overlap in memory ({why})")

    return [values[n] for n in spec.names]


# ---- derived shapes and rules -------------------------------------------------------------

DERIVED = ("OH", "OW", "CG")


def window(op, dims, values, source):
    """OH, OW of a sliding window over the (H, W) plane (a dilated window: its span
    DH*(KH-1) + 1 x DW*(KW-1) + 1)."""
    (sh, sw), (ph, pw) = values["stride"], values["padding"]
    h, w, kh, kw = dims["H"], dims["W"], dims["KH"], dims["KW"]
    dh, dw = values.get("dilation", (1, 1))
    if dh * (kh - 1) + 1 > MAX_INT or dw * (kw - 1) + 1 > MAX_INT:
        raise ValueError(f"{op}: the dilated window ({dh}*({kh} - 1) + 1) x ({dw}*({kw} - 1) "
                         f"+ 1) is larger than {MAX_INT}")
    kh, kw = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    if h + 2 * ph > MAX_INT or w + 2 * pw > MAX_INT:
        raise ValueError(f"{op}: the padded plane ({h} + 2*{ph}) x ({w} + 2*{pw}) is larger "
                         f"than {MAX_INT}")
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"{op}: the {h}x{w} plane (from {source['H']!r}) with padding "
                         f"{ph}x{pw} is smaller than the {kh}x{kw} window")
    dims["OH"], dims["OW"] = oh, ow
    source["OH"] = source["OW"] = "the window"


def conv_window(op, dims, values, source):
    """A conv's groups: C and O divisible by groups, CG = C / groups (the weight's second
    axis); then its (dilated) window."""
    groups, c, o = values["groups"], dims["C"], dims["O"]
    for name, size, frm in (("in", c, "x"), ("out", o, "w")):
        if size % groups:
            raise ValueError(f"{op}: the {size} {name}put channels (from {frm!r}) are not "
                             f"divisible by groups={groups}")
    dims["CG"], source["CG"] = c // groups, f"the channels of 'x' / groups={groups}"
    window(op, dims, values, source)


def unpadded_window(op, dims, values, source):
    """OH, OW of a sliding window without padding (lp_pool2d)."""
    window(op, dims, {**values, "padding": (0, 0)}, source)


def positive(name):
    """A real argument that must be > 0 (its spec, Real(0), already refused < 0)."""
    def rule(op, values, dims):
        if float(values[name]) <= 0:
            raise ValueError(f"{op}: argument {name!r} must be a finite real number > 0, got "
                             f"{values[name]!r}")
    return rule


def pool_padding(op, values, dims):
    (kh, kw), (ph, pw) = values["kernel_size"], values["padding"]
    if 2 * ph > kh or 2 * pw > kw:
        raise ValueError(f"{op}: padding must be at most half the kernel size (as in "
                         f"PyTorch), got padding {tuple(values['padding'])} for kernel_size "
                         f"{tuple(values['kernel_size'])}")


def argmax_fits(op, values, dims):
    a = values["argmax"]
    if dims["H"] * dims["W"] - 1 > np.iinfo(a.dtype).max:
        raise ValueError(f"{op}: the {dims['H']}x{dims['W']} plane's flat indices do not fit "
                         f"argmax's dtype {a.dtype}")


def argmax_in_windows(op, values, dims):
    """Every argmax is the flat index ih*W + iw of an element in its output's window,
    as max_pool2d_forward with this geometry records it."""
    a = _to_host(values["argmax"]).astype(np.int64, copy=False)
    h, w, kh, kw = dims["H"], dims["W"], dims["KH"], dims["KW"]
    (sh, sw), (ph, pw) = values["stride"], values["padding"]
    oh, ow = a.shape[2], a.shape[3]
    i0 = np.arange(oh)[:, None] * sh - ph
    j0 = np.arange(ow)[None, :] * sw - pw
    ih, iw = a // w, a % w
    ok = ((a >= 0) & (a < h * w) & (ih >= np.maximum(i0, 0)) & (ih < np.minimum(i0 + kh, h))
          & (iw >= np.maximum(j0, 0)) & (iw < np.minimum(j0 + kw, w)))
    if not ok.all():
        at = tuple(int(i) for i in np.argwhere(~ok)[0])
        raise ValueError(f"{op}: argmax{list(at)} = {int(a[at])} is not the flat index "
                         f"(ih*W + iw) of an element of that output's {kh}x{kw} window in the "
                         f"{h}x{w} plane; argmax must come from max_pool2d_forward with this "
                         "geometry")


def labels_in_range(op, values, dims):
    labels = _to_host(values["labels"])
    c = dims["C"]
    bad = np.flatnonzero((labels < 0) | (labels >= c))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{op}: labels[{i}]: label {labels[i]} is out of range for {c} "
                         f"classes [0, {c})")


def labels_in_range_or_ignored(op, values, dims):
    labels = _to_host(values["labels"])
    c, ignore = dims["C"], values["ignore_index"]
    bad = np.flatnonzero(((labels < 0) | (labels >= c)) & (labels != ignore))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{op}: labels[{i}]: label {labels[i]} is out of range for {c} "
                         f"classes [0, {c}) and is not ignore_index ({ignore})")


def reduction_outputs(op, values, dims):
    """Reduction "none" writes the per-element losses (out) and no gradient (that is the
    backward op's, given the upstream gradient)."""
    if values["reduction"] == "none" and (values["out"] is None or values["grad"] is not None):
        raise ValueError(f"{op}: reduction 'none' needs out and no grad (its gradient is the "
                         "backward op's)")


def no_smoothing_with_log_probs(op, values, dims):
    if values["log_probs"] and values["label_smoothing"] != 0:
        raise ValueError(f"{op}: label_smoothing must be 0 with log_probs (NLLLoss has none), "
                         f"got {values['label_smoothing']!r}")


def indices_in_range(op, values, dims):
    """Embedding indices in [0, V): the rows of the weight."""
    indices = _to_host(values["indices"])
    v = dims["V"]
    bad = np.flatnonzero((indices < 0) | (indices >= v))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{op}: indices[{i}]: index {indices[i]} is out of range for {v} "
                         f"embeddings [0, {v})")


def padding_in_range(op, values, dims):
    p, v = values["padding_idx"], dims["V"]
    if p is not None and p >= v:
        raise ValueError(f"{op}: argument 'padding_idx' must be None or an int in [0, {v}) "
                         f"(the rows of 'dweight'), got {p!r}")


def nonempty(name):
    def rule(op, values, dims):
        if _size(values[name]) == 0:
            raise ValueError(f"{op}: argument {name!r} must not be empty (its mean is taken)")
    return rule


def together(*names):
    """Arguments that are all given or all None."""
    def rule(op, values, dims):
        given = [values[n] is not None for n in names]
        if any(given) and not all(given):
            listed = " and ".join(repr(n) for n in names)
            raise ValueError(f"{op}: {listed} must be given together or all be None")
    return rule


def output_with_activation(name):
    """The forward output, needed by backward through an activation."""
    def rule(op, values, dims):
        if values[name] is None and values["activation"] is not None:
            raise ValueError(f"{op}: argument {name!r} (the forward output) is required with "
                             f"activation {values['activation']!r}")
    return rule


def sequence_window(op, values, dims):
    """sequence_copy: x holds out's (N, T) in its own layout, and both feature windows fit."""
    same = values["out_time_first"] == values["x_time_first"]
    want = (dims["A"], dims["B"]) if same else (dims["B"], dims["A"])
    if (dims["C"], dims["D"]) != want:
        raise ValueError(f"{op}: argument 'x' must have the first two axes {want} (those of "
                         f"'out', {'the same' if same else 'swapped'} layout), got "
                         f"{(dims['C'], dims['D'])}")
    for col, size, name in (("out_col", "CO", "out"), ("x_col", "CX", "x")):
        if values[col] + values["width"] > dims[size]:
            raise ValueError(f"{op}: {col} + width = {values[col]} + {values['width']} is past "
                             f"the {dims[size]} features of {name!r}")


def velocity_with_momentum(op, values, dims):
    if values["velocity"] is None and values["momentum"] != 0:
        raise ValueError(f"{op}: argument 'velocity' is required when momentum is not 0 "
                         f"(got momentum={values['momentum']!r})")


def lo_not_above_hi(op, values, dims):
    if values["lo"] > values["hi"]:
        raise ValueError(f"{op}: argument 'lo' ({values['lo']!r}) must not be above 'hi' "
                         f"({values['hi']!r})")


def batch_norm_state(op, values, dims):
    """Running statistics to normalise with outside training; momentum=None (a cumulative
    average) needs the batch counter, which must not be negative."""
    if not values["training"] and values["running_mean"] is None:
        raise ValueError(f"{op}: running_mean and running_var are required when training "
                         "is False")
    update = values["training"] and values["running_mean"] is not None
    if update and values["momentum"] is None:
        nbt = values["num_batches_tracked"]
        if nbt is None:
            raise ValueError(f"{op}: momentum=None (a cumulative average) needs "
                             "num_batches_tracked")
        count = int(_to_host(nbt).reshape(-1)[0])
        if count < 0:
            raise ValueError(f"{op}: num_batches_tracked must be >= 0, got {count}")


# ---- the specs, one per op of the table ---------------------------------------------------

ACTIVATION = Choice(ACTIVATIONS)
REDUCTION = Choice(("mean", "sum", "none"))
POINTWISE_LOSSES = ("l1", "mse", "smooth_l1", "huber")
KERNEL_SIZE = Pair(1, binds="KH KW")
STRIDE = Pair(1)
PADDING = Pair(0)
DILATION = Pair(1, default=(1, 1))
GROUPS = Integer(lo=1, default=1)
GEOMETRY = dict(kernel_size=KERNEL_SIZE, stride=STRIDE, padding=PADDING)


def _elementwise_forward():
    return Op(out=Out("*S"), x=In("*S"), inplace=[("out", "x")])


def _elementwise_backward():
    return Op(dx=Out("*S"), dout=In("*S"), out=In("*S"), inplace=[("dx", "dout")])


def _rows_forward():
    return Op(out=Out("N C", strided=True), x=In("N C", strided=True))


def _rows_backward():
    return Op(dx=Out("N C", strided=True), dout=In("N C", strided=True),
              out=In("N C", strided=True), inplace=[("dx", "dout")])


def _optional(shape):
    return In(shape, optional=True)


SPECS = {
    "dense_forward": Op(
        out=Out("N OUT"), x=In("N IN"), w=In("OUT IN"), b=_optional("OUT"),
        activation=ACTIVATION),
    "dense_backward": Op(
        dx=Out("N IN", optional=True), dw=Out("OUT IN", optional=True),
        db=Out("OUT", optional=True),
        dout=In("N OUT"), x=In("N IN"), w=In("OUT IN"), out=_optional("N OUT"),
        activation=ACTIVATION, rules=[output_with_activation("out")]),
    "im2col": Op(
        cols=Out("C*KH*KW N*OH*OW"), x=In("N C H W"), **GEOMETRY, derive=window),
    "col2im": Op(
        dx=Out("N C H W"), cols=In("C*KH*KW N*OH*OW"), **GEOMETRY, derive=window),
    "conv2d_forward": Op(
        out=Out("N O OH OW"), x=In("N C H W"), w=In("O CG KH KW"), b=_optional("O"),
        stride=STRIDE, padding=PADDING, activation=Choice(ACTIVATIONS, default=None),
        dilation=DILATION, groups=GROUPS, derive=conv_window),
    "conv2d_backward": Op(
        dx=Out("N C H W", optional=True), dw=Out("O CG KH KW", optional=True),
        db=Out("O", optional=True),
        dout=In("N O OH OW"), x=In("N C H W"), w=In("O CG KH KW"), out=_optional("N O OH OW"),
        stride=STRIDE, padding=PADDING, activation=Choice(ACTIVATIONS, default=None),
        dilation=DILATION, groups=GROUPS, derive=conv_window,
        rules=[output_with_activation("out")]),
    "max_pool2d_forward": Op(
        out=Out("N C OH OW", strided=True), argmax=Out("N C OH OW", kind="index", strided=True),
        x=In("N C H W", strided=True), **GEOMETRY, derive=window,
        rules=[pool_padding, argmax_fits]),
    "max_pool2d_backward": Op(
        dx=Out("N C H W", strided=True), dout=In("N C OH OW", strided=True),
        argmax=In("N C OH OW", kind="index", strided=True), **GEOMETRY, derive=window,
        rules=[pool_padding, argmax_in_windows]),
    "avg_pool2d_forward": Op(
        out=Out("N C OH OW", strided=True), x=In("N C H W", strided=True), **GEOMETRY,
        derive=window, rules=[pool_padding]),
    "avg_pool2d_backward": Op(
        dx=Out("N C H W", strided=True), dout=In("N C OH OW", strided=True), **GEOMETRY,
        derive=window, rules=[pool_padding]),
    "relu_forward": _elementwise_forward(),
    "relu_backward": _elementwise_backward(),
    "leaky_relu_forward": Op(
        out=Out("*S"), x=In("*S"), negative_slope=Real(), inplace=[("out", "x")]),
    "leaky_relu_backward": Op(
        dx=Out("*S"), dout=In("*S"), x=In("*S"), negative_slope=Real(),
        inplace=[("dx", "dout")]),
    "hardsigmoid_forward": _elementwise_forward(),
    "hardsigmoid_backward": Op(dx=Out("*S"), dout=In("*S"), x=In("*S"), inplace=[("dx", "dout")]),
    "sigmoid_forward": _elementwise_forward(),
    "sigmoid_backward": _elementwise_backward(),
    "tanh_forward": _elementwise_forward(),
    "tanh_backward": _elementwise_backward(),
    "softmax_forward": _rows_forward(),
    "softmax_backward": _rows_backward(),
    "log_softmax_forward": _rows_forward(),
    "log_softmax_backward": _rows_backward(),
    "softmax_cross_entropy_forward": Op(
        grad=Out("N C", optional=True, strided=True), logits=In("N C", strided=True),
        labels=In("N", kind="int", strided=True), rules=[labels_in_range]),
    "mse_forward": Op(
        grad=Out("*S", optional=True), pred=In("*S"), target=In("*S"),
        rules=[nonempty("pred")]),
    "cross_entropy_forward": Op(
        out=Out("N", optional=True), grad=Out("N C", optional=True),
        logits=In("N C", strided=True), labels=In("N", kind="int", strided=True),
        weight=_optional("C"), ignore_index=Integer(), label_smoothing=Real(0, 1),
        log_probs=Flag(), reduction=REDUCTION,
        rules=[labels_in_range_or_ignored, reduction_outputs, no_smoothing_with_log_probs]),
    "cross_entropy_backward": Op(
        grad=Out("N C"), dout=In("N"), logits=In("N C", strided=True),
        labels=In("N", kind="int", strided=True), weight=_optional("C"),
        ignore_index=Integer(), label_smoothing=Real(0, 1), log_probs=Flag(),
        rules=[labels_in_range_or_ignored, no_smoothing_with_log_probs]),
    "bce_with_logits_forward": Op(
        out=Out("M C", optional=True), grad=Out("M C", optional=True), x=In("M C"),
        target=In("M C"), weight=_optional("M C"), pos_weight=_optional("C"),
        reduction=REDUCTION, rules=[reduction_outputs]),
    "bce_with_logits_backward": Op(
        grad=Out("M C"), dout=In("M C"), x=In("M C"), target=In("M C"),
        weight=_optional("M C"), pos_weight=_optional("C"), inplace=[("grad", "dout")]),
    "pointwise_loss_forward": Op(
        out=Out("*S", optional=True), grad=Out("*S", optional=True), pred=In("*S"),
        target=In("*S"), loss=Choice(POINTWISE_LOSSES), beta=Real(0), reduction=REDUCTION,
        rules=[nonempty("pred"), reduction_outputs, positive("beta")]),
    "pointwise_loss_backward": Op(
        grad=Out("*S"), dout=In("*S"), pred=In("*S"), target=In("*S"),
        loss=Choice(POINTWISE_LOSSES), beta=Real(0), inplace=[("grad", "dout")],
        rules=[nonempty("pred"), positive("beta")]),
    "dropout_forward": Op(
        out=Out("*S"), mask=Out("*S", kind="uint8"), x=In("*S"), p=Real(0, 1),
        seed=Integer(), inplace=[("out", "x")]),
    "dropout_backward": Op(
        dx=Out("*S"), dout=In("*S"), mask=In("*S", kind="uint8"), p=Real(0, 1),
        inplace=[("dx", "dout")]),
    "sgd_step": Op(
        param=InOut("*S"), velocity=InOut("*S", optional=True), grad=In("*S"), lr=Real(0),
        momentum=Real(0), weight_decay=Real(0), nesterov=Flag(),
        rules=[velocity_with_momentum]),
    "adam_step": Op(
        param=InOut("*S"), m=InOut("*S"), v=InOut("*S"), grad=In("*S"), lr=Real(0),
        beta1=Real(0, 1, hi_open=True), beta2=Real(0, 1, hi_open=True), eps=Real(0),
        weight_decay=Real(0), step=Integer(1), decoupled=Flag()),
    "vector_norm": Op(out=Out("1"), x=In("*S"), norm_type=NormOrder()),
    "scale": Op(x=InOut("*S"), alpha=Real()),
    "clamp": Op(x=InOut("*S"), lo=Real(), hi=Real(), rules=[lo_not_above_hi]),
    "accumulate": Op(out=InOut("*S"), x=In("*S"), inplace=[("out", "x")]),
    "add": Op(out=Out("*S"), a=In("*S"), b=In("*S"), inplace=[("out", "a"), ("out", "b")]),
    "batch_norm_forward": Op(
        out=Out("N C L"), save_mean=Out("C"), save_invstd=Out("C"),
        running_mean=InOut("C", optional=True), running_var=InOut("C", optional=True),
        num_batches_tracked=InOut("1", kind="int64", optional=True), x=In("N C L"),
        weight=_optional("C"), bias=_optional("C"), training=Flag(),
        momentum=Real(0, 1, optional=True), eps=Real(0),
        rules=[together("weight", "bias"), together("running_mean", "running_var"),
               batch_norm_state]),
    "batch_norm_backward": Op(
        dx=Out("N C L", optional=True), dweight=Out("C", optional=True),
        dbias=Out("C", optional=True), dout=In("N C L"), x=In("N C L"), weight=_optional("C"),
        save_mean=In("C"), save_invstd=In("C"), rules=[together("dweight", "dbias")]),
    "layer_norm_forward": Op(
        out=Out("M D"), save_mean=Out("M"), save_rstd=Out("M"), x=In("M D"),
        weight=_optional("D"), bias=_optional("D"), eps=Real(0)),
    "layer_norm_backward": Op(
        dx=Out("M D", optional=True), dweight=Out("D", optional=True),
        dbias=Out("D", optional=True), dout=In("M D"), x=In("M D"), weight=_optional("D"),
        save_mean=In("M"), save_rstd=In("M")),
    "lp_pool2d_forward": Op(
        out=Out("N C OH OW"), x=In("N C H W"), norm_type=Real(0), kernel_size=KERNEL_SIZE,
        stride=STRIDE, derive=unpadded_window, rules=[positive("norm_type")]),
    "lp_pool2d_backward": Op(
        dx=Out("N C H W"), dout=In("N C OH OW"), x=In("N C H W"), norm_type=Real(0),
        kernel_size=KERNEL_SIZE, stride=STRIDE, derive=unpadded_window,
        rules=[positive("norm_type")]),
    "global_avg_pool2d_forward": Op(
        out=Out("N C", strided=True), x=In("N C H W", strided=True)),
    "global_avg_pool2d_backward": Op(
        dx=Out("N C H W"), dout=In("N C", strided=True)),
    "rnn_forward": Op(
        out=Out("N T H"), h_n=Out("N H", strided=True), x=In("N T F"), h0=_optional("N H"),
        w_ih=In("H F"), w_hh=In("H H"), b_ih=_optional("H"), b_hh=_optional("H"),
        nonlinearity=Choice(("tanh", "relu"))),
    "rnn_backward": Op(
        dx=Out("N T F", optional=True), dh0=Out("N H", optional=True),
        dw_ih=Out("H F", optional=True), dw_hh=Out("H H", optional=True),
        db_ih=Out("H", optional=True), db_hh=Out("H", optional=True),
        dout=_optional("N T H"), dh_n=_optional("N H"), x=In("N T F"), h0=_optional("N H"),
        w_ih=In("H F"), w_hh=In("H H"), out=In("N T H"),
        nonlinearity=Choice(("tanh", "relu"))),
    "lstm_forward": Op(
        out=Out("N T H"), h_n=Out("N H", strided=True), c_n=Out("N H", strided=True),
        gates=Out("N T 4*H"), cells=Out("N T H"), x=In("N T F"), h0=_optional("N H"),
        c0=_optional("N H"), w_ih=In("4*H F"), w_hh=In("4*H H"), b_ih=_optional("4*H"),
        b_hh=_optional("4*H")),
    "lstm_backward": Op(
        dx=Out("N T F", optional=True), dh0=Out("N H", optional=True),
        dc0=Out("N H", optional=True), dw_ih=Out("4*H F", optional=True),
        dw_hh=Out("4*H H", optional=True),
        db_ih=Out("4*H", optional=True), db_hh=Out("4*H", optional=True),
        dout=_optional("N T H"), dh_n=_optional("N H"), dc_n=_optional("N H"), x=In("N T F"),
        h0=_optional("N H"), c0=_optional("N H"), w_ih=In("4*H F"), w_hh=In("4*H H"),
        out=In("N T H"), gates=In("N T 4*H"), cells=In("N T H")),
    "gru_forward": Op(
        out=Out("N T H"), h_n=Out("N H", strided=True), gates=Out("N T 3*H"),
        hn=Out("N T H"), x=In("N T F"), h0=_optional("N H"), w_ih=In("3*H F"),
        w_hh=In("3*H H"), b_ih=_optional("3*H"), b_hh=_optional("3*H")),
    "gru_backward": Op(
        dx=Out("N T F", optional=True), dh0=Out("N H", optional=True),
        dw_ih=Out("3*H F", optional=True), dw_hh=Out("3*H H", optional=True),
        db_ih=Out("3*H", optional=True), db_hh=Out("3*H", optional=True),
        dout=_optional("N T H"), dh_n=_optional("N H"), x=In("N T F"), h0=_optional("N H"),
        w_ih=In("3*H F"), w_hh=In("3*H H"), out=In("N T H"), gates=In("N T 3*H"),
        hn=In("N T H")),
    "embedding_forward": Op(
        out=Out("M D"), indices=In("M", kind="int"), weight=In("V D"),
        rules=[indices_in_range]),
    "embedding_backward": Op(
        dweight=Out("V D"), dout=In("M D"), indices=In("M", kind="int"),
        padding_idx=Integer(0, optional=True), rules=[indices_in_range, padding_in_range]),
    "sequence_copy": Op(
        out=Out("A B CO"), x=In("C D CX"), out_col=Integer(0), x_col=Integer(0),
        width=Integer(1), reverse=Flag(), out_time_first=Flag(), x_time_first=Flag(),
        rules=[sequence_window]),
}
