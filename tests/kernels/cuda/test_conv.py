"""CUDA conv2d, im2col and col2im against the NumPy reference, the CPU kernels and
finite differences: conv2d_forward(out, x, w, b, stride, padding, activation),
conv2d_backward(dx, dw, db, dout, x, w, out, stride, padding, activation),
im2col(cols, x, ks, stride, padding), col2im(dx, cols, ks, stride, padding)."""
import numpy as np
import pytest

from fastnet.kernels import kernel
from tests import reference as ref
from tests.gradcheck import check_backward

from ..cases import CONV_CASES, cases_for

CASES = CONV_CASES
IDS = cases_for(CONV_CASES, "cuda")
# each case with one fused activation, in turn: all four run on every device
ACTIVATION_OF = {case: (None, "relu", "sigmoid", "tanh")[i % 4] for i, case in enumerate(CONV_CASES)}


def _out_shape(x_shape, w_shape, stride, padding):
    return (x_shape[0], w_shape[0],
            ref.conv_output_size(x_shape[2], w_shape[2], stride[0], padding[0]),
            ref.conv_output_size(x_shape[3], w_shape[3], stride[1], padding[1]))


def _forward(dev, host, x, w, b, stride, padding, activation):
    out = dev(np.full(_out_shape(x.shape, w.shape, stride, padding), np.nan, x.dtype))
    kernel("conv2d_forward", "cuda")(out, dev(x), dev(w), None if b is None else dev(b),
                                     stride, padding, activation)
    return host(out)


def _backward(dev, host, dout, x, w, y, stride, padding, activation, bias=True):
    dx = dev(np.full(x.shape, np.nan, x.dtype))
    dw = dev(np.full(w.shape, np.nan, x.dtype))
    db = dev(np.full(w.shape[:1], np.nan, x.dtype)) if bias else None
    kernel("conv2d_backward", "cuda")(dx, dw, db, dev(dout), dev(x), dev(w), dev(y), stride,
                                      padding, activation)
    return host(dx), host(dw), None if db is None else host(db)


@pytest.mark.parametrize("case", IDS)
def test_matches_reference_and_cpu(rng, dtype, close, dev, host, case):
    """Forward (bias, fused activation) and backward against the reference and the CPU."""
    x_shape, w_shape, stride, padding = CASES[case]
    activation = ACTIVATION_OF[case]
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    k = np.prod(w_shape[1:])
    y = _forward(dev, host, x, w, b, stride, padding, activation)
    close(y, ref.conv2d_forward(x, w, b, stride, padding, activation), scale=np.sqrt(k))
    y_cpu = np.empty_like(y)
    kernel("conv2d_forward")(y_cpu, x, w, b, stride, padding, activation)
    close(y, y_cpu, scale=np.sqrt(k), err_msg="cuda vs cpu")
    dout = rng.standard_normal(y.shape).astype(dtype)
    dx, dw, db = _backward(dev, host, dout, x, w, y, stride, padding, activation)
    rdx, rdw, rdb = ref.conv2d_backward(dout, x, w, stride, padding, y, activation)
    m = y.shape[0] * y.shape[2] * y.shape[3]
    close(dx, rdx, scale=np.sqrt(w_shape[0] * k), err_msg="dx")
    close(dw, rdw, scale=np.sqrt(m), err_msg="dw")
    close(db, rdb, scale=np.sqrt(m), err_msg="db")


def test_im2col_col2im_match_reference(rng, dtype, close, dev, host):
    x = rng.standard_normal((2, 3, 7, 6)).astype(dtype)
    ks, stride, padding = (3, 2), (2, 1), (1, 1)
    want = ref.im2col(x, ks, stride, padding)
    cols = dev(np.full(want.shape, np.nan, dtype))
    kernel("im2col", "cuda")(cols, dev(x), ks, stride, padding)
    close(host(cols), want)
    c = rng.standard_normal(want.shape).astype(dtype)
    dx = dev(np.full(x.shape, np.nan, dtype))
    kernel("col2im", "cuda")(dx, dev(c), ks, stride, padding)
    close(host(dx), ref.col2im(c, x.shape, ks, stride, padding), scale=3)


def test_no_bias_no_dx(rng, dev, host):
    x_shape, w_shape, stride, padding = CASES["3x3-s1-p1-odd"]
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    y = _forward(dev, host, x, w, None, stride, padding, None)
    dout = rng.standard_normal(y.shape)
    dw = dev(np.full(w.shape, np.nan))
    kernel("conv2d_backward", "cuda")(None, dw, None, dev(dout), dev(x), dev(w), None,
                                      stride, padding, None)
    np.testing.assert_allclose(host(dw), ref.conv2d_backward(dout, x, w, stride, padding)[1],
                               rtol=1e-10, atol=1e-10)


def test_backward_matches_finite_differences(rng, dev, host):
    stride, padding = (2, 1), (1, 0)
    x = rng.standard_normal((1, 2, 3, 3))
    w = rng.standard_normal((2, 2, 2, 2))
    b = rng.standard_normal(2)

    def forward(x, w, b):
        return _forward(dev, host, x, w, b, stride, padding, "tanh")

    def backward(dout, x, w, b):
        return _backward(dev, host, dout, x, w, forward(x, w, b), stride, padding, "tanh")

    check_backward(forward, backward, [x, w, b], rng, names=["x", "w", "b"])


# ---- dilation and groups: the direct kernels --------------------------------------------

from ..cases import GROUPED_CONV_CASES  # noqa: E402

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
# the simulator runs a thread per element: a few cases, each in one dtype (the stored
# PyTorch results of tests/test_torch_conv.py run every option in both on this device)
GROUPED_RUNS = [("depthwise-x2-s2", F32), ("groups2-dilation2", F32),
                ("depthwise-dilation3x1-s1x2", F32), ("groups3-1x1-batch1", F64),
                ("padding-past-span", F32)]
GROUPED_ACT = {c: (None, "relu", "tanh", "sigmoid")[i % 4] for i, c in enumerate(GROUPED_CONV_CASES)}


def _grouped_out_shape(x_shape, w_shape, stride, padding, dilation):
    return (x_shape[0], w_shape[0]) + tuple(
        ref.conv_output_size(x_shape[2 + a], dilation[a] * (w_shape[2 + a] - 1) + 1, stride[a],
                             padding[a]) for a in (0, 1))


@pytest.mark.parametrize("case, dtype", GROUPED_RUNS, ids=[c for c, _ in GROUPED_RUNS])
def test_grouped_matches_reference_and_cpu(rng, dtype, close, dev, host, case):
    """dilation / groups: forward (fused activation) and dx, dw, db against the reference
    and the CPU."""
    x_shape, w_shape, stride, padding, dilation, groups = GROUPED_CONV_CASES[case]
    act = GROUPED_ACT[case]
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    k = np.prod(w_shape[1:])
    y = dev(np.full(_grouped_out_shape(x_shape, w_shape, stride, padding, dilation), np.nan, dtype))
    kernel("conv2d_forward", "cuda")(y, dev(x), dev(w), dev(b), stride, padding, act, dilation,
                                     groups)
    y = host(y)
    close(y, ref.conv2d_forward(x, w, b, stride, padding, act, dilation, groups), scale=np.sqrt(k))
    y_cpu = np.empty_like(y)
    kernel("conv2d_forward")(y_cpu, x, w, b, stride, padding, act, dilation, groups)
    close(y, y_cpu, scale=np.sqrt(k), err_msg="cuda vs cpu")
    dout = rng.standard_normal(y.shape).astype(dtype)
    dx, dw, db = (dev(np.full(s, np.nan, dtype)) for s in (x_shape, w_shape, w_shape[:1]))
    kernel("conv2d_backward", "cuda")(dx, dw, db, dev(dout), dev(x), dev(w), dev(y), stride,
                                      padding, act, dilation, groups)
    want = ref.conv2d_backward(dout, x, w, stride, padding, y, act, dilation, groups)
    m = np.sqrt(y.shape[0] * y.shape[2] * y.shape[3])
    for g, r, name, scale in zip((dx, dw, db), want, ("dx", "dw", "db"),
                                 (np.sqrt(w_shape[0] * k), m, m)):
        close(host(g), r, scale=scale, err_msg=name)


def test_grouped_backward_matches_finite_differences(rng, dev, host):
    """float64 differences through a depthwise x2, dilated, strided conv (no bias, no dx
    when not asked for)."""
    stride, padding, dilation, groups = (2, 1), (1, 2), (1, 2), 2
    x = rng.standard_normal((1, 2, 3, 3))
    w = rng.standard_normal((4, 1, 2, 2))

    def forward(x, w):
        y = dev(np.full(_grouped_out_shape(x.shape, w.shape, stride, padding, dilation), np.nan))
        kernel("conv2d_forward", "cuda")(y, dev(x), dev(w), None, stride, padding, None,
                                         dilation, groups)
        return host(y)

    def backward(dout, x, w):
        dx, dw = dev(np.full(x.shape, np.nan)), dev(np.full(w.shape, np.nan))
        kernel("conv2d_backward", "cuda")(dx, dw, None, dev(dout), dev(x), dev(w), None, stride,
                                          padding, None, dilation, groups)
        dw_only = dev(np.full(w.shape, np.nan))
        kernel("conv2d_backward", "cuda")(None, dw_only, None, dev(dout), dev(x), dev(w), None,
                                          stride, padding, None, dilation, groups)
        np.testing.assert_array_equal(host(dw_only), host(dw))
        return host(dx), host(dw)

    check_backward(forward, backward, [x, w], rng, names=["x", "w"])
