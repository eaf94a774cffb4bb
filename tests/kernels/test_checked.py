"""kernel(op) checks every argument before the kernel runs (fastnet/kernels/checks.py):
valid calls give bitwise the raw kernel's result, and every invalid one a TypeError /
ValueError that names the op, with no array changed. Hypothesis draws the calls
(tests/kernels/checked_cases.py) for every op of the table; the four cases a probe of
kernel() found (issue 19) are regression tests here."""
import inspect
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastnet.kernels import KERNELS, _kernel, checks, kernel
from tests.kernels.checked_cases import clone, guarded, mutations, strided_view, valid_args

OPS = sorted(KERNELS)
# FASTNET_FUZZ_EXAMPLES=500 for a longer hunt (CI keeps the default: a few seconds)
FUZZ = settings(max_examples=int(os.environ.get("FASTNET_FUZZ_EXAMPLES", 30)), deadline=None,
                derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(autouse=True)
def kernel_build():
    """Overrides the serial/parallel parametrisation of tests/kernels/conftest.py: the
    checks do not depend on the build (small arrays take the serial one)."""
    return "default"


def _bytes(v):
    return np.ascontiguousarray(v).tobytes() if isinstance(v, np.ndarray) else None


def _same_result(r1, r2):
    if r1 is None or r2 is None:
        return r1 is r2
    return r1 == r2 or (r1 != r1 and r2 != r2)


def test_specs_cover_the_table_with_the_kernels_parameters():
    """One spec per op of KERNELS, none more, naming the CPU kernel's parameters in order."""
    assert set(checks.SPECS) == set(KERNELS)
    for op, row in KERNELS.items():
        fn = row["cpu"]
        assert list(inspect.signature(getattr(fn, "py_func", fn)).parameters) == list(
            checks.SPECS[op].names), op


def test_kernel_returns_one_checked_callable_per_op_and_device():
    k = kernel("relu_forward")
    assert k is kernel("relu_forward", "cpu") and k is not _kernel("relu_forward")
    assert repr(k) == "kernel('relu_forward', 'cpu')"
    with pytest.raises(RuntimeError, match="no_such_op"):
        kernel("no_such_op")


@pytest.mark.parametrize("op", OPS)
@FUZZ
@given(data=st.data())
def test_valid_calls_give_the_raw_kernels_result(op, data):
    """(a) The checked call accepts a valid argument set and leaves bitwise what the raw
    kernel leaves on a copy of it (outputs, in-place arguments, the returned loss), and
    nothing is written outside the arrays (each sits between canaries)."""
    args, written_outside = guarded(valid_args(op, data.draw))
    raw_args = clone(args)
    want = _kernel(op)(*raw_args.values())
    got = kernel(op)(*args.values())
    assert _same_result(got, want), (got, want)
    for name in args:
        assert _bytes(args[name]) == _bytes(raw_args[name]), name
    assert not written_outside(), "the kernel wrote outside these arrays"


@pytest.mark.parametrize("op", OPS)
@FUZZ
@given(data=st.data())
def test_invalid_calls_raise_before_the_kernel_runs(op, data):
    """(b) One argument broken (a dimension off by one, another dtype, a strided view, a
    read-only output, None, an output aliasing an input, an out-of-range index or scalar):
    a TypeError / ValueError naming the op, and no array changed."""
    args = valid_args(op, data.draw)
    cases = mutations(op, args)
    assert cases
    desc, bad, exc = data.draw(st.sampled_from(cases), label="mutation")
    before = {k: _bytes(v) for k, v in bad.items()}
    with pytest.raises(exc) as info:
        kernel(op)(*bad.values())
    assert str(info.value).startswith(f"{op}"), (desc, str(info.value))
    for k, v in bad.items():
        assert _bytes(v) == before[k], (desc, k)


@pytest.mark.parametrize("op", OPS)
def test_every_mutation_of_one_valid_call_is_refused(op):
    """Each mutation of one fixed valid call, exhaustively (the fuzzing above draws one
    per example)."""
    @settings(max_examples=1, deadline=None, derandomize=True, database=None)
    @given(data=st.data())
    def run(data):
        args = valid_args(op, data.draw)
        for desc, bad, exc in mutations(op, args):
            before = {k: _bytes(v) for k, v in bad.items()}
            with pytest.raises(exc):
                kernel(op)(*bad.values())
            assert all(_bytes(v) == before[k] for k, v in bad.items()), desc
    run()


def test_keyword_arguments_and_defaults():
    x = np.ones((1, 2, 5, 5), np.float32)
    w = np.ones((3, 2, 3, 3), np.float32)
    out, ref = np.empty((1, 3, 3, 3), np.float32), np.empty((1, 3, 3, 3), np.float32)
    kernel("conv2d_forward")(out, x, w, None, (1, 1), (0, 0))  # activation defaults to None
    _kernel("conv2d_forward")(ref, x, w, None, (1, 1), (0, 0), None)
    np.testing.assert_array_equal(out, ref)
    kernel("conv2d_forward")(out=out, x=x, w=w, b=None, stride=(1, 1), padding=(0, 0),
                             activation="relu")
    with pytest.raises(TypeError, match="conv2d_forward: missing argument 'padding'"):
        kernel("conv2d_forward")(out, x, w, None, (1, 1))
    kernel("conv2d_forward")(out, x, w, None, (1, 1), (0, 0), None, (1, 1), 1)  # the defaults
    np.testing.assert_array_equal(out, ref)
    with pytest.raises(TypeError, match="unexpected argument 'bias'"):
        kernel("conv2d_forward")(out, x, w, None, (1, 1), (0, 0), bias=None)
    with pytest.raises(TypeError, match="takes 2 arguments"):
        kernel("relu_forward")(out, out, out)


# ---- the probe of issue 19 ------------------------------------------------------------------

def test_probe_max_pool2d_backward_huge_argmax():
    """argmax of 2**30 segfaulted the scatter: now a ValueError naming argmax, dx untouched."""
    dx = np.full((1, 2, 4, 4), 5.0, np.float32)
    dout = np.ones((1, 2, 2, 2), np.float32)
    argmax = np.empty((1, 2, 2, 2), np.int32)
    kernel("max_pool2d_forward")(np.empty_like(dout), argmax, np.random.default_rng(0).
                                 standard_normal(dx.shape).astype(np.float32), (2, 2), (2, 2),
                                 (0, 0))
    kernel("max_pool2d_backward")(np.empty_like(dx), dout, argmax, (2, 2), (2, 2), (0, 0))
    argmax[0, 1, 1, 0] = 2**30
    with pytest.raises(ValueError, match=r"max_pool2d_backward: argmax\[0, 1, 1, 0\] = 1073741824"):
        kernel("max_pool2d_backward")(dx, dout, argmax, (2, 2), (2, 2), (0, 0))
    assert np.all(dx == 5.0)


def test_max_pool2d_backward_argmax_outside_its_window():
    """An index inside the plane but outside its output's window is refused too: the CPU
    scatter would put the gradient there, the 2x2 and CUDA kernels drop it."""
    dx = np.zeros((1, 1, 4, 4))
    argmax = np.array([[[[0, 2], [8, 15]]]], np.int64)  # 15 is in window (1, 1): fine
    kernel("max_pool2d_backward")(dx, np.ones((1, 1, 2, 2)), argmax, (2, 2), (2, 2), (0, 0))
    argmax[0, 0, 0, 0] = 5  # row 1, column 1: window (0, 0) holds it
    kernel("max_pool2d_backward")(dx, np.ones((1, 1, 2, 2)), argmax, (2, 2), (2, 2), (0, 0))
    argmax[0, 0, 0, 0] = 6  # row 1, column 2: window (0, 1)'s
    with pytest.raises(ValueError, match=r"argmax\[0, 0, 0, 0\] = 6 is not"):
        kernel("max_pool2d_backward")(dx, np.ones((1, 1, 2, 2)), argmax, (2, 2), (2, 2), (0, 0))


def test_probe_relu_forward_short_out():
    """A short ``out`` got 996 floats written past it: now a ValueError, nothing written."""
    buf = np.full(1004, 9.0, np.float32)
    out = buf[:4]
    x = np.ones(1000, np.float32)
    with pytest.raises(ValueError, match=r"relu_forward: argument 'out' must have shape "
                                         r"\(1000,\) \(the shape of 'x'\), got \(4,\)"):
        kernel("relu_forward")(out, x)
    assert np.all(buf == 9.0)


def test_probe_sgd_step_short_grad():
    """A short gradient was read out of bounds and changed 66,000 weights."""
    param = np.ones(66_000, np.float32)
    with pytest.raises(ValueError, match=r"sgd_step: argument 'grad' must have shape "
                                         r"\(66000,\) \(the shape of 'param'\), got \(10,\)"):
        kernel("sgd_step")(param, None, np.ones(10, np.float32), 0.1, 0.0, 0.0, False)
    assert np.all(param == 1.0)


def test_probe_conv2d_forward_wrong_in_channels():
    """A weight with 2 input channels for a 3-channel input was accepted."""
    x = np.ones((2, 3, 5, 5), np.float32)
    w = np.ones((4, 2, 3, 3), np.float32)
    out = np.full((2, 4, 3, 3), 9.0, np.float32)
    with pytest.raises(ValueError, match=r"conv2d_forward: argument 'w' must have shape "
                                         r"\(O=4, CG=3, KH=3, KW=3\) \(CG from the channels of "
                                         r"'x' / groups=1\), got "
                                         r"\(4, 2, 3, 3\)"):
        kernel("conv2d_forward")(out, x, w, None, (1, 1), (0, 0))
    assert np.all(out == 9.0)


# ---- rules that are not shapes --------------------------------------------------------------

def test_partial_overlap_is_refused_even_where_in_place_is_allowed():
    buf = np.arange(11, dtype=np.float64)
    with pytest.raises(ValueError, match="relu_forward: arguments 'out' and 'x' overlap"):
        kernel("relu_forward")(buf[1:], buf[:-1])
    kernel("relu_forward")(buf, buf)  # the very same array: in place
    dx = np.zeros((2, 3, 4, 4))
    with pytest.raises(ValueError, match="avg_pool2d_backward: arguments 'dx' and 'dout' "
                                         r"overlap in memory \(avg_pool2d_backward does not "
                                         "run in place"):
        kernel("avg_pool2d_backward")(dx, dx[:, :, ::2, ::2], (2, 2), (2, 2), (0, 0))
    # interleaved views of one buffer do not overlap
    big = np.zeros((2, 3, 4, 8))
    kernel("avg_pool2d_forward")(np.zeros((2, 3, 2, 2)), big[..., ::2], (2, 2), (2, 2), (0, 0))
    kernel("avg_pool2d_backward")(big[..., ::2], big[:, :, :2, 1:4:2], (3, 3), (2, 2), (1, 1))


@pytest.mark.parametrize("call, match", [
    (lambda f: kernel("dense_backward")(None, f(2, 3), None, f(4, 2), f(4, 3), f(2, 3), None,
                                        "relu"),
     "dense_backward: argument 'out' \\(the forward output\\) is required with activation"),
    (lambda f: kernel("sgd_step")(f(3), None, f(3), 0.1, 0.9, 0.0, False),
     "sgd_step: argument 'velocity' is required when momentum is not 0"),
    (lambda f: kernel("batch_norm_forward")(f(2, 3, 1), f(3), f(3), None, None, None,
                                            f(2, 3, 1), None, None, False, 0.1, 1e-5),
     "running_mean and running_var are required when training is False"),
    (lambda f: kernel("batch_norm_forward")(f(2, 3, 1), f(3), f(3), f(3), f(3), None,
                                            f(2, 3, 1), None, None, True, None, 1e-5),
     "momentum=None \\(a cumulative average\\) needs num_batches_tracked"),
    (lambda f: kernel("batch_norm_forward")(f(2, 3, 1), f(3), f(3), f(3), f(3),
                                            np.array(-1), f(2, 3, 1), None, None, True, None,
                                            1e-5),
     "num_batches_tracked must be >= 0"),
    (lambda f: kernel("batch_norm_forward")(f(2, 3, 1), f(3), f(3), f(3), None, None,
                                            f(2, 3, 1), f(3), f(3), True, 0.1, 1e-5),
     "'running_mean' and 'running_var' must be given together"),
    (lambda f: kernel("batch_norm_backward")(None, f(3), None, f(2, 3, 1), f(2, 3, 1), None,
                                             f(3), f(3)),
     "'dweight' and 'dbias' must be given together"),
    (lambda f: kernel("max_pool2d_forward")(f(1, 1, 3, 3), np.empty((1, 1, 3, 3), np.int32),
                                            f(1, 1, 1, 1), (1, 1), (1, 1), (1, 1)),
     "padding must be at most half the kernel size"),
    (lambda f: kernel("conv2d_forward")(f(1, 1, 1, 1), f(1, 1, 2, 2), f(1, 1, 3, 3), None,
                                        (1, 1), (0, 0)),
     "the 2x2 plane \\(from 'x'\\) with padding 0x0 is smaller than the 3x3 window"),
    (lambda f: kernel("conv2d_forward")(f(1, 1, 1, 1), f(1, 1, 4, 4), f(1, 1, 2, 2), None,
                                        (1, 1), (0, 0), None, (4, 4)),
     "the 4x4 plane \\(from 'x'\\) with padding 0x0 is smaller than the 5x5 window"),
    (lambda f: kernel("conv2d_backward")(None, f(4, 1, 3, 3), None, f(1, 4, 3, 3), f(1, 6, 5, 5),
                                         f(4, 1, 3, 3), None, (1, 1), (0, 0), None, (1, 1), 4),
     "the 6 input channels \\(from 'x'\\) are not divisible by groups=4"),
    (lambda f: kernel("conv2d_forward")(f(1, 3, 3, 3), f(1, 4, 5, 5), f(3, 2, 3, 3), None,
                                        (1, 1), (0, 0), None, (1, 1), 2),
     "the 3 output channels \\(from 'w'\\) are not divisible by groups=2"),
    (lambda f: kernel("conv2d_forward")(f(1, 4, 3, 3), f(1, 4, 5, 5), f(4, 4, 3, 3), None,
                                        (1, 1), (0, 0), None, (1, 1), 2),
     "argument 'w' must have shape \\(O=4, CG=2, KH=3, KW=3\\)"),
    (lambda f: kernel("mse_forward")(None, f(0, 3), f(0, 3)),
     "mse_forward: argument 'pred' must not be empty"),
    (lambda f: kernel("softmax_forward")(f(2, 0), f(2, 0)),
     "softmax_forward: argument 'x': dimension C must be at least 1"),
])
def test_rules_beyond_shapes(call, match):
    def f(*shape):
        return np.zeros(shape)
    with pytest.raises(ValueError, match=match):
        call(f)


def test_cross_entropy_labels_checked_before_grad_is_written():
    grad = np.full((3, 4), 5.0, np.float32)
    for labels in (np.array([0, 4, 1]), np.array([0, -1, 1], np.int8),
                   np.array([255, 0, 1], np.uint8)):
        with pytest.raises(ValueError, match="label .* is out of range for 4 classes"):
            kernel("softmax_cross_entropy_forward")(grad, np.zeros((3, 4), np.float32), labels)
    assert np.all(grad == 5.0)
    with pytest.raises(TypeError, match="'labels' must be an integer dtype, got bool"):
        kernel("softmax_cross_entropy_forward")(grad, np.zeros((3, 4), np.float32),
                                                np.zeros(3, bool))


def test_strided_views_where_the_cpu_kernel_takes_them():
    """The documented strided arguments pass (and give the contiguous result); the rest
    are refused with a hint."""
    x = np.random.default_rng(0).standard_normal((3, 10))
    out = strided_view(np.zeros((3, 5)))
    kernel("softmax_forward")(out, x[:, ::2])
    want = np.empty((3, 5))
    kernel("softmax_forward")(want, np.ascontiguousarray(x[:, ::2]))
    np.testing.assert_array_equal(out, want)
    with pytest.raises(ValueError, match="relu_forward: argument 'x' must be C-contiguous.*"
                                         "np.ascontiguousarray"):
        kernel("relu_forward")(np.empty(5), x[0, ::2])


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix
def test_unaligned_and_matrix_arrays_are_refused():
    raw = np.zeros(8 * 5 + 1, np.uint8)
    unaligned = raw[1:].view(np.float64)
    with pytest.raises(ValueError, match="must be an aligned array"):
        kernel("relu_forward")(np.empty(5), unaligned)
    with pytest.raises(TypeError, match="must be a numpy.ndarray, got matrix"):
        kernel("softmax_forward")(np.zeros((2, 2)), np.matrix(np.zeros((2, 2))))
