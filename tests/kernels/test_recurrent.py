"""Recurrent kernels: {rnn,lstm,gru}_forward and {rnn,lstm,gru}_backward against the
per-timestep NumPy reference and float64 finite differences of their own forward;
sequence_copy against the reference's transposes and flips."""
import numpy as np
import pytest

from fastnet.kernels import kernel
from tests import reference as ref
from tests.gradcheck import check_backward

from .cases import CELLS, RECURRENT_SHAPES, SEQUENCE_COPY_CASES

SHAPES = RECURRENT_SHAPES
# (bias, initial state)
VARIANTS = [(True, True), (False, False), (True, False)]


def _ids(v):
    return f"{'bias' if v[0] else 'nobias'}-{'h0' if v[1] else 'noh0'}"


def _make(rng, dtype, cell, shape, bias=True, init=True):
    _, g, _ = CELLS[cell]
    n, t, f, h = shape
    a = dict(
        x=rng.standard_normal((n, t, f)),
        h0=rng.standard_normal((n, h)) if init else None,
        c0=rng.standard_normal((n, h)) if init and cell == "lstm" else None,
        w_ih=rng.uniform(-1, 1, (g * h, f)) / np.sqrt(h),
        w_hh=rng.uniform(-1, 1, (g * h, h)) / np.sqrt(h),
        b_ih=rng.uniform(-1, 1, g * h) / np.sqrt(h) if bias else None,
        b_hh=rng.uniform(-1, 1, g * h) / np.sqrt(h) if bias else None,
    )
    return {k: None if v is None else v.astype(dtype) for k, v in a.items()}


def _garbage(shape, dtype, strided=False):
    """Garbage-filled output; ``strided``: a column slice of a wider buffer (a view that
    is not C-contiguous, as a caller's slice of a bigger state array would be)."""
    if strided:
        return np.full(shape[:-1] + (2 * shape[-1] + 1,), 123.0, dtype)[..., 1::2]
    return np.full(shape, 123.0, dtype)


def _forward(cell, a, strided_state=False):
    """-> (outputs, saved): outputs (out, h_n[, c_n]); saved the arrays backward takes
    after ``out`` (gates and cells / hn) or the nonlinearity. ``strided_state``: h_n and
    c_n are strided views."""
    op, g, act = CELLS[cell]
    x = a["x"]
    n, t, _ = x.shape
    h = a["w_hh"].shape[1]
    dt = x.dtype
    out, h_n = _garbage((n, t, h), dt), _garbage((n, h), dt, strided_state)
    w = (a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"])
    if op == "rnn":
        kernel("rnn_forward")(out, h_n, x, a["h0"], *w, act)
        return (out, h_n), (act,)
    gates = _garbage((n, t, g * h), dt)
    extra = _garbage((n, t, h), dt)
    if op == "lstm":
        c_n = _garbage((n, h), dt, strided_state)
        kernel("lstm_forward")(out, h_n, c_n, gates, extra, x, a["h0"], a["c0"], *w)
        return (out, h_n, c_n), (gates, extra)
    kernel("gru_forward")(out, h_n, gates, extra, x, a["h0"], *w)
    return (out, h_n), (gates, extra)


def _backward(cell, a, douts, want_dx=True):
    """douts: (dout, dh_n[, dc_n]) -> (dx, dh0[, dc0], dw_ih, dw_hh, db_ih, db_hh)"""
    op, _, _ = CELLS[cell]
    (out, *_), saved = _forward(cell, a)
    x = a["x"]
    dt = x.dtype

    def slot(k):
        return None if a[k] is None else _garbage(a[k].shape, dt)

    dx = _garbage(x.shape, dt) if want_dx else None
    dinit = [slot("h0")] + ([slot("c0")] if op == "lstm" else [])
    dparams = [slot("w_ih"), slot("w_hh"), slot("b_ih"), slot("b_hh")]
    init = [a["h0"]] + ([a["c0"]] if op == "lstm" else [])
    kernel(op + "_backward")(dx, *dinit, *dparams, *douts, x, *init, a["w_ih"], a["w_hh"],
                             out, *saved)
    return (dx, *dinit, *dparams)


def _ref_forward(cell, a):
    op, _, act = CELLS[cell]
    w = (a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"])
    if op == "rnn":
        return ref.rnn_forward(a["x"], a["h0"], *w, act)
    if op == "lstm":
        return ref.lstm_forward(a["x"], a["h0"], a["c0"], *w)
    return ref.gru_forward(a["x"], a["h0"], *w)


def _ref_backward(cell, a, douts):
    op, _, act = CELLS[cell]
    w = (a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"])
    dout = douts[0] if douts[0] is not None else np.zeros(
        a["x"].shape[:2] + (a["w_hh"].shape[1],), a["x"].dtype)
    if op == "rnn":
        return ref.rnn_backward(dout, douts[1], a["x"], a["h0"], *w, act)
    if op == "lstm":
        return ref.lstm_backward(dout, douts[1], douts[2], a["x"], a["h0"], a["c0"], *w)
    return ref.gru_backward(dout, douts[1], a["x"], a["h0"], *w)


def _douts(rng, cell, a, dtype, with_dout=True):
    n, t, _ = a["x"].shape
    h = a["w_hh"].shape[1]
    k = 2 if CELLS[cell][0] == "lstm" else 1
    dout = rng.standard_normal((n, t, h)).astype(dtype) if with_dout else None
    return (dout,) + tuple(rng.standard_normal((n, h)).astype(dtype) for _ in range(k))


def _names(cell):
    return ["dx", "dh0"] + (["dc0"] if CELLS[cell][0] == "lstm" else []) + \
        ["dw_ih", "dw_hh", "db_ih", "db_hh"]


@pytest.mark.parametrize("variant", VARIANTS, ids=_ids)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("cell", list(CELLS))
def test_forward_matches_reference(rng, dtype, close, cell, shape, variant):
    """out, h_n (and c_n) against the per-timestep reference; outputs pre-filled with
    garbage are overwritten; inputs are left alone."""
    a = _make(rng, dtype, cell, shape, *variant)
    copies = {k: None if v is None else v.copy() for k, v in a.items()}
    got, _ = _forward(cell, a)
    want = _ref_forward(cell, a)
    scale = np.sqrt(shape[2] + shape[3]) * shape[1]
    for name, g, r in zip(["out", "h_n", "c_n"], got, want):
        close(g, r, scale=scale, err_msg=name)
    for k, v in a.items():
        if v is not None:
            np.testing.assert_array_equal(v, copies[k], err_msg=f"{k} was modified")


@pytest.mark.parametrize("variant", VARIANTS, ids=_ids)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("cell", list(CELLS))
def test_backward_matches_reference(rng, dtype, close, cell, shape, variant):
    """Every gradient (input, initial states, the four parameters) against the reference,
    with gradients flowing into the output sequence and the final state(s)."""
    a = _make(rng, dtype, cell, shape, *variant)
    douts = _douts(rng, cell, a, dtype)
    copies = [d.copy() for d in douts]
    got = _backward(cell, a, douts)
    want = _ref_backward(cell, a, douts)
    scale = np.sqrt(shape[0] * shape[1] * (shape[2] + shape[3])) * shape[1]
    for name, g, r in zip(_names(cell), got, want):
        if r is None:
            assert g is None, name
            continue
        close(g, r, scale=scale, err_msg=name)
    for d, c in zip(douts, copies):
        np.testing.assert_array_equal(d, c, err_msg="the gradients given must not change")


@pytest.mark.parametrize("cell", list(CELLS))
def test_backward_without_output_gradient(rng, dtype, close, cell):
    """dout=None (only the final state is used) equals a zero dout; dx=None skips dx."""
    shape = (3, 4, 3, 5)
    a = _make(rng, dtype, cell, shape)
    douts = _douts(rng, cell, a, dtype, with_dout=False)
    got = _backward(cell, a, douts, want_dx=False)
    want = _ref_backward(cell, a, douts)
    assert got[0] is None
    for name, g, r in list(zip(_names(cell), got, want))[1:]:
        close(g, r, scale=10.0, err_msg=name)


def _fd_case(rng, cell, shape, bias, init):
    """forward(*inputs) -> one flat array (out, h_n[, c_n]) and the matching backward,
    over the inputs that are not None."""
    a = _make(rng, np.float64, cell, shape, bias, init)
    keys = [k for k in ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh") if a[k] is not None]
    n, t, _ = a["x"].shape
    h = a["w_hh"].shape[1]

    def unpack(inputs):
        b = dict.fromkeys(a)
        b.update(zip(keys, inputs))
        return b

    def forward(*inputs):
        outs, _ = _forward(cell, unpack(inputs))
        return np.concatenate([o.ravel() for o in outs])

    def backward(r, *inputs):
        b = unpack(inputs)
        k = 3 if CELLS[cell][0] == "lstm" else 2
        sizes = [n * t * h] + [n * h] * (k - 1)
        parts = np.split(r, np.cumsum(sizes)[:-1])
        douts = [parts[0].reshape(n, t, h)] + [p.reshape(n, h) for p in parts[1:]]
        grads = dict(zip(["x", "h0"] + (["c0"] if k == 3 else []) +
                         ["w_ih", "w_hh", "b_ih", "b_hh"], _backward(cell, b, douts)))
        return [grads[k] for k in keys]

    return forward, backward, [a[k] for k in keys], keys


@pytest.mark.parametrize("case", [((1, 1, 3, 5), True, True), ((3, 3, 3, 5), True, True),
                                  ((3, 2, 3, 5), False, False), ((1, 3, 3, 5), True, False),
                                  ((11, 2, 3, 5), True, True)],
                         ids=["N1-T1", "N3-T3", "N3-nobias-noh0", "N1-noh0", "N11-T2"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_backward_matches_finite_differences(rng, cell, case):
    """float64 central differences of the kernels' own forward, for every input."""
    shape, bias, init = case
    forward, backward, inputs, keys = _fd_case(rng, cell, shape, bias, init)
    check_backward(forward, backward, inputs, rng, names=keys)


@pytest.mark.parametrize("cell", list(CELLS))
def test_final_state_into_strided_views(rng, dtype, close, cell):
    """h_n / c_n may be strided views (a slice of a caller's bigger state buffer): the
    same results as into fresh arrays (the recurrence runs on a contiguous copy)."""
    a = _make(rng, dtype, cell, (11, 3, 4, 6))
    want, _ = _forward(cell, a)
    got, _ = _forward(cell, a, strided_state=True)
    assert not got[1].flags.c_contiguous
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("cell", list(CELLS))
def test_does_not_depend_on_thread_count(rng, cell):
    """Forward and backward are bitwise the same with 1 and 2 threads (RNN, LSTM and GRU
    run blocks of batch rows in parallel; every sum keeps its order)."""
    import numba
    a = _make(rng, np.float32, cell, (37, 4, 6, 24))
    douts = _douts(rng, cell, a, np.float32)
    got = []
    old = numba.get_num_threads()
    try:
        for t in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(t)
            got.append((_forward(cell, a)[0], _backward(cell, a, douts)))
    finally:
        numba.set_num_threads(old)
    (o1, g1), (o2, g2) = got
    for x, y in zip(list(o1) + list(g1), list(o2) + list(g2)):
        if x is not None:
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("cell", list(CELLS))
def test_does_not_depend_on_the_tasks(rng, cell, monkeypatch):
    """The sequence kernels split the batch into tasks of whole row blocks (one per thread,
    kernels/recurrent.py's _groups) and take one of two tiles (_wide): 1, 2, 3 or 5 tasks
    over 37 rows (5 blocks of 8, or 7 of 6, with AVX-512), tasks of one block and of
    several, either tile, give bitwise the same results."""
    from fastnet.kernels import recurrent

    a = _make(rng, np.float32, cell, (37, 4, 6, 24))
    douts = _douts(rng, cell, a, np.float32)
    got = []
    for wide in (False, True):
        for groups in (1, 2, 3, 5):
            monkeypatch.setattr(recurrent, "_wide", lambda n, c, itemsize, w=wide: w)
            monkeypatch.setattr(recurrent, "_groups", lambda n, wide, wf, g=groups: g)
            got.append((_forward(cell, a)[0], _backward(cell, a, douts)))
    (o1, g1) = got[0]
    for o2, g2 in got[1:]:
        for x, y in zip(list(o1) + list(g1), list(o2) + list(g2)):
            if x is not None:
                np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("cell", list(CELLS))
def test_float32_in_float32_out(rng, cell):
    """float32 inputs give float32 outputs and gradients (no silent promotion)."""
    a = _make(rng, np.float32, cell, (2, 3, 3, 4))
    outs, saved = _forward(cell, a)
    assert all(o.dtype == np.float32 for o in outs)
    grads = _backward(cell, a, _douts(rng, cell, a, np.float32))
    assert all(g.dtype == np.float32 for g in grads if g is not None)


@pytest.mark.parametrize("case", SEQUENCE_COPY_CASES, ids=lambda c: "-".join(map(str, c)))
def test_sequence_copy_matches_reference(rng, dtype, case):
    """The window lands where the reference puts it, in either layout and time order; the
    rest of out is untouched (a copy: bitwise)."""
    n, t, co, cx, out_col, x_col, width, reverse, out_tf, x_tf = case
    x = rng.standard_normal((t, n, cx) if x_tf else (n, t, cx)).astype(dtype)
    out = rng.standard_normal((t, n, co) if out_tf else (n, t, co)).astype(dtype)
    want = ref.sequence_copy(out, x, out_col, x_col, width, reverse, out_tf, x_tf)
    kernel("sequence_copy")(out, x, out_col, x_col, width, reverse, out_tf, x_tf)
    np.testing.assert_array_equal(out, want)


def test_sequence_copy_refuses_a_window_past_the_features():
    out, x = np.zeros((2, 3, 4)), np.zeros((3, 2, 4))
    with pytest.raises(ValueError, match="out_col \\+ width"):
        kernel("sequence_copy")(out, x, 1, 0, 4, False, False, True)
    with pytest.raises(ValueError, match="first two axes"):
        kernel("sequence_copy")(out, x, 0, 0, 4, False, False, False)
