"""Loss kernels (mean reduction, fused gradient): softmax_cross_entropy_forward(grad,
logits, labels) and mse_forward(grad, pred, target) return the loss as a Python float
and overwrite grad unless it is None."""
import numba
import numpy as np
import pytest

from fastnet.kernels import kernel
from tests import reference as ref
from tests.gradcheck import numerical_grad

from .cases import CE_SHAPES, MSE_SHAPES

# one vector of logits per row or longer rows; 130 rows: several blocks of 16, one partial
# mse sums in 4096-element blocks: one partial block, one full block plus a bit, several


def _ce(logits, labels, with_grad=True):
    grad = np.full_like(logits, 123.0) if with_grad else None
    loss = kernel("softmax_cross_entropy_forward")(grad, logits, labels)
    return loss, grad


def _mse(pred, target, with_grad=True):
    grad = np.full_like(pred, 123.0) if with_grad else None
    loss = kernel("mse_forward")(grad, pred, target)
    return loss, grad


@pytest.mark.parametrize("label_dtype", [np.int64, np.int32])
@pytest.mark.parametrize("shape", CE_SHAPES, ids=str)
def test_cross_entropy_matches_reference(rng, dtype, tolerance, close, shape, label_dtype):
    """Loss (a Python float) and gradient (softmax - onehot) / N against the reference."""
    n, c = shape
    logits = (2 * rng.standard_normal(shape)).astype(dtype)
    labels = rng.integers(0, c, n).astype(label_dtype)
    loss, grad = _ce(logits, labels)
    rloss, rgrad = ref.softmax_cross_entropy(logits, labels)
    assert type(loss) is float
    rtol, atol = tolerance
    np.testing.assert_allclose(loss, rloss, rtol=rtol, atol=atol)
    close(grad, rgrad)


def test_cross_entropy_grad_none(rng, dtype, tolerance):
    """grad=None is accepted and returns the same loss (up to rounding)."""
    logits = rng.standard_normal((9, 4)).astype(dtype)
    labels = rng.integers(0, 4, 9)
    loss_none, _ = _ce(logits, labels, with_grad=False)
    rtol, atol = tolerance
    assert type(loss_none) is float
    np.testing.assert_allclose(loss_none, ref.softmax_cross_entropy(logits, labels)[0],
                               rtol=rtol, atol=atol)


@pytest.mark.parametrize("shape", [(3, 4), (1, 3), (2, 1)], ids=str)
def test_cross_entropy_grad_matches_finite_differences(rng, shape):
    """float64 central differences of the kernel's own loss."""
    logits = rng.standard_normal(shape)
    labels = rng.integers(0, shape[1], shape[0])
    _, grad = _ce(logits, labels)
    num = numerical_grad(lambda z: _ce(z, labels, with_grad=False)[0], logits.copy())
    np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-8)


def test_cross_entropy_extreme_logits(dtype, tolerance, close):
    """Logits of +-1e4: loss and gradient finite and correct (e.g. a confident right
    answer costs 0, a confident wrong one 2e4)."""
    logits = np.array([[1e4, -1e4, 0.0],
                       [1e4, -1e4, 0.0],
                       [-1e4, -1e4, -1e4],
                       [1e4, 1e4, -1e4]], dtype)
    labels = np.array([0, 1, 2, 0])
    loss, grad = _ce(logits, labels)
    rloss, rgrad = ref.softmax_cross_entropy(logits, labels)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    rtol, atol = tolerance
    np.testing.assert_allclose(loss, rloss, rtol=rtol, atol=atol)
    # per-row losses: 0, 2e4, log 3, log 2
    for row, want in [(0, 0.0), (1, 2e4), (2, np.log(3.0)), (3, np.log(2.0))]:
        one, _ = _ce(logits[row:row + 1], labels[row:row + 1], with_grad=False)
        np.testing.assert_allclose(one, want, rtol=rtol, atol=atol, err_msg=f"loss of row {row}")
    close(grad, rgrad, err_msg="gradient")


@pytest.mark.parametrize("c", [10, 21])
def test_cross_entropy_nan_logits_give_nan(dtype, c):
    """A NaN logit anywhere in a row (not only at its label) makes the loss NaN: it is
    not skipped by the row max (rows of one vector and longer)."""
    logits = np.zeros((3, c), dtype)
    logits[1, c - 4] = np.nan
    loss, grad = _ce(logits, np.array([0, 0, 0]))
    assert np.isnan(loss)
    assert np.all(np.isnan(grad[1])) and np.all(np.isfinite(grad[[0, 2]]))


@pytest.mark.parametrize("bad", [-1, 10, 2**40])
def test_cross_entropy_label_out_of_range(rng, bad):
    """A label outside [0, C) raises ValueError naming it, before grad is written."""
    logits = rng.standard_normal((20, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 20)
    labels[13] = bad
    grad = np.full_like(logits, 123.0)
    with pytest.raises(ValueError, match=rf"label {bad} is out of range for 10 classes"):
        kernel("softmax_cross_entropy_forward")(grad, logits, labels)
    assert np.all(grad == 123.0)


def test_cross_entropy_does_not_depend_on_the_thread_count(rng):
    """The loss sums fixed blocks of rows, then the blocks in order: the serial and the
    parallel build give the same bits."""
    from fastnet.kernels import losses
    logits = rng.standard_normal((1000, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 1000)
    g1, g2 = np.empty_like(logits), np.empty_like(logits)
    a = losses._softmax_cross_entropy[True].serial(g1, logits, labels)
    b = losses._softmax_cross_entropy[True].parallel(g2, logits, labels)
    assert a == b
    np.testing.assert_array_equal(g1, g2)


@pytest.mark.parametrize("shape", MSE_SHAPES, ids=str)
def test_mse_matches_reference(rng, dtype, tolerance, close, shape):
    """Loss (a Python float) and gradient 2 (pred - target) / size against the reference."""
    pred = rng.standard_normal(shape).astype(dtype)
    target = rng.standard_normal(shape).astype(dtype)
    loss, grad = _mse(pred, target)
    rloss, rgrad = ref.mse(pred, target)
    assert type(loss) is float
    rtol, atol = tolerance
    np.testing.assert_allclose(loss, rloss, rtol=rtol, atol=atol)
    close(grad, rgrad, scale=1.0 / pred.size)
    # grad=None may compile to a differently vectorised sum: equal up to rounding
    loss_none, _ = _mse(pred, target, with_grad=False)
    assert type(loss_none) is float
    np.testing.assert_allclose(loss_none, rloss, rtol=rtol, atol=atol, err_msg="grad=None")


def test_mse_grad_matches_finite_differences(rng):
    """float64 central differences of the kernel's own loss."""
    pred, target = rng.standard_normal((3, 5)), rng.standard_normal((3, 5))
    _, grad = _mse(pred, target)
    num = numerical_grad(lambda p: _mse(p, target, with_grad=False)[0], pred.copy())
    np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-9)


def test_losses_do_not_depend_on_thread_count(rng):
    """The loss is bitwise the same with 1 and 2 Numba threads (fixed-block sums)."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 Numba threads")
    logits = rng.standard_normal((1000, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 1000)
    pred = rng.standard_normal(3 * 4096 + 17).astype(np.float32)
    target = rng.standard_normal(pred.shape).astype(np.float32)
    saved = numba.get_num_threads()
    results = []
    try:
        for t in (1, 2):
            numba.set_num_threads(t)
            results.append((_ce(logits, labels)[0], _mse(pred, target)[0]))
    finally:
        numba.set_num_threads(saved)
    assert results[0] == results[1]
