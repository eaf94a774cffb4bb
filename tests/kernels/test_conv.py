"""Convolution kernels: im2col(cols, x, ks, stride, padding), col2im(dx, cols, ks, stride,
padding), conv2d_forward(out, x, w, b, stride, padding, activation) and
conv2d_backward(dx, dw, db, dout, x, w, out, stride, padding, activation), NCHW.
Every conv takes the implicit GEMM (conv/implicit_gemm.py), but backward with dx of a
one-channel input at stride 1, which takes conv/direct.py: the one-channel cases and
test_direct_size_rule_boundary and test_one_channel_dx_both_paths run that path,
test_path_rule checks the choice."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fastnet.kernels import kernel
from fastnet.kernels._simd import tiles
from fastnet.kernels._jit import KernelFamily
from fastnet.kernels.conv import direct, implicit_gemm, implicit_gemm_dw
from tests import reference as ref
from tests.gradcheck import check_backward
from tests.kernels.cases import CONV_CASES as CASES  # (x, w shape, stride, padding): both devices

IDS = list(CASES)


def _out_hw(x_shape, w_shape, stride, padding):
    return (ref.conv_output_size(x_shape[2], w_shape[2], stride[0], padding[0]),
            ref.conv_output_size(x_shape[3], w_shape[3], stride[1], padding[1]))


def _cols_shape(x_shape, w_shape, stride, padding):
    oh, ow = _out_hw(x_shape, w_shape, stride, padding)
    return (x_shape[1] * w_shape[2] * w_shape[3], x_shape[0] * oh * ow)


def _forward(x, w, b, stride, padding, activation=None):
    """-> out, pre-filled with garbage."""
    oh, ow = _out_hw(x.shape, w.shape, stride, padding)
    out = np.full((x.shape[0], w.shape[0], oh, ow), 123.0, x.dtype)
    kernel("conv2d_forward")(out, x, w, b, stride, padding, activation)
    return out


def _backward(dout, x, w, out, stride, padding, activation=None, want=("dx", "dw", "db")):
    """-> (dx, dw, db), garbage-filled before the call; None where not wanted."""
    dx = np.full(x.shape, 123.0, x.dtype) if "dx" in want else None
    dw = np.full(w.shape, 123.0, x.dtype)
    db = np.full(w.shape[0], 123.0, x.dtype) if "db" in want else None
    kernel("conv2d_backward")(dx, dw, db, dout, x, w, out, stride, padding, activation)
    return dx, dw, db


def _data(rng, dtype, x_shape, w_shape):
    x = rng.standard_normal(x_shape).astype(dtype)
    fan_in = w_shape[1] * w_shape[2] * w_shape[3]
    w = (rng.standard_normal(w_shape) / np.sqrt(fan_in)).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    return x, w, b


@pytest.mark.parametrize("case", IDS)
def test_im2col_matches_reference(rng, dtype, case):
    """im2col's layout, element by element, zeros in the padding (exact: it is a copy)."""
    x_shape, w_shape, stride, padding = CASES[case]
    x = rng.standard_normal(x_shape).astype(dtype)
    ks = w_shape[2:]
    cols = np.full(_cols_shape(x_shape, w_shape, stride, padding), 123.0, dtype)
    kernel("im2col")(cols, x, ks, stride, padding)
    assert cols.dtype == dtype
    np.testing.assert_array_equal(cols, ref.im2col(x, ks, stride, padding))


@pytest.mark.parametrize("case", IDS)
def test_col2im_matches_reference_and_is_adjoint(rng, dtype, close, case):
    """col2im sums overlaps like the loop reference, overwrites dx, and
    <im2col(x), c> == <x, col2im(c)>."""
    x_shape, w_shape, stride, padding = CASES[case]
    ks = w_shape[2:]
    c = rng.standard_normal(_cols_shape(x_shape, w_shape, stride, padding)).astype(dtype)
    dx = np.full(x_shape, 123.0, dtype)
    kernel("col2im")(dx, c, ks, stride, padding)
    overlap = np.sqrt(np.prod(ks))  # up to KH*KW terms summed per element
    close(dx, ref.col2im(c, x_shape, ks, stride, padding), scale=overlap)

    x = rng.standard_normal(x_shape).astype(dtype)
    cols = np.empty_like(c)
    kernel("im2col")(cols, x, ks, stride, padding)
    lhs = np.sum(cols.astype(np.float64) * c)
    rhs = np.sum(x.astype(np.float64) * dx)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-4 if dtype == np.float32 else 1e-10, atol=1e-3)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("case", IDS)
def test_forward_matches_reference(rng, dtype, close, case, bias):
    """conv2d_forward against the shifted-einsum reference."""
    x_shape, w_shape, stride, padding = CASES[case]
    x, w, b = _data(rng, dtype, x_shape, w_shape)
    b = b if bias else None
    out = _forward(x, w, b, stride, padding)
    fan_in = w_shape[1] * w_shape[2] * w_shape[3]
    close(out, ref.conv2d_forward(x, w, b, stride, padding), scale=np.sqrt(fan_in))


@pytest.mark.parametrize("case", IDS)
def test_backward_matches_reference(rng, dtype, close, case):
    """dx, dw, db against the reference; garbage-filled outputs are overwritten."""
    x_shape, w_shape, stride, padding = CASES[case]
    x, w, b = _data(rng, dtype, x_shape, w_shape)
    out = _forward(x, w, b, stride, padding)
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx, dw, db = _backward(dout, x, w, None, stride, padding)
    rdx, rdw, rdb = ref.conv2d_backward(dout, x, w, stride, padding)
    m = dout.shape[0] * dout.shape[2] * dout.shape[3]  # terms summed into dw, db
    close(dx, rdx, scale=np.sqrt(w_shape[0] * w_shape[2] * w_shape[3]), err_msg="dx")
    close(dw, rdw, scale=np.sqrt(m), err_msg="dw")
    close(db, rdb, scale=np.sqrt(m), err_msg="db")


def test_backward_dx_db_none(rng, dtype, close):
    """dx=None and db=None: dw alone, and each of dx / db alone, are still right."""
    x_shape, w_shape, stride, padding = CASES["nonsquare-s2x3-p1x0"]
    x, w, _ = _data(rng, dtype, x_shape, w_shape)
    out = _forward(x, w, None, stride, padding)
    dout = rng.standard_normal(out.shape).astype(dtype)
    rdx, rdw, rdb = ref.conv2d_backward(dout, x, w, stride, padding)
    _, dw, _ = _backward(dout, x, w, None, stride, padding, want=())
    close(dw, rdw, scale=5.0, err_msg="dw")
    dx, _, _ = _backward(dout, x, w, None, stride, padding, want=("dx",))
    close(dx, rdx, scale=5.0, err_msg="dx")
    _, _, db = _backward(dout, x, w, None, stride, padding, want=("db",))
    close(db, rdb, scale=5.0, err_msg="db")


@pytest.mark.parametrize("case", ["large-batch9-c5", "batch11-s1-p1x2"])
@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_fused_activation_matches_reference(rng, dtype, close, activation, case):
    """act(conv + b) forward; backward through it equals the plain conv backward of
    dout * act'(out)."""
    x_shape, w_shape, stride, padding = CASES[case]
    x, w, b = _data(rng, dtype, x_shape, w_shape)
    out = _forward(x, w, b, stride, padding, activation)
    fan_in = w_shape[1] * w_shape[2] * w_shape[3]
    close(out, ref.conv2d_forward(x, w, b, stride, padding, activation), scale=np.sqrt(fan_in))
    dout = rng.standard_normal(out.shape).astype(dtype)
    got = _backward(dout, x, w, out, stride, padding, activation)
    want = ref.conv2d_backward(dout, x, w, stride, padding, out, activation)
    for g, r, name in zip(got, want, ("dx", "dw", "db")):
        close(g, r, scale=np.sqrt(dout.size), err_msg=name)


@pytest.mark.parametrize("case", ["3x3-s1-p1", "nonsquare-s2x3-p1x0", "padding-over-half-kernel",
                                  "kernel-is-input-padded-s2"])
def test_backward_matches_finite_differences(rng, case):
    """float64 central differences of conv2d_forward for x, w and b (tiny shapes)."""
    x_shape, w_shape, stride, padding = CASES[case]
    # shrink to keep the number of forward calls small
    x_shape = (min(x_shape[0], 2), min(x_shape[1], 2)) + x_shape[2:]
    w_shape = (min(w_shape[0], 2), x_shape[1]) + w_shape[2:]
    x, w, b = _data(rng, np.float64, x_shape, w_shape)

    def backward(dout, x, w, b):
        return _backward(dout, x, w, None, stride, padding)

    check_backward(lambda x, w, b: _forward(x, w, b, stride, padding), backward,
                   [x, w, b], rng, names=["x", "w", "b"])


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(n=st.integers(1, 3), c=st.integers(1, 3), o=st.integers(1, 3),
       kh=st.integers(1, 4), kw=st.integers(1, 4), sh=st.integers(1, 3), sw=st.integers(1, 3),
       ph=st.integers(0, 3), pw=st.integers(0, 3), eh=st.integers(0, 5), ew=st.integers(0, 5),
       seed=st.integers(0, 2**16))
def test_property_forward_backward_random_geometry(n, c, o, kh, kw, sh, sw, ph, pw, eh, ew, seed):
    """Any geometry with H + 2*ph >= KH (float64): forward and backward match the reference."""
    h, wd = max(kh - 2 * ph, 1) + eh, max(kw - 2 * pw, 1) + ew
    rng = np.random.default_rng(seed)
    x, w, b = _data(rng, np.float64, (n, c, h, wd), (o, c, kh, kw))
    stride, padding = (sh, sw), (ph, pw)
    out = _forward(x, w, b, stride, padding)
    np.testing.assert_allclose(out, ref.conv2d_forward(x, w, b, stride, padding), rtol=1e-10, atol=1e-10)
    dout = rng.standard_normal(out.shape)
    for got, want in zip(_backward(dout, x, w, None, stride, padding),
                         ref.conv2d_backward(dout, x, w, stride, padding)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


class _FamilySpy:
    """Stands in for a KernelFamily: records the family's name when a member is taken."""

    def __init__(self, family, name, calls):
        self.family, self.name, self.calls = family, name, calls

    def __getitem__(self, key):
        self.calls.append(self.name)
        return self.family[key]


# the kernels that tell which path ran, by module
SPIED = {implicit_gemm: ("conv_tiles",), implicit_gemm_dw: ("tiled_dw", "dot_product_dw"),
         direct: ("_dw", "_dx")}


def _spy(monkeypatch):
    """Records the name of every path kernel (SPIED) that runs."""
    calls = []
    for module, names in SPIED.items():
        for name in names:
            f = getattr(module, name)
            if isinstance(f, KernelFamily):
                monkeypatch.setattr(module, name, _FamilySpy(f, name, calls))
            else:
                monkeypatch.setattr(module, name,
                                    lambda *a, f=f, name=name: (calls.append(name), f(*a))[1])
    return calls


def _check_both_ways(rng, dtype, close, c, k, padding, want=("dx", "dw", "db"), stride=(1, 1)):
    x_shape, w_shape = (10, c, 7, 6), (3, c, k, k)
    x, w, b = _data(rng, dtype, x_shape, w_shape)
    out = _forward(x, w, b, stride, padding)
    close(out, ref.conv2d_forward(x, w, b, stride, padding), scale=np.sqrt(c * k * k))
    dout = rng.standard_normal(out.shape).astype(dtype)
    got = _backward(dout, x, w, None, stride, padding, want=want)
    m = dout.shape[0] * dout.shape[2] * dout.shape[3]
    for g, r, name in zip(got, ref.conv2d_backward(dout, x, w, stride, padding),
                          ("dx", "dw", "db")):
        if g is not None:
            close(g, r, scale=np.sqrt(m), err_msg=name)


@pytest.mark.parametrize("ks, direct_dx", [((10, 15), True), ((1, 151), False), ((1, 1), True)],
                         ids=["k150-direct", "k151-implicit", "k1-direct"])
def test_direct_size_rule_boundary(rng, dtype, close, monkeypatch, ks, direct_dx):
    """dx of a one-channel input at stride 1 takes the direct kernels up to DIRECT_MAX_K
    taps, the implicit GEMM past it; both are right."""
    assert direct.DIRECT_MAX_K == 150
    calls = _spy(monkeypatch)
    x, w, b = _data(rng, dtype, (3, 1, 12, 152), (2, 1) + ks)
    out = _forward(x, w, b, (1, 1), (0, 0))
    dout = rng.standard_normal(out.shape).astype(dtype)
    got = _backward(dout, x, w, None, (1, 1), (0, 0))
    for g, r, name in zip(got, ref.conv2d_backward(dout, x, w, (1, 1), (0, 0)), ("dx", "dw", "db")):
        close(g, r, scale=np.sqrt(dout[0, 0].size * 3), err_msg=name)
    assert ("_dx" in calls) == ("_dw" in calls) == direct_dx, calls
    # the forward, and dx on the implicit GEMM
    assert calls.count("conv_tiles") == (1 if direct_dx else 2), calls


@pytest.mark.parametrize("activation", [None, "relu", "tanh"])
@pytest.mark.parametrize("geometry", [((1, 1, 5, 5), (1, 1, 2, 2), (0, 1)),
                                      ((11, 1, 9, 7), (6, 1, 5, 5), (2, 2)),   # > DW_GROUP
                                      ((3, 1, 8, 9), (17, 1, 3, 2), (1, 0))], ids=str)
@pytest.mark.parametrize("path", ["direct", "implicit"])
def test_one_channel_dx_both_paths(rng, dtype, close, path, geometry, activation):
    """Backward with dx of a one-channel input at stride 1 (the direct path's case)
    through either path, called directly: dx, dw and db match the reference."""
    from fastnet.kernels.codes import ACTIVATIONS
    x_shape, w_shape, padding = geometry
    x, w, b = _data(rng, dtype, x_shape, w_shape)
    out = _forward(x, w, b, (1, 1), padding, activation)
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx, dw, db = np.full(x.shape, 7.0, dtype), np.full(w.shape, 7.0, dtype), np.full(w.shape[0], 7.0, dtype)
    args = (dx, dw, db, dout, x, w, None if activation is None else out)
    if path == "direct":
        direct.backward(*args, padding, ACTIVATIONS[activation])
    else:
        implicit_gemm.backward(*args, (1, 1), padding, ACTIVATIONS[activation])
    g = dout * {None: lambda y: 1, "relu": lambda y: y > 0, "tanh": lambda y: 1 - y * y}[activation](out)
    m = np.sqrt(dout[0, 0].size * dout.shape[0])
    for a, r, name in zip((dx, dw, db), ref.conv2d_backward(g.astype(dtype), x, w, (1, 1), padding),
                          ("dx", "dw", "db")):
        close(a, r, scale=m, err_msg=name)


@pytest.mark.parametrize("c, padding, stride, want, path", [
    (6, (2, 2), (1, 1), ("dx", "dw", "db"), "implicit"),
    (151, (0, 0), (1, 1), ("dx", "dw", "db"), "implicit"),
    (1, (2, 2), (1, 1), ("dw", "db"), "implicit"),        # a first layer: no dx
    (1, (2, 2), (1, 1), ("dx", "dw", "db"), "direct"),    # dx of one channel: direct
    (6, (2, 5), (1, 1), ("dx", "dw", "db"), "implicit"),  # padding past KW-1
    (6, (1, 2), (2, 3), ("dx", "dw", "db"), "implicit"),  # strided: phase-split input
    (1, (1, 2), (2, 3), ("dx", "dw", "db"), "implicit"),  # strided dx of one channel
], ids=["c6", "c151-k1", "c1-no-dx", "c1-dx", "padding-over-kernel", "stride2x3",
        "stride2x3-c1"])
def test_path_rule(rng, dtype, close, monkeypatch, c, padding, stride, want, path):
    """Convs take the implicit GEMM, any stride and padding, except for dx of a
    one-channel input at stride 1 (the direct kernels, which then also compute dw)."""
    k = 1 if c == 151 else 5
    calls = _spy(monkeypatch)
    _check_both_ways(rng, dtype, close, c, k, padding, want, stride)
    implicit = bool({"tiled_dw", "dot_product_dw"} & set(calls))
    assert implicit == (path == "implicit"), calls
    assert ("_dx" in calls) == ("_dw" in calls) == (path == "direct"), calls
    # the forward, and dx on the implicit GEMM
    assert calls.count("conv_tiles") == 1 + (path == "implicit" and "dx" in want), calls


def test_tile_choice():
    """The forward / dx tile is the cheapest for the channel count (output channels, or
    input channels for dx): rows computed, padding included, times the tile's relative
    cost per row. The tall tile for many channels; the 6-row one for 6 (LeNet); no
    padding rows for one channel; every tile is used by some test case (CASES has 1, 2,
    3, 5, 6, 9 and 70 channels)."""
    mrs, cost = tiles.FWD_TILE_MRS, tiles.FWD_TILE_COST
    tile_index = implicit_gemm.tile_index
    for rows in range(1, 80):
        c = [-(-rows // m) * m * k for m, k in zip(mrs, cost)]
        assert c[tile_index(rows)] == min(c), rows
    assert mrs[tile_index(64)] == mrs[0] and mrs[tile_index(1)] == 1
    if 6 in mrs:
        assert mrs[tile_index(6)] == 6
    used = {tile_index(r) for r in (1, 2, 3, 5, 6, 9, 70)}
    assert used == set(range(len(mrs))), used


# (input channels, kernel) -> taps 25, 27, 6, 9, 18, 2: with 24-tap dw tiles (AVX-512)
# the last tile is the 1-, 3-, 6- and 12-tap tail or a full tile; with 12-tap tiles
# (AVX2) the 1-, 3-, 6-, 2-tap tails or a full tile
DW_TAIL_GEOMETRIES = [(1, (5, 5)), (3, (3, 3)), (6, (1, 1)), (1, (3, 3)), (2, (3, 3)),
                      (2, (1, 1))]


@pytest.mark.parametrize("o", [5, 12], ids=["half-vector", "one-vector"])
@pytest.mark.parametrize("geometry", DW_TAIL_GEOMETRIES, ids=str)
def test_dw_tail_tiles(rng, dtype, close, geometry, o):
    """dw of layers with one vector of output channels (or half of one) whose tap count
    is not a multiple of the tile's: the last taps run on a shorter tail tile, and
    every dw value matches the reference; every tail tile is used by these cases."""
    mk = tiles
    c, ks = geometry
    x, w, b = _data(rng, dtype, (3, c, 7, 6), (o, c) + ks)
    dout = rng.standard_normal((3, o, 7 - ks[0] + 1, 6 - ks[1] + 1)).astype(dtype)
    _, dw, db = _backward(dout, x, w, None, (1, 1), (0, 0), want=("dw", "db"))
    _, rdw, rdb = ref.conv2d_backward(dout, x, w, (1, 1), (0, 0))
    close(dw, rdw, scale=np.sqrt(dout[0, 0].size))
    close(db, rdb, scale=np.sqrt(dout[0, 0].size))
    rems = {c * kh * kw % mk.ACCUMULATORS for c, (kh, kw) in DW_TAIL_GEOMETRIES} - {0}
    tails = {min(m for m in mk.DW_TAIL_MRS + (mk.ACCUMULATORS,) if m >= r) for r in rems}
    assert tails == set(mk.DW_TAIL_MRS) | {mk.ACCUMULATORS}, tails


@pytest.mark.parametrize("geometry", [(1, (5, 5), (1, 1), (2, 2)), (3, (3, 3), (2, 2), (1, 1)),
                                      (2, (1, 3), (1, 2), (0, 1))], ids=str)
@pytest.mark.parametrize("o", range(1, 9))
def test_dw_as_dot_products_for_few_channels(rng, dtype, close, monkeypatch, o, geometry):
    """With AVX-512 a layer of at most 8 output channels computes dw as dot products over
    positions (dot_product_dw): every channel count (5 and 7 run on the 6- and 8-row tiles,
    3 on the 4-row one), tap counts that are not a multiple of a tile's, strides,
    padding, a fused ReLU, odd sizes; dx, dw and db against the reference."""
    c, ks, stride, padding = geometry
    calls = _spy(monkeypatch)
    x, w, b = _data(rng, dtype, (10, c, 9, 7), (o, c) + ks)
    out = _forward(x, w, b, stride, padding, "relu")
    dout = rng.standard_normal(out.shape).astype(dtype)
    # a one-channel input as a first layer (no dx): with dx it takes the direct kernels
    want = ("dw", "db") if c == 1 else ("dx", "dw", "db")
    got = _backward(dout, x, w, out, stride, padding, "relu", want)
    g = dout * (out > 0)
    m = np.sqrt(dout[0, 0].size * dout.shape[0])
    for a, r, name in zip(got, ref.conv2d_backward(g, x, w, stride, padding), ("dx", "dw", "db")):
        if a is not None:
            close(a, r, scale=m, err_msg=name)
    assert ("dot_product_dw" in calls) == (tiles.VEC_BYTES == 64), calls
    assert ("tiled_dw" in calls) == (tiles.VEC_BYTES != 64), calls


@pytest.mark.parametrize("o", [5, 12, 40])
@pytest.mark.parametrize("path", ["direct", "implicit"])
def test_dw_does_not_depend_on_thread_count(rng, monkeypatch, path, o):
    """Fixed image groups: the direct and the implicit-GEMM dw (tiled and dot-product),
    and the whole backward, are bitwise the same with 1 and 2 threads."""
    import numba
    c = 1 if path == "direct" else 3
    x, w, b = _data(rng, np.float32, (37, c, 12, 11), (o, c, 3, 3))
    dout = rng.standard_normal((37, o, 12, 11)).astype(np.float32)
    got = []
    old = numba.get_num_threads()
    try:
        for t in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(t)
            got.append(_backward(dout, x, w, None, (1, 1), (1, 1)))
    finally:
        numba.set_num_threads(old)
    for a, c in zip(*got):
        np.testing.assert_array_equal(a, c)



# ---- dilation and groups (conv/grouped.py) -------------------------------------------------

from fastnet.kernels.conv import grouped  # noqa: E402
from tests.kernels.cases import GROUPED_CONV_CASES as GROUPED  # noqa: E402

# each case with one fused activation and bias or none, in turn
GROUPED_ACT = {c: (None, "relu", "tanh", "sigmoid")[i % 4] for i, c in enumerate(GROUPED)}
GROUPED_BIAS = {c: i % 3 != 2 for i, c in enumerate(GROUPED)}


def _grouped_out_shape(x_shape, w_shape, stride, padding, dilation):
    return (x_shape[0], w_shape[0]) + tuple(
        grouped.out_size(x_shape[2 + a], w_shape[2 + a], stride[a], padding[a], dilation[a])
        for a in (0, 1))


def _gforward(x, w, b, stride, padding, dilation, groups, activation=None):
    out = np.full(_grouped_out_shape(x.shape, w.shape, stride, padding, dilation), 123.0, x.dtype)
    kernel("conv2d_forward")(out, x, w, b, stride, padding, activation, dilation, groups)
    return out


def _gbackward(dout, x, w, out, stride, padding, dilation, groups, activation=None, bias=True,
               want_dx=True):
    dx = np.full(x.shape, 123.0, x.dtype) if want_dx else None
    dw = np.full(w.shape, 123.0, x.dtype)
    db = np.full(w.shape[0], 123.0, x.dtype) if bias else None
    kernel("conv2d_backward")(dx, dw, db, dout, x, w, out, stride, padding, activation,
                              dilation, groups)
    return dx, dw, db


@pytest.mark.parametrize("case", list(GROUPED))
def test_grouped_matches_reference(rng, dtype, close, case):
    """dilation / groups: forward (fused activation, bias or none) and dx, dw, db against
    the group-by-group reference."""
    x_shape, w_shape, stride, padding, dilation, groups = GROUPED[case]
    act, bias = GROUPED_ACT[case], GROUPED_BIAS[case]
    x, w, b = _data(rng, dtype, x_shape, w_shape)
    b = b if bias else None
    k = np.prod(w_shape[1:])
    out = _gforward(x, w, b, stride, padding, dilation, groups, act)
    close(out, ref.conv2d_forward(x, w, b, stride, padding, act, dilation, groups),
          scale=np.sqrt(k), err_msg="out")
    dout = rng.standard_normal(out.shape).astype(dtype)
    got = _gbackward(dout, x, w, out if act else None, stride, padding, dilation, groups, act,
                     bias)
    want = ref.conv2d_backward(dout, x, w, stride, padding, out, act, dilation, groups)
    m = np.sqrt(out.shape[0] * out.shape[2] * out.shape[3])
    for g, r, name, scale in zip(got, want, ("dx", "dw", "db"), (np.sqrt(w_shape[0] * k), m, m)):
        if g is not None:
            close(g, r, scale=scale, err_msg=name)


@pytest.mark.parametrize("case", ["depthwise-x2-s2", "groups2-dilation2", "dilation2x3-s2x1",
                                  "padding-past-span"])
def test_grouped_backward_matches_finite_differences(rng, case):
    """float64 central differences for x, w and b, through a tanh for one case."""
    x_shape, w_shape, stride, padding, dilation, groups = GROUPED[case]
    x_shape = (1,) + x_shape[1:]
    x, w, b = _data(rng, np.float64, x_shape, w_shape)
    act = "tanh" if case == "groups2-dilation2" else None

    def forward(x, w, b):
        return _gforward(x, w, b, stride, padding, dilation, groups, act)

    def backward(dout, x, w, b):
        return _gbackward(dout, x, w, forward(x, w, b), stride, padding, dilation, groups, act)

    check_backward(forward, backward, [x, w, b], rng, names=["x", "w", "b"])


@settings(max_examples=20, deadline=None, derandomize=True, database=None)
@given(n=st.integers(1, 2), cg=st.integers(1, 2), og=st.integers(1, 2), groups=st.integers(1, 3),
       kh=st.integers(1, 3), kw=st.integers(1, 3), sh=st.integers(1, 3), sw=st.integers(1, 3),
       ph=st.integers(0, 3), pw=st.integers(0, 3), dh=st.integers(1, 3), dw=st.integers(1, 3),
       eh=st.integers(0, 4), ew=st.integers(0, 4), seed=st.integers(0, 2**16))
def test_property_grouped_random_geometry(n, cg, og, groups, kh, kw, sh, sw, ph, pw, dh, dw, eh,
                                          ew, seed):
    """Any geometry whose dilated window fits the padded input (float64): forward and
    backward match the reference (the defaults (1, 1), 1 included: the implicit GEMM)."""
    h = max(dh * (kh - 1) + 1 - 2 * ph, 1) + eh
    wd = max(dw * (kw - 1) + 1 - 2 * pw, 1) + ew
    rng = np.random.default_rng(seed)
    x, w, b = _data(rng, np.float64, (n, cg * groups, h, wd), (og * groups, cg, kh, kw))
    geo = ((sh, sw), (ph, pw), (dh, dw), groups)
    out = _gforward(x, w, b, *geo)
    np.testing.assert_allclose(out, ref.conv2d_forward(x, w, b, geo[0], geo[1], None, *geo[2:]),
                               rtol=1e-10, atol=1e-10)
    dout = rng.standard_normal(out.shape)
    for got, want in zip(_gbackward(dout, x, w, None, *geo),
                         ref.conv2d_backward(dout, x, w, geo[0], geo[1], None, None, *geo[2:])):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_grouped_builds_agree_bitwise(rng, monkeypatch):
    """Serial and parallel builds give the same bits (dw and db summed in a fixed order
    per weight, whatever the threads), and the defaults passed explicitly are the
    implicit GEMM's result bit for bit."""
    from fastnet.kernels import _jit

    x_shape, w_shape, stride, padding, dilation, groups = GROUPED["depthwise-parallel"]
    x, w, b = _data(rng, np.float32, x_shape, w_shape)
    results = []
    for threshold in (0, 1 << 62):
        monkeypatch.setattr(_jit, "PARALLEL_MIN_WORK", threshold)
        out = _gforward(x, w, b, stride, padding, dilation, groups, "relu")
        dout = np.random.default_rng(1).standard_normal(out.shape).astype(np.float32)
        results.append((out,) + _gbackward(dout, x, w, out, stride, padding, dilation, groups,
                                           "relu"))
    for a, b_ in zip(*results):
        np.testing.assert_array_equal(a, b_)
    wf = rng.standard_normal((3, 4, 3, 3)).astype(np.float32)
    x4 = np.ascontiguousarray(x[:, :4])
    plain = _forward(x4, wf, None, (1, 1), (1, 1))
    np.testing.assert_array_equal(_gforward(x4, wf, None, (1, 1), (1, 1), (1, 1), 1), plain)


def test_grouped_nonfinite_as_reference():
    """A NaN and an inf in x reach the outputs, dx and dw that their windows touch, and
    only those (only the valid products are taken; no padding junk)."""
    x_shape, w_shape, stride, padding, dilation, groups = GROUPED["groups2-dilation2"]
    rng = np.random.default_rng(5)
    x, w, b = _data(rng, np.float64, x_shape, w_shape)
    x[0, 1, 4, 3] = np.nan
    x[1, 2, 0, 0] = np.inf
    out = _gforward(x, w, b, stride, padding, dilation, groups)
    want = ref.conv2d_forward(x, w, b, stride, padding, None, dilation, groups)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(want))
    np.testing.assert_allclose(out, want, rtol=1e-10, atol=1e-10)
    dout = rng.standard_normal(out.shape)
    for got, r in zip(_gbackward(dout, x, w, None, stride, padding, dilation, groups),
                      ref.conv2d_backward(dout, x, w, stride, padding, None, None, dilation,
                                          groups)):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(r))
        np.testing.assert_allclose(got, r, rtol=1e-10, atol=1e-10)
