"""CrossEntropyLoss on (N, C) and, as PyTorch, (N, C, T) / (N, C, d1, d2) logits with
(N, T) / (N, d1, d2) integer labels: loss and gradient against torch.nn.functional
.cross_entropy (mean over every position; stored in tests/data/torch_embedding_ce.npz by
tests/data/make_torch_embedding_ce.py) in float32 and float64, on every device; label
range errors; NaN propagation as PyTorch."""
import pathlib

import numpy as np
import pytest

from fastnet.device import device_of, to_numpy
from fastnet.losses import CrossEntropyLoss

REF = np.load(pathlib.Path(__file__).parents[1] / "data" / "torch_embedding_ce.npz")


def _key(*parts):
    return "/".join(str(p).replace(" ", "") for p in parts)


def _stored(tag):
    return (REF[_key(tag, "logits")], REF[_key(tag, "labels")], float(REF[_key(tag, "loss")]),
            REF[_key(tag, "grad")])


def _fastnet(logits, labels, to_dev):
    fn = CrossEntropyLoss()
    loss = float(fn(to_dev(logits), labels))
    grad = fn.backward()
    assert device_of(grad) == device_of(to_dev(logits[:1]))
    return loss, to_numpy(grad)


@pytest.mark.parametrize("shape", [(4, 3), (3, 5, 4), (1, 7, 1), (2, 3, 1), (5, 2, 9),
                                   (2, 4, 3, 2), (1, 1, 6)], ids=str)
def test_matches_pytorch(dtype, device, to_dev, shape):
    logits, labels, tloss, tgrad = _stored(_key("ce", shape, np.dtype(dtype).name))
    loss, grad = _fastnet(logits, labels, to_dev)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    assert loss == pytest.approx(tloss, rel=tol, abs=tol)
    assert grad.shape == shape and grad.dtype == dtype
    np.testing.assert_allclose(grad, tgrad, rtol=tol * 10, atol=tol)


def test_sequence_is_the_flat_rows(rng, device, to_dev):
    """(N, C, T) is bitwise the (N*T, C) loss on the transposed logits."""
    logits = rng.standard_normal((3, 6, 5)).astype(np.float32)
    labels = rng.integers(0, 6, (3, 5))
    seq = CrossEntropyLoss()
    loss = float(seq(to_dev(logits), labels))
    flat = CrossEntropyLoss()
    rows = np.ascontiguousarray(logits.transpose(0, 2, 1)).reshape(15, 6)
    assert loss == float(flat(to_dev(rows), labels.reshape(-1)))
    np.testing.assert_array_equal(
        to_numpy(seq.backward()),
        to_numpy(flat.backward()).reshape(3, 5, 6).transpose(0, 2, 1))


def test_nan_propagates_as_pytorch(device, to_dev):
    """A NaN logit: the loss is NaN and its position's gradient is NaN, the other
    positions' gradients finite, as in PyTorch."""
    logits, labels, tloss, tgrad = _stored("ce-nan")
    loss, grad = _fastnet(logits, labels, to_dev)
    assert np.isnan(loss) and np.isnan(tloss)
    np.testing.assert_array_equal(np.isnan(grad), np.isnan(tgrad))
    np.testing.assert_allclose(grad, tgrad, rtol=1e-12, atol=1e-15, equal_nan=True)


def test_sequence_labels_out_of_range(device, to_dev):
    logits = np.zeros((2, 3, 4), np.float32)
    labels = np.zeros((2, 4), np.int64)
    labels[1, 2] = 3
    with pytest.raises(ValueError, match="label 3 is out of range for 3 classes"):
        float(CrossEntropyLoss()(to_dev(logits), labels))
    labels[1, 2] = -1
    with pytest.raises(ValueError, match="out of range"):
        float(CrossEntropyLoss()(to_dev(logits), to_dev(labels)))  # (on CUDA: when read)
    with pytest.raises(ValueError, match=r"expected labels of shape \(2, 4\)"):
        CrossEntropyLoss()(to_dev(logits), np.zeros((2, 3), np.int64))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sequence_logits_viewing_rows_are_taken_as_they_are(rng, dtype):
    """(N, C, T) logits that view C-contiguous (N, T, C) rows (CharLSTM's output on the
    CPU) give the loss and gradient of their contiguous copy, bitwise; the gradient is the
    same kind of view, and the rows are not written."""
    rows = rng.standard_normal((3, 5, 4)).astype(dtype)
    keep = rows.copy()
    labels = rng.integers(0, 4, (3, 5))
    view, copy = rows.transpose(0, 2, 1), np.ascontiguousarray(rows.transpose(0, 2, 1))
    a, b = CrossEntropyLoss(), CrossEntropyLoss()
    assert a(view, labels) == b(copy, labels)
    ga, gb = a.backward(), b.backward()
    np.testing.assert_array_equal(ga, gb)
    assert ga.shape == (3, 4, 5) and ga.dtype == dtype and ga.transpose(0, 2, 1).flags.c_contiguous
    np.testing.assert_array_equal(rows, keep)
    with pytest.raises(ValueError, match="labels of shape"):
        a(view, labels[:, :4])
    with pytest.raises(TypeError, match="float32 or float64"):
        a(rows.astype(np.float16).transpose(0, 2, 1), labels)
