"""CUDA pooling kernels, NCHW, against the reference, finite differences and the CPU
kernels: max_pool2d_forward(out, argmax, x, ks, stride, padding),
max_pool2d_backward(dx, dout, argmax, ks, stride, padding), avg_pool2d_forward(out, x, ks, stride, padding),
avg_pool2d_backward(dx, dout, ks, stride, padding), lp_pool2d_forward(out, x, p, ks, stride),
lp_pool2d_backward(dx, dout, x, p, ks, stride). PyTorch semantics."""
import numpy as np
import pytest

from fastnet.kernels import kernel
from tests import reference as ref
from tests.gradcheck import check_backward

from ..cases import GLOBAL_POOL_SHAPES, LP_POOL_CASES, POOL_CASES, cases_for
from ..test_pool import lp_input

CASES = POOL_CASES
IDS = cases_for(POOL_CASES, "cuda")


def _out_shape(x_shape, ks, stride, padding):
    n, c, h, w = x_shape
    return (n, c, ref.conv_output_size(h, ks[0], stride[0], padding[0]),
            ref.conv_output_size(w, ks[1], stride[1], padding[1]))


class Pool:
    """The CUDA kernels through the dispatch table, with host arrays in and out; every
    output starts as garbage."""

    def __init__(self, dev, host, garbage):
        self.dev, self.host, self.garbage = dev, host, garbage

    def max_forward(self, x, ks, stride, padding):
        """-> (out, argmax) on the host, (out, argmax) on the device"""
        shape = _out_shape(x.shape, ks, stride, padding)
        out, argmax = self.garbage(shape, x.dtype), self.garbage(shape, np.int32)
        kernel("max_pool2d_forward", "cuda")(out, argmax, self.dev(x), ks, stride, padding)
        return self.host(out), self.host(argmax)

    def max_backward(self, dout, argmax, x_shape, ks, stride, padding):
        dx = self.garbage(x_shape, dout.dtype)
        kernel("max_pool2d_backward", "cuda")(dx, self.dev(dout), self.dev(argmax), ks, stride,
                                               padding)
        return self.host(dx)

    def avg_forward(self, x, ks, stride, padding):
        out = self.garbage(_out_shape(x.shape, ks, stride, padding), x.dtype)
        kernel("avg_pool2d_forward", "cuda")(out, self.dev(x), ks, stride, padding)
        return self.host(out)

    def avg_backward(self, dout, x_shape, ks, stride, padding):
        dx = self.garbage(x_shape, dout.dtype)
        kernel("avg_pool2d_backward", "cuda")(dx, self.dev(dout), ks, stride, padding)
        return self.host(dx)


@pytest.fixture
def pool(dev, host, garbage):
    return Pool(dev, host, garbage)


@pytest.mark.parametrize("case", IDS)
def test_max_pool_matches_reference_and_cpu(rng, dtype, close, pool, case):
    """Forward: values and argmax (flat ih*W + iw, int32) equal the reference and the CPU
    exactly. Backward (gathered, summed where windows overlap) against the reference, and
    bitwise equal to the CPU, which sums in the same order."""
    x_shape, ks, stride, padding = CASES[case]
    x = rng.standard_normal(x_shape).astype(dtype)
    out, argmax = pool.max_forward(x, ks, stride, padding)
    rout, rarg = ref.max_pool2d_forward(x, ks, stride, padding)
    assert out.dtype == dtype and argmax.dtype == np.int32
    np.testing.assert_array_equal(out, rout)
    np.testing.assert_array_equal(argmax, rarg)
    cpu_out, cpu_arg = np.empty_like(out), np.empty_like(argmax)
    kernel("max_pool2d_forward", "cpu")(cpu_out, cpu_arg, x, ks, stride, padding)
    np.testing.assert_array_equal(out, cpu_out)
    np.testing.assert_array_equal(argmax, cpu_arg)

    dout = rng.standard_normal(out.shape).astype(dtype)
    dx = pool.max_backward(dout, argmax, x_shape, ks, stride, padding)
    close(dx, ref.max_pool2d_backward(dout, argmax, x_shape), scale=np.sqrt(np.prod(ks)))
    cpu_dx = np.empty_like(x)
    kernel("max_pool2d_backward", "cpu")(cpu_dx, dout, argmax, ks, stride, padding)
    np.testing.assert_array_equal(dx, cpu_dx)


@pytest.mark.parametrize("case", IDS)
def test_avg_pool_matches_reference_and_cpu(rng, dtype, close, pool, case):
    """Average pooling (count_include_pad=True) forward and backward against the
    reference and the CPU kernels."""
    x_shape, ks, stride, padding = CASES[case]
    x = rng.standard_normal(x_shape).astype(dtype)
    out = pool.avg_forward(x, ks, stride, padding)
    close(out, ref.avg_pool2d_forward(x, ks, stride, padding), err_msg="forward vs reference")
    cpu_out = np.empty_like(out)
    kernel("avg_pool2d_forward", "cpu")(cpu_out, x, ks, stride, padding)
    close(out, cpu_out, err_msg="forward vs cpu")

    dout = rng.standard_normal(out.shape).astype(dtype)
    dx = pool.avg_backward(dout, x_shape, ks, stride, padding)
    close(dx, ref.avg_pool2d_backward(dout, x_shape, ks, stride, padding), err_msg="backward vs reference")
    cpu_dx = np.empty_like(x)
    kernel("avg_pool2d_backward", "cpu")(cpu_dx, dout, ks, stride, padding)
    close(dx, cpu_dx, err_msg="backward vs cpu")


@pytest.mark.parametrize("case", ["3x3-s2-p1-odd", "kernel-is-input-padded"])
def test_max_backward_matches_finite_differences(rng, pool, case):
    """float64 central differences of the CUDA max_pool2d_forward (distinct values)."""
    x_shape, ks, stride, padding = CASES[case]
    x_shape = (1, 1) + x_shape[2:]

    def backward(dout, x):
        _, argmax = pool.max_forward(x, ks, stride, padding)
        return (pool.max_backward(dout, argmax, x.shape, ks, stride, padding),)

    x = rng.permutation(np.prod(x_shape)).reshape(x_shape) * 0.01  # distinct: no ties
    check_backward(lambda x: pool.max_forward(x, ks, stride, padding)[0], backward, [x], rng)


@pytest.mark.parametrize("case", ["nonsquare-3x2-s1x2-p1x1", "kernel-is-input-padded"])
def test_avg_backward_matches_finite_differences(rng, pool, case):
    """float64 central differences of the CUDA avg_pool2d_forward."""
    x_shape, ks, stride, padding = CASES[case]
    x = rng.standard_normal((1, 1) + x_shape[2:])
    check_backward(lambda x: pool.avg_forward(x, ks, stride, padding),
                   lambda dout, x: (pool.avg_backward(dout, x.shape, ks, stride, padding),),
                   [x], rng)


def test_max_ties_padding_and_nan(rng, dtype, pool):
    """Heavy ties (values in {0, 1, 2}): argmax is the first maximum in row-major window
    order; all-equal and all-(-inf) inputs pick each window's first in-image element
    (padding is -inf and never wins); a NaN anywhere in a window wins."""
    for case in ("3x3-s2-p1-odd", "kernel-is-input-padded", "stride-over-kernel"):
        x_shape, ks, stride, padding = CASES[case]
        x = rng.integers(0, 3, x_shape).astype(dtype)
        out, argmax = pool.max_forward(x, ks, stride, padding)
        rout, rarg = ref.max_pool2d_forward(x, ks, stride, padding)
        np.testing.assert_array_equal(out, rout, err_msg=case)
        np.testing.assert_array_equal(argmax, rarg, err_msg=case)
        dout = rng.standard_normal(out.shape).astype(dtype)
        np.testing.assert_allclose(pool.max_backward(dout, argmax, x_shape, ks, stride, padding),
                                   ref.max_pool2d_backward(dout, argmax, x_shape),
                                   rtol=1e-5, atol=1e-5, err_msg=case)

    for fill in (7.0, -np.inf):
        out, argmax = pool.max_forward(np.full((1, 1, 4, 4), fill, dtype), (3, 3), (2, 2), (1, 1))
        np.testing.assert_array_equal(out, np.full((1, 1, 2, 2), fill))
        # windows start at (-1, -1), (-1, 1), (1, -1), (1, 1): first in-image elements
        np.testing.assert_array_equal(argmax[0, 0], [[0, 1], [4, 5]])

    x = -np.arange(1, 1 + 2 * 3 * 5 * 4, dtype=dtype).reshape(2, 3, 5, 4) - 100
    out, argmax = pool.max_forward(x, (3, 3), (2, 1), (1, 1))
    assert np.all(out < -100)
    # the gradient lands only on image elements that some window selected
    assert pool.max_backward(np.ones_like(out), argmax, x.shape, (3, 3), (2, 1),
                             (1, 1)).sum() == out.size

    x = np.zeros((1, 4, 2, 2), dtype)
    for c in range(4):
        x[0, c].flat[c] = np.nan
    out, argmax = pool.max_forward(x, (2, 2), (2, 2), (0, 0))
    assert np.all(np.isnan(out))
    np.testing.assert_array_equal(argmax.reshape(-1), [0, 1, 2, 3])


def test_avg_counts_padding(pool):
    """A padded corner window of ones averages to (in-image count) / (KH*KW)."""
    out = pool.avg_forward(np.ones((1, 1, 2, 2), np.float32), (2, 2), (2, 2), (1, 1))
    np.testing.assert_array_equal(out[0, 0], np.full((2, 2), 0.25))


def test_random_geometries(pool):
    """Seeded random geometries (padding <= kernel / 2) with ties, float64: max and avg,
    forward and backward, against the reference."""
    rng = np.random.default_rng(7)
    for _ in range(12):
        kh, kw, sh, sw = (int(v) for v in rng.integers(1, [6, 6, 5, 5]))
        ph, pw = int(rng.integers(0, kh // 2 + 1)), int(rng.integers(0, kw // 2 + 1))
        h, w = max(kh - 2 * ph, 1) + int(rng.integers(0, 7)), max(kw - 2 * pw, 1) + int(rng.integers(0, 7))
        ks, stride, padding = (kh, kw), (sh, sw), (ph, pw)
        x = rng.integers(-3, 4, (int(rng.integers(1, 3)), 2, h, w)).astype(np.float64)
        msg = f"x {x.shape}, kernel {ks}, stride {stride}, padding {padding}"
        out, argmax = pool.max_forward(x, ks, stride, padding)
        rout, rarg = ref.max_pool2d_forward(x, ks, stride, padding)
        np.testing.assert_array_equal(out, rout, err_msg=msg)
        np.testing.assert_array_equal(argmax, rarg, err_msg=msg)
        dout = rng.standard_normal(out.shape)
        np.testing.assert_allclose(pool.max_backward(dout, argmax, x.shape, ks, stride, padding),
                                   ref.max_pool2d_backward(dout, argmax, x.shape),
                                   rtol=1e-12, atol=1e-12, err_msg=msg)
        np.testing.assert_allclose(pool.avg_forward(x, ks, stride, padding),
                                   ref.avg_pool2d_forward(x, ks, stride, padding),
                                   rtol=1e-12, atol=1e-12, err_msg=msg)
        np.testing.assert_allclose(pool.avg_backward(dout, x.shape, ks, stride, padding),
                                   ref.avg_pool2d_backward(dout, x.shape, ks, stride, padding),
                                   rtol=1e-12, atol=1e-12, err_msg=msg)


@pytest.mark.parametrize("case", cases_for(GLOBAL_POOL_SHAPES, "cuda"))
def test_global_avg_pool_matches_reference_and_cpu(rng, dtype, dev, host, garbage, case):
    """Global average pooling (N, C, H, W) -> (N, C) forward and backward against the
    reference and the CPU kernels."""
    shape = GLOBAL_POOL_SHAPES[case]
    x = rng.standard_normal(shape).astype(dtype)
    out = garbage(shape[:2], dtype)
    kernel("global_avg_pool2d_forward", "cuda")(out, dev(x))
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(host(out), ref.global_avg_pool2d_forward(x), **tol)
    cpu_out = np.empty(shape[:2], dtype)
    kernel("global_avg_pool2d_forward", "cpu")(cpu_out, x)
    np.testing.assert_allclose(host(out), cpu_out, **tol)
    dout = rng.standard_normal(shape[:2]).astype(dtype)
    dx = garbage(shape, dtype)
    kernel("global_avg_pool2d_backward", "cuda")(dx, dev(dout))
    np.testing.assert_allclose(host(dx), ref.global_avg_pool2d_backward(dout, shape), **tol)
    cpu_dx = np.empty(shape, dtype)
    kernel("global_avg_pool2d_backward", "cpu")(cpu_dx, dout)
    np.testing.assert_allclose(host(dx), cpu_dx, **tol)


@pytest.mark.parametrize("case", cases_for(LP_POOL_CASES, "cuda"))
def test_lp_pool_matches_reference_and_cpu(rng, dtype, close, dev, host, garbage, case):
    """LP pooling forward and backward against the reference and the CPU kernels (NaN at
    the same places: negative sums of odd powers)."""
    x_shape, ks, stride, p = LP_POOL_CASES[case]
    x = lp_input(rng, x_shape, p, dtype)
    out = garbage(_out_shape(x_shape, ks, stride, (0, 0)), dtype)
    kernel("lp_pool2d_forward", "cuda")(out, dev(x), p, ks, stride)
    out = host(out)
    cpu_out = np.empty_like(out)
    kernel("lp_pool2d_forward", "cpu")(cpu_out, x, p, ks, stride)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(cpu_out))
    keep = ~np.isnan(cpu_out)
    close(out[keep], cpu_out[keep], scale=4, err_msg="forward vs cpu")
    close(out[keep], ref.lp_pool2d_forward(x, p, ks, stride)[keep], scale=4,
          err_msg="forward vs reference")
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx = garbage(x_shape, dtype)
    kernel("lp_pool2d_backward", "cuda")(dx, dev(dout), dev(x), p, ks, stride)
    dx = host(dx)
    cpu_dx = np.empty_like(x)
    kernel("lp_pool2d_backward", "cpu")(cpu_dx, dout, x, p, ks, stride)
    np.testing.assert_array_equal(np.isnan(dx), np.isnan(cpu_dx))
    keep = ~np.isnan(cpu_dx)
    close(dx[keep], cpu_dx[keep], scale=4 * ks[0] * ks[1], err_msg="backward vs cpu")


def test_lp_pool_backward_matches_finite_differences(rng, dev, host, garbage):
    """float64 central differences of the CUDA lp_pool2d_forward (p = 3, overlapping
    windows, positive inputs)."""
    ks, stride, p = (2, 2), (1, 1), 3

    def forward(x):
        out = garbage(_out_shape(x.shape, ks, stride, (0, 0)), x.dtype)
        kernel("lp_pool2d_forward", "cuda")(out, dev(x), p, ks, stride)
        return host(out)

    def backward(dout, x):
        dx = garbage(x.shape, x.dtype)
        kernel("lp_pool2d_backward", "cuda")(dx, dev(dout), dev(x), p, ks, stride)
        return (host(dx),)

    check_backward(forward, backward, [rng.uniform(0.3, 2, (1, 1, 3, 3))], rng)
