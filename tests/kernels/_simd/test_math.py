"""fastnet.kernels._simd.math: the vectorisable float32 exp / tanh, over the whole float32
range, in ulps of the exactly rounded result (float64 libm as the reference), through
the kernels that use them (serial and parallel builds, see conftest.py)."""
import numpy as np
import pytest
from numba import njit

from fastnet.kernels import activations
from fastnet.kernels._jit import FASTMATH
from fastnet.kernels._simd.math import fast_exp, fast_log1p_unit, fast_tanh, row_max

SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e-30, 0.625, -0.625,
                    88.72, 88.7229, 89.0, -87.3, -87.4, -100.0, 20.0, -20.0], np.float32)


@njit(fastmath=FASTMATH, error_model="numpy")
def _exp_loop(out, x):
    for i in range(x.size):
        out[i] = fast_exp(x[i])


@njit(fastmath=FASTMATH, error_model="numpy")
def _tanh_loop(out, x):
    for i in range(x.size):
        out[i] = fast_tanh(x[i])


@njit(fastmath=FASTMATH, error_model="numpy")
def _log1p_loop(out, x):
    for i in range(x.size):
        out[i] = fast_log1p_unit(x[i])


@njit(fastmath=FASTMATH, error_model="numpy")
def _row_max_of(r):
    return row_max(r)


def every_float32(step=61):
    """Every step-th bit pattern: all binades, both signs, no NaN/inf."""
    x = np.arange(0, 2**32, step, dtype=np.uint64).astype(np.uint32).view(np.float32)
    return x[np.isfinite(x)]


def ulps(got, exact):
    spacing = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    return np.abs(got.astype(np.float64) - exact) / spacing


def test_exp_float32_within_2_ulp_and_its_ends():
    x = every_float32()
    x = x[np.abs(x) < 100]
    got = np.empty_like(x)
    _exp_loop(got, x)
    with np.errstate(over="ignore", under="ignore"):
        exact = np.exp(x.astype(np.float64))
    normal = (exact > 2.4e-38) & (exact < np.finfo(np.float32).max)
    assert ulps(got[normal], exact[normal]).max() <= 2
    assert np.all(got[exact > np.finfo(np.float32).max] == np.inf)  # overflow as libm
    low = got[exact <= 2.4e-38]  # the lowest binade and below: exact or flushed to 0
    assert np.all((low >= 0) & (low < 2.5e-38))


def test_exp_float32_special_values():
    got = np.empty_like(SPECIAL)
    _exp_loop(got, SPECIAL)
    assert np.isnan(got[0]) and got[1] == np.inf and got[2] == 0
    assert got[3] == 1 and got[4] == 1 and got[10] == np.inf and got[11] == np.inf
    assert got[14] == 0


def test_tanh_float32_within_2_ulp_everywhere():
    x = every_float32()
    got = np.empty_like(x)
    activations.tanh_forward(got, x)
    exact = np.tanh(x.astype(np.float64))
    tiny = np.abs(x) < 1e-37  # spacing of a subnormal: compare absolutely
    assert ulps(got[~tiny], exact[~tiny]).max() <= 2
    assert np.abs(got[tiny] - exact[tiny]).max() < 1e-37
    # exactly odd, and monotone around the switch between the polynomial and the exp form
    pos = x[x > 0]
    neg = np.empty_like(pos)
    activations.tanh_forward(neg, -pos)
    np.testing.assert_array_equal(neg, -got[x > 0])
    edge = np.nextafter(np.float32(0.625), np.float32(0)) + np.arange(-50, 50, dtype=np.float32) * np.float32(6e-8)
    out = np.empty_like(edge)
    _tanh_loop(out, edge)
    assert np.all(np.diff(out) >= 0)


def test_tanh_float32_special_values():
    got = np.empty_like(SPECIAL)
    _tanh_loop(got, SPECIAL)
    assert np.isnan(got[0]) and got[1] == 1 and got[2] == -1
    assert got[3] == 0 and np.signbit(got[4]) and got[5] == np.float32(1e-30)
    assert got[15] == 1 and got[16] == -1


def test_sigmoid_float32_accuracy_and_ends():
    x = every_float32(step=257)
    x = x[np.abs(x) < 80]
    got = np.empty_like(x)
    activations.sigmoid_forward(got, x)
    exact = 1 / (1 + np.exp(-x.astype(np.float64)))
    assert ulps(got, exact).max() <= 3
    got = np.empty_like(SPECIAL)
    activations.sigmoid_forward(got, SPECIAL)
    assert np.isnan(got[0]) and got[1] == 1 and got[2] == 0 and got[3] == 0.5


def test_log1p_unit_float32_within_3_ulp_on_0_1():
    """log1p(e) for e in [0, 1] (the stable log-sigmoid's e = exp(-|x|)): every float32
    there (every 61st), within 3 ulp, tiny e keeping its relative accuracy (log1p(e) ~ e);
    NaN stays NaN."""
    x = every_float32()
    x = np.concatenate([x[(x >= 0) & (x <= 1)], np.float32([0, 1, np.nan])])
    got = np.empty_like(x)
    _log1p_loop(got, x)
    exact = np.log1p(x.astype(np.float64))
    assert got[-3] == 0 and np.isnan(got[-1])
    normal = exact[:-1] > 1.2e-38
    assert ulps(got[:-1][normal], exact[:-1][normal]).max() <= 3


@pytest.mark.parametrize("fn, ref", [(_exp_loop, np.exp), (_tanh_loop, np.tanh),
                                     (_log1p_loop, np.log1p)])
def test_float64_keeps_libm(fn, ref):
    x = np.random.default_rng(0).uniform(-30, 30, 1001)
    x = np.abs(x) / 30 if fn is _log1p_loop else x
    got = np.empty_like(x)
    fn(got, x)
    np.testing.assert_allclose(got, ref(x), rtol=5e-16, atol=0)  # libm and NumPy may differ by an ulp


def test_softmax_and_cross_entropy_with_masked_logits():
    # -inf logits (masking) get probability 0, and the loss stays finite
    from fastnet.kernels import losses

    x = np.array([[0.0, -np.inf, 1.0, 2.0], [-1e4, 1e4, 0.0, -np.inf]], np.float32)
    p = np.empty_like(x)
    activations.softmax_forward(p, x)
    assert p[0, 1] == 0 and p[1, 3] == 0 and p[1, 0] == 0
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-6)
    grad = np.empty_like(x)
    loss = losses.softmax_cross_entropy_forward(grad, x, np.array([2, 1]))
    assert np.isfinite(loss) and np.all(np.isfinite(grad))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 2, 15, 16, 17, 33, 1000])
def test_row_max_matches_numpy(rng, dtype, n):
    """The vectorised row max (llvm.maxnum) equals np.max wherever the largest value sits
    (the first, a middle and the last element: the scalar remainder included), on
    all-negative rows and rows with infinities."""
    base = rng.standard_normal(n).astype(dtype) - dtype(10)
    for where in sorted({0, n // 2, n - 1}):
        r = base.copy()
        r[where] = dtype(3)
        assert _row_max_of(r) == 3
    assert _row_max_of(base) == base.max()
    r = base.copy()
    r[n // 2] = -np.inf
    assert _row_max_of(r) == r.max()
    r[n - 1] = np.inf
    assert _row_max_of(r) == np.inf
    assert _row_max_of(np.full(n, -np.inf, dtype)) == -np.inf


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_max_skips_nan(dtype):
    """maxnum semantics: a NaN loses to any number; only an all-NaN row gives NaN (the
    softmax and log-sum-exp callers still turn a row with a NaN into NaN, see
    test_activations.py)."""
    r = np.array([1.0, np.nan, 5.0, 2.0] * 9 + [np.nan], dtype)
    assert _row_max_of(r) == 5
    assert np.isnan(_row_max_of(np.full(19, np.nan, dtype)))
