"""kernel(op, "cuda") checks every argument before the launch, as on the CPU
(tests/kernels/test_checked.py): a few drawn calls per op, the simulator being slow. Valid
calls give bitwise the raw launcher's result; each invalid one a TypeError / ValueError
naming the op, with no array changed."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastnet import cuda as fcuda
from fastnet.kernels import KERNELS, _kernel, kernel
from tests.kernels.checked_cases import mutations, valid_args

OPS = sorted(KERNELS)
FEW = dict(deadline=None, derandomize=True, database=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                  HealthCheck.data_too_large])


def on_device(args):
    """The arguments with their NumPy arrays on the device (the same array stays one
    array; strided views stay strided; read-only and object arrays stay on the host,
    where the checks refuse them as they would a device array of the kind)."""
    memo = {}

    def move(v):
        if not isinstance(v, np.ndarray) or v.dtype == object or not v.flags.writeable:
            return v
        if id(v) not in memo:
            if v.flags.c_contiguous:
                memo[id(v)] = fcuda.to_device(v)
            else:  # a strided view of a buffer twice as long on the last axis
                memo[id(v)] = fcuda.to_device(np.ascontiguousarray(v.base))[..., ::2]
        return memo[id(v)]
    return {k: move(v) for k, v in args.items()}


def _host(v):
    if v is None or isinstance(v, (int, float, str, tuple, list, bool)):
        return v
    if isinstance(v, np.ndarray):
        return v.tobytes()
    if not v.is_c_contiguous():
        return None  # (a strided device view, refused before anything runs)
    return v.copy_to_host().tobytes()


@pytest.mark.parametrize("op", OPS)
@settings(max_examples=4, **FEW)
@given(data=st.data())
def test_valid_calls_give_the_raw_launchers_result(op, data):
    args = valid_args(op, data.draw, strided=False)
    checked, raw = on_device(args), on_device(args)
    want = _kernel(op, "cuda")(*raw.values())
    got = kernel(op, "cuda")(*checked.values())
    if want is None:
        assert got is None
    else:  # a DeviceScalar loss
        w, g = float(want), float(got)
        assert g == w or (g != g and w != w)
    for name in args:
        assert _host(checked[name]) == _host(raw[name]), name


@pytest.mark.parametrize("op", OPS)
@settings(max_examples=6, **FEW)
@given(data=st.data())
def test_invalid_calls_raise_before_the_launch(op, data):
    args = valid_args(op, data.draw, strided=False)
    desc, bad, exc = data.draw(st.sampled_from(mutations(op, args, "cuda")), label="mutation")
    bad = on_device(bad)
    before = {k: _host(v) for k, v in bad.items() if not isinstance(v, list)}
    with pytest.raises(exc) as info:
        kernel(op, "cuda")(*bad.values())
    assert str(info.value).startswith(op), (desc, str(info.value))
    for k, v in before.items():
        if isinstance(v, bytes):  # the arrays' contents (a scalar cannot change; NaN != NaN)
            assert _host(bad[k]) == v, (desc, k)


def test_probe_cases_on_the_device():
    """The four cases of the CPU probe, with device arrays: refused before the launch (the
    argmax range check copies argmax to the host)."""
    dev = fcuda.to_device
    f = np.float32
    argmax = np.array([[[[0, 2], [8, 2**30]]]], np.int32)  # window (1, 1) would hold 10
    dx = dev(np.full((1, 1, 4, 4), 5, f))
    with pytest.raises(ValueError, match=r"max_pool2d_backward: argmax\[0, 0, 1, 1\] = 1073741824"):
        kernel("max_pool2d_backward", "cuda")(dx, dev(np.ones((1, 1, 2, 2), f)), dev(argmax),
                                              (2, 2), (2, 2), (0, 0))
    assert np.all(dx.copy_to_host() == 5)
    with pytest.raises(ValueError, match="relu_forward: argument 'out' must have shape"):
        kernel("relu_forward", "cuda")(dev(np.zeros(4, f)), dev(np.ones(1000, f)))
    with pytest.raises(ValueError, match="sgd_step: argument 'grad' must have shape"):
        kernel("sgd_step", "cuda")(dev(np.ones(100, f)), None, dev(np.ones(10, f)), 0.1, 0.0,
                                   0.0, False)
    with pytest.raises(ValueError, match="conv2d_forward: argument 'w' must have shape"):
        kernel("conv2d_forward", "cuda")(fcuda.empty((1, 4, 3, 3), f),
                                         dev(np.ones((1, 3, 5, 5), f)),
                                         dev(np.ones((4, 2, 3, 3), f)), None, (1, 1), (0, 0))


def test_labels_checked_before_the_launch():
    """kernel() checks the labels on the host before the launch (the raw launcher leaves
    NaN in the bad rows and reports them when the loss is read)."""
    grad = fcuda.to_device(np.full((2, 3), 5, np.float32))
    with pytest.raises(ValueError, match=r"labels\[1\]: label 3 is out of range for 3 classes"):
        kernel("softmax_cross_entropy_forward", "cuda")(
            grad, fcuda.to_device(np.zeros((2, 3), np.float32)), fcuda.to_device(np.array([0, 3])))
    assert np.all(grad.copy_to_host() == 5)


def test_overlapping_device_arrays_are_refused():
    a = fcuda.to_device(np.arange(8, dtype=np.float32))
    with pytest.raises(ValueError, match="relu_forward: arguments 'out' and 'x' overlap"):
        kernel("relu_forward", "cuda")(a[1:], a[:7])
    kernel("relu_forward", "cuda")(a, a)  # in place
    np.testing.assert_array_equal(a.copy_to_host(), np.arange(8))
