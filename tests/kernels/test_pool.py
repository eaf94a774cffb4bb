"""Pooling kernels, NCHW: max_pool2d_forward(out, argmax, x, ks, stride, padding),
max_pool2d_backward(dx, dout, argmax, ks, stride, padding), avg_pool2d_forward(out, x, ks, stride, padding),
avg_pool2d_backward(dx, dout, ks, stride, padding), lp_pool2d_forward(out, x, p, ks, stride),
lp_pool2d_backward(dx, dout, x, p, ks, stride). PyTorch semantics."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fastnet.kernels import _kernel, kernel
from tests import reference as ref
from tests.gradcheck import check_backward

from .cases import GLOBAL_POOL_SHAPES, LP_POOL_CASES, POOL_CASES

CASES = POOL_CASES
IDS = list(CASES)


def _out_shape(x_shape, ks, stride, padding):
    n, c, h, w = x_shape
    return (n, c, ref.conv_output_size(h, ks[0], stride[0], padding[0]),
            ref.conv_output_size(w, ks[1], stride[1], padding[1]))


def _max_forward(x, ks, stride, padding):
    shape = _out_shape(x.shape, ks, stride, padding)
    out = np.full(shape, 123.0, x.dtype)
    argmax = np.full(shape, 12345, np.int32)
    kernel("max_pool2d_forward")(out, argmax, x, ks, stride, padding)
    return out, argmax


def _max_backward(dout, argmax, x_shape, dtype, ks, stride, padding):
    dx = np.full(x_shape, 123.0, dtype)
    kernel("max_pool2d_backward")(dx, dout, argmax, ks, stride, padding)
    return dx


def _avg_forward(x, ks, stride, padding):
    out = np.full(_out_shape(x.shape, ks, stride, padding), 123.0, x.dtype)
    kernel("avg_pool2d_forward")(out, x, ks, stride, padding)
    return out


def _avg_backward(dout, x_shape, ks, stride, padding):
    dx = np.full(x_shape, 123.0, dout.dtype)
    kernel("avg_pool2d_backward")(dx, dout, ks, stride, padding)
    return dx


@pytest.mark.parametrize("case", IDS)
def test_max_forward_matches_reference(rng, dtype, case):
    """Max values and argmax (flat ih*W + iw, int32) match the reference exactly."""
    x_shape, ks, stride, padding = CASES[case]
    x = rng.standard_normal(x_shape).astype(dtype)
    out, argmax = _max_forward(x, ks, stride, padding)
    rout, rarg = ref.max_pool2d_forward(x, ks, stride, padding)
    assert out.dtype == dtype and argmax.dtype == np.int32
    np.testing.assert_array_equal(out, rout)
    np.testing.assert_array_equal(argmax, rarg)


@pytest.mark.parametrize("case", IDS)
def test_max_backward_matches_reference(rng, dtype, close, case):
    """Gradient routed to the argmax (summed where windows overlap); dx overwritten."""
    x_shape, ks, stride, padding = CASES[case]
    x = rng.standard_normal(x_shape).astype(dtype)
    out, argmax = _max_forward(x, ks, stride, padding)
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx = _max_backward(dout, argmax, x_shape, dtype, ks, stride, padding)
    close(dx, ref.max_pool2d_backward(dout, argmax, x_shape), scale=np.sqrt(np.prod(ks)))


@pytest.mark.parametrize("case", ["3x3-s2-p1-odd", "overlap-s1-p1x0", "kernel-is-input-padded",
                                  "2x2-s2-odd", "2x2-s2-long-rows"])
def test_max_backward_matches_finite_differences(rng, case):
    """float64 central differences of max_pool2d_forward (distinct random values)."""
    x_shape, ks, stride, padding = CASES[case]
    x_shape = (1, 2) + x_shape[2:]

    def backward(dout, x):
        _, argmax = _max_forward(x, ks, stride, padding)
        return (_max_backward(dout, argmax, x.shape, x.dtype, ks, stride, padding),)

    x = rng.permutation(np.prod(x_shape)).reshape(x_shape) * 0.01  # distinct: no ties
    check_backward(lambda x: _max_forward(x, ks, stride, padding)[0], backward, [x], rng)


def test_max_ties_go_to_first_index(rng, dtype):
    """With heavy ties (values in {0, 1, 2}) argmax is the first maximum in row-major
    window order, like PyTorch; an all-equal input picks each window's first in-image element."""
    for case in ("overlap-s1-p1x0", "3x3-s2-p1-odd", "kernel-is-input-padded", "large-batch9-c5",
                 "2x2-s2-odd", "2x2-s2-parallel"):
        x_shape, ks, stride, padding = CASES[case]
        x = rng.integers(0, 3, x_shape).astype(dtype)
        out, argmax = _max_forward(x, ks, stride, padding)
        rout, rarg = ref.max_pool2d_forward(x, ks, stride, padding)
        np.testing.assert_array_equal(out, rout, err_msg=case)
        np.testing.assert_array_equal(argmax, rarg, err_msg=case)

    x = np.full((1, 1, 4, 4), 7.0, dtype)
    out, argmax = _max_forward(x, (3, 3), (2, 2), (1, 1))
    np.testing.assert_array_equal(out, np.full((1, 1, 2, 2), 7.0))
    # windows start at (-1, -1), (-1, 1), (1, -1), (1, 1): first in-image elements
    np.testing.assert_array_equal(argmax[0, 0], [[0, 1], [4, 5]])


def test_max_padding_never_wins(dtype):
    """All-negative (and all -inf) inputs: padding is -inf, not 0, so outputs come from the
    image and argmax points inside the window."""
    x = -np.arange(1, 1 + 2 * 3 * 5 * 4, dtype=dtype).reshape(2, 3, 5, 4) - 100
    out, argmax = _max_forward(x, (3, 3), (2, 1), (1, 1))
    assert np.all(out < -100)
    rout, rarg = ref.max_pool2d_forward(x, (3, 3), (2, 1), (1, 1))
    np.testing.assert_array_equal(out, rout)
    np.testing.assert_array_equal(argmax, rarg)
    # the gradient lands only on image elements that some window selected
    dx = _max_backward(np.ones_like(out), argmax, x.shape, dtype, (3, 3), (2, 1), (1, 1))
    assert dx.sum() == out.size

    x = np.full((1, 1, 3, 3), -np.inf, dtype)
    out, argmax = _max_forward(x, (2, 2), (2, 2), (1, 1))
    assert np.all(out == -np.inf)
    np.testing.assert_array_equal(argmax[0, 0], [[0, 1], [3, 4]])


@pytest.mark.parametrize("case", IDS)
def test_avg_forward_matches_reference(rng, dtype, close, case):
    """Average pooling with count_include_pad=True (divides by KH*KW)."""
    x_shape, ks, stride, padding = CASES[case]
    x = rng.standard_normal(x_shape).astype(dtype)
    close(_avg_forward(x, ks, stride, padding), ref.avg_pool2d_forward(x, ks, stride, padding))


def test_avg_counts_padding():
    """A padded corner window of ones averages to (in-image count) / (KH*KW)."""
    x = np.ones((1, 1, 2, 2), np.float64)
    out = _avg_forward(x, (2, 2), (2, 2), (1, 1))
    np.testing.assert_allclose(out[0, 0], np.full((2, 2), 0.25))


@pytest.mark.parametrize("case", IDS)
def test_avg_backward_matches_reference(rng, dtype, close, case):
    """Average-pool gradient against the reference; dx pre-filled with garbage is overwritten."""
    x_shape, ks, stride, padding = CASES[case]
    dout = rng.standard_normal(_out_shape(x_shape, ks, stride, padding)).astype(dtype)
    close(_avg_backward(dout, x_shape, ks, stride, padding),
          ref.avg_pool2d_backward(dout, x_shape, ks, stride, padding))


@pytest.mark.parametrize("case", ["3x3-s2-p1-odd", "nonsquare-3x2-s1x2-p1x1", "kernel-is-input-padded",
                                  "2x2-s2-odd"])
def test_avg_backward_matches_finite_differences(rng, case):
    """float64 central differences of avg_pool2d_forward."""
    x_shape, ks, stride, padding = CASES[case]
    x = rng.standard_normal((1, 2) + x_shape[2:])
    check_backward(lambda x: _avg_forward(x, ks, stride, padding),
                   lambda dout, x: (_avg_backward(dout, x.shape, ks, stride, padding),), [x], rng)


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(n=st.integers(1, 3), c=st.integers(1, 3), kh=st.integers(1, 5), kw=st.integers(1, 5),
       sh=st.integers(1, 4), sw=st.integers(1, 4), eh=st.integers(0, 6), ew=st.integers(0, 6),
       data=st.data())
def test_property_random_geometry(n, c, kh, kw, sh, sw, eh, ew, data):
    """Any geometry with padding <= kernel/2 (float64): max and avg, forward and backward."""
    ph = data.draw(st.integers(0, kh // 2))
    pw = data.draw(st.integers(0, kw // 2))
    seed = data.draw(st.integers(0, 2**16))
    h, w = max(kh - 2 * ph, 1) + eh, max(kw - 2 * pw, 1) + ew
    ks, stride, padding = (kh, kw), (sh, sw), (ph, pw)
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 4, (n, c, h, w)).astype(np.float64)  # ties included
    out, argmax = _max_forward(x, ks, stride, padding)
    rout, rarg = ref.max_pool2d_forward(x, ks, stride, padding)
    np.testing.assert_array_equal(out, rout)
    np.testing.assert_array_equal(argmax, rarg)
    dout = rng.standard_normal(out.shape)
    np.testing.assert_allclose(_max_backward(dout, argmax, x.shape, x.dtype, ks, stride, padding),
                               ref.max_pool2d_backward(dout, argmax, x.shape), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_avg_forward(x, ks, stride, padding),
                               ref.avg_pool2d_forward(x, ks, stride, padding), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_avg_backward(dout, x.shape, ks, stride, padding),
                               ref.avg_pool2d_backward(dout, x.shape, ks, stride, padding),
                               rtol=1e-12, atol=1e-12)


def test_max_pool_propagates_nan_wherever_it_sits():
    """A NaN anywhere in a window gives NaN, as in PyTorch (not only in first position)."""
    for pos in range(4):
        x = np.array([1.0, 2.0, 3.0, 0.5], np.float32)
        x[pos] = np.nan
        out = np.empty((1, 1, 1, 1), np.float32)
        argmax = np.empty((1, 1, 1, 1), np.int32)
        kernel("max_pool2d_forward")(out, argmax, x.reshape(1, 1, 2, 2), (2, 2), (2, 2), (0, 0))
        assert np.isnan(out[0, 0, 0, 0]) and argmax[0, 0, 0, 0] == pos, pos


# ---- global average pooling: (N, C, H, W) -> (N, C) -------------------------------------

@pytest.mark.parametrize("case", list(GLOBAL_POOL_SHAPES))
def test_global_avg_pool_matches_reference(rng, dtype, case):
    shape = GLOBAL_POOL_SHAPES[case]
    x = rng.standard_normal(shape).astype(dtype)
    out = np.full(shape[:2], np.nan, dtype)
    kernel("global_avg_pool2d_forward")(out, x)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(out, ref.global_avg_pool2d_forward(x), **tol)
    dout = rng.standard_normal(shape[:2]).astype(dtype)
    dx = np.full(shape, np.nan, dtype)
    kernel("global_avg_pool2d_backward")(dx, dout)
    np.testing.assert_allclose(dx, ref.global_avg_pool2d_backward(dout, shape), **tol)
    assert out.dtype == dx.dtype == dtype


def test_global_avg_pool_backward_matches_finite_differences(rng):
    def forward(x):
        out = np.empty(x.shape[:2])
        kernel("global_avg_pool2d_forward")(out, x)
        return out

    def backward(dout, x):
        dx = np.empty_like(x)
        kernel("global_avg_pool2d_backward")(dx, dout)
        return [dx]

    check_backward(forward, backward, [rng.standard_normal((2, 3, 3, 2))], rng)


def test_avg_2x2_backward_into_strided_views(rng, dtype):
    """dx and dout as strided views (direct kernel callers may pass them): the same
    result as into fresh arrays (the 2x2 fast path needs C-contiguous buffers and
    leaves these to the general kernel)."""
    dout_full = rng.standard_normal((2, 6, 4, 5)).astype(dtype)
    dout = dout_full[:, ::2]
    want = ref.avg_pool2d_backward(dout, (2, 3, 8, 11), (2, 2), (2, 2), (0, 0))
    big = np.full((2, 3, 8, 22), 7.0, dtype)
    dx = big[:, :, :, ::2]
    kernel("avg_pool2d_backward")(dx, dout, (2, 2), (2, 2), (0, 0))
    np.testing.assert_array_equal(dx, want)
    assert np.all(big[:, :, :, 1::2] == 7)


@pytest.mark.parametrize("case", ["2x2-s2-long-rows", "3x3-s2-p1-odd"])
def test_max_forward_strided_views(rng, dtype, case):
    """x, out and argmax as strided views (direct kernel callers may pass them): the same
    values and argmax as the reference, and nothing written between the view's elements
    (the kernels work on flat buffers; the wrapper goes through copies)."""
    x_shape, ks, stride, padding = CASES[case]
    x = rng.standard_normal(x_shape[:3] + (2 * x_shape[3],)).astype(dtype)[..., ::2]
    rout, rarg = ref.max_pool2d_forward(x, ks, stride, padding)
    big = np.full(rout.shape[:3] + (2 * rout.shape[3],), 7.0, dtype)
    bigarg = np.full(big.shape, -5, np.int32)
    out, argmax = big[..., ::2], bigarg[..., 1::2]
    kernel("max_pool2d_forward")(out, argmax, x, ks, stride, padding)
    np.testing.assert_array_equal(out, rout)
    np.testing.assert_array_equal(argmax, rarg)
    assert np.all(big[..., 1::2] == 7) and np.all(bigarg[..., ::2] == -5)


@pytest.mark.parametrize("case", ["2x2-s2-odd", "3x3-s2-p1-odd"])
def test_max_backward_into_strided_views(rng, dtype, case):
    """dx, dout and argmax as strided views: the reference's gradient, and nothing written
    between dx's elements."""
    x_shape, ks, stride, padding = CASES[case]
    x = rng.standard_normal(x_shape).astype(dtype)
    out, argmax = _max_forward(x, ks, stride, padding)
    dout = np.repeat(rng.standard_normal(out.shape).astype(dtype), 2, axis=3)[..., ::2]
    am = np.repeat(argmax, 2, axis=3)[..., 1::2]
    big = np.full(x_shape[:3] + (2 * x_shape[3],), 7.0, dtype)
    dx = big[..., 1::2]
    kernel("max_pool2d_backward")(dx, dout, am, ks, stride, padding)
    np.testing.assert_allclose(dx, ref.max_pool2d_backward(dout, argmax, x_shape), rtol=1e-6)
    assert np.all(big[..., ::2] == 7)


def test_2x2_pooling_with_other_dtypes_takes_the_general_kernels(rng):
    """The 2x2 vector code takes one float dtype and int32 argmax; an int64 argmax, a
    float32 gradient into a float64 dx, or integer data go to the general kernels and
    give the reference's answer instead of a typing error. (The raw kernels: kernel()
    refuses mixed float dtypes and integer data, tests/kernels/test_checked.py.)"""
    x = rng.standard_normal((2, 3, 6, 9))
    out, am64 = np.empty((2, 3, 3, 4)), np.empty((2, 3, 3, 4), np.int64)
    _kernel("max_pool2d_forward")(out, am64, x, (2, 2), (2, 2), (0, 0))
    rout, rarg = ref.max_pool2d_forward(x, (2, 2), (2, 2), (0, 0))
    np.testing.assert_array_equal(out, rout)
    np.testing.assert_array_equal(am64, rarg)
    g32 = rng.standard_normal(out.shape).astype(np.float32)
    dx = np.full(x.shape, 7.0)
    _kernel("max_pool2d_backward")(dx, g32, am64, (2, 2), (2, 2), (0, 0))
    np.testing.assert_allclose(dx, ref.max_pool2d_backward(g32, rarg, x.shape))
    dx = np.full(x.shape, 7.0)
    _kernel("avg_pool2d_backward")(dx, g32, (2, 2), (2, 2), (0, 0))
    np.testing.assert_allclose(dx, ref.avg_pool2d_backward(g32, x.shape, (2, 2), (2, 2), (0, 0)))
    xi = np.arange(2 * 3 * 6 * 9).reshape(2, 3, 6, 9)
    outi, ami = np.empty((2, 3, 3, 4), np.int64), np.empty((2, 3, 3, 4), np.int32)
    _kernel("max_pool2d_forward")(outi, ami, xi, (2, 2), (2, 2), (0, 0))
    np.testing.assert_array_equal(outi, ref.max_pool2d_forward(xi, (2, 2), (2, 2), (0, 0))[0])


# ---- LP (power-average) pooling ---------------------------------------------------------------

def lp_input(rng, shape, p, dtype):
    """Values in [-2, 2] with some exact zeros; |x| where p is not a whole number."""
    x = rng.uniform(-2, 2, shape)
    x.reshape(-1)[::7] = 0
    return (x if float(p).is_integer() else np.abs(x)).astype(dtype)


def lp_forward(x, p, ks, stride):
    out = np.full(_out_shape(x.shape, ks, stride, (0, 0)), 123.0, x.dtype)
    kernel("lp_pool2d_forward")(out, x, p, ks, stride)
    return out


def lp_backward(dout, x, p, ks, stride):
    dx = np.full(x.shape, 123.0, x.dtype)
    kernel("lp_pool2d_backward")(dx, dout, x, p, ks, stride)
    return dx


def _same_nan(got, want):
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    keep = ~np.isnan(want)
    return got[keep], want[keep]


@pytest.mark.parametrize("case", list(LP_POOL_CASES))
def test_lp_matches_reference(rng, dtype, close, case):
    """Forward and backward against the reference (NaN exactly where a window's sum of x^p
    is negative, for odd p); garbage in out / dx is overwritten."""
    x_shape, ks, stride, p = LP_POOL_CASES[case]
    x = lp_input(rng, x_shape, p, dtype)
    out = lp_forward(x, p, ks, stride)
    close(*_same_nan(out, ref.lp_pool2d_forward(x, p, ks, stride)), scale=4)
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx = lp_backward(dout, x, p, ks, stride)
    close(*_same_nan(dx, ref.lp_pool2d_backward(dout, x, p, ks, stride)), scale=4 * ks[0] * ks[1])


@pytest.mark.parametrize("case", ["p2-2x2-s2", "p3-3x2-s2x3-odd", "p1.5-overlap-s1",
                                  "p0.5-2x2-s1", "p4-stride-over-kernel"])
def test_lp_backward_matches_finite_differences(rng, case):
    """float64 central differences of lp_pool2d_forward (inputs away from 0, positive
    where the windows' sums must stay positive)."""
    x_shape, ks, stride, p = LP_POOL_CASES[case]
    x = rng.uniform(0.3, 2, (1, 2) + x_shape[2:])
    if p in (2, 4):
        x *= rng.choice([-1.0, 1.0], x.shape)
    check_backward(lambda x: lp_forward(x, p, ks, stride),
                   lambda dout, x: (lp_backward(dout, x, p, ks, stride),), [x], rng)


def test_lp_zero_windows_negative_sums_and_nonfinite(dtype):
    """As PyTorch's lp_pool2d: a window of zeros gives 0 and a zero gradient (not NaN,
    though the derivative of sqrt is inf there); a negative sum with odd p gives NaN
    forward and backward, but p = 1 passes it; NaN propagates; an inf gives inf, and
    gradient 0 to its window's finite elements, NaN to itself (0 * inf)."""
    x = np.array([[0, 0, 1, -2, np.nan, 1, np.inf, 3],
                  [0, 0, 0, 0, 2, 2, 1, 1]], dtype).reshape(1, 1, 2, 8)
    g = np.ones((1, 1, 1, 4), dtype)
    out = lp_forward(x, 2, (2, 2), (2, 2))
    np.testing.assert_array_equal(out[0, 0, 0, [0, 3]], [0, np.inf])
    assert np.isnan(out[0, 0, 0, 2])
    dx = lp_backward(g, x, 2, (2, 2), (2, 2))
    np.testing.assert_array_equal(dx[0, 0, :, :2], 0)
    assert np.all(np.isnan(dx[0, 0, :, 4:6]))
    np.testing.assert_array_equal(dx[0, 0, :, 6:], [[np.nan, 0], [0, 0]])
    out3 = lp_forward(x, 3, (2, 2), (2, 2))
    assert np.isnan(out3[0, 0, 0, 1]) and np.all(np.isnan(lp_backward(g, x, 3, (2, 2), (2, 2))[0, 0, :, 2:4]))
    out1 = lp_forward(x, 1, (2, 2), (2, 2))
    assert out1[0, 0, 0, 1] == -1
    np.testing.assert_array_equal(lp_backward(g, x, 1, (2, 2), (2, 2))[0, 0, :, 2:4], 1)


def test_lp_float32_stays_float32_and_exact_for_squares():
    """float32 in, float32 out; sums of squares of small integers are exact: sqrt(1+4+4+16) = 5."""
    x = np.array([1, 2, 2, 4], np.float32).reshape(1, 1, 2, 2)
    out = lp_forward(x, 2, (2, 2), (2, 2))
    assert out.dtype == np.float32 and out[0, 0, 0, 0] == 5
