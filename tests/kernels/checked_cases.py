"""Valid argument sets for every op of the dispatch table, drawn by Hypothesis, and the
mutations that make one invalid: shared by tests/kernels/test_checked.py (CPU) and
tests/kernels/cuda/test_checked.py (the simulator).

``valid_args(op, draw, strided)`` builds a dict of arguments from the kernels' shape
docstrings (small random shapes, either float dtype, every None variant, strided views
where ``strided`` and the CPU kernel takes them), written independently of
fastnet/kernels/checks.py. ``mutations(op, args, device)`` lists the ways to break one
argument, each with the exception it must raise.
"""
import numpy as np
from hypothesis import strategies as st

from fastnet.kernels.checks import SPECS, Array, Choice, Flag, Integer, NormOrder, Pair, Real

FLOATS = (np.float32, np.float64)
LABEL_DTYPES = (np.int64, np.int32, np.uint8)
ACTS = (None, "relu", "sigmoid", "tanh")


def strided_view(a):
    """A non-contiguous view with ``a``'s shape and values: every other element of a
    buffer twice as long on the last axis (garbage in between)."""
    if a.ndim == 0:
        return a
    buf = np.full(a.shape[:-1] + (2 * a.shape[-1],), 77, a.dtype)
    view = buf[..., ::2]
    view[...] = a
    return view


def clone(args):
    """A deep copy of an argument dict that keeps each array's layout (strided views stay
    strided the same way) and which arguments are the same array."""
    memo = {}

    def copy(v):
        if not isinstance(v, np.ndarray):
            return v
        if id(v) not in memo:
            memo[id(v)] = v.copy() if v.flags.c_contiguous else strided_view(v)
        return memo[id(v)]
    return {k: copy(v) for k, v in args.items()}


GUARD = 64  # elements of canary on either side of a guarded array


def guarded(args):
    """``args`` with each array copied into the middle of a canary-filled buffer (strided
    views keep their layout; the elements between theirs are canaries too), and a function
    that returns the names of the arrays whose canaries changed: a write outside them."""
    memo, bufs = {}, []

    def place(name, v):
        if not isinstance(v, np.ndarray):
            return v
        if id(v) in memo:
            return memo[id(v)]
        fill = np.nan if v.dtype.kind == "f" else 123
        step = 1 if v.flags.c_contiguous else 2
        buf = np.full(2 * GUARD + step * max(v.size, 1), fill, v.dtype)
        inner = buf[GUARD:GUARD + step * v.size:step].reshape(v.shape)
        inner[...] = v
        canary = np.ones(buf.shape, bool)
        canary[GUARD:GUARD + step * v.size:step] = False
        bufs.append((name, buf, canary, buf[canary].copy()))
        memo[id(v)] = inner
        return inner

    new = {k: place(k, v) for k, v in args.items()}

    def written_outside():
        return [name for name, buf, canary, before in bufs
                if _bytes(buf[canary]) != _bytes(before)]
    return new, written_outside


def _bytes(a):
    return np.ascontiguousarray(a).tobytes()


class Draw:
    """Small random arguments from a Hypothesis ``draw``."""

    def __init__(self, draw, strided):
        self.draw, self.strided = draw, strided
        self.dt = np.dtype(draw(st.sampled_from(FLOATS)))
        self.rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    def int(self, lo, hi):
        return self.draw(st.integers(lo, hi))

    def flag(self):
        return self.draw(st.booleans())

    def pick(self, seq):
        return self.draw(st.sampled_from(seq))

    def a(self, *shape):
        return np.asarray(self.rng.standard_normal(shape)).astype(self.dt)  # 0-d: an array

    def out(self, *shape, dtype=None):
        """Garbage for an output the kernel overwrites."""
        dtype = np.dtype(dtype or self.dt)
        return np.full(shape, np.nan if dtype.kind == "f" else 7, dtype)

    def maybe(self, value):
        return value if self.flag() else None

    def view(self, a):
        """``a``, or (where strided views are allowed and drawn) a strided view of it."""
        return strided_view(a) if self.strided and a.ndim and self.flag() else a

    def real(self, lo, hi):
        return self.draw(st.floats(lo, hi, allow_nan=False))

    def any_shape(self, nonempty=False):
        """Up to 3 axes of up to 4 (``nonempty``: at least one element)."""
        lo = 1 if nonempty else 0
        return tuple(self.int(lo, 4) for _ in range(self.int(lo, 3)))

    def plane(self, k, p):
        """An input size whose padded size holds the window."""
        return max(1, k - 2 * p) + self.int(0, 4)


def _out_size(size, k, s, p):
    return (size + 2 * p - k) // s + 1


def _geometry(d, pool):
    if pool and d.flag() and d.flag():
        return (2, 2), (2, 2), (0, 0)  # the 2x2 vector kernels
    ks = (d.int(1, 3), d.int(1, 3))
    stride = (d.int(1, 3), d.int(1, 3))
    pad = tuple(d.int(0, k // 2 if pool else 2) for k in ks)
    return ks, stride, pad


def _plane(d, ks, stride, pad):
    h, w = d.plane(ks[0], pad[0]), d.plane(ks[1], pad[1])
    return h, w, _out_size(h, ks[0], stride[0], pad[0]), _out_size(w, ks[1], stride[1], pad[1])


def _argmax(d, n, c, h, w, ks, stride, pad, dtype):
    """Indices inside each output's window, as max_pool2d_forward records them."""
    oh, ow = _out_size(h, ks[0], stride[0], pad[0]), _out_size(w, ks[1], stride[1], pad[1])

    def axis(o, k, s, p, size):
        start = np.arange(o) * s - p
        lo, hi = np.maximum(start, 0), np.minimum(start + k, size)
        return lo, hi - lo

    ilo, ilen = axis(oh, ks[0], stride[0], pad[0], h)
    jlo, jlen = axis(ow, ks[1], stride[1], pad[1], w)
    u = d.rng.random((2, n, c, oh, ow))
    ih = ilo[:, None] + (u[0] * ilen[:, None]).astype(np.int64)
    iw = jlo[None, :] + (u[1] * jlen[None, :]).astype(np.int64)
    return (ih * w + iw).astype(dtype)


def _dense(d, backward):
    n, i, o = d.int(1, 5), d.int(1, 5), d.int(1, 5)
    act = d.pick(ACTS)
    x, w = d.a(n, i), d.a(o, i)
    if not backward:
        return dict(out=d.out(n, o), x=x, w=w, b=d.maybe(d.a(o)), activation=act)
    out = d.a(n, o) if act else d.maybe(d.a(n, o))
    return dict(dx=d.maybe(d.out(n, i)), dw=d.maybe(d.out(o, i)), db=d.maybe(d.out(o)),
                dout=d.a(n, o), x=x, w=w, out=out, activation=act)


def _cols(d, backward):
    ks, stride, pad = _geometry(d, False)
    n, c = d.int(1, 3), d.int(1, 3)
    h, w, oh, ow = _plane(d, ks, stride, pad)
    rows, cols = c * ks[0] * ks[1], n * oh * ow
    if backward:
        return dict(dx=d.out(n, c, h, w), cols=d.a(rows, cols), kernel_size=ks, stride=stride,
                    padding=pad)
    return dict(cols=d.out(rows, cols), x=d.a(n, c, h, w), kernel_size=ks, stride=stride,
                padding=pad)


def _conv(d, backward):
    """The default path, or (one draw in two) dilation and groups: conv/grouped.py."""
    ks, stride, pad = _geometry(d, False)
    n, c, o = d.int(1, 3), d.int(1, 3), d.int(1, 5)
    dil, groups = (1, 1), 1
    if d.flag():
        dil, groups = (d.int(1, 3), d.int(1, 3)), d.int(1, 3)
        c, o = c * groups, o * groups
    extra = dict(dilation=dil, groups=groups)
    span = tuple(dd * (k - 1) + 1 for dd, k in zip(dil, ks))
    h, w, oh, ow = _plane(d, span, stride, pad)
    act = d.pick(ACTS)
    x, wt = d.a(n, c, h, w), d.a(o, c // groups, *ks)
    if not backward:
        return dict(out=d.out(n, o, oh, ow), x=x, w=wt, b=d.maybe(d.a(o)), stride=stride,
                    padding=pad, activation=act, **extra)
    out = d.a(n, o, oh, ow) if act else d.maybe(d.a(n, o, oh, ow))
    return dict(dx=d.maybe(d.out(n, c, h, w)), dw=d.maybe(d.out(o, c // groups, *ks)),
                db=d.maybe(d.out(o)), dout=d.a(n, o, oh, ow), x=x, w=wt, out=out, stride=stride,
                padding=pad, activation=act, **extra)


def _pool(d, kind, backward):
    ks, stride, pad = _geometry(d, True)
    n, c = d.int(1, 3), d.int(1, 3)
    h, w, oh, ow = _plane(d, ks, stride, pad)
    geo = dict(kernel_size=ks, stride=stride, padding=pad)
    if kind == "max":
        idx = d.pick((np.int32, np.int64))
        if backward:
            return dict(dx=d.view(d.out(n, c, h, w)), dout=d.view(d.a(n, c, oh, ow)),
                        argmax=d.view(_argmax(d, n, c, h, w, ks, stride, pad, idx)), **geo)
        return dict(out=d.view(d.out(n, c, oh, ow)), argmax=d.view(d.out(n, c, oh, ow, dtype=idx)),
                    x=d.view(d.a(n, c, h, w)), **geo)
    if backward:
        return dict(dx=d.view(d.out(n, c, h, w)), dout=d.view(d.a(n, c, oh, ow)), **geo)
    return dict(out=d.view(d.out(n, c, oh, ow)), x=d.view(d.a(n, c, h, w)), **geo)


def _lp_pool(d, backward):
    """No padding; C-contiguous arrays (the spec takes no strided ones); a whole or a
    fractional norm_type (x drawn as for the other ops: NaN where a power has none)."""
    ks = (d.int(1, 3), d.int(1, 3))
    stride = (d.int(1, 3), d.int(1, 3))
    n, c = d.int(1, 3), d.int(1, 3)
    h, w, oh, ow = _plane(d, ks, stride, (0, 0))
    geo = dict(norm_type=d.pick((1, 2, 3, d.real(0.25, 4))), kernel_size=ks, stride=stride)
    if backward:
        return dict(dx=d.out(n, c, h, w), dout=d.a(n, c, oh, ow), x=d.a(n, c, h, w), **geo)
    return dict(out=d.out(n, c, oh, ow), x=d.a(n, c, h, w), **geo)


def _elementwise(d, names, inplace=None, **scalars):
    """Arrays of one shape: names ``out:``-prefixed are outputs; ``inplace``: (out, in)
    that may be drawn as the same array."""
    shape = d.any_shape()
    args = {}
    for spec in names:
        role, name = spec.split(":")
        args[name] = d.out(*shape) if role == "out" else d.a(*shape)
    if inplace and d.flag():
        args[inplace[0]] = args[inplace[1]]
    args.update(scalars)
    return args


def _rows(d, backward):
    n, c = d.int(1, 5), d.int(1, 7)
    if backward:
        args = dict(dx=d.view(d.out(n, c)), dout=d.view(d.a(n, c)), out=d.view(d.a(n, c)))
        if d.flag():
            args["dx"] = args["dout"]
        return args
    return dict(out=d.view(d.out(n, c)), x=d.view(d.a(n, c)))


def _cross_entropy(d):
    n, c = d.int(1, 5), d.int(1, 7)
    labels = d.rng.integers(0, c, n).astype(d.pick(LABEL_DTYPES))
    return dict(grad=d.maybe(d.view(d.out(n, c))), logits=d.view(d.a(n, c)), labels=d.view(labels))


def _class_loss(d, backward):
    """cross_entropy_forward / _backward: weights or none, ignore_index a class or not,
    NLL (log_probs) or a smoothed softmax, every reduction."""
    n, c = d.int(1, 5), d.int(1, 7)
    labels = d.rng.integers(0, c, n).astype(d.pick(LABEL_DTYPES))
    log_probs = d.flag()
    args = dict(logits=d.view(d.a(n, c)), labels=d.view(labels), weight=d.maybe(d.a(c)),
                ignore_index=d.pick((-100, 0)),
                label_smoothing=0.0 if log_probs else d.pick((0.0, 0.25)), log_probs=log_probs)
    if backward:
        return dict(grad=d.out(n, c), dout=d.a(n), **args)
    reduction = d.pick(("mean", "sum", "none"))
    if reduction == "none":
        return dict(out=d.out(n), grad=None, **args, reduction=reduction)
    return dict(out=d.maybe(d.out(n)), grad=d.maybe(d.out(n, c)), **args, reduction=reduction)


def _bce_with_logits(d, backward):
    m, c = d.int(1, 5), d.int(1, 4)
    args = dict(x=d.a(m, c), target=d.rng.random((m, c)).astype(d.dt),
                weight=d.maybe(d.a(m, c)), pos_weight=d.maybe(d.a(c)))
    if backward:
        out = dict(grad=d.out(m, c), dout=d.a(m, c), **args)
        if d.flag():
            out["grad"] = out["dout"]
        return out
    reduction = d.pick(("mean", "sum", "none"))
    if reduction == "none":
        return dict(out=d.out(m, c), grad=None, **args, reduction=reduction)
    return dict(out=d.maybe(d.out(m, c)), grad=d.maybe(d.out(m, c)), **args,
                reduction=reduction)


def _pointwise_loss(d, backward):
    shape = d.any_shape(nonempty=True)
    scalars = dict(loss=d.pick(("l1", "mse", "smooth_l1", "huber")), beta=d.real(0.125, 2))
    if backward:
        out = dict(grad=d.out(*shape), dout=d.a(*shape), pred=d.a(*shape), target=d.a(*shape),
                   **scalars)
        if d.flag():
            out["grad"] = out["dout"]
        return out
    reduction = d.pick(("mean", "sum", "none"))
    if reduction == "none":
        out, grad = d.out(*shape), None
    else:
        out, grad = d.maybe(d.out(*shape)), d.maybe(d.out(*shape))
    return dict(out=out, grad=grad, pred=d.a(*shape), target=d.a(*shape), **scalars,
                reduction=reduction)


def _embedding(d, backward):
    m, v, dim = d.int(1, 6), d.int(1, 5), d.int(1, 4)
    indices = d.rng.integers(0, v, m).astype(d.pick(LABEL_DTYPES + (np.uint64, np.int16)))
    if not backward:
        return dict(out=d.out(m, dim), indices=indices, weight=d.a(v, dim))
    return dict(dweight=d.out(v, dim), dout=d.a(m, dim), indices=indices,
                padding_idx=d.maybe(d.int(0, v - 1)))


def _mse(d):
    shape = d.any_shape(nonempty=True)
    return dict(grad=d.maybe(d.out(*shape)), pred=d.a(*shape), target=d.a(*shape))


def _dropout(d, backward):
    shape = d.any_shape()
    p = d.pick((0.0, 0.5, 1.0)) if d.flag() else d.real(0, 1)
    if backward:
        mask = np.asarray(d.rng.random(shape) < 0.5).astype(np.uint8)
        args = dict(dx=d.out(*shape), dout=d.a(*shape), mask=mask, p=p)
        if d.flag():
            args["dx"] = args["dout"]
        return args
    args = dict(out=d.out(*shape), mask=d.out(*shape, dtype=np.uint8), x=d.a(*shape), p=p,
                seed=d.int(-2**63, 2**64))
    if d.flag():
        args["out"] = args["x"]
    return args


def _sgd(d):
    shape = d.any_shape()
    momentum = d.pick((0.0, 0.9)) if d.flag() else d.real(0, 1)
    velocity = d.a(*shape) if momentum else d.maybe(d.a(*shape))
    return dict(param=d.a(*shape), velocity=velocity, grad=d.a(*shape), lr=d.real(0, 1),
                momentum=momentum, weight_decay=d.real(0, 0.1), nesterov=d.flag())


def _vector_norm(d):
    norm_type = d.pick((2.0, 1.0, float("inf"))) if d.flag() else d.real(0.5, 4)
    return dict(out=d.out(1), x=d.a(*d.any_shape()), norm_type=norm_type)


def _clamp(d):
    lo = d.real(-2, 1)
    return dict(x=d.a(*d.any_shape()), lo=lo, hi=lo + d.real(0, 2))


def _adam(d):
    shape = d.any_shape()
    return dict(param=d.a(*shape), m=d.a(*shape), v=np.asarray(np.abs(d.a(*shape))),
                grad=d.a(*shape),
                lr=d.real(0, 0.1), beta1=d.real(0, 0.99), beta2=d.real(0, 0.999),
                eps=d.real(1e-8, 1e-3), weight_decay=d.real(0, 0.1), step=d.int(1, 100),
                decoupled=d.flag())


def _batch_norm(d, backward):
    n, c, ln = d.int(1, 4), d.int(1, 4), d.int(1, 4)
    x = d.a(n, c, ln)
    affine = d.flag()
    if backward:
        dwb = d.flag()
        return dict(dx=d.maybe(d.out(n, c, ln)), dweight=d.out(c) if dwb else None,
                    dbias=d.out(c) if dwb else None, dout=d.a(n, c, ln), x=x,
                    weight=d.a(c) if affine else None, save_mean=d.a(c),
                    save_invstd=np.abs(d.a(c)) + 0.5)
    training = d.flag()
    running = not training or d.flag()
    momentum = d.pick((0.1, None)) if running and training else d.real(0, 1)
    counter = np.array(d.int(0, 10), np.int64)
    nbt = counter if momentum is None else (d.maybe(counter) if running else None)
    return dict(out=d.out(n, c, ln), save_mean=d.out(c), save_invstd=d.out(c),
                running_mean=d.a(c) if running else None,
                running_var=np.abs(d.a(c)) + 0.5 if running else None,
                num_batches_tracked=nbt, x=x, weight=d.a(c) if affine else None,
                bias=d.a(c) if affine else None, training=training, momentum=momentum,
                eps=d.real(1e-6, 1e-3))


def _layer_norm(d, backward):
    m, dd = d.int(1, 5), d.int(1, 5)
    weight = d.maybe(d.a(dd))
    if backward:
        return dict(dx=d.maybe(d.out(m, dd)), dweight=d.maybe(d.out(dd)),
                    dbias=d.maybe(d.out(dd)), dout=d.a(m, dd), x=d.a(m, dd), weight=weight,
                    save_mean=d.a(m), save_rstd=np.abs(d.a(m)) + 0.5)
    return dict(out=d.out(m, dd), save_mean=d.out(m), save_rstd=d.out(m), x=d.a(m, dd),
                weight=weight, bias=d.maybe(d.a(dd)), eps=d.real(1e-6, 1e-3))


def _global_pool(d, backward):
    n, c, h, w = d.int(1, 3), d.int(1, 3), d.int(1, 4), d.int(1, 4)
    if backward:
        return dict(dx=d.out(n, c, h, w), dout=d.view(d.a(n, c)))
    return dict(out=d.view(d.out(n, c)), x=d.view(d.a(n, c, h, w)))


GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def _recurrent(d, cell, backward):
    n, t, f, h = d.int(1, 3), d.int(1, 3), d.int(1, 3), d.int(1, 3)
    g = GATES[cell] * h
    x, w_ih, w_hh = d.a(n, t, f), d.a(g, f), d.a(g, h)
    h0 = d.maybe(d.a(n, h))
    b_ih, b_hh = d.maybe(d.a(g)), d.maybe(d.a(g))
    act = d.pick(("tanh", "relu"))
    if not backward:
        out, h_n = d.out(n, t, h), d.view(d.out(n, h))
        if cell == "rnn":
            return dict(out=out, h_n=h_n, x=x, h0=h0, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh,
                        nonlinearity=act)
        if cell == "lstm":
            return dict(out=out, h_n=h_n, c_n=d.view(d.out(n, h)), gates=d.out(n, t, g),
                        cells=d.out(n, t, h), x=x, h0=h0, c0=d.maybe(d.a(n, h)), w_ih=w_ih,
                        w_hh=w_hh, b_ih=b_ih, b_hh=b_hh)
        return dict(out=out, h_n=h_n, gates=d.out(n, t, g), hn=d.out(n, t, h), x=x, h0=h0,
                    w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh)
    # backward: the saved arrays are plausible forward values (tanh-range gates, cells)
    out = np.tanh(d.a(n, t, h))
    grads = dict(dx=d.maybe(d.out(n, t, f)), dh0=d.maybe(d.out(n, h)))
    if cell == "lstm":
        grads["dc0"] = d.maybe(d.out(n, h))
    grads.update(dw_ih=d.maybe(d.out(g, f)), dw_hh=d.maybe(d.out(g, h)),
                 db_ih=d.maybe(d.out(g)), db_hh=d.maybe(d.out(g)), dout=d.maybe(d.a(n, t, h)), dh_n=d.maybe(d.a(n, h)))
    if cell == "rnn":
        return dict(**grads, x=x, h0=h0, w_ih=w_ih, w_hh=w_hh, out=out, nonlinearity=act)
    if cell == "lstm":
        return dict(**grads, dc_n=d.maybe(d.a(n, h)), x=x, h0=h0, c0=d.maybe(d.a(n, h)),
                    w_ih=w_ih, w_hh=w_hh, out=out, gates=1 / (1 + np.exp(-d.a(n, t, g))),
                    cells=d.a(n, t, h))
    return dict(**grads, x=x, h0=h0, w_ih=w_ih, w_hh=w_hh, out=out,
                gates=1 / (1 + np.exp(-d.a(n, t, g))), hn=d.a(n, t, h))


def _sequence_copy(d):
    n, t = d.int(1, 3), d.int(1, 4)
    width = d.int(1, 3)
    out_col, x_col = d.int(0, 2), d.int(0, 2)
    out_tf, x_tf = d.flag(), d.flag()
    co, cx = out_col + width + d.int(0, 1), x_col + width + d.int(0, 1)
    out = d.out(*((t, n) if out_tf else (n, t)), co)
    x = d.a(*((t, n) if x_tf else (n, t)), cx)
    return dict(out=out, x=x, out_col=out_col, x_col=x_col, width=width, reverse=d.flag(),
                out_time_first=out_tf, x_time_first=x_tf)


def _order(op, args):
    """The argument dict in the kernel's parameter order (the recurrent backward makers
    build theirs in two parts)."""
    return {name: args[name] for name in SPECS[op].names}


MAKERS = {
    "dense_forward": lambda d: _dense(d, False),
    "dense_backward": lambda d: _dense(d, True),
    "im2col": lambda d: _cols(d, False),
    "col2im": lambda d: _cols(d, True),
    "conv2d_forward": lambda d: _conv(d, False),
    "conv2d_backward": lambda d: _conv(d, True),
    "max_pool2d_forward": lambda d: _pool(d, "max", False),
    "max_pool2d_backward": lambda d: _pool(d, "max", True),
    "avg_pool2d_forward": lambda d: _pool(d, "avg", False),
    "avg_pool2d_backward": lambda d: _pool(d, "avg", True),
    "relu_forward": lambda d: _elementwise(d, ("out:out", "in:x"), ("out", "x")),
    "relu_backward": lambda d: _elementwise(d, ("out:dx", "in:dout", "in:out"), ("dx", "dout")),
    "leaky_relu_forward": lambda d: _elementwise(d, ("out:out", "in:x"), ("out", "x"),
                                                 negative_slope=d.real(-2, 2)),
    "leaky_relu_backward": lambda d: _elementwise(d, ("out:dx", "in:dout", "in:x"), ("dx", "dout"),
                                                  negative_slope=d.real(-2, 2)),
    "hardsigmoid_forward": lambda d: _elementwise(d, ("out:out", "in:x"), ("out", "x")),
    "hardsigmoid_backward": lambda d: _elementwise(d, ("out:dx", "in:dout", "in:x"), ("dx", "dout")),
    "sigmoid_forward": lambda d: _elementwise(d, ("out:out", "in:x"), ("out", "x")),
    "sigmoid_backward": lambda d: _elementwise(d, ("out:dx", "in:dout", "in:out"), ("dx", "dout")),
    "tanh_forward": lambda d: _elementwise(d, ("out:out", "in:x"), ("out", "x")),
    "tanh_backward": lambda d: _elementwise(d, ("out:dx", "in:dout", "in:out"), ("dx", "dout")),
    "softmax_forward": lambda d: _rows(d, False),
    "softmax_backward": lambda d: _rows(d, True),
    "log_softmax_forward": lambda d: _rows(d, False),
    "log_softmax_backward": lambda d: _rows(d, True),
    "softmax_cross_entropy_forward": _cross_entropy,
    "mse_forward": _mse,
    "cross_entropy_forward": lambda d: _class_loss(d, False),
    "cross_entropy_backward": lambda d: _class_loss(d, True),
    "bce_with_logits_forward": lambda d: _bce_with_logits(d, False),
    "bce_with_logits_backward": lambda d: _bce_with_logits(d, True),
    "pointwise_loss_forward": lambda d: _pointwise_loss(d, False),
    "pointwise_loss_backward": lambda d: _pointwise_loss(d, True),
    "dropout_forward": lambda d: _dropout(d, False),
    "dropout_backward": lambda d: _dropout(d, True),
    "sgd_step": _sgd,
    "adam_step": _adam,
    "vector_norm": _vector_norm,
    "scale": lambda d: dict(x=d.a(*d.any_shape()), alpha=d.real(-2, 2)),
    "clamp": _clamp,
    "accumulate": lambda d: _elementwise(d, ("out:out", "in:x"), ("out", "x")),
    "add": lambda d: _elementwise(d, ("out:out", "in:a", "in:b"), ("out", d.pick("ab"))),
    "batch_norm_forward": lambda d: _batch_norm(d, False),
    "batch_norm_backward": lambda d: _batch_norm(d, True),
    "layer_norm_forward": lambda d: _layer_norm(d, False),
    "layer_norm_backward": lambda d: _layer_norm(d, True),
    "lp_pool2d_forward": lambda d: _lp_pool(d, False),
    "lp_pool2d_backward": lambda d: _lp_pool(d, True),
    "global_avg_pool2d_forward": lambda d: _global_pool(d, False),
    "global_avg_pool2d_backward": lambda d: _global_pool(d, True),
    "rnn_forward": lambda d: _recurrent(d, "rnn", False),
    "rnn_backward": lambda d: _recurrent(d, "rnn", True),
    "lstm_forward": lambda d: _recurrent(d, "lstm", False),
    "lstm_backward": lambda d: _recurrent(d, "lstm", True),
    "gru_forward": lambda d: _recurrent(d, "gru", False),
    "gru_backward": lambda d: _recurrent(d, "gru", True),
    "embedding_forward": lambda d: _embedding(d, False),
    "embedding_backward": lambda d: _embedding(d, True),
    "sequence_copy": _sequence_copy,
}


def valid_args(op, draw, strided=True):
    """A valid argument dict for ``op``, in parameter order."""
    return _order(op, MAKERS[op](Draw(draw, strided)))


# ---- mutations: one argument made invalid --------------------------------------------------

def _mutable_axes(op, args):
    """(name, axis) of the present arrays whose size, changed alone, breaks the call: a
    dimension shared with another argument, derived from others, or a product."""
    spec = SPECS[op]
    count = {}
    for name, p in spec.params.items():
        if isinstance(p, Pair):
            for sym in p.binds:
                count[sym] = count.get(sym, 0) + 1
        elif isinstance(p, Array) and args[name] is not None:
            for t in ((p.tokens[0],) if p.whole() else p.tokens):
                count[t] = count.get(t, 0) + 1
    axes = []
    for name, p in spec.arrays.items():
        a = args[name]
        if a is None:
            continue
        if p.whole():
            if count[p.tokens[0]] > 1:
                axes += [(name, k) for k in range(a.ndim)]
            continue
        for k, t in enumerate(p.tokens):
            if "*" in t or t in ("OH", "OW") or count[t] > 1:
                axes.append((name, k))
    return axes


def _bad_scalars(p):
    """(value, exception) pairs a scalar spec must refuse."""
    if isinstance(p, Pair):
        m = p.minimum
        return [((m - 1, m), ValueError), ((m, m - 1), ValueError), ((2**31, m), ValueError),
                ((m,), TypeError), ((m, m, m), TypeError), (m + 1, TypeError),
                ((1.5, m), TypeError), ((True, m), TypeError), (None, TypeError),
                ("22", TypeError)]
    if isinstance(p, Real):
        bad = [(float("nan"), ValueError), (float("inf"), ValueError), ("0.1", TypeError),
               (True, TypeError), ([0.1], TypeError)]
        if not p.optional:
            bad.append((None, TypeError))
        if p.lo is not None:
            bad.append((p.lo - 0.5, ValueError))
        if p.hi is not None:
            bad.append((p.hi if p.hi_open else p.hi + 0.5, ValueError))
        return bad
    if isinstance(p, Integer):
        bad = [(1.5, TypeError), ("3", TypeError), (True, TypeError)]
        if not p.optional:
            bad.append((None, TypeError))
        if p.lo is not None:
            bad.append((p.lo - 1, ValueError))
        return bad
    if isinstance(p, Flag):
        return [(1, TypeError), ("yes", TypeError), (None, TypeError)]
    if isinstance(p, Choice):
        return [("bogus", ValueError), (3, TypeError), (["relu"], TypeError)]
    if isinstance(p, NormOrder):
        return [(0.0, ValueError), (-2.0, ValueError), (float("-inf"), ValueError),
                (float("nan"), ValueError), ("2", TypeError), (True, TypeError),
                (None, TypeError)]
    raise AssertionError(p)


def _other_dtypes(p, a, floats_present):
    if p.kind == "float":
        other = [np.int32, np.complex64, np.bool_, np.float16, object]
        if floats_present > 1:
            other.append(np.float64 if a.dtype == np.float32 else np.float32)
        return other
    if p.kind == "index":
        return [np.float32, np.int16, np.uint32, np.bool_]
    if p.kind == "int":
        return [np.float32, np.bool_, np.complex64]
    if p.kind == "uint8":
        return [np.bool_, np.int8, np.float32]
    return [np.int32, np.float64]  # the int64 counter


def _retyped(a, dtype):
    if np.dtype(dtype) == object:
        return np.empty(a.shape, object)
    with np.errstate(all="ignore"):
        return a.astype(dtype)


def _bad_indices(op, args):
    """(name, value) of out-of-range index values for an input index array."""
    if op == "max_pool2d_backward":
        h, w = args["dx"].shape[2:]
        return "argmax", [2**30, -1, h * w, -2**31]
    if op in ("softmax_cross_entropy_forward", "cross_entropy_forward",
              "cross_entropy_backward"):
        c = args["logits"].shape[1]
        info = np.iinfo(args["labels"].dtype)
        vals = [c, info.max]
        if info.min < 0:
            vals += [-1, info.min]
        if info.max >= 2**30:
            vals.append(2**30)
        return "labels", vals
    if op in ("embedding_forward", "embedding_backward"):
        v = args["weight" if op == "embedding_forward" else "dweight"].shape[0]
        info = np.iinfo(args["indices"].dtype)
        vals = [v] + ([info.max] if info.max > v else [])
        if info.min < 0:
            vals += [-1, info.min]
        if info.max >= 2**30:
            vals.append(2**30)
        return "indices", vals
    return None, []


def mutations(op, args, device="cpu"):
    """[(description, new args, expected exception)]: each breaks one argument of a
    valid ``args``."""
    spec = SPECS[op]
    out = []

    def put(desc, exc, **changes):
        new = dict(args)
        new.update(changes)
        out.append((desc, new, exc))

    for name, k in _mutable_axes(op, args):
        a = args[name]
        for delta in (1, -1):
            shape = list(a.shape)
            shape[k] += delta
            if shape[k] >= 0:
                put(f"{name} axis {k} {delta:+d}", ValueError,
                    **{name: np.zeros(shape, a.dtype)})
    floats = sum(1 for n, p in spec.arrays.items() if p.kind == "float" and args[n] is not None)
    for name, p in spec.arrays.items():
        a = args[name]
        if a is None:
            if not p.optional:
                raise AssertionError(f"{op}: {name} is None")
            continue
        if not p.optional:
            put(f"{name} None", TypeError, **{name: None})
        put(f"{name} as a list", TypeError, **{name: a.tolist()})
        if not p.whole():
            more = a[None] if a.ndim else a[None, None]  # (a counter may be 0-d or (1,))
            put(f"{name} with an extra axis", ValueError, **{name: more})
        for dt in _other_dtypes(p, a, floats):
            put(f"{name} as {np.dtype(dt)}", TypeError, **{name: _retyped(a, dt)})
        if not (p.strided and device == "cpu"):
            view = strided_view(a)
            if not view.flags.c_contiguous:
                put(f"{name} strided", ValueError, **{name: view})
        if p.written:
            ro = a.copy()
            ro.flags.writeable = False
            put(f"{name} read-only", ValueError, **{name: ro})
            for q, pq in spec.arrays.items():
                b = args[q]
                if (q == name or b is None or pq.written or b.shape != a.shape or a.size == 0
                        or b.dtype != a.dtype or frozenset((name, q)) in spec.inplace):
                    continue
                put(f"{name} is {q}", ValueError, **{name: b})
    for name, p in spec.scalars.items():
        for value, exc in _bad_scalars(p):
            put(f"{name}={value!r}", exc, **{name: value})
    if op == "embedding_backward":  # padding_idx past the rows
        put("padding_idx=V", ValueError, padding_idx=args["dweight"].shape[0])
    name, values = _bad_indices(op, args)
    for v in values:
        a = args[name].copy()
        a.reshape(-1)[a.size // 2] = v
        put(f"{name} holds {v}", ValueError, **{name: a})
    return out
