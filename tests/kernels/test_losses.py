"""Loss kernels (mean reduction, fused gradient): softmax_cross_entropy_forward(grad,
logits, labels) and mse_forward(grad, pred, target) return the loss as a Python float
and overwrite grad unless it is None."""
import numba
import numpy as np
import pytest

from fastnet.kernels import kernel
from tests import reference as ref
from tests.gradcheck import check_backward, numerical_grad

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


# ---- the losses with PyTorch's arguments (cross_entropy, bce_with_logits, pointwise_loss) ---

from fastnet.kernels import losses as _losses  # noqa: E402

from .cases import BCE_SHAPES, CE_GENERAL_SHAPES, POINTWISE_SHAPES  # noqa: E402



@pytest.fixture
def serial_f64(kernel_build):
    """The float64 tests of these kernels on the serial build only: every parallel member
    costs ~3 s of compilation per dtype, and the float32 tests run both builds (the
    parallel float64 items are deselected at collection: tests/kernels/conftest.py)."""


CE_OPTIONS = {  # (weight?, ignore_index, label_smoothing, log_probs)
    "plain": (False, -100, 0.0, False),
    "weight-ignore": (True, 1, 0.0, False),
    "smooth-weight": (True, -100, 0.3, False),
    "nll-weight": (True, -100, 0.0, True),
}
REDUCTIONS = ("mean", "sum", "none")


def _ce_general(logits, labels, weight, ignore, eps, log_probs, reduction):
    none = reduction == "none"
    out = np.full(logits.shape[0], 123.0, logits.dtype) if none else None
    grad = None if none else np.full_like(logits, 123.0)
    loss = kernel("cross_entropy_forward")(out, grad, logits, labels, weight, ignore, eps,
                                           log_probs, reduction)
    if none:
        assert loss is None
        grad = np.full_like(logits, 123.0)
        kernel("cross_entropy_backward")(grad, np.ones_like(out), logits, labels, weight,
                                         ignore, eps, log_probs)
        return out, grad
    assert type(loss) is float
    return loss, grad


def _ce_inputs(rng, shape, dtype, opt):
    n, c = shape
    has_w, ignore, eps, log_probs = CE_OPTIONS[opt]
    logits = (2 * rng.standard_normal(shape)).astype(dtype)
    labels = rng.integers(0, c, n)
    labels[0] = ignore if opt != "plain" else labels[0]
    weight = (rng.random(c) + 0.5).astype(dtype) if has_w else None
    return logits, labels, weight, ignore, eps, log_probs


@pytest.mark.usefixtures("serial_f64")
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("opt", list(CE_OPTIONS))
@pytest.mark.parametrize("shape", CE_GENERAL_SHAPES, ids=str)
def test_cross_entropy_general_matches_reference(rng, dtype, tolerance, close, shape, opt,
                                                  reduction):
    """Per-row losses ("none", its backward given ones) or the reduced loss and its
    gradient against the reference's target-distribution form."""
    args = _ce_inputs(rng, shape, dtype, opt)
    loss, grad = _ce_general(*args, reduction)
    rloss, rgrad = ref.cross_entropy(*args[:2], args[2], args[3], args[4], args[5], reduction)
    rtol, atol = tolerance
    np.testing.assert_allclose(loss, rloss, rtol=rtol, atol=atol * shape[0])
    close(grad, rgrad)


@pytest.mark.usefixtures("serial_f64")
@pytest.mark.parametrize("opt", list(CE_OPTIONS))
def test_cross_entropy_general_backward_matches_finite_differences(rng, opt):
    """cross_entropy_backward(dout) against float64 central differences of the forward's
    per-row losses (check_backward: sum(out * R))."""
    logits, labels, weight, ignore, eps, log_probs = _ce_inputs(rng, (4, 3), np.float64, opt)

    def forward(z):
        out = np.empty(4)
        kernel("cross_entropy_forward")(out, None, z, labels, weight, ignore, eps, log_probs,
                                        "none")
        return out

    def backward(dout, z):
        g = np.empty_like(z)
        kernel("cross_entropy_backward")(g, dout, z, labels, weight, ignore, eps, log_probs)
        return [g]

    check_backward(forward, backward, [logits], rng)


@pytest.mark.usefixtures("serial_f64")
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_general_grad_matches_finite_differences(rng, reduction):
    """The fused gradient of the reduced loss (weights, ignore_index, smoothing)."""
    logits, labels, weight, _, _, _ = _ce_inputs(rng, (4, 3), np.float64, "weight-ignore")
    args = (labels, weight, 1, 0.2, False, reduction)
    _, grad = _ce_general(logits, *args)
    num = numerical_grad(lambda z: kernel("cross_entropy_forward")(
        None, None, z, *args), logits.copy())
    np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-8)


@pytest.mark.usefixtures("serial_f64")
def test_cross_entropy_general_all_ignored():
    """mean over no target: NaN, gradient 0 (PyTorch's); sum: 0."""
    logits, labels = np.ones((2, 3), np.float32), np.full(2, -100)
    loss, grad = _ce_general(logits, labels, None, -100, 0.0, False, "mean")
    assert np.isnan(loss) and np.all(grad == 0)
    loss, grad = _ce_general(logits, labels, None, -100, 0.0, False, "sum")
    assert loss == 0 and np.all(grad == 0)


@pytest.mark.usefixtures("serial_f64")
def test_cross_entropy_general_bad_label_writes_nothing(rng):
    logits = rng.standard_normal((20, 4))
    labels = rng.integers(0, 4, 20)
    labels[7] = 4
    grad, out = np.full_like(logits, 123.0), np.full(20, 123.0)
    with pytest.raises(ValueError, match="label 4 is out of range for 4 classes"):
        _losses.cross_entropy_forward(out, grad, logits, labels, None, -100, 0.0, False, "mean")
    assert np.all(grad == 123.0) and np.all(out == 123.0)


def _bce_inputs(rng, shape, dtype):
    x = (3 * rng.standard_normal(shape)).astype(dtype)
    x.flat[0] = 1e4 if x.size > 1 else x.flat[0]
    target = rng.random(shape).astype(dtype)
    weight = rng.random(shape).astype(dtype)
    pos_weight = (2 * rng.random(shape[1])).astype(dtype)
    return x, target, weight, pos_weight


def _run(op, x, reduction, *args):
    """(loss or out, gradient; for "none" the backward's of ones) of a forward op."""
    none = reduction == "none"
    out = np.full_like(x, 123.0) if none else None
    grad = None if none else np.full_like(x, 123.0)
    loss = kernel(op + "_forward")(out, grad, x, *args[:-1], reduction) if args[-1] is None \
        else kernel(op + "_forward")(out, grad, x, *args, reduction)
    if none:
        assert loss is None
        grad = np.full_like(x, 123.0)
        extra = args[:-1] if args[-1] is None else args
        kernel(op + "_backward")(grad, np.ones_like(x), x, *extra)
        return out, grad
    assert type(loss) is float
    return loss, grad


@pytest.mark.usefixtures("serial_f64")
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weights", [False, True])
@pytest.mark.parametrize("shape", BCE_SHAPES, ids=str)
def test_bce_with_logits_matches_reference(rng, dtype, tolerance, close, shape, weights,
                                           reduction):
    x, target, weight, pos_weight = _bce_inputs(rng, shape, dtype)
    if not weights:
        weight = pos_weight = None
    loss, grad = _run("bce_with_logits", x, reduction, target, weight, pos_weight, None)
    rloss, rgrad = ref.bce_with_logits(x, target, weight, pos_weight, reduction)
    rtol, atol = tolerance
    np.testing.assert_allclose(loss, rloss, rtol=rtol, atol=atol * x.size)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))
    close(grad, rgrad)


@pytest.mark.usefixtures("serial_f64")
def test_bce_with_logits_backward_matches_finite_differences(rng):
    x, target, weight, pos_weight = _bce_inputs(rng, (3, 2), np.float64)
    x.flat[0] = 0.5

    def forward(z):
        out = np.empty_like(z)
        kernel("bce_with_logits_forward")(out, None, z, target, weight, pos_weight, "none")
        return out

    def backward(dout, z):
        g = np.empty_like(z)
        kernel("bce_with_logits_backward")(g, dout, z, target, weight, pos_weight)
        return [g]

    check_backward(forward, backward, [x], rng)


POINTWISE = [("l1", 1.0), ("mse", 1.0), ("smooth_l1", 0.5), ("huber", 0.7)]


@pytest.mark.usefixtures("serial_f64")
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss_beta", POINTWISE, ids=str)
@pytest.mark.parametrize("shape", POINTWISE_SHAPES, ids=str)
def test_pointwise_loss_matches_reference(rng, dtype, tolerance, close, shape, loss_beta,
                                          reduction):
    """l1 / mse / smooth_l1 / huber with the kinks hit exactly (d = 0, d = +-beta)."""
    name, beta = loss_beta
    pred = rng.standard_normal(shape).astype(dtype)
    target = rng.standard_normal(shape).astype(dtype)
    if pred.size >= 3:
        target.flat[0] = pred.flat[0]
        target.flat[1] = pred.flat[1] - dtype.type(beta)
        target.flat[2] = pred.flat[2] + dtype.type(beta)
    loss, grad = _run("pointwise_loss", pred, reduction, target, name, beta)
    rloss, rgrad = ref.pointwise_loss(pred, target, name, beta, reduction)
    rtol, atol = tolerance
    np.testing.assert_allclose(loss, rloss, rtol=rtol, atol=atol * 10)
    close(grad, rgrad, scale=1.0 / pred.size if reduction == "mean" else 1.0)


@pytest.mark.usefixtures("serial_f64")
@pytest.mark.parametrize("loss_beta", POINTWISE, ids=str)
def test_pointwise_loss_backward_matches_finite_differences(rng, loss_beta):
    name, beta = loss_beta
    pred, target = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))

    def forward(p):
        out = np.empty_like(p)
        kernel("pointwise_loss_forward")(out, None, p, target, name, beta, "none")
        return out

    def backward(dout, p):
        g = np.empty_like(p)
        kernel("pointwise_loss_backward")(g, dout, p, target, name, beta)
        return [g]

    check_backward(forward, backward, [pred], rng)


def test_general_losses_do_not_depend_on_the_thread_count(rng):
    """Fixed blocks, then the blocks in order: the same bits with 1 and 2 Numba threads."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 Numba threads")
    logits = rng.standard_normal((1000, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 1000)
    weight = rng.random(10).astype(np.float32)
    pred = rng.standard_normal(3 * 4096 + 17).astype(np.float32)
    target = rng.standard_normal(pred.shape).astype(np.float32)
    x2, t2 = pred.reshape(-1, 1), rng.random((pred.size, 1)).astype(np.float32)
    saved = numba.get_num_threads()
    runs = []
    try:
        for t in (1, 2):
            numba.set_num_threads(t)
            runs.append(_ce_general(logits, labels, weight, -100, 0.1, False, "mean")
                        + _run("pointwise_loss", pred, "sum", target, "huber", 0.5)
                        + _run("bce_with_logits", x2, "mean", t2, None, None, None))
    finally:
        numba.set_num_threads(saved)
    for u, v in zip(*runs):
        np.testing.assert_array_equal(u, v)
