"""BatchNorm1D / BatchNorm2D and GlobalAvgPool2D layers: API, buffers (state_dict order,
not parameters, load, dtype and save/load), modes, gradient accumulation and
validation. The numbers themselves are checked in tests/kernels and tests/test_torch_norm."""
import numpy as np
import pytest

import fastnet
from fastnet.device import device_of, to_numpy
from fastnet.layers import BatchNorm1D, BatchNorm2D, Buffer, Dense, GlobalAvgPool2D, Sequential
from tests import reference as ref

KEYS = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]


def test_defaults_and_state_dict_follow_pytorch():
    bn = BatchNorm2D(3)
    sd = bn.state_dict()
    assert list(sd) == KEYS
    np.testing.assert_array_equal(sd["weight"], np.ones(3))
    np.testing.assert_array_equal(sd["bias"], np.zeros(3))
    np.testing.assert_array_equal(sd["running_mean"], np.zeros(3))
    np.testing.assert_array_equal(sd["running_var"], np.ones(3))
    assert sd["num_batches_tracked"].dtype == np.int64 and sd["num_batches_tracked"].shape == ()
    assert sd["weight"].dtype == np.float32
    assert [type(p) for p in bn.parameters()] == [fastnet.layers.Parameter] * 2
    assert [k for k, _ in bn.named_buffers()] == KEYS[2:]
    assert all(isinstance(b, Buffer) for b in bn.buffers())
    assert repr(bn) == ("BatchNorm2D(num_features=3, eps=1e-05, momentum=0.1, affine=True, "
                        "track_running_stats=True)")


def test_buffers_are_not_parameters_and_options_drop_entries():
    assert list(BatchNorm1D(2, affine=False).state_dict()) == KEYS[2:]
    assert BatchNorm1D(2, affine=False).parameters() == []
    assert list(BatchNorm1D(2, track_running_stats=False).state_dict()) == KEYS[:2]
    assert BatchNorm1D(2, affine=False, track_running_stats=False).state_dict() == {}


def test_state_dict_order_is_per_module_parameters_then_buffers():
    model = Sequential(Dense(3, 4), BatchNorm1D(4), Dense(4, 2))
    assert list(model.state_dict()) == ["0.weight", "0.bias"] + [f"1.{k}" for k in KEYS] + \
        ["2.weight", "2.bias"]
    assert len(model.parameters()) == 6


@pytest.mark.parametrize("layer, shape", [(BatchNorm1D(3), (4, 3)), (BatchNorm1D(3), (2, 3, 5)),
                                          (BatchNorm2D(3), (2, 3, 4, 5))],
                         ids=["1d-features", "1d-sequence", "2d"])
def test_training_then_eval(rng, layer, shape, device):
    layer.load_state_dict({**layer.state_dict(), "running_mean": np.zeros(3),
                           "running_var": np.ones(3), "num_batches_tracked": np.array(0)})
    layer.zero_grad()
    layer.to(device).train()
    x = rng.standard_normal(shape).astype(np.float32)
    n, c = shape[:2]
    x3 = x.reshape(n, c, -1)
    y = layer(x)
    assert device_of(y) == device
    y = to_numpy(y)
    want = ref.batch_norm_forward(x3, np.ones(3), np.zeros(3), np.zeros(3), np.ones(3),
                                  np.array(0), True, 0.1, 1e-5)
    assert y.shape == shape and y.dtype == np.float32
    np.testing.assert_allclose(y.reshape(x3.shape), want[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(to_numpy(layer.running_mean.data), want[3], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_numpy(layer.running_var.data), want[4], rtol=1e-5, atol=1e-6)
    assert to_numpy(layer.num_batches_tracked.data) == 1
    dx = layer.backward(np.ones(shape, np.float32))
    assert dx.shape == shape
    np.testing.assert_allclose(to_numpy(layer.bias.grad), np.full(3, x3.shape[0] * x3.shape[2]), rtol=1e-6)
    layer.eval()
    before = layer.state_dict()
    ye = to_numpy(layer(x))
    want = ref.batch_norm_forward(x3, np.ones(3), np.zeros(3), before["running_mean"],
                                  before["running_var"], None, False, 0.1, 1e-5)
    np.testing.assert_allclose(ye.reshape(x3.shape), want[0], rtol=1e-5, atol=1e-5)
    for k, v in layer.state_dict().items():  # eval changes nothing
        np.testing.assert_array_equal(v, before[k])
    with pytest.raises(RuntimeError, match="no forward pass"):
        layer.backward(np.ones(shape, np.float32))


def test_track_running_stats_false_uses_batch_statistics_in_eval(rng):
    bn = BatchNorm2D(2, track_running_stats=False).eval()
    x = rng.standard_normal((3, 2, 2, 2))
    bn.to(np.float64)
    y = bn(x)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)


def test_gradients_accumulate_and_input_grad_false(rng):
    bn = BatchNorm1D(3)
    x = rng.standard_normal((5, 3)).astype(np.float32)
    g = rng.standard_normal((5, 3)).astype(np.float32)
    bn(x)
    dx = bn.backward(g)
    w1, b1 = bn.weight.grad.copy(), bn.bias.grad.copy()
    bn(x)
    assert bn.backward(g, input_grad=False) is None
    np.testing.assert_allclose(bn.weight.grad, 2 * w1, rtol=1e-6)
    np.testing.assert_allclose(bn.bias.grad, 2 * b1, rtol=1e-6)
    assert dx.shape == x.shape
    plain = BatchNorm1D(3, affine=False)
    plain(x)
    assert plain.backward(g, input_grad=False) is None


def test_momentum_none_is_cumulative(rng):
    bn = BatchNorm1D(2, momentum=None).to(np.float64)
    xs = [rng.standard_normal((6, 2)) + k for k in range(3)]
    for x in xs:
        bn(x)
    np.testing.assert_allclose(bn.running_mean.data, np.mean([x.mean(0) for x in xs], 0), rtol=1e-12)
    assert bn.num_batches_tracked.data == 3


def test_load_state_dict_is_strict_and_to_dtype_keeps_the_counter(rng):
    bn = BatchNorm2D(2)
    sd = {"weight": np.array([2.0, 3.0]), "bias": np.array([0.5, -1.0]),
          "running_mean": np.array([0.1, 0.2]), "running_var": np.array([1.5, 2.5]),
          "num_batches_tracked": np.array(7)}
    bn.load_state_dict(sd)
    assert bn.num_batches_tracked.data == 7 and bn.num_batches_tracked.dtype == np.int64
    assert bn.running_var.dtype == np.float32
    with pytest.raises(KeyError, match="num_batches_tracked"):
        bn.load_state_dict({k: v for k, v in sd.items() if k != "num_batches_tracked"})
    with pytest.raises(ValueError, match="running_mean"):
        bn.load_state_dict({**sd, "running_mean": np.zeros(3)})
    bn.to(np.float64)
    assert bn.running_mean.dtype == bn.weight.dtype == np.float64
    assert bn.num_batches_tracked.dtype == np.int64
    x = rng.standard_normal((2, 2, 3, 3))
    assert bn(x).dtype == np.float64
    assert bn.num_batches_tracked.data == 8


def test_save_and_load_keep_buffers(tmp_path, rng):
    model = Sequential(Dense(3, 4), BatchNorm1D(4, momentum=0.2), Dense(4, 2))
    for _ in range(3):
        model(rng.standard_normal((5, 3)).astype(np.float32))
    fastnet.save(model, tmp_path / "m.npz")
    back = fastnet.load(tmp_path / "m.npz")
    assert back[1].momentum == 0.2
    for (k, a), (kb, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert k == kb and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b, err_msg=k)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    np.testing.assert_array_equal(back.eval()(x), model.eval()(x))
    # float64 models keep their buffers' dtype through a file
    model.to(np.float64)
    fastnet.save(model, tmp_path / "m64.npz")
    back = fastnet.load(tmp_path / "m64.npz")
    assert back[1].running_mean.dtype == np.float64 and back[1].num_batches_tracked.dtype == np.int64


@pytest.mark.parametrize("make, x, match", [
    (lambda: BatchNorm2D(3), np.zeros((2, 3, 4)), r"expected input of shape \(N, 3, \*, \*\), got \(2, 3, 4\)"),
    (lambda: BatchNorm2D(3), np.zeros((2, 4, 2, 2)), r"\(N, 3, \*, \*\), got \(2, 4, 2, 2\)"),
    (lambda: BatchNorm1D(3), np.zeros((2, 3, 4, 5)), r"\(N, 3\) or \(N, 3, \*\), got \(2, 3, 4, 5\)"),
    (lambda: BatchNorm1D(3), np.zeros((1, 3)), "expected more than 1 value per channel when training"),
    (lambda: BatchNorm2D(3), np.zeros((1, 3, 1, 1)), "more than 1 value per channel"),
    (lambda: BatchNorm1D(3, track_running_stats=False).eval(), np.zeros((1, 3)), "more than 1 value"),
])
def test_bad_input_is_a_clear_value_error(make, x, match):
    layer = make()
    with pytest.raises(ValueError, match=match):
        layer(x.astype(np.float32))


def test_bad_dtype_or_type_is_a_type_error():
    with pytest.raises(TypeError, match="float32 input"):
        BatchNorm1D(2)(np.zeros((3, 2)))
    with pytest.raises(TypeError, match="numpy.ndarray"):
        BatchNorm1D(2)([[1.0, 2.0], [3.0, 4.0]])
    assert BatchNorm1D(2).eval()(np.zeros((1, 2), np.float32)).shape == (1, 2)  # eval: fine


@pytest.mark.parametrize("kwargs, exc", [
    (dict(num_features=0), ValueError), (dict(num_features=2.0), TypeError),
    (dict(num_features=2, eps=0), ValueError), (dict(num_features=2, momentum=1.5), ValueError),
    (dict(num_features=2, momentum="x"), TypeError), (dict(num_features=2, affine=1), TypeError),
])
def test_bad_arguments(kwargs, exc):
    with pytest.raises(exc, match="BatchNorm1D"):
        BatchNorm1D(**kwargs)


def test_global_avg_pool_layer(rng, device):
    pool = GlobalAvgPool2D().to(device)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    y = pool(x)
    assert y.shape == (2, 3) and device_of(y) == device
    np.testing.assert_allclose(to_numpy(y), x.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
    dx = pool.backward(np.ones((2, 3), np.float32))
    np.testing.assert_allclose(to_numpy(dx), np.full(x.shape, 1 / 20), rtol=1e-6)
    pool(x)
    assert pool.backward(np.ones((2, 3), np.float32), input_grad=False) is None
    with pytest.raises(ValueError, match=r"GlobalAvgPool2D\(\): expected input of shape"):
        pool(np.zeros((2, 3, 4), np.float32))
    pool(x)
    with pytest.raises(ValueError, match="gradient of shape"):
        pool.backward(np.ones((2, 3, 1, 1), np.float32))
