"""CUDA embedding: embedding_forward(out, indices, weight) -> weight[indices];
embedding_backward(dweight, dout, indices, padding_idx): the host-sorted, race-free
scatter-add, bitwise the CPU kernel's."""
import numpy as np
import pytest

from fastnet.kernels import kernel
from tests import reference as ref
from tests.gradcheck import check_backward

from ..cases import EMBEDDING_CASES, cases_for


def _indices(rng, m, v):
    idx = rng.integers(0, v, m)
    idx[0], idx[-1] = v - 1, 0
    return idx


def _cpu_backward(dout, idx, v, p):
    dw = np.empty((v, dout.shape[1]), dout.dtype)
    kernel("embedding_backward", "cpu")(dw, dout, idx, p)
    return dw


@pytest.mark.parametrize("case", cases_for(EMBEDDING_CASES, "cuda"))
def test_forward_matches_reference(rng, dtype, dev, host, garbage, case):
    m, v, d = EMBEDDING_CASES[case]
    w = rng.standard_normal((v, d)).astype(dtype)
    idx = _indices(rng, m, v)
    out = garbage((m, d), dtype)
    kernel("embedding_forward", "cuda")(out, dev(idx), dev(w))
    np.testing.assert_array_equal(host(out), ref.embedding_forward(idx, w).astype(dtype))


@pytest.mark.parametrize("padding", [None, "last"])
@pytest.mark.parametrize("case", cases_for(EMBEDDING_CASES, "cuda"))
def test_backward_matches_reference_and_cpu(rng, dtype, close, dev, host, garbage, case,
                                            padding):
    """Repeated indices summed in position order: bitwise the CPU kernel, twice over (no
    run-to-run variation), with device or host indices."""
    m, v, d = EMBEDDING_CASES[case]
    p = v - 1 if padding == "last" else padding
    idx = _indices(rng, m, v).astype(np.int32)
    dout = rng.standard_normal((m, d)).astype(dtype)
    want = _cpu_backward(dout, idx, v, p)
    for indices in (dev(idx), idx):
        dw = garbage((v, d), dtype)
        kernel("embedding_backward", "cuda")(dw, dev(dout), indices, p)
        np.testing.assert_array_equal(host(dw), want)
    close(host(dw), ref.embedding_backward(dout, idx, v, p), scale=max(1.0, m / v))


def test_backward_matches_finite_differences(rng, dev, host):
    v = 3
    idx = np.array([2, 0, 2, 2])

    def forward(w):
        out = dev(np.empty((4, 2)))
        kernel("embedding_forward", "cuda")(out, dev(idx), dev(w))
        return host(out)

    def backward(dout, w):
        dw = dev(np.empty((v, 2)))
        kernel("embedding_backward", "cuda")(dw, dev(dout), dev(idx), None)
        return (host(dw),)
    check_backward(forward, backward, [rng.standard_normal((v, 2))], rng, names=["weight"])


def test_checked_kernel_refuses_out_of_range_indices(dev, host):
    w = dev(np.ones((4, 2)))
    out = dev(np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"embedding_forward: indices\[1\]"):
        kernel("embedding_forward", "cuda")(out, dev(np.array([0, 4])), w)
    assert not host(out).any()
