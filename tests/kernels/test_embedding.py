"""Embedding: embedding_forward(out, indices, weight) -> out = weight[indices];
embedding_backward(dweight, dout, indices, padding_idx) -> the deterministic scatter-add
of dout's rows into dweight (the padding row 0)."""
import numba
import numpy as np
import pytest

from fastnet.kernels import embedding as emb
from fastnet.kernels import kernel
from tests import reference as ref
from tests.gradcheck import check_backward

from .cases import EMBEDDING_CASES

INDEX_DTYPES = [np.int64, np.int32, np.uint8, np.uint64, np.int16]


def _indices(rng, m, v, dtype=np.int64):
    """m indices in [0, v), each row used several times when m > v, both ends included."""
    idx = rng.integers(0, v, m)
    idx[0], idx[-1] = v - 1, 0
    return idx.astype(dtype)


def _forward(indices, weight):
    out = np.full((indices.size, weight.shape[1]), np.nan, weight.dtype)
    kernel("embedding_forward")(out, indices, weight)
    return out


def _backward(dout, indices, v, padding_idx=None):
    dw = np.full((v, dout.shape[1]), np.nan, dout.dtype)
    kernel("embedding_backward")(dw, dout, indices, padding_idx)
    return dw


@pytest.mark.parametrize("case", EMBEDDING_CASES)
def test_forward_matches_reference(rng, dtype, case):
    """out == weight[indices] exactly (a copy), NaN-filled out overwritten."""
    m, v, d = EMBEDDING_CASES[case]
    w = rng.standard_normal((v, d)).astype(dtype)
    idx = _indices(rng, m, v)
    out = _forward(idx, w)
    np.testing.assert_array_equal(out, ref.embedding_forward(idx, w).astype(dtype))


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=lambda t: np.dtype(t).name)
def test_any_integer_dtype(rng, index_dtype):
    w = rng.standard_normal((6, 3))
    idx = _indices(rng, 11, 6, index_dtype)
    np.testing.assert_array_equal(_forward(idx, w), w[idx.astype(np.int64)])
    dout = rng.standard_normal((11, 3))
    np.testing.assert_allclose(_backward(dout, idx, 6), ref.embedding_backward(dout, idx, 6),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("padding", [None, 0, "last"])
@pytest.mark.parametrize("case", EMBEDDING_CASES)
def test_backward_matches_reference(rng, dtype, close, case, padding):
    """dweight = sum of dout's rows per index, unused rows 0, the padding row 0."""
    m, v, d = EMBEDDING_CASES[case]
    p = v - 1 if padding == "last" else padding
    idx = _indices(rng, m, v)
    dout = rng.standard_normal((m, d)).astype(dtype)
    dw = _backward(dout, idx, v, p)
    close(dw, ref.embedding_backward(dout, idx, v, p), scale=max(1.0, m / v))
    if p is not None:
        assert not dw[p].any()


def test_backward_is_the_serial_scatter_add_bitwise(rng, dtype):
    """Repeated indices: each row's sum is taken in position order, bitwise the plain loop
    dweight[indices[m]] += dout[m] (np.add.at)."""
    idx = np.array([2, 0, 2, 2, 1, 0, 2, 4, 2], np.int64)
    dout = (rng.standard_normal((9, 6)) * 10 ** rng.uniform(-3, 3, (9, 1))).astype(dtype)
    want = np.zeros((5, 6), dtype)
    np.add.at(want, idx, dout)
    np.testing.assert_array_equal(_backward(dout, idx, 5), want)
    assert not _backward(dout, idx, 5)[3].any()  # unused


def test_padding_row_zero_even_for_nan_gradients(rng):
    idx = np.array([1, 3, 1, 0])
    dout = rng.standard_normal((4, 2))
    dout[0] = np.nan
    dw = _backward(dout, idx, 4, padding_idx=1)
    np.testing.assert_array_equal(dw[1], 0.0)
    assert np.isnan(_backward(dout, idx, 4)[1]).all()  # without padding NaN propagates


def test_backward_matches_finite_differences(rng):
    """float64 central differences of the forward with respect to the weight, with
    repeated indices."""
    v = 4
    idx = np.array([[1, 3, 1], [0, 1, 1]])
    w = rng.standard_normal((v, 3))

    def forward(w):
        return _forward(idx.reshape(-1), w)

    def backward(dout, w):
        return (_backward(dout, idx.reshape(-1), v),)
    check_backward(forward, backward, [w], rng, names=["weight"])


def test_deterministic_across_runs_threads_and_builds(rng):
    """Bitwise the same result from the serial and the parallel build, with 1 and 2 Numba
    threads, call after call."""
    m, v, d = 20_000, 37, 16
    idx = rng.integers(0, v, m)
    dout = rng.standard_normal((m, d)).astype(np.float32)
    dw = np.empty((v, d), np.float32)
    order = np.empty(m, np.int64)
    starts = np.empty(v + 1, np.int64)
    emb._embedding_backward.serial(dw, dout, idx, order, starts, -1)
    first = dw.copy()
    saved = numba.get_num_threads()
    try:
        for threads in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(threads)
            for _ in range(2):
                dw[...] = np.nan
                emb._embedding_backward.parallel(dw, dout, idx, order, starts, -1)
                np.testing.assert_array_equal(dw, first)
                np.testing.assert_array_equal(_backward(dout, idx, v), first)
    finally:
        numba.set_num_threads(saved)


def test_counting_sort_is_stable(rng):
    idx = rng.integers(0, 5, 50).astype(np.int32)
    order, starts = np.empty(50, np.int64), np.empty(6, np.int64)
    emb._bucket(order, starts, idx)
    np.testing.assert_array_equal(order, np.argsort(idx, kind="stable"))
    counts = np.bincount(idx, minlength=5)
    np.testing.assert_array_equal(starts, np.concatenate([[0], np.cumsum(counts)]))


@pytest.mark.parametrize("bad", [-1, 5, 2**40])
def test_checked_kernels_refuse_out_of_range_indices(bad):
    """kernel() names the op and the index before anything is written."""
    w = np.ones((5, 2))
    idx = np.array([0, bad, 1])
    out = np.zeros((3, 2))
    with pytest.raises(ValueError, match=r"embedding_forward: indices\[1\]"):
        kernel("embedding_forward")(out, idx, w)
    assert not out.any()
    dw = np.zeros((5, 2))
    with pytest.raises(ValueError, match=r"embedding_backward: indices\[1\]"):
        kernel("embedding_backward")(dw, np.ones((3, 2)), idx, None)
    assert not dw.any()


@pytest.mark.parametrize("dt", [np.float32, np.bool_])
def test_checked_kernels_refuse_non_integer_indices(dt):
    with pytest.raises(TypeError, match="embedding_forward: argument 'indices' must be an integer"):
        kernel("embedding_forward")(np.zeros((2, 2)), np.zeros(2, dt), np.ones((3, 2)))
