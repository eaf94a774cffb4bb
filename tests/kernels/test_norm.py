"""Batch norm kernels over x (N, C, L), then the layer norm kernels over x (M, D) (below):
batch_norm_forward(out, save_mean, save_invstd, running_mean, running_var,
num_batches_tracked, x, weight, bias, training, momentum, eps) and
batch_norm_backward(dx, dweight, dbias, dout, x, weight, save_mean, save_invstd).
torch.nn.functional.batch_norm semantics."""
import numpy as np
import pytest

from fastnet.kernels import kernel
from tests import reference as ref
from tests.gradcheck import check_backward

from .cases import LAYER_NORM_SHAPES, NORM_SHAPES

SHAPES = NORM_SHAPES
IDS = list(SHAPES)
TOL = {np.dtype(np.float32): dict(rtol=2e-5, atol=2e-5), np.dtype(np.float64): dict(rtol=1e-12, atol=1e-12)}


def _forward(x, weight, bias, running, training, momentum, eps=1e-5):
    """The kernel with garbage-filled outputs; running = (mean, var, nbt) or None
    (copied, then updated in place). -> (out, mean, invstd, running_mean, running_var, nbt)"""
    c = x.shape[1]
    out = np.full(x.shape, np.nan, x.dtype)
    mean, invstd = np.full(c, np.nan, x.dtype), np.full(c, np.nan, x.dtype)
    rm = rv = nbt = None
    if running is not None:
        rm, rv = running[0].copy(), running[1].copy()
        nbt = None if running[2] is None else np.array(running[2], np.int64)
    kernel("batch_norm_forward")(out, mean, invstd, rm, rv, nbt, x, weight, bias, training,
                                 momentum, eps)
    return out, mean, invstd, rm, rv, nbt


def _inputs(rng, shape, dtype, affine=True):
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    c = shape[1]
    w = rng.uniform(0.5, 1.5, c).astype(dtype) if affine else None
    b = rng.standard_normal(c).astype(dtype) if affine else None
    running = (rng.standard_normal(c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype),
               np.array(3, np.int64))
    return x, w, b, running


@pytest.mark.parametrize("shape", SHAPES.values(), ids=IDS)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
def test_training_forward_matches_reference(rng, dtype, shape, affine, momentum):
    """Batch statistics, normalised output and the running-statistic update (unbiased
    variance; momentum=None: 1 / num_batches_tracked after its increment)."""
    x, w, b, running = _inputs(rng, shape, dtype, affine)
    got = _forward(x, w, b, running, True, momentum)
    want = ref.batch_norm_forward(x, w, b, *running, True, momentum, 1e-5)
    for name, g, r in zip(["out", "mean", "invstd", "running_mean", "running_var"], got, want):
        assert g.dtype == dtype, name
        np.testing.assert_allclose(g, r, **TOL[dtype], err_msg=name)
    assert got[5] == 4 and got[5].dtype == np.int64 and got[5].shape == ()


@pytest.mark.parametrize("shape", [SHAPES["n2-c3-l5"], SHAPES["parallel-n8-c33-l130"]],
                         ids=["small", "parallel"])
def test_eval_forward_uses_running_statistics(rng, dtype, shape):
    x, w, b, running = _inputs(rng, shape, dtype)
    out, mean, invstd, rm, rv, nbt = _forward(x, w, b, running, False, 0.1)
    want = ref.batch_norm_forward(x, w, b, *running, False, 0.1, 1e-5)
    np.testing.assert_allclose(out, want[0], **TOL[dtype])
    np.testing.assert_array_equal(mean, running[0])
    np.testing.assert_array_equal(rm, running[0])  # untouched
    np.testing.assert_array_equal(rv, running[1])
    assert nbt == 3


def test_training_without_running_statistics(rng, dtype):
    """track_running_stats=False: batch statistics, nothing else to update."""
    x, w, b, _ = _inputs(rng, (3, 4, 6), dtype)
    out, mean, invstd, *_ = _forward(x, w, b, None, True, 0.1)
    want = ref.batch_norm_forward(x, w, b, None, None, None, True, 0.1, 1e-5)
    np.testing.assert_allclose(out, want[0], **TOL[dtype])
    np.testing.assert_allclose(invstd, want[2], **TOL[dtype])


def test_momentum_none_is_a_cumulative_average(rng):
    """Over k batches from a zero start (num_batches_tracked 0), momentum=None gives the
    plain mean of the batch means, as PyTorch."""
    c = 3
    running = (np.zeros(c), np.ones(c), np.array(0, np.int64))
    batches = [rng.standard_normal((4, c, 5)) + k for k in range(4)]
    for x in batches:
        _, _, _, rm, rv, nbt = _forward(x, None, None, running, True, None)
        running = (rm, rv, nbt)
    assert running[2] == 4
    np.testing.assert_allclose(running[0], np.mean([x.mean(axis=(0, 2)) for x in batches], axis=0),
                               rtol=1e-12)
    np.testing.assert_allclose(running[1], np.mean([x.transpose(1, 0, 2).reshape(c, -1).var(axis=1, ddof=1)
                                                    for x in batches], axis=0), rtol=1e-12)


def test_large_mean_does_not_cancel(dtype):
    """Values around 1e4 with unit spread: a one-pass E[x^2] - E[x]^2 would lose the
    variance in float32; two passes keep it."""
    r = np.random.default_rng(5)
    x = (1e4 + r.standard_normal((16, 2, 64))).astype(dtype)
    _, mean, invstd, *_ = _forward(x, None, None, None, True, 0.1)
    var = x.astype(np.float64).transpose(1, 0, 2).reshape(2, -1).var(axis=1)
    np.testing.assert_allclose(1 / invstd.astype(np.float64) ** 2 - 1e-5, var, rtol=1e-3)


def _backward(dout, x, w, mean, invstd, want_dx=True):
    dx = np.full(x.shape, np.nan, x.dtype) if want_dx else None
    dw = np.full(x.shape[1], np.nan, x.dtype) if w is not None else None
    db = np.full(x.shape[1], np.nan, x.dtype) if w is not None else None
    kernel("batch_norm_backward")(dx, dw, db, dout, x, w, mean, invstd)
    return dx, dw, db


@pytest.mark.parametrize("shape", SHAPES.values(), ids=IDS)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_backward_matches_reference(rng, dtype, shape, affine):
    x, w, b, _ = _inputs(rng, shape, dtype, affine)
    _, mean, invstd, *_ = _forward(x, w, b, None, True, 0.1)
    dout = rng.standard_normal(shape).astype(dtype)
    dx, dw, db = _backward(dout, x, w, mean, invstd)
    rdx, rdw, rdb = ref.batch_norm_backward(dout, x, w, 1e-5)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-11)
    np.testing.assert_allclose(dx, rdx, **tol, err_msg="dx")
    if affine:
        np.testing.assert_allclose(dw, rdw, **tol, err_msg="dweight")
        np.testing.assert_allclose(db, rdb, **tol, err_msg="dbias")
    dx2, dw2, db2 = _backward(dout, x, w, mean, invstd, want_dx=False)
    assert dx2 is None
    if affine:  # another compiled variant: the same sums, up to vectorised reassociation
        np.testing.assert_allclose(dw2, dw, **tol)
        np.testing.assert_allclose(db2, db, **tol)


@pytest.mark.parametrize("shape", [(3, 2, 4), (5, 3, 1), (1, 2, 3)], ids=["l4", "features", "batch1"])
def test_backward_matches_finite_differences(rng, shape):
    x, w, b, _ = _inputs(rng, shape, np.float64)

    def forward(x, w, b):
        return _forward(x, w, b, None, True, 0.1)[0]

    def backward(dout, x, w, b):
        _, mean, invstd, *_ = _forward(x, w, b, None, True, 0.1)
        return _backward(dout, x, w, mean, invstd)

    check_backward(forward, backward, [x, w, b], rng, names=["x", "weight", "bias"])


def test_float32_stays_float32(rng):
    x, w, b, running = _inputs(rng, (4, 3, 7), np.float32)
    out, mean, invstd, rm, rv, _ = _forward(x, w, b, running, True, None)
    assert {a.dtype for a in (out, mean, invstd, rm, rv)} == {np.dtype(np.float32)}


def test_deterministic(rng):
    x, w, b, running = _inputs(rng, (8, 33, 130), np.float32)
    a = _forward(x, w, b, running, True, 0.1)
    for _ in range(2):
        for g, r in zip(_forward(x, w, b, running, True, 0.1), a):
            np.testing.assert_array_equal(g, r)


# ---- layer norm: layer_norm_forward(out, save_mean, save_rstd, x, weight, bias, eps),
# layer_norm_backward(dx, dweight, dbias, dout, x, weight, save_mean, save_rstd) over x (M, D)

LN_SHAPES = LAYER_NORM_SHAPES
AFFINE = {"affine": (True, True), "weight-only": (True, False), "plain": (False, False)}


def _ln_inputs(rng, shape, dtype, affine="affine"):
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    has_w, has_b = AFFINE[affine]
    w = rng.uniform(0.5, 1.5, shape[1]).astype(dtype) if has_w else None
    b = rng.standard_normal(shape[1]).astype(dtype) if has_b else None
    return x, w, b


def _ln_forward(x, w, b, eps=1e-5):
    m = x.shape[0]
    out = np.full(x.shape, np.nan, x.dtype)
    mean, rstd = np.full(m, np.nan, x.dtype), np.full(m, np.nan, x.dtype)
    kernel("layer_norm_forward")(out, mean, rstd, x, w, b, eps)
    return out, mean, rstd


def _ln_backward(dout, x, w, mean, rstd, want=(True, True, True)):
    d = x.shape[1]
    dx = np.full(x.shape, np.nan, x.dtype) if want[0] else None
    dw = np.full(d, np.nan, x.dtype) if want[1] else None
    db = np.full(d, np.nan, x.dtype) if want[2] else None
    kernel("layer_norm_backward")(dx, dw, db, dout, x, w, mean, rstd)
    return dx, dw, db


@pytest.mark.parametrize("shape", LN_SHAPES.values(), ids=list(LN_SHAPES))
@pytest.mark.parametrize("affine", list(AFFINE))
def test_layer_norm_forward_matches_reference(rng, dtype, shape, affine):
    x, w, b = _ln_inputs(rng, shape, dtype, affine)
    got = _ln_forward(x, w, b)
    want = ref.layer_norm_forward(x, w, b, 1e-5)
    for name, g, r in zip(["out", "mean", "rstd"], got, want):
        assert g.dtype == dtype, name
        np.testing.assert_allclose(g, r, **TOL[dtype], err_msg=name)


@pytest.mark.parametrize("shape", LN_SHAPES.values(), ids=list(LN_SHAPES))
@pytest.mark.parametrize("affine", ["affine", "plain"])
def test_layer_norm_backward_matches_reference(rng, dtype, shape, affine):
    x, w, b = _ln_inputs(rng, shape, dtype, affine)
    _, mean, rstd = _ln_forward(x, w, b)
    dout = rng.standard_normal(shape).astype(dtype)
    dx, dw, db = _ln_backward(dout, x, w, mean, rstd)
    rdx, rdw, rdb = ref.layer_norm_backward(dout, x, w, 1e-5)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-11)
    for name, g, r in zip(["dx", "dweight", "dbias"], (dx, dw, db), (rdx, rdw, rdb)):
        assert g.dtype == dtype, name
        np.testing.assert_allclose(g, r, **tol, err_msg=name)
    # each output on its own (a frozen weight or bias, dx of a first layer): the same bits
    for want in [(True, False, False), (False, True, False), (False, False, True)]:
        got = _ln_backward(dout, x, w, mean, rstd, want)
        for g, full in zip(got, (dx, dw, db)):
            if g is not None:
                np.testing.assert_array_equal(g, full)


@pytest.mark.parametrize("shape", [(3, 4), (1, 5), (2, 1)], ids=["m3-d4", "one-row", "d1"])
def test_layer_norm_backward_matches_finite_differences(rng, shape):
    x, w, b = _ln_inputs(rng, shape, np.float64)

    def forward(x, w, b):
        return _ln_forward(x, w, b)[0]

    def backward(dout, x, w, b):
        _, mean, rstd = _ln_forward(x, w, b)
        return _ln_backward(dout, x, w, mean, rstd)

    check_backward(forward, backward, [x, w, b], rng, names=["x", "weight", "bias"])


def test_layer_norm_large_mean_does_not_cancel(dtype):
    r = np.random.default_rng(6)
    x = (1e4 + r.standard_normal((5, 256))).astype(dtype)
    _, mean, rstd = _ln_forward(x, None, None)
    var = x.astype(np.float64).var(axis=1)
    np.testing.assert_allclose(1 / rstd.astype(np.float64) ** 2 - 1e-5, var, rtol=1e-3)


def test_layer_norm_is_independent_of_the_thread_count(rng, monkeypatch):
    """Each row on one thread, the weight sums over fixed blocks of rows: the parallel
    build gives the same bits on one thread as on all of them."""
    import numba

    from fastnet.kernels import _jit

    monkeypatch.setattr(_jit, "PARALLEL_MIN_WORK", 0)
    x, w, b = _ln_inputs(rng, LN_SHAPES["parallel-m130-d513"], np.float32)
    dout = rng.standard_normal(x.shape).astype(np.float32)

    def run():
        out, mean, rstd = _ln_forward(x, w, b)
        return (out, mean, rstd) + _ln_backward(dout, x, w, mean, rstd)

    threads = numba.get_num_threads()
    everyone = run()
    try:
        numba.set_num_threads(1)
        one = run()
    finally:
        numba.set_num_threads(threads)
    for g, r in zip(one, everyone):
        np.testing.assert_array_equal(g, r)
