"""CUDA batch norm and layer norm kernels against the reference and the CPU kernels (the Residual block
with BatchNorm2D is in tests/layers/test_residual.py). Tiny shapes: in the simulator every GPU
thread is a Python thread."""
import numpy as np
import pytest

from fastnet.kernels import kernel
from tests import reference as ref

from ..cases import LAYER_NORM_SHAPES, NORM_SHAPES, cases_for

TOL = {np.dtype(np.float32): dict(rtol=3e-5, atol=3e-5),
       np.dtype(np.float64): dict(rtol=1e-12, atol=1e-12)}


def _inputs(rng, shape, dtype, affine=True):
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    c = shape[1]
    w = rng.uniform(0.5, 1.5, c).astype(dtype) if affine else None
    b = rng.standard_normal(c).astype(dtype) if affine else None
    running = (rng.standard_normal(c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype),
               np.array(3, np.int64))
    return x, w, b, running


def _gpu_forward(dev, host, garbage, x, w, b, running, training, momentum):
    c = x.shape[1]
    out, mean, invstd = garbage(x.shape, x.dtype), garbage((c,), x.dtype), garbage((c,), x.dtype)
    rm = rv = nbt = None
    if running is not None:
        rm, rv, nbt = dev(running[0]), dev(running[1]), dev(running[2])
    kernel("batch_norm_forward", "cuda")(
        out, mean, invstd, rm, rv, nbt, dev(x), None if w is None else dev(w),
        None if b is None else dev(b), training, momentum, 1e-5)
    got = [host(out), host(mean), host(invstd)]
    return got + ([None] * 3 if running is None else [host(rm), host(rv), host(nbt)])


# "l37" (3, 2, 37): 111 values per channel, several strides of the simulator's 32 threads
@pytest.mark.parametrize("case", cases_for(NORM_SHAPES, "cuda"))
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
def test_batch_norm_training_forward(rng, dtype, dev, host, garbage, case, affine, momentum):
    shape = NORM_SHAPES[case]
    x, w, b, running = _inputs(rng, shape, dtype, affine)
    got = _gpu_forward(dev, host, garbage, x, w, b, running, True, momentum)
    want = ref.batch_norm_forward(x, w, b, *running, True, momentum, 1e-5)
    for name, g, r in zip(["out", "mean", "invstd", "running_mean", "running_var"], got, want):
        assert g.dtype == dtype, name
        np.testing.assert_allclose(g, r, **TOL[dtype], err_msg=name)
    assert got[5] == 4 and got[5].dtype == np.int64


def test_batch_norm_eval_and_untracked(rng, dtype, dev, host, garbage):
    x, w, b, running = _inputs(rng, (2, 3, 4), dtype)
    got = _gpu_forward(dev, host, garbage, x, w, b, running, False, 0.1)
    np.testing.assert_allclose(got[0], ref.batch_norm_forward(x, w, b, *running, False, 0.1, 1e-5)[0],
                               **TOL[dtype])
    np.testing.assert_array_equal(got[3], running[0])
    assert got[5] == 3
    got = _gpu_forward(dev, host, garbage, x, w, b, None, True, 0.1)
    np.testing.assert_allclose(got[0], ref.batch_norm_forward(x, w, b, None, None, None, True, 0.1,
                                                              1e-5)[0], **TOL[dtype])


@pytest.mark.parametrize("case", cases_for(NORM_SHAPES, "cuda"))
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_batch_norm_backward(rng, dtype, dev, host, garbage, affine, case):
    shape = NORM_SHAPES[case]
    c = shape[1]
    x, w, b, _ = _inputs(rng, shape, dtype, affine)
    dout = rng.standard_normal(shape).astype(dtype)
    mean = np.empty(c, dtype)
    invstd = np.empty(c, dtype)
    kernel("batch_norm_forward")(np.empty_like(x), mean, invstd, None, None, None, x, w, b,
                                 True, 0.1, 1e-5)
    dx = garbage(shape, dtype)
    dw = garbage((c,), dtype) if affine else None
    db = garbage((c,), dtype) if affine else None
    kernel("batch_norm_backward", "cuda")(dx, dw, db, dev(dout), dev(x),
                                          None if w is None else dev(w), dev(mean), dev(invstd))
    rdx, rdw, rdb = ref.batch_norm_backward(dout, x, w, 1e-5)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-11)
    np.testing.assert_allclose(host(dx), rdx, **tol)
    if affine:
        np.testing.assert_allclose(host(dw), rdw, **tol)
        np.testing.assert_allclose(host(db), rdb, **tol)
    # and against the CPU kernel
    cdx, cdw, cdb = np.empty_like(x), np.empty(c, dtype), np.empty(c, dtype)
    kernel("batch_norm_backward")(cdx, cdw, cdb, dout, x, w, mean, invstd)
    np.testing.assert_allclose(host(dx), cdx, **tol)


# ---- layer norm over x (M, D) --------------------------------------------------------------

def _ln_inputs(rng, shape, dtype, has_w, has_b):
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    w = rng.uniform(0.5, 1.5, shape[1]).astype(dtype) if has_w else None
    b = rng.standard_normal(shape[1]).astype(dtype) if has_b else None
    return x, w, b


def _maybe(dev, a):
    return None if a is None else dev(a)


# every shape with weight and bias; without bias / without both on the first
@pytest.mark.parametrize("case, affine",
                         [(c, (True, True)) for c in cases_for(LAYER_NORM_SHAPES, "cuda")]
                         + [("m3-d5", (True, False)), ("m3-d5", (False, False))],
                         ids=lambda v: v if isinstance(v, str) else
                         {(True, True): "affine", (True, False): "weight-only"}.get(v, "plain"))
def test_layer_norm_forward_and_backward(rng, dtype, dev, host, garbage, case, affine):
    """Forward against the reference, backward against the reference and the CPU kernel,
    each gradient output also on its own (a frozen weight or bias)."""
    shape = LAYER_NORM_SHAPES[case]
    m, d = shape
    x, w, b = _ln_inputs(rng, shape, dtype, *affine)
    out, mean, rstd = garbage(shape, dtype), garbage((m,), dtype), garbage((m,), dtype)
    kernel("layer_norm_forward", "cuda")(out, mean, rstd, dev(x), _maybe(dev, w),
                                         _maybe(dev, b), 1e-5)
    want = ref.layer_norm_forward(x, w, b, 1e-5)
    for name, g, r in zip(["out", "mean", "rstd"], (out, mean, rstd), want):
        np.testing.assert_allclose(host(g), r, **TOL[dtype], err_msg=name)
    dout = rng.standard_normal(shape).astype(dtype)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-11)
    rdx, rdw, rdb = ref.layer_norm_backward(dout, x, w, 1e-5)
    cpu = [np.empty(shape, dtype), np.empty(d, dtype), np.empty(d, dtype)]
    kernel("layer_norm_backward")(*cpu, dout, x, w, host(mean), host(rstd))
    for want_out in [(True, True, True), (False, True, False), (False, False, True)]:
        outs = [garbage(s, dtype) if k else None
                for k, s in zip(want_out, (shape, (d,), (d,)))]
        kernel("layer_norm_backward", "cuda")(*outs, dev(dout), dev(x), _maybe(dev, w), mean,
                                              rstd)
        for name, g, r, c in zip(["dx", "dweight", "dbias"], outs, (rdx, rdw, rdb), cpu):
            if g is not None:
                np.testing.assert_allclose(host(g), r, **tol, err_msg=name)
                np.testing.assert_allclose(host(g), c, **tol, err_msg=name + " vs CPU")
