"""fastnet.losses' arguments and errors: bad reductions, weights of the wrong length,
label_smoothing / beta / delta out of range, wrong shapes and dtypes, labels out of range
(other than ignore_index), grad_output of reduction "none" (its default, its checks), and
the (N, C, d) and CharLSTM-view layouts of "none". The numbers themselves are compared with
PyTorch's in tests/test_torch_losses.py."""
import numpy as np
import pytest

from fastnet.device import Device, device_of, to_numpy
from fastnet.losses import (BCEWithLogitsLoss, CrossEntropyLoss, HuberLoss, L1Loss, MSELoss,
                            NLLLoss, SmoothL1Loss)


@pytest.mark.parametrize("make, exc, match", [
    (lambda: CrossEntropyLoss(reduction="avg"), ValueError, "reduction must be one of"),
    (lambda: MSELoss(reduction=None), TypeError, "reduction must be one of"),
    (lambda: CrossEntropyLoss(label_smoothing=1.5), ValueError, r"label_smoothing .*\[0.0, 1.0\]"),
    (lambda: CrossEntropyLoss(label_smoothing=-0.1), ValueError, "label_smoothing"),
    (lambda: CrossEntropyLoss(label_smoothing="0.1"), TypeError, "label_smoothing"),
    (lambda: CrossEntropyLoss(ignore_index=1.0), TypeError, "ignore_index must be an int"),
    (lambda: CrossEntropyLoss(weight=np.ones((2, 2))), ValueError, "weight must have 1 axis"),
    (lambda: NLLLoss(weight=np.array(["a"])), TypeError, "weight must be a real"),
    (lambda: NLLLoss(weight=object()), TypeError, "weight must be"),
    (lambda: SmoothL1Loss(beta=-1), ValueError, "beta must be a finite real number >= 0"),
    (lambda: HuberLoss(delta=0), ValueError, "delta must be a finite real number > 0"),
    (lambda: BCEWithLogitsLoss(pos_weight=np.ones((2, 3))), ValueError, "pos_weight must be"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_bad_arguments(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_bad_calls():
    x = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"weight has 2 entries for 3 classes"):
        CrossEntropyLoss(weight=np.ones(2))(x, np.zeros(4, np.int64))
    with pytest.raises(ValueError, match=r"expected labels of shape \(4,\)"):
        CrossEntropyLoss(reduction="sum")(x, np.zeros(3, np.int64))
    with pytest.raises(TypeError, match="labels must be integer class indices"):
        NLLLoss()(x, np.zeros(4))
    with pytest.raises(ValueError, match=r"label 3 is out of range .* not ignore_index \(-100\)"):
        CrossEntropyLoss()(x, np.array([0, 1, 3, -100]))
    with pytest.raises(ValueError, match=r"label -100 is out of range .* not ignore_index \(0\)"):
        NLLLoss(ignore_index=0)(x, np.array([0, 1, 2, -100]))
    with pytest.raises(TypeError, match="float32 or float64"):
        L1Loss()(np.zeros(3, np.int64), np.zeros(3))
    with pytest.raises(ValueError, match="target shape"):
        HuberLoss()(x, np.zeros((3, 4), np.float32))
    with pytest.raises(TypeError, match="target must be a real numeric array"):
        BCEWithLogitsLoss()(x, np.zeros((4, 3), bool))
    with pytest.raises(ValueError, match=r"weight of shape \(2,\) does not broadcast"):
        BCEWithLogitsLoss(weight=np.ones(2))(x, x)
    with pytest.raises(ValueError, match=r"pos_weight of shape \(2,\) does not broadcast"):
        BCEWithLogitsLoss(pos_weight=np.ones(2))(x, x)
    with pytest.raises(TypeError, match="numpy.ndarray or a CUDA array"):
        MSELoss(reduction="sum")([1.0], [1.0])


def test_backward_and_grad_output():
    x, t = np.arange(6.0).reshape(2, 3), np.ones((2, 3))
    fn = L1Loss(reduction="none")
    with pytest.raises(RuntimeError, match="call the loss on a batch first"):
        fn.backward()
    fn(x, t)
    with pytest.raises(ValueError, match=r"grad_output must have the loss's shape \(2, 3\)"):
        fn.backward(np.ones(3))
    with pytest.raises(TypeError, match="grad_output must be a real array"):
        fn.backward(np.ones((2, 3), complex))
    g = fn.backward(np.full((2, 3), 2, np.int64))  # converted to the predictions' dtype
    np.testing.assert_array_equal(g, 2 * np.sign(x - t))
    with pytest.raises(RuntimeError, match="call the loss on a batch first"):
        fn.backward()  # once per call
    fn = MSELoss(reduction="sum")
    fn(x, t)
    with pytest.raises(ValueError, match="grad_output is only for reduction='none'"):
        fn.backward(np.ones((2, 3)))
    np.testing.assert_array_equal(fn.backward(), 2 * (x - t))


def test_repr():
    assert repr(CrossEntropyLoss()) == "CrossEntropyLoss()"
    assert repr(NLLLoss(ignore_index=0, reduction="none")) == \
        "NLLLoss(ignore_index=0, reduction='none')"
    assert repr(SmoothL1Loss(beta=0.5)) == "SmoothL1Loss(beta=0.5)"


def test_none_over_positions_and_views(device):
    """Reduction "none" on (N, C, T) logits: losses (N, T) and the gradient in the
    logits' layout, the same for a view of (N, T, C) rows (CharLSTM's)."""
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((2, 4, 3))  # (N, T, C)
    labels = np.array([[0, 1, 2, -100], [2, 2, 1, 0]])
    dout = rng.standard_normal((2, 4))
    dev = Device(device)
    results = []
    for logits in (np.ascontiguousarray(rows.transpose(0, 2, 1)), rows.transpose(0, 2, 1)):
        fn = CrossEntropyLoss(reduction="none", label_smoothing=0.1)
        loss = fn(dev.asarray(logits) if device == "cuda" else logits, labels)
        assert device_of(loss) == dev and loss.shape == (2, 4)
        grad = fn.backward(dev.asarray(dout))
        assert grad.shape == (2, 3, 4)
        results.append((to_numpy(loss), to_numpy(grad)))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-12)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-12)
    assert results[0][0][0, 3] == 0 and np.all(results[0][1][0, :, 3] == 0)


def test_fast_path_falls_back_for_ignore_index():
    """Default arguments: the fused kernel, unless a label is ignore_index; the general
    kernel then gives the mean over the other positions."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    labels = np.array([0, 2, 1, 1])
    a, b = CrossEntropyLoss(), CrossEntropyLoss()
    la = a(x[:3], labels[:3])
    lb = b(x, np.array([0, 2, 1, -100]))
    assert lb == pytest.approx(la, rel=1e-6)
    np.testing.assert_allclose(b.backward()[:3], a.backward(), rtol=1e-5, atol=1e-7)
