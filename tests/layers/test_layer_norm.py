"""LayerNorm: API (PyTorch's arguments, state_dict keys and initialisation), validation,
device moves, inference plans, save/load and finite differences through the layer. The
kernels' numbers are checked in tests/kernels/test_norm.py, PyTorch's in
tests/test_torch_layer_norm.py."""
import numpy as np
import pytest

import fastnet
from fastnet.device import to_numpy
from fastnet.layers import Dense, LayerNorm, ReLU, Sequential
from tests import reference as ref
from tests.gradcheck import check_backward


def test_defaults_and_state_dict_follow_pytorch():
    ln = LayerNorm((2, 3))
    assert ln.normalized_shape == (2, 3) and ln.eps == 1e-5
    sd = ln.state_dict()
    assert list(sd) == ["weight", "bias"]
    np.testing.assert_array_equal(sd["weight"], np.ones((2, 3), np.float32))
    np.testing.assert_array_equal(sd["bias"], np.zeros((2, 3), np.float32))
    assert LayerNorm(4).normalized_shape == (4,)
    assert list(LayerNorm(4, bias=False).state_dict()) == ["weight"]
    assert LayerNorm(4, elementwise_affine=False).parameters() == []
    assert LayerNorm(4, dtype=np.float64).weight.dtype == np.float64
    assert repr(LayerNorm(4)) == ("LayerNorm(normalized_shape=[4], eps=1e-05, "
                                  "elementwise_affine=True, bias=True)")


@pytest.mark.parametrize("args, error", [
    ((0,), ValueError), (((),), TypeError), ((2.5,), TypeError), (((2, -1),), ValueError),
    ((3, -1e-3), ValueError), ((3, 1e-5, 1), TypeError), ((3, 1e-5, True, "no"), TypeError)])
def test_bad_arguments_are_refused(args, error):
    with pytest.raises(error, match="LayerNorm"):
        LayerNorm(*args)


def test_bad_inputs_name_the_layer_and_the_shape():
    ln = LayerNorm((2, 3))
    with pytest.raises(ValueError, match=r"LayerNorm.*\(\*, 2, 3\).*\(3,\)"):
        ln(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"LayerNorm.*\(4, 3\)"):
        ln(np.zeros((4, 3), np.float32))
    with pytest.raises(TypeError, match="LayerNorm.*float32"):
        ln(np.zeros((4, 2, 3), np.float64))
    with pytest.raises(TypeError, match="LayerNorm"):
        ln(np.zeros((4, 2, 3), np.int64))
    ln(np.ones((5, 2, 3), np.float32))
    with pytest.raises(ValueError, match=r"LayerNorm.*\.backward"):
        ln.backward(np.ones((5, 3, 2), np.float32))
    # without affine parameters any float dtype goes
    assert LayerNorm(3, elementwise_affine=False)(np.ones((2, 3))).dtype == np.float64


@pytest.mark.parametrize("shape, normalized", [((4, 6), 6), ((2, 3, 2, 2), (3, 2, 2)),
                                               ((2, 3), (2, 3))],
                         ids=["rows", "image", "one-sample"])
def test_forward_and_backward_on_each_device(rng, device, to_dev, dtype, shape, normalized):
    ln = LayerNorm(normalized, dtype=dtype)
    w = rng.uniform(0.5, 1.5, ln.normalized_shape).astype(dtype)
    b = rng.standard_normal(ln.normalized_shape).astype(dtype)
    ln.load_state_dict({"weight": w, "bias": b})
    ln.to(device)
    x = rng.standard_normal(shape).astype(dtype)
    d = int(np.prod(ln.normalized_shape))
    out = to_numpy(ln(to_dev(x)))
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-11)
    want = ref.layer_norm_forward(x.reshape(-1, d), w.reshape(d), b.reshape(d), 1e-5)[0]
    np.testing.assert_allclose(out, want.reshape(shape), **tol)
    dout = rng.standard_normal(shape).astype(dtype)
    dx = to_numpy(ln.backward(to_dev(dout)))
    rdx, rdw, rdb = ref.layer_norm_backward(dout.reshape(-1, d), x.reshape(-1, d), w.reshape(d),
                                            1e-5)
    np.testing.assert_allclose(dx, rdx.reshape(shape), **tol)
    np.testing.assert_allclose(to_numpy(ln.weight.grad), rdw.reshape(w.shape), **tol)
    np.testing.assert_allclose(to_numpy(ln.bias.grad), rdb.reshape(w.shape), **tol)


def test_layer_backward_matches_finite_differences(rng):
    ln = LayerNorm((2, 3), dtype=np.float64)

    def forward(x, w, b):
        ln.weight.data[...] = w
        ln.bias.data[...] = b
        return ln(x)

    def backward(dout, x, w, b):
        forward(x, w, b)
        ln.zero_grad()
        dx = ln.backward(dout)
        return dx, ln.weight.grad, ln.bias.grad

    check_backward(forward, backward, [rng.standard_normal((2, 2, 3)),
                                       rng.uniform(0.5, 1.5, (2, 3)), rng.standard_normal((2, 3))],
                   rng, names=["x", "weight", "bias"])


def test_eval_is_the_same_normalisation_and_is_planned(rng):
    """No running statistics: eval mode gives training mode's output; a Sequential's
    eval-mode plan (LayerNorm has a step) gives bitwise the layer-by-layer output."""
    model = Sequential(Dense(5, 8), LayerNorm(8), ReLU(), Dense(8, 3))
    x = rng.standard_normal((4, 5)).astype(np.float32)
    train_out = model(x)
    model.eval()
    first = model(x)
    np.testing.assert_array_equal(first, train_out)
    assert [p for p in model._plans.values() if p.steps is not None]  # planned
    np.testing.assert_array_equal(model(x), first)
    model[1].weight.data[...] = 2.0  # plans read the arrays on every call
    layer_by_layer = x
    for layer in model:
        layer_by_layer = layer(layer_by_layer)
    np.testing.assert_array_equal(model(x), layer_by_layer)


def test_save_and_load_round_trip(tmp_path, rng):
    model = Sequential(Dense(4, 6), LayerNorm(6, bias=False), Dense(6, 2),
                       LayerNorm((2,), elementwise_affine=False, eps=1e-3))
    model[1].weight.data[...] = rng.uniform(0.5, 1.5, 6)
    fastnet.save(model, tmp_path / "m.npz")
    loaded = fastnet.load(tmp_path / "m.npz")
    assert repr(loaded) == repr(model)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_array_equal(loaded.eval()(x), model.eval()(x))
