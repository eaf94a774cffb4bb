"""fastnet's CUDA GEMM (fastnet/kernels/cuda/gemm.py): every transpose combination, each
tile configuration, edge tiles (sizes that are not tile multiples), several blocks,
bias along rows and columns, fused activations, accumulation and the NCHW epilogue."""
import numpy as np
import pytest

from fastnet.kernels.codes import ACTIVATIONS
from fastnet.kernels.cuda import gemm
from tests import reference as ref


@pytest.fixture
def config(request, monkeypatch):
    """Runs the test on the given tile configuration, whatever the matrix size."""
    monkeypatch.setattr(gemm, "choose_config", lambda m, n: request.param)
    return request.param


def _operands(rng, dtype, m, n, k, ta, tb):
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    return a, b, (a.T.copy() if ta else a), (b.T.copy() if tb else b)


@pytest.mark.parametrize("config", ["small"], indirect=True)
@pytest.mark.parametrize("ta,tb", [(False, False), (False, True), (True, False), (True, True)])
def test_transposes_edge_tiles_several_blocks(rng, dtype, close, dev, host, config, ta, tb):
    """(M, N, K) = (37, 70, 21): 2x3 blocks of 32x32, ragged in every dimension, K not a
    multiple of the 16-deep slice."""
    m, n, k = 37, 70, 21
    a, b, sa, sb = _operands(rng, dtype, m, n, k, ta, tb)
    c = dev(np.full((m, n), np.nan, dtype))
    gemm.gemm(c.reshape(m * n), dev(sa), dev(sb), ta, tb)
    close(host(c), a @ b, scale=np.sqrt(k))


@pytest.mark.parametrize("config", ["medium", "large"], indirect=True)
def test_bigger_tiles(rng, dev, host, config):
    """The 64x64 and 128x128 register-blocked tiles, transposed a, ragged edges."""
    m, n, k = 131, 70, 9
    a, b, sa, sb = _operands(rng, np.float32, m, n, k, True, False)
    c = dev(np.full((m, n), np.nan, np.float32))
    gemm.gemm(c.reshape(m * n), dev(sa), dev(sb), True, False)
    np.testing.assert_allclose(host(c), a @ b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("config", ["small"], indirect=True)
@pytest.mark.parametrize("activation", [None, "relu", "sigmoid", "tanh"])
def test_bias_and_activation_epilogue(rng, dtype, close, dev, host, config, activation):
    m, n, k = 5, 33, 4
    a, b, _, _ = _operands(rng, dtype, m, n, k, False, False)
    bias_c = rng.standard_normal(n).astype(dtype)
    bias_r = rng.standard_normal(m).astype(dtype)
    code = ACTIVATIONS[activation]
    for bias, mode, want in ((bias_c, gemm.BIAS_PER_COL, a @ b + bias_c),
                             (bias_r, gemm.BIAS_PER_ROW, a @ b + bias_r[:, None])):
        c = dev(np.full((m, n), np.nan, dtype))
        gemm.gemm(c.reshape(m * n), dev(a), dev(b), bias=dev(bias), bias_mode=mode, code=code)
        close(host(c), ref._act64(want, activation).astype(dtype), scale=2)


@pytest.mark.parametrize("config", ["small"], indirect=True)
def test_accumulate_and_chunked_layout(rng, dtype, close, dev, host, config):
    """c += a @ b; and the conv layout: column n*P + p of row o lands at [n, o, p]."""
    m, n, k = 3, 10, 4
    a, b, _, _ = _operands(rng, dtype, m, n, k, False, False)
    c0 = rng.standard_normal((m, n)).astype(dtype)
    c = dev(c0)
    gemm.gemm(c.reshape(m * n), dev(a), dev(b), accumulate=True)
    close(host(c), c0 + a @ b, scale=2)
    p = 5  # two images of 5 pixels: out (2, m, 5)
    out = dev(np.full((2, m, p), np.nan, dtype))
    gemm.gemm(out.reshape(out.size), dev(a), dev(b), p=p, chunk_stride=m * p, row_stride=p)
    close(host(out), (a @ b).reshape(m, 2, p).transpose(1, 0, 2), scale=2)


def test_config_choice_keeps_blocks_in_flight(monkeypatch):
    monkeypatch.setattr(gemm, "simulator", lambda: False)
    assert gemm.choose_config(4096, 4096) == "large"
    assert gemm.choose_config(1024, 1024) == "medium"
    assert gemm.choose_config(128, 256) == "small"
