"""fastnet's own matrix products (kernels/gemm.py): matmul_nt (forward of dense and the
recurrent projections), matmul_nn (dx), matmul_tn (dw), on each of their paths (few
rows: dot products / row sums; otherwise packed panels and register tiles, with the
weight or the batch packed), odd sizes around the tile's rows and the panel's columns,
both builds (tests/kernels/conftest.py), float32 and float64; NaN and inf reach exactly
the outputs that depend on them, as in a BLAS GEMM."""
import numpy as np
import pytest

from fastnet.kernels import gemm
from fastnet.kernels.codes import ACTIVATIONS
from tests import reference as ref

MR = gemm.MR
NC32 = gemm.panel_columns(4)
# (M, K, N): below and at the tile's rows, a partial last block, N below / at / past a
# panel's columns, K = 1, and a batch smaller and larger than N (both packings)
SHAPES = [(1, 5, 3), (3, 17, 9), (MR - 1, 17, 9), (MR, 1, NC32), (MR + 1, 33, NC32 + 1), (3 * MR + 5, 64, 7),
          (20, 70, 2 * NC32 + 3), (130, 257, 100), (129, 31, 300)]
ids = ["x".join(map(str, s)) for s in SHAPES]


def _operands(rng, dtype, *shape):
    return (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=ids)
@pytest.mark.parametrize("activation", [None, "relu", "tanh"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_matmul_nt(rng, dtype, close, shape, activation, bias):
    m, k, n = shape
    a, b = _operands(rng, dtype, m, k), _operands(rng, dtype, n, k)
    c = rng.standard_normal(n).astype(dtype) if bias else None
    out = np.full((m, n), 123.0, dtype)
    gemm.matmul_nt(out, a, b, c, ACTIVATIONS[activation])
    close(out, ref.dense_forward(a, b, c, activation), scale=np.sqrt(k))


@pytest.mark.parametrize("shape", SHAPES, ids=ids)
def test_matmul_nn_and_tn(rng, dtype, close, shape):
    m, k, n = shape
    a, b = _operands(rng, dtype, m, k), _operands(rng, dtype, k, n)
    out = np.full((m, n), 123.0, dtype)
    gemm.matmul_nn(out, a, b)
    want = np.einsum("mk,kn->mn", a.astype(np.float64), b.astype(np.float64))
    close(out, want, scale=np.sqrt(k))
    at = np.ascontiguousarray(a.T)
    out[:] = 123.0
    gemm.matmul_tn(out, at, b)
    close(out, want, scale=np.sqrt(k))


@pytest.mark.parametrize("shape", [(3, 9, 5), (MR + 3, 40, NC32 + 5), (60, 40, 20)],
                         ids=["few-rows", "tiles", "batch-packed"])
def test_non_finite_values_reach_only_their_outputs(rng, shape):
    """A NaN in row i of a and an inf in column j of B: row i is NaN, column j is +-inf or
    NaN, every other output is finite (the padded rows and columns the tiles compute are
    never stored)."""
    m, k, n = shape
    a, b = _operands(rng, np.float32, m, k), _operands(rng, np.float32, n, k)
    a[1, 2] = np.nan
    b[n - 1, 0] = np.inf
    out = np.empty((m, n), np.float32)
    gemm.matmul_nt(out, a, b)
    assert np.isnan(out[1]).all()
    assert not np.isfinite(out[:, n - 1]).any()
    rest = np.delete(np.delete(out, 1, axis=0), n - 1, axis=1)
    assert np.isfinite(rest).all()
    # the same through matmul_nn, B = b.T given as (K, N)
    out2 = np.empty_like(out)
    gemm.matmul_nn(out2, a, np.ascontiguousarray(b.T))
    np.testing.assert_array_equal(np.isfinite(out2), np.isfinite(out))


def test_results_do_not_depend_on_the_build(rng, monkeypatch):
    """The sums run in one order whatever the threads: both builds, bitwise."""
    from fastnet.kernels import _jit

    a, b = _operands(rng, np.float32, 70, 90), _operands(rng, np.float32, 130, 90)
    got = []
    for work in (0, 1 << 62):
        monkeypatch.setattr(_jit, "PARALLEL_MIN_WORK", work)
        out = np.empty((70, 130), np.float32)
        gemm.matmul_nt(out, a, b)
        got.append(out)
    np.testing.assert_array_equal(got[0], got[1])


@pytest.mark.parametrize("m", [2, 9])
def test_empty_sums_give_the_bias_or_zero(m):
    """K = 0: every output is the empty sum (the tiles divide their work by K)."""
    a, b = np.ones((m, 0), np.float32), np.ones((5, 0), np.float32)
    bias = np.array([-2, -1, 0, 1, 2], np.float32)
    out = np.full((m, 5), 7.0, np.float32)
    gemm.matmul_nt(out, a, b, bias, ACTIVATIONS["relu"])
    np.testing.assert_array_equal(out, np.broadcast_to([0, 0, 0, 1, 2], (m, 5)))
    out = np.full((m, 4), 7.0, np.float32)
    gemm.matmul_nn(out, a, np.ones((0, 4), np.float32))
    assert not out.any()
    gemm.matmul_tn(out, np.ones((0, m), np.float32), np.ones((0, 4), np.float32))
    assert not out.any()


# matmul_tn's own kernel (gemm_tn: a read in place, b packed in blocks): a is the larger
# operand (M >= 8N), or K is long; M = NC (one panel), a partial last panel (shifted to end
# at M), a partial last block of b's columns
TN_SHAPES = [(NC32, 5, 3), (2 * NC32 + 4, 3, 9), (97, gemm.TN_MIN_K + 3, 120),
             (NC32 + 1, gemm.TN_MIN_K, MR * 2 + 1)]


@pytest.mark.parametrize("shape", TN_SHAPES, ids=["x".join(map(str, s)) for s in TN_SHAPES])
def test_matmul_tn_on_its_own_kernel(rng, dtype, close, shape):
    m, k, n = shape
    a, b = _operands(rng, dtype, k, m), _operands(rng, dtype, k, n)
    out = np.full((m, n), 123.0, dtype)
    gemm.matmul_tn(out, a, b)
    want = np.einsum("km,kn->mn", a.astype(np.float64), b.astype(np.float64))
    close(out, want, scale=np.sqrt(k))


@pytest.mark.parametrize("group,panels,kc", [(1, 1, 1), (2, 1, 7), (3, 2, 64), (16, 4, 1000)])
def test_gemm_tn_tasks_and_chunks_give_the_same_sums(rng, group, panels, kc):
    """However gemm_tn splits the work into tasks and K into chunks, every sum runs over K
    in order: the results are bitwise those of one task over one chunk."""
    m, k, n = 2 * NC32 + 7, 150, 3 * MR + 2
    a, b = _operands(rng, np.float32, k, m), _operands(rng, np.float32, k, n)
    bp = np.empty((-(-n // MR), k, MR), np.float32)
    gemm.pack_blocks(bp, b)
    want = np.empty((m, n), np.float32)
    gemm.gemm_tn(want, a, bp, 1 << 20, 1 << 20, 1 << 20)
    np.testing.assert_allclose(want, a.T.astype(np.float64) @ b, rtol=1e-4, atol=1e-4)
    out = np.full((m, n), np.nan, np.float32)
    gemm.gemm_tn(out, a, bp, group, panels, kc)
    np.testing.assert_array_equal(out, want)


def test_matmul_tn_non_finite_values_reach_only_their_outputs(rng):
    """A NaN in column i of a and an inf in column j of b, on gemm_tn's path."""
    m, k, n = NC32 + 5, 40, 4
    a, b = _operands(rng, np.float32, k, m), _operands(rng, np.float32, k, n)
    a[3, m - 2] = np.nan
    b[7, 1] = np.inf
    out = np.empty((m, n), np.float32)
    gemm.matmul_tn(out, a, b)
    assert np.isnan(out[m - 2]).all()
    assert not np.isfinite(out[:, 1]).any()
    rest = np.delete(np.delete(out, m - 2, axis=0), 1, axis=1)
    assert np.isfinite(rest).all()


def test_gemm_tn_refuses_fewer_columns_than_a_panel():
    """Its last panel ends at column M: with M < NC it would start before a."""
    a, b = np.ones((4, NC32 - 1), np.float32), np.ones((4, 3), np.float32)
    bp = np.empty((1, 4, MR), np.float32)
    gemm.pack_blocks(bp, b)
    with pytest.raises(ValueError, match="panel"):
        gemm.gemm_tn(np.empty((NC32 - 1, 3), np.float32), a, bp, 1, 1, 64)
