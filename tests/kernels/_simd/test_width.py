"""The vector code of fastnet/kernels/_simd/ picks its tile sizes and row steps by vector
width: 64 bytes with AVX-512, 32 without. The development machine has
AVX-512, so the 32-byte configuration is forced here through NUMBA_CPU_FEATURES (which
Numba also compiles for, and keys its cache on) in a fresh process with its own cache."""
import os
import subprocess
import sys

import pytest
from numba.core.codegen import get_host_cpu_features


@pytest.fixture(autouse=True)
def kernel_build():
    """Overrides tests/kernels/conftest.py's serial / parallel parametrisation: one AVX2
    subprocess is enough, and each costs a compile of every kernel it runs."""
    return "none"


AVX2_RUN = """
import numpy as np
from fastnet.kernels import conv, pool
from fastnet.kernels._simd import tiles
from tests import reference as ref
from tests.kernels._simd.test_twins import run_all
assert tiles.VEC_BYTES == 32 and tiles.FWD_TILE_MRS[0] == 4, tiles.VEC_BYTES
run_all()  # every intrinsic against its twin at this width
rng = np.random.default_rng(0)
# (x shape, w shape, stride, padding, dx wanted): > 32 output channels (three dw channel
# blocks of 16 at this width), odd sizes; a one-channel first layer (no dx); strided
# convs whose dx takes the shorter tiles (3 and 2 input channels) and one output channel
# (the shortest forward tile); float32 and float64
CASES = (((3, 5, 7, 6), (37, 5, 3, 2), (1, 1), (1, 0), True),
         ((2, 1, 5, 9), (3, 1, 3, 3), (1, 1), (2, 2), False),
         ((2, 3, 9, 8), (5, 3, 3, 3), (2, 2), (1, 1), True),
         ((2, 2, 7, 9), (1, 2, 3, 2), (2, 3), (0, 1), True),
         # tap counts that end on the 12-tap dw tile's tails: 25 (1 left), 6, 2 (half vector)
         ((2, 1, 7, 6), (5, 1, 5, 5), (1, 1), (0, 0), False),
         ((2, 6, 5, 6), (7, 6, 1, 1), (1, 1), (0, 0), True),
         ((2, 2, 5, 6), (3, 2, 1, 1), (1, 1), (0, 0), True))
for dtype in (np.float32, np.float64):
    tol = 1e-4 if dtype == np.float32 else 1e-10
    for xs, ws, stride, pad, want_dx in CASES:
        x = rng.standard_normal(xs).astype(dtype)
        w = rng.standard_normal(ws).astype(dtype)
        b = rng.standard_normal(ws[0]).astype(dtype)
        want = ref.conv2d_forward(x, w, b, stride, pad)
        out = np.empty_like(want)
        conv.conv2d_forward(out, x, w, b, stride, pad)
        np.testing.assert_allclose(out, want, rtol=tol, atol=tol * 10)
        dout = rng.standard_normal(out.shape).astype(dtype)
        dx = np.empty_like(x) if want_dx else None
        dw, db = np.empty_like(w), np.empty_like(b)
        conv.conv2d_backward(dx, dw, db, dout, x, w, None, stride, pad)
        rdx, rdw, rdb = ref.conv2d_backward(dout, x, w, stride, pad)
        for got, ref_ in ((dx, rdx), (dw, rdw), (db, rdb)):
            if got is not None:
                np.testing.assert_allclose(got, ref_, rtol=tol, atol=tol * 10)
# the LSTM's row-block recurrence (6 rows x 16 columns per tile at this width): more
# than one block of rows, a partial one, columns not a whole number of tiles
from fastnet.kernels import recurrent
for dtype in (np.float32, np.float64):
    tol = 1e-4 if dtype == np.float32 else 1e-10
    n, t, f, h = 13, 3, 5, 7
    x = rng.standard_normal((n, t, f)).astype(dtype)
    h0, c0 = (rng.standard_normal((n, h)).astype(dtype) for _ in range(2))
    w_ih = (rng.standard_normal((4 * h, f)) / 3).astype(dtype)
    w_hh = (rng.standard_normal((4 * h, h)) / 3).astype(dtype)
    b_ih, b_hh = (rng.standard_normal(4 * h).astype(dtype) for _ in range(2))
    out, h_n, c_n = np.empty((n, t, h), dtype), np.empty((n, h), dtype), np.empty((n, h), dtype)
    gates, cells = np.empty((n, t, 4 * h), dtype), np.empty((n, t, h), dtype)
    recurrent.lstm_forward(out, h_n, c_n, gates, cells, x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    want = ref.lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    np.testing.assert_allclose(out, want[0], rtol=tol, atol=tol * 10)
    dout = rng.standard_normal(out.shape).astype(dtype)
    grads = [np.empty_like(a) for a in (x, h0, c0, w_ih, w_hh, b_ih, b_hh)]
    recurrent.lstm_backward(*grads, dout, None, None, x, h0, c0, w_ih, w_hh, out, gates, cells)
    rgrads = ref.lstm_backward(dout, None, None, x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    for got, ref_ in zip(grads, rgrads):
        np.testing.assert_allclose(got, ref_, rtol=tol * 10, atol=tol * 10)
# 2x2 average pooling backward: explicit vector code (_simd/pooling.py) with masked last steps
for dtype in (np.float32, np.float64):
    for xs in ((2, 3, 6, 43), (2, 2, 7, 9), (1, 2, 4, 4)):
        dout = rng.standard_normal((xs[0], xs[1], xs[2] // 2, xs[3] // 2)).astype(dtype)
        dx = np.full(xs, 7.0, dtype)
        pool.avg_pool2d_backward(dx, dout, (2, 2), (2, 2), (0, 0))
        np.testing.assert_array_equal(dx, ref.avg_pool2d_backward(dout, xs, (2, 2), (2, 2), (0, 0)))
# 2x2 max pooling forward: explicit vector code with masked last steps; ties and NaNs
for dtype in (np.float32, np.float64):
    for xs in ((2, 3, 6, 43), (2, 2, 7, 9), (1, 2, 4, 4), (1, 1, 2, 34)):
        x = np.round(rng.standard_normal(xs)).astype(dtype)
        x[:, :, ::3, ::5] = np.nan  # at most one NaN per window (with two, the last wins)
        oshape = (xs[0], xs[1], xs[2] // 2, xs[3] // 2)
        out, am = np.empty(oshape, dtype), np.empty(oshape, np.int32)
        pool.max_pool2d_forward(out, am, x, (2, 2), (2, 2), (0, 0))
        rout, rarg = ref.max_pool2d_forward(x, (2, 2), (2, 2), (0, 0))
        np.testing.assert_array_equal(out, rout)
        np.testing.assert_array_equal(am, rarg)
        g = rng.standard_normal(oshape).astype(dtype)
        dx = np.full(xs, 7.0, dtype)
        pool.max_pool2d_backward(dx, g, am, (2, 2), (2, 2), (0, 0))
        np.testing.assert_array_equal(dx, ref.max_pool2d_backward(g, am, xs))
# softmax and cross-entropy rows of one vector (explicit vector code: up to 8 float32
# values at this width) and longer
from fastnet.kernels import activations, losses
for dtype in (np.float32, np.float64):
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for c in (1, 5, 8, 9, 10):
        x = (3 * rng.standard_normal((19, c))).astype(dtype)
        out = np.empty_like(x)
        activations.softmax_forward(out, x)
        np.testing.assert_allclose(out, ref.softmax_forward(x), rtol=tol, atol=tol)
        g = rng.standard_normal(x.shape).astype(dtype)
        dx = np.empty_like(x)
        activations.softmax_backward(dx, g, out)
        np.testing.assert_allclose(dx, ref.softmax_backward(g, out), rtol=tol * 10, atol=tol)
        labels = rng.integers(0, c, 19)
        loss = losses.softmax_cross_entropy_forward(dx, x, labels)
        rloss, rgrad = ref.softmax_cross_entropy(x, labels)
        np.testing.assert_allclose(loss, rloss, rtol=tol * 10)
        np.testing.assert_allclose(dx, rgrad, rtol=tol * 10, atol=tol)
print("ok")
"""


def test_vector_code_at_the_avx2_vector_width(tmp_path):
    features = ",".join("-" + f[1:] if "avx512" in f else f
                        for f in get_host_cpu_features().split(","))
    env = dict(os.environ, NUMBA_CPU_FEATURES=features, NUMBA_CACHE_DIR=str(tmp_path),
               PYTHONPATH=os.getcwd())
    r = subprocess.run([sys.executable, "-c", AVX2_RUN], env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
