"""CUDA loss kernels (mean reduction, fused gradient): softmax_cross_entropy_forward(grad,
logits, labels) and mse_forward(grad, pred, target) return the loss as a DeviceScalar
(left on the device until read) and overwrite grad unless it is None."""
import numpy as np
import pytest

from fastnet.kernels import _kernel, kernel
from fastnet.kernels.cuda._launch import DeviceScalar
from tests import reference as ref
from tests.gradcheck import numerical_grad

from ..cases import CE_SHAPES, MSE_SHAPES, cases_for

# (shape, label dtype): one class, one row, several blocks of rows, narrow label dtypes
# each shape with one label dtype, in turn (uint8 needs C <= 256)
LABEL_DTYPES = (np.int64, np.int32, np.uint8)
CE_CASES = [(shape, LABEL_DTYPES[i % 3]) for i, shape in enumerate(cases_for(CE_SHAPES, "cuda"))]


@pytest.fixture
def ce(dev, host, garbage):
    """ce(logits, labels, with_grad=True, raw=False) -> (DeviceScalar, grad on the host |
    None); ``raw``: the launcher without kernel()'s checks"""
    def run(logits, labels, with_grad=True, raw=False):
        grad = garbage(logits.shape, logits.dtype) if with_grad else None
        loss = (_kernel if raw else kernel)("softmax_cross_entropy_forward", "cuda")(
            grad, dev(logits), dev(labels))
        return loss, (host(grad) if with_grad else None)
    return run


@pytest.fixture
def mse(dev, host, garbage):
    """mse(pred, target, with_grad=True) -> (DeviceScalar, grad on the host | None)"""
    def run(pred, target, with_grad=True):
        grad = garbage(pred.shape, pred.dtype) if with_grad else None
        loss = kernel("mse_forward", "cuda")(grad, dev(pred), dev(target))
        return loss, (host(grad) if with_grad else None)
    return run


@pytest.mark.parametrize("shape, label_dtype", CE_CASES, ids=str)
def test_cross_entropy_matches_reference_and_cpu(rng, dtype, tolerance, close, ce, shape, label_dtype):
    """The loss, a DeviceScalar, and the gradient (softmax - onehot) / N match the
    reference and the CPU kernel; grad=None gives the same loss."""
    n, c = shape
    logits = (2 * rng.standard_normal(shape)).astype(dtype)
    labels = rng.integers(0, c, n).astype(label_dtype)
    loss, grad = ce(logits, labels)
    assert isinstance(loss, DeviceScalar)
    rloss, rgrad = ref.softmax_cross_entropy(logits, labels)
    rtol, atol = tolerance
    np.testing.assert_allclose(float(loss), rloss, rtol=rtol, atol=atol)
    close(grad, rgrad)
    cpu_grad = np.empty_like(logits)
    cpu_loss = kernel("softmax_cross_entropy_forward", "cpu")(cpu_grad, logits, labels)
    np.testing.assert_allclose(float(loss), cpu_loss, rtol=rtol, atol=atol)
    close(grad, cpu_grad)
    loss_none, _ = ce(logits, labels, with_grad=False)
    np.testing.assert_allclose(float(loss_none), rloss, rtol=rtol, atol=atol)


@pytest.mark.parametrize("shape", [(2, 3), (2, 1), (1, 9)], ids=str)
def test_cross_entropy_grad_matches_finite_differences(rng, ce, shape):
    """float64 central differences of the CUDA kernel's own loss."""
    logits = rng.standard_normal(shape)
    labels = rng.integers(0, shape[1], shape[0])
    _, grad = ce(logits, labels)
    num = numerical_grad(lambda z: float(ce(z, labels, with_grad=False)[0]), logits.copy())
    np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-8)


def test_cross_entropy_extreme_logits(dtype, tolerance, close, ce):
    """Logits of +-1e4: loss and gradient finite and correct (a confident right answer
    costs 0, a confident wrong one 2e4)."""
    logits = np.array([[1e4, -1e4, 0.0],
                       [1e4, -1e4, 0.0],
                       [-1e4, -1e4, -1e4],
                       [1e4, 1e4, -1e4]], dtype)
    labels = np.array([0, 1, 2, 0])
    loss, grad = ce(logits, labels)
    rloss, rgrad = ref.softmax_cross_entropy(logits, labels)
    assert np.isfinite(float(loss)) and np.all(np.isfinite(grad))
    rtol, atol = tolerance
    np.testing.assert_allclose(float(loss), rloss, rtol=rtol, atol=atol)
    for row, want in [(0, 0.0), (1, 2e4), (2, np.log(3.0)), (3, np.log(2.0))]:
        one, _ = ce(logits[row:row + 1], labels[row:row + 1], with_grad=False)
        np.testing.assert_allclose(float(one), want, rtol=rtol, atol=atol, err_msg=f"loss of row {row}")
    close(grad, rgrad, err_msg="gradient")


@pytest.mark.parametrize("label_dtype", [np.int64, np.uint8])
def test_cross_entropy_label_out_of_range(rng, ce, label_dtype):
    """A label outside [0, C) is not read as an index: the launch succeeds, the bad rows'
    gradient is NaN (the others are right), and reading the loss raises ValueError. (The
    raw launcher: kernel() refuses such labels before the launch, tests/kernels/cuda/
    test_checked.py.)"""
    logits = rng.standard_normal((4, 3)).astype(np.float32)
    labels = np.array([0, 3, 2, 200 if label_dtype == np.uint8 else -1], label_dtype)
    loss, grad = ce(logits, labels, raw=True)
    with pytest.raises(ValueError, match="2 label.*out of range for 3 classes"):
        float(loss)
    assert np.all(np.isnan(grad[[1, 3]]))
    good = [0, 2]
    _, rgrad = ref.softmax_cross_entropy(logits[good], labels[good])
    np.testing.assert_allclose(grad[good], rgrad * len(good) / len(labels), rtol=1e-5, atol=1e-6)
    loss_none, _ = ce(logits, labels, with_grad=False, raw=True)
    with pytest.raises(ValueError, match="out of range"):
        loss_none.item()


@pytest.mark.parametrize("shape", cases_for(MSE_SHAPES, "cuda"), ids=str)
def test_mse_matches_reference_and_cpu(rng, dtype, tolerance, close, mse, shape):
    """Loss (a DeviceScalar) and gradient 2 (pred - target) / size against the reference
    and the CPU kernel; grad=None gives the same loss."""
    pred = rng.standard_normal(shape).astype(dtype)
    target = rng.standard_normal(shape).astype(dtype)
    loss, grad = mse(pred, target)
    assert isinstance(loss, DeviceScalar)
    rloss, rgrad = ref.mse(pred, target)
    rtol, atol = tolerance
    np.testing.assert_allclose(float(loss), rloss, rtol=rtol, atol=atol)
    close(grad, rgrad, scale=1.0 / pred.size)
    cpu_grad = np.empty_like(pred)
    cpu_loss = kernel("mse_forward", "cpu")(cpu_grad, pred, target)
    np.testing.assert_allclose(float(loss), cpu_loss, rtol=rtol, atol=atol)
    close(grad, cpu_grad, scale=1.0 / pred.size)
    loss_none, _ = mse(pred, target, with_grad=False)
    assert float(loss_none) == float(loss)  # the same partial sums in the same order


def test_mse_grad_matches_finite_differences(rng, mse):
    """float64 central differences of the CUDA kernel's own loss."""
    pred, target = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    _, grad = mse(pred, target)
    num = numerical_grad(lambda p: float(mse(p, target, with_grad=False)[0]), pred.copy())
    np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-9)


def test_losses_are_deterministic(rng, ce, mse):
    """The same inputs give bitwise the same loss (fixed-order tree reductions, no float
    atomics), and a DeviceScalar reads like a float."""
    logits = rng.standard_normal((40, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 40)
    pred = rng.standard_normal(301).astype(np.float32)
    target = rng.standard_normal(301).astype(np.float32)
    a = (float(ce(logits, labels)[0]), float(mse(pred, target)[0]))
    loss, _ = mse(pred, target)
    assert (float(ce(logits, labels)[0]), float(loss)) == a
    assert loss == a[1] and f"{loss:.3f}" == f"{a[1]:.3f}" and loss + 1 == a[1] + 1


# ---- the losses with PyTorch's arguments: against the reference and the CPU kernels -------

from .. import test_losses as cpu  # noqa: E402

CE_OPTIONS = list(cpu.CE_OPTIONS)


def _on_cuda(op, dev, host, garbage, x, reduction, *args):
    """(loss or out, gradient; for "none" the backward's of ones) of a CUDA forward op, its
    array arguments copied to the device."""
    args = [dev(a) if isinstance(a, np.ndarray) else a for a in args]
    none = reduction == "none"
    out_shape = x.shape[:1] if op == "cross_entropy" else x.shape
    out = garbage(out_shape, x.dtype) if none else None
    grad = None if none else garbage(x.shape, x.dtype)
    loss = kernel(op + "_forward", "cuda")(out, grad, dev(x), *args, reduction)
    if none:
        assert loss is None
        grad = garbage(x.shape, x.dtype)
        kernel(op + "_backward", "cuda")(grad, dev(np.ones(out_shape, x.dtype)), dev(x), *args)
        return host(out), host(grad)
    assert isinstance(loss, DeviceScalar)
    return float(loss), host(grad)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("opt", CE_OPTIONS)
def test_cross_entropy_general_matches_reference_and_cpu(rng, dtype, close, dev, host, garbage, opt,
                                                         reduction):
    logits, labels, weight, ignore, eps, log_probs = cpu._ce_inputs(rng, (5, 3), dtype, opt)
    args = (labels, weight, ignore, eps, log_probs)
    loss, grad = _on_cuda("cross_entropy", dev, host, garbage, logits, reduction, *args)
    rloss, rgrad = ref.cross_entropy(logits, *args, reduction)
    np.testing.assert_allclose(loss, rloss, rtol=2e-5, atol=2e-5)
    close(grad, rgrad)
    closs, cgrad = cpu._ce_general(logits, *args, reduction)
    np.testing.assert_allclose(loss, closs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, cgrad, rtol=1e-5, atol=1e-6)


def test_cross_entropy_general_label_out_of_range(rng, dev, host, garbage):
    """A label outside [0, C) that is not ignore_index: never an index, NaN rows, and
    reading the loss raises (the raw launcher; kernel() refuses it before the launch)."""
    logits = rng.standard_normal((4, 3)).astype(np.float32)
    labels = np.array([0, 3, -100, 1])
    grad = garbage(logits.shape, logits.dtype)
    loss = _kernel("cross_entropy_forward", "cuda")(None, grad, dev(logits), dev(labels), None,
                                                    -100, 0.0, False, "mean")
    with pytest.raises(ValueError, match="1 label.*out of range for 3 classes"):
        float(loss)
    g = host(grad)
    assert np.all(np.isnan(g[1])) and np.all(g[2] == 0) and np.all(np.isfinite(g[[0, 3]]))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weights", [False, True])
def test_bce_with_logits_matches_reference_and_cpu(rng, dtype, close, dev, host, garbage, weights,
                                                   reduction):
    x, target, weight, pos_weight = cpu._bce_inputs(rng, (5, 3), dtype)
    if not weights:
        weight = pos_weight = None
    loss, grad = _on_cuda("bce_with_logits", dev, host, garbage, x, reduction, target, weight,
                          pos_weight)
    rloss, rgrad = ref.bce_with_logits(x, target, weight, pos_weight, reduction)
    np.testing.assert_allclose(loss, rloss, rtol=2e-5, atol=2e-5)
    close(grad, rgrad)
    closs, cgrad = cpu._run("bce_with_logits", x, reduction, target, weight, pos_weight, None)
    np.testing.assert_allclose(loss, closs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, cgrad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("loss_beta", cpu.POINTWISE, ids=str)
def test_pointwise_loss_matches_reference_and_cpu(rng, dtype, close, dev, host, garbage, loss_beta,
                                                  reduction):
    name, beta = loss_beta
    pred = rng.standard_normal((3, 5)).astype(dtype)
    target = rng.standard_normal((3, 5)).astype(dtype)
    target.flat[0] = pred.flat[0]
    target.flat[1] = pred.flat[1] - dtype.type(beta)
    loss, grad = _on_cuda("pointwise_loss", dev, host, garbage, pred, reduction, target, name,
                          beta)
    rloss, rgrad = ref.pointwise_loss(pred, target, name, beta, reduction)
    np.testing.assert_allclose(loss, rloss, rtol=2e-5, atol=2e-5)
    close(grad, rgrad, scale=1.0 / pred.size if reduction == "mean" else 1.0)
    closs, cgrad = cpu._run("pointwise_loss", pred, reduction, target, name, beta)
    np.testing.assert_allclose(loss, closs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, cgrad, rtol=1e-5, atol=1e-6)
