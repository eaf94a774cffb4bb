"""Every hand-written LLVM intrinsic of fastnet/kernels/_simd/ against its plain-Numba twin
(``<name>_reference`` in the same module), at the host's vector width; test_width.py runs
``run_all`` again at AVX2's. Random inputs, odd lengths, tiles that accumulate into what
they hold; tiles to rounding (fma vs multiply-add), the rest exactly."""
import numpy as np
import pytest
from numba import njit

from fastnet.kernels._simd import ACCUMULATORS, epilogue, lanes, math, pooling, softmax, tiles



@pytest.fixture(autouse=True)
def kernel_build():
    """Overrides tests/kernels/conftest.py's serial / parallel parametrisation: the
    intrinsics and their twins are not parallel kernels."""
    return "none"


DTYPES = [np.float32, np.float64]
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def _caller(intrinsic, nargs):
    """An uncached njit function that forwards nargs arguments to the intrinsic."""
    names = ", ".join(f"a{i}" for i in range(nargs))
    scope = {"intrinsic": intrinsic}
    exec(f"def call({names}):\n    return intrinsic({names})", scope)  # test glue only
    return njit(scope["call"])


def _close(got, want, dtype, steps):
    tol = TOL[np.dtype(dtype)]
    np.testing.assert_allclose(got, want, rtol=tol * 10, atol=tol * np.sqrt(steps) * 10)


# ---- tiles ------------------------------------------------------------------------------

def check_table_tiles(rng, dtype):
    w = lanes(np.dtype(dtype).itemsize)
    for index, mr in enumerate(tiles.FWD_TILE_MRS):
        cols = (ACCUMULATORS // mr) * w
        steps, astep, abase, bbase = 13, mr + 3, 2, 5
        a = rng.standard_normal(abase + steps * astep + mr).astype(dtype)
        b = rng.standard_normal(bbase + 400 + cols).astype(dtype)
        tab = rng.integers(0, 400, steps).astype(np.intp)
        tile = rng.standard_normal(mr * cols).astype(dtype)
        want = tile.copy()
        _caller(tiles.FWD_TILES[index], 7)(tile, a, b, tab, abase, astep, bbase)
        tiles.table_tile_reference(want, a, b, tab, abase, astep, bbase, mr, cols)
        _close(tile, want, dtype, steps)


def _shift_cases():
    """(intrinsic, rows, vectors, half) of every shift tile."""
    out = [(tiles.DW_TILES[0], ACCUMULATORS, 1, True)]
    out += [(tiles.DW_TILES[nv], ACCUMULATORS // nv, nv, False)
            for nv in range(1, tiles.DW_MAX_NV + 1)]
    for half in (False, True):
        out += [(t, m, 1, half) for t, m in zip(tiles.DW_TAILS[half], tiles.DW_TAIL_MRS)]
    out.append((tiles.rows_tile, tiles.ROWS_MR, tiles.ROWS_NC_VECTORS, False))
    return out


def check_shift_tiles(rng, dtype):
    w = lanes(np.dtype(dtype).itemsize)
    for intrinsic, rows, vectors, half in _shift_cases():
        cols = w // 2 if half else vectors * w
        steps, abase, bbase, bstep = 11, 3, 4, cols + 5
        aofs = rng.integers(0, 50, rows).astype(np.intp)
        a = rng.standard_normal(abase + 50 + steps).astype(dtype)
        b = rng.standard_normal(bbase + steps * bstep + cols).astype(dtype)
        tile = rng.standard_normal(rows * cols).astype(dtype)
        want = tile.copy()
        _caller(intrinsic, 8)(tile, a, b, aofs, abase, bbase, bstep, steps)
        tiles.shift_tile_reference(want, a, b, aofs, abase, bbase, bstep, steps, rows, cols)
        _close(tile, want, dtype, steps)


def check_dot_tiles(rng, dtype):
    w = lanes(np.dtype(dtype).itemsize)
    for mo in tiles.DOT_MOS:
        mt = tiles.DOT_MT[mo]
        steps, gbase, xbase = 5, 3, 2
        gstep = steps * w + 7
        aofs = rng.integers(0, 40, mt).astype(np.intp)
        g = rng.standard_normal(gbase + mo * gstep).astype(dtype)
        x = rng.standard_normal(xbase + 40 + steps * w).astype(dtype)
        tile = rng.standard_normal(mo * mt * w).astype(dtype)
        want = tile.copy()
        _caller(tiles.DOT_TILES[mo], 8)(tile, g, x, aofs, gbase, gstep, xbase, steps)
        tiles.dot_tile_reference(want, g, x, aofs, gbase, gstep, xbase, steps, mo, mt, w)
        _close(tile, want, dtype, steps)


# ---- pooling rows -----------------------------------------------------------------------

def _row_lengths(dtype):
    w = lanes(np.dtype(dtype).itemsize)
    return sorted({1, 2, w // 2 - 1, w // 2, w - 1, w, w + 1, 2 * w + 3})


def check_upsample2(rng, dtype):
    for n in _row_lengths(dtype):
        src = rng.standard_normal(n + 3).astype(dtype)
        dst = rng.standard_normal(8 * n + 20).astype(dtype)
        want = dst.copy()
        args = (1, 4 * n + 9, 2, n, dtype(0.25))
        _caller(pooling.upsample2, 7)(dst, src, *args)
        pooling.upsample2_reference(want, src, *args)
        np.testing.assert_array_equal(dst, want)


def check_max_pool2x2_row(rng, dtype):
    for n in _row_lengths(dtype):
        w = 2 * n + 3  # the input row pitch
        x = rng.standard_normal(3 + 2 * w).astype(dtype)
        x[rng.integers(0, x.size, 2)] = np.nan
        x[5:7] = x[4]  # ties keep the first
        out, arg = np.zeros(n + 2, dtype), np.zeros(n + 2, np.int32)
        want, warg = out.copy(), arg.copy()
        _caller(pooling.max_pool2x2_row, 8)(out, arg, x, 1, 3, w, n, 100)
        pooling.max_pool2x2_row_reference(want, warg, x, 1, 3, w, n, 100)
        np.testing.assert_array_equal(out, want)
        np.testing.assert_array_equal(arg, warg)


def check_max_unpool2x2_row(rng, dtype):
    for n in _row_lengths(dtype):
        w = 2 * n + 1
        x = rng.standard_normal(2 * w).astype(dtype)
        pooled, arg = np.empty(n, dtype), np.empty(n, np.int32)
        pooling.max_pool2x2_row_reference(pooled, arg, x, 0, 0, w, n, 7)
        dout = rng.standard_normal(n).astype(dtype)
        dx = rng.standard_normal(2 * w + 4).astype(dtype)
        want = dx.copy()
        _caller(pooling.max_unpool2x2_row, 8)(dx, dout, arg, 2, w, 0, n, 7)
        pooling.max_unpool2x2_row_reference(want, dout, arg, 2, w, 0, n, 7)
        np.testing.assert_array_equal(dx, want)


# ---- the convolution's epilogue rows ---------------------------------------------------

def check_bias_rows(rng, dtype):
    for n in _row_lengths(dtype):
        src = rng.standard_normal(n + 5).astype(dtype)
        src[rng.integers(0, src.size, 3)] = [np.nan, np.inf, -np.inf]
        src[1] = 0.5  # + bias -0.5: a zero sum
        for bias in (dtype(-0.5), dtype(0)):
            for intrinsic, twin in ((epilogue.bias_row, epilogue.bias_row_reference),
                                    (epilogue.bias_relu_row, epilogue.bias_relu_row_reference)):
                dst = rng.standard_normal(n + 7).astype(dtype)
                want = dst.copy()
                _caller(intrinsic, 6)(dst, src, 2, 1, n, bias)
                twin(want, src, 2, 1, n, bias)
                np.testing.assert_array_equal(dst, want)
                assert np.array_equal(np.signbit(dst), np.signbit(want))


# ---- softmax rows -----------------------------------------------------------------------

def check_softmax_rows(rng, dtype):
    w = lanes(np.dtype(dtype).itemsize)
    for n in range(1, w + 1):
        src = (rng.standard_normal(n) * 5).astype(dtype)
        if dtype == np.float32:  # the exp rows are float32 only
            dst, want = np.empty(n, dtype), np.empty(n, dtype)
            got_ms = _caller(softmax.row1_softmax, 3)(dst, src, dtype(0.5))
            want_ms = softmax.row1_softmax_reference(want, src, dtype(0.5))
            _close(dst, want, dtype, n)
            _close(np.array(got_ms), np.array(want_ms), dtype, n)
            _close(np.array(_caller(softmax.row1_max_sum_exp, 1)(src)),
                   np.array(softmax.row1_max_sum_exp_reference(src)), dtype, n)
        dout, out = rng.standard_normal(n).astype(dtype), rng.random(n).astype(dtype)
        dx, want = np.empty(n, dtype), np.empty(n, dtype)
        _caller(softmax.row1_softmax_grad, 3)(dx, dout, out)
        softmax.row1_softmax_grad_reference(want, dout, out)
        _close(dx, want, dtype, n)


# ---- the scalar intrinsics of math.py ---------------------------------------------------

def check_scalar_intrinsics(rng, dtype):
    if dtype != np.float32:
        return  # fma32 and float32_from_bits are float32 only; maxnum is checked here too
    f = np.float32
    a, b, c = (rng.standard_normal(200).astype(f) * 10 for _ in range(3))
    fma = _caller(math.fma32, 3)
    got = np.array([fma(a[i], b[i], c[i]) for i in range(a.size)])
    want = np.array([math.fma32_reference(a[i], b[i], c[i]) for i in range(a.size)])
    np.testing.assert_allclose(got, want, rtol=2e-7, atol=0)  # double rounding at most
    maxnum = _caller(math.maxnum, 2)
    for x, y in ((f(1), f(2)), (f(np.nan), f(2)), (f(3), f(np.nan)), (f(-0.0), f(-1)),
                 (f(np.inf), f(np.nan)), (f(np.nan), f(np.nan))):
        np.testing.assert_array_equal(maxnum(x, y), math.maxnum_reference(x, y))
    bits = _caller(math.float32_from_bits, 1)
    for v in (0, 1, 126 << 23, 127 << 23, (255 << 23) - 1, -(1 << 31) + 5):
        np.testing.assert_array_equal(bits(np.int32(v)), math.float32_from_bits_reference(np.int32(v)))


CHECKS = [check_table_tiles, check_shift_tiles, check_dot_tiles, check_upsample2,
          check_max_pool2x2_row, check_max_unpool2x2_row, check_bias_rows, check_softmax_rows,
          check_scalar_intrinsics]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__[len("check_"):])
def test_intrinsic_matches_its_twin(check, dtype):
    check(np.random.default_rng(0), dtype)


def test_every_intrinsic_has_a_twin():
    """Each intrinsic of _simd/ has a ``<name>_reference`` beside it, or (tiles made by
    a factory) the reference of its kind; CHECKS covers every module."""
    from numba.core.extending import _Intrinsic
    kinds = {"make_table_tile": "table_tile_reference", "make_shift_tile": "shift_tile_reference",
             "make_dot_tile": "dot_tile_reference"}
    for module in (math, pooling, softmax, epilogue):
        names = [n for n, o in vars(module).items() if isinstance(o, _Intrinsic)]
        assert names, module.__name__
        for name in names:
            assert hasattr(module, f"{name}_reference"), f"{module.__name__}.{name}"
    for factory, ref in kinds.items():
        assert callable(getattr(tiles, factory)) and callable(getattr(tiles, ref))


def run_all():
    """Every check at both dtypes (for test_width.py's AVX2 process)."""
    for check in CHECKS:
        for dtype in DTYPES:
            check(np.random.default_rng(0), dtype)
