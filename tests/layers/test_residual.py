"""Residual: out = block(x) + (shortcut(x) or x), both branches' gradients summed; state
dict keys, save / load of nested layers, modes, input_grad=False, accumulation and
validation. Also the resnet_small and lenet5 entries of the model zoo."""
import numpy as np
import pytest

import fastnet
from fastnet.device import to_numpy
from fastnet.layers import (BatchNorm1D, BatchNorm2D, Conv2D, Dense, Flatten, GlobalAvgPool2D,
                            ReLU, Residual, Sequential, Tanh)
from fastnet.models import MODELS, lenet, lenet5, resnet_small
from tests.gradcheck import check_backward


def _identity_block():
    fastnet.manual_seed(0)
    return Residual(Sequential(Dense(4, 4), Tanh(), Dense(4, 4))).to(np.float64)


def _projection_block():
    fastnet.manual_seed(1)
    return Residual(Sequential(Conv2D(2, 3, 3, stride=2, padding=1, bias=False), BatchNorm2D(3),
                               ReLU(), Conv2D(3, 3, 3, padding=1)),
                    Sequential(Conv2D(2, 3, 1, stride=2, bias=False), BatchNorm2D(3))).to(np.float64)


def test_identity_shortcut_forward_and_backward(rng):
    res = _identity_block()
    x = rng.standard_normal((3, 4))
    np.testing.assert_allclose(res(x), res.block(x) + x, rtol=1e-14)

    def forward(x):
        return res(x)

    def backward(dout, x):
        res(x)
        return [res.backward(dout)]

    check_backward(forward, backward, [x], rng)


def test_projection_shortcut_input_and_parameter_gradients(rng):
    """Finite differences through both branches (BatchNorm in training mode included)."""
    res = _projection_block()
    x = rng.standard_normal((2, 2, 5, 5))
    w = res.shortcut[0].weight

    def forward(x, wdata):
        w.data = wdata
        return res(x)

    def backward(dout, x, wdata):
        w.data = wdata
        res.zero_grad()
        res(x)
        dx = res.backward(dout)
        return [dx, w.grad]

    check_backward(forward, backward, [x, w.data.copy()], rng, names=["x", "shortcut weight"])


def test_input_grad_false_and_gradient_accumulation(rng):
    res = _projection_block()
    x = rng.standard_normal((2, 2, 4, 4))
    g = rng.standard_normal((2, 3, 2, 2))
    res(x)
    res.backward(g)
    first = {k: p.grad.copy() for k, p in res.named_parameters()}
    res(x)
    assert res.backward(g, input_grad=False) is None
    for k, p in res.named_parameters():
        np.testing.assert_allclose(p.grad, 2 * first[k], rtol=1e-12, atol=1e-14, err_msg=k)


def test_state_dict_keys_modes_and_repr():
    res = _projection_block()
    keys = list(res.state_dict())
    assert keys[:2] == ["block.0.weight", "block.1.weight"]
    assert "shortcut.0.weight" in keys and "shortcut.1.num_batches_tracked" in keys
    assert len(res.parameters()) == 8
    res.eval()
    assert not res.block[1].training and not res.shortcut[1].training
    res.train()
    assert res.shortcut[1].training
    assert "(shortcut): Sequential(" in repr(res)


def test_shape_mismatch_is_a_clear_error(rng):
    res = Residual(Sequential(Conv2D(2, 3, 3, padding=1)))
    with pytest.raises(ValueError, match=r"block's output \(1, 3, 4, 4\).*input \(1, 2, 4, 4\).*shortcut"):
        res(rng.standard_normal((1, 2, 4, 4)).astype(np.float32))
    res = Residual(Conv2D(2, 3, 3, padding=1), Conv2D(2, 3, 1, stride=2))
    with pytest.raises(ValueError, match="shortcut's output"):
        res(rng.standard_normal((1, 2, 4, 4)).astype(np.float32))
    with pytest.raises(TypeError, match="Residual: block"):
        Residual(lambda x: x)
    with pytest.raises(TypeError, match="Residual: shortcut"):
        Residual(ReLU(), "x")
    with pytest.raises(TypeError, match="numpy.ndarray"):
        Residual(ReLU())([1.0])


def test_save_load_round_trip_of_nested_layers(tmp_path, rng):
    model = Sequential(_projection_block(), ReLU(), Residual(ReLU()), GlobalAvgPool2D(),
                       Dense(3, 2).to(np.float64))
    x = rng.standard_normal((2, 2, 4, 4))
    model(x)  # running statistics away from their initial values
    fastnet.save(model, tmp_path / "res.npz")
    back = fastnet.load(tmp_path / "res.npz")
    assert back[2].shortcut is None and isinstance(back[0].shortcut, Sequential)
    assert list(back.state_dict()) == list(model.state_dict())
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k], v, err_msg=k)
    np.testing.assert_array_equal(back.eval()(x), model.eval()(x))


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)], ids=["digits", "cifar"])
def test_resnet_small_shapes_and_a_training_step(rng, shape):
    fastnet.manual_seed(0)
    model = MODELS["resnet-small"](in_shape=shape, num_classes=10)
    assert MODELS["resnet-small"] is resnet_small
    x = rng.standard_normal((2,) + shape).astype(np.float32)
    y = model(x)
    assert y.shape == (2, 10) and y.dtype == np.float32
    assert model.backward(np.ones_like(y), input_grad=False) is None
    assert all(p.grad is not None for p in model.parameters())
    assert not any(isinstance(m, Conv2D) and m.bias is not None for m in model.modules())
    assert model.eval()(x[:1]).shape == (1, 10)


def test_lenet5_is_lenet():
    assert lenet5 is lenet and MODELS["lenet5"] is lenet and MODELS["lenet"] is lenet
    assert isinstance(lenet5()[6], Flatten)


def _block(dtype):
    fastnet.manual_seed(4)
    return Sequential(
        Residual(Sequential(Conv2D(2, 3, 3, stride=2, padding=1, bias=False, dtype=dtype),
                            BatchNorm2D(3, dtype=dtype), ReLU(),
                            Conv2D(3, 3, 3, padding=1, bias=False, dtype=dtype),
                            BatchNorm2D(3, momentum=None, dtype=dtype)),
                 Sequential(Conv2D(2, 3, 1, stride=2, bias=False, dtype=dtype),
                            BatchNorm2D(3, dtype=dtype))),
        ReLU(), GlobalAvgPool2D(), BatchNorm1D(3, dtype=dtype))


@pytest.mark.cuda
def test_residual_block_on_cuda_matches_cpu(rng):
    """A projection-shortcut block with BN, two training steps' forward and backward
    (float64), then eval: outputs, input and parameter gradients, running statistics."""
    cpu, gpu = _block(np.float64), _block(np.float64).to("cuda")
    for _ in range(2):
        x = rng.standard_normal((2, 2, 4, 4))
        g = rng.standard_normal((2, 3))
        yc, yg = cpu(x), gpu(x)
        np.testing.assert_allclose(to_numpy(yg), yc, rtol=1e-10, atol=1e-12)
        for m in (cpu, gpu):
            m.zero_grad()
        dxc, dxg = cpu.backward(g), gpu.backward(g)
        np.testing.assert_allclose(to_numpy(dxg), dxc, rtol=1e-9, atol=1e-11)
    for (name, pc), pg in zip(cpu.named_parameters(), gpu.parameters()):
        np.testing.assert_allclose(to_numpy(pg.grad), pc.grad, rtol=1e-9, atol=1e-11, err_msg=name)
    sc, sg = cpu.state_dict(), gpu.state_dict()
    assert list(sc) == list(sg)
    for k in sc:
        assert sg[k].dtype == sc[k].dtype, k
        np.testing.assert_allclose(sg[k], sc[k], rtol=1e-10, atol=1e-12, err_msg=k)
    assert sg["0.block.4.num_batches_tracked"] == 2
    x = rng.standard_normal((3, 2, 4, 4))
    np.testing.assert_allclose(to_numpy(gpu.eval()(x)), cpu.eval()(x), rtol=1e-10, atol=1e-12)
