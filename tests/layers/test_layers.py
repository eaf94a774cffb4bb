"""Layers over the kernels: forward/backward against the reference, whole-model finite
differences, gradient accumulation, modes, dtypes, initialisation, overfitting a batch."""
import numpy as np
import pytest

import fastnet
from fastnet.layers import (AvgPool2D, Conv2D, Dense, Dropout, Flatten, LeakyReLU, LogSoftmax,
                            MaxPool2D, ReLU, Sequential, Sigmoid, Softmax, Tanh)
from fastnet.losses import CrossEntropyLoss, MSELoss
from fastnet.layers import Parameter
from fastnet.optim import SGD, Adam, AdamW
from tests import reference as ref
from tests.gradcheck import numerical_grad


def small_cnn(dtype=np.float32):
    """conv(stride 2, padding) -> relu -> maxpool -> conv -> tanh -> avgpool -> dense."""
    m = Sequential(
        Conv2D(2, 3, (3, 2), stride=(2, 1), padding=(1, 0)), ReLU(), MaxPool2D(2, stride=1),
        Conv2D(3, 4, 2, padding=1), Tanh(), AvgPool2D(2), Flatten(),
        Dense(4 * 2 * 2, 5, activation="sigmoid"), LeakyReLU(0.1), Dense(5, 3),
    )
    return m.to(dtype)


def test_dense_layer_matches_reference(rng, dtype, close):
    fastnet.manual_seed(1)
    layer = Dense(7, 5, activation="tanh").to(dtype)
    x = rng.standard_normal((6, 7)).astype(dtype)
    y = layer(x)
    close(y, ref.dense_forward(x, layer.weight.data, layer.bias.data, "tanh"), err_msg="y")
    dout = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dout)
    rdx, rdw, rdb = ref.dense_backward(dout, x, layer.weight.data, y, "tanh")
    close(dx, rdx, err_msg="dx")
    close(layer.weight.grad, rdw, scale=3, err_msg="dw")
    close(layer.bias.grad, rdb, scale=3, err_msg="db")


def test_conv_layer_matches_reference(rng, dtype, close):
    fastnet.manual_seed(2)
    layer = Conv2D(3, 4, (3, 2), stride=(2, 1), padding=(1, 2)).to(dtype)
    x = rng.standard_normal((2, 3, 7, 6)).astype(dtype)
    y = layer(x)
    close(y, ref.conv2d_forward(x, layer.weight.data, layer.bias.data, (2, 1), (1, 2)),
          scale=3, err_msg="y")
    dout = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dout)
    rdx, rdw, rdb = ref.conv2d_backward(dout, x, layer.weight.data, (2, 1), (1, 2))
    close(dx, rdx, scale=3, err_msg="dx")
    close(layer.weight.grad, rdw, scale=10, err_msg="dw")
    close(layer.bias.grad, rdb, scale=10, err_msg="db")


def test_pool_and_activation_layers_match_reference(rng, dtype, close):
    x = rng.standard_normal((2, 3, 5, 7)).astype(dtype)
    cases = [
        (MaxPool2D(3, stride=2, padding=1), lambda: ref.max_pool2d_forward(x, 3, 2, 1)[0]),
        (AvgPool2D((2, 3), stride=(1, 2)), lambda: ref.avg_pool2d_forward(x, (2, 3), (1, 2), 0)),
        (ReLU(), lambda: ref.relu_forward(x)),
        (Sigmoid(), lambda: ref.sigmoid_forward(x)),
        (Tanh(), lambda: ref.tanh_forward(x)),
        (LeakyReLU(0.2), lambda: ref.leaky_relu_forward(x, 0.2)),
        (Softmax(), lambda: ref.softmax_forward(x.reshape(-1, 7)).reshape(x.shape)),
        (LogSoftmax(), lambda: ref.log_softmax_forward(x.reshape(-1, 7)).reshape(x.shape)),
    ]
    for layer, want in cases:
        close(layer(x), want(), err_msg=repr(layer))


def _loss_of(model, x, labels):
    return CrossEntropyLoss()(model(x), labels)


def test_whole_model_gradients_match_finite_differences(rng):
    """Every parameter's and the input's gradient through conv/pool/dense/activations,
    float64 central differences of the loss."""
    fastnet.manual_seed(3)
    model = small_cnn(np.float64)
    x = rng.standard_normal((2, 2, 7, 6))
    labels = np.array([0, 2])
    loss_fn = CrossEntropyLoss()
    model.zero_grad()
    loss_fn(model(x), labels)
    dx = model.backward(loss_fn.backward())
    np.testing.assert_allclose(dx, numerical_grad(lambda v: _loss_of(model, v, labels), x),
                               rtol=1e-5, atol=1e-8)
    for name, p in model.named_parameters():
        num = numerical_grad(lambda v: _loss_of(model, x, labels), p.data)
        np.testing.assert_allclose(p.grad, num, rtol=1e-5, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("first", ["conv", "flatten-dense", "dropout-conv"])
def test_backward_without_input_grad_gives_the_same_parameter_grads(rng, first):
    """input_grad=False skips d loss / d input (the first conv's col2im, the first dense's
    GEMM) and the parameterless layers in front of it, but no parameter gradient."""
    head = {"conv": [], "flatten-dense": [Flatten(), Dense(2 * 7 * 6, 2 * 7 * 6),
                                          _Unflatten((2, 7, 6))],
            "dropout-conv": [Dropout(0.0)]}[first]
    fastnet.manual_seed(1)
    model = Sequential(*head, *small_cnn().layers).to(np.float64)
    x, labels = rng.standard_normal((3, 2, 7, 6)), np.array([0, 2, 1])
    loss_fn = CrossEntropyLoss()
    grads = []
    for input_grad in (True, False):
        model.zero_grad()
        loss_fn(model(x), labels)
        dx = model.backward(loss_fn.backward(), input_grad=input_grad)
        assert (dx is None) == (not input_grad)
        grads.append([p.grad.copy() for p in model.parameters()])
        with pytest.raises(RuntimeError, match="no forward pass"):
            model.backward(np.zeros((3, 3)))  # every layer's forward state was consumed
    for a, b in zip(*grads):
        np.testing.assert_array_equal(a, b)


class _Unflatten(fastnet.layers.Module):
    def __init__(self, shape):
        self.shape = shape

    def forward(self, x):
        return x.reshape(x.shape[0], *self.shape)

    def backward(self, grad_out, input_grad=True):
        return grad_out.reshape(grad_out.shape[0], -1) if input_grad else None


def test_gradients_accumulate_until_zero_grad(rng):
    fastnet.manual_seed(4)
    model = small_cnn()
    x = rng.standard_normal((3, 2, 7, 6)).astype(np.float32)
    loss_fn = CrossEntropyLoss()
    labels = np.array([0, 1, 2])
    loss_fn(model(x), labels)
    model.backward(loss_fn.backward())
    once = [p.grad.copy() for p in model.parameters()]
    loss_fn(model(x), labels)
    model.backward(loss_fn.backward())
    for g1, p in zip(once, model.parameters()):
        np.testing.assert_allclose(p.grad, 2 * g1, rtol=1e-5, atol=1e-7)
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    loss_fn(model(x), labels)
    model.backward(loss_fn.backward())
    for g1, p in zip(once, model.parameters()):
        np.testing.assert_allclose(p.grad, g1, rtol=1e-6, atol=1e-8)


def test_float32_stays_float32_and_float64_works(rng):
    for dtype in (np.float32, np.float64):
        model = small_cnn(dtype)
        x = rng.standard_normal((2, 2, 7, 6)).astype(dtype)
        y = model(x)
        assert y.dtype == dtype
        loss_fn = CrossEntropyLoss()
        loss_fn(y, np.array([1, 2]))
        dx = model.backward(loss_fn.backward())
        assert dx.dtype == dtype
        assert all(p.data.dtype == dtype and p.grad.dtype == dtype for p in model.parameters())
        SGD(model.parameters(), lr=0.1, momentum=0.9).step()
        assert all(p.data.dtype == dtype for p in model.parameters())


def test_eval_mode_keeps_nothing_and_backward_then_fails(rng):
    model = small_cnn().eval()
    x = rng.standard_normal((1, 2, 7, 6)).astype(np.float32)
    y = model(x)
    assert all(getattr(m, "_saved", None) is None for m in model.modules())
    with pytest.raises(RuntimeError, match="training mode"):
        model.backward(np.ones_like(y))
    model.train()
    y2 = model(x)
    np.testing.assert_array_equal(y, y2)  # same numbers in both modes (no dropout here)
    model.backward(np.ones_like(y2))
    with pytest.raises(RuntimeError, match="once per forward"):
        model.backward(np.ones_like(y2))


def test_default_init_is_pytorch_kaiming_uniform_and_seeded():
    fastnet.manual_seed(5)
    a = Conv2D(3, 8, 5)
    fastnet.manual_seed(5)
    b = Conv2D(3, 8, 5)
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    bound = 1 / np.sqrt(3 * 5 * 5)
    for p in (a.weight.data, a.bias.data):
        assert p.dtype == np.float32
        assert np.abs(p).max() <= bound
        assert np.abs(p).max() > 0.9 * bound  # uses the whole range
    d = Dense(100, 50)
    assert np.abs(d.weight.data).max() <= 0.1 and d.weight.shape == (50, 100)
    fastnet.manual_seed(6)
    assert not np.array_equal(Conv2D(3, 8, 5).weight.data, a.weight.data)


def test_dropout_layer_train_eval_and_seeding(rng):
    x = rng.standard_normal((64, 50)).astype(np.float32)
    fastnet.manual_seed(7)
    d1 = Dropout(0.25)
    fastnet.manual_seed(7)
    d2 = Dropout(0.25)
    y1, y2 = d1(x), d2(x)
    np.testing.assert_array_equal(y1, y2)                   # same seed, same masks
    assert not np.array_equal(d1(x), y1)                    # a new mask each call
    kept = y1 != 0
    assert 0.70 < kept.mean() < 0.80
    np.testing.assert_allclose(y1[kept], x[kept] / 0.75, rtol=1e-6)
    g = d2.backward(np.ones_like(y2))
    np.testing.assert_allclose(g, kept / np.float32(0.75), rtol=1e-6)
    d1.eval()
    assert d1(x) is x or np.array_equal(d1(x), x)


def test_softmax_layer_on_extreme_logits():
    x = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]], dtype=np.float32)
    y = Softmax()(x)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y.sum(axis=1), 1, rtol=1e-6)
    ly = LogSoftmax()(x)
    assert np.isfinite(ly).all()
    np.testing.assert_allclose(ly[0], [0, -2e4, -1e4], rtol=1e-6)


def test_sequential_container_and_flatten(rng):
    model = Sequential(Flatten(), Dense(12, 4))
    assert len(model) == 2 and isinstance(model[1], Dense) and list(model)[0] is model[0]
    model.append(ReLU())
    assert [k for k, _ in model.named_parameters()] == ["1.weight", "1.bias"]
    x = rng.standard_normal((5, 3, 2, 2)).astype(np.float32)
    y = model(x)
    assert y.shape == (5, 4) and (y >= 0).all()
    assert model.backward(np.ones_like(y)).shape == x.shape
    assert "Dense(in_features=12" in repr(model)


@pytest.mark.parametrize("make_opt", [
    lambda ps: SGD(ps, lr=0.1, momentum=0.9),
    lambda ps: SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4),
    lambda ps: Adam(ps, lr=1e-2),
    lambda ps: AdamW(ps, lr=1e-2),
], ids=["sgd-momentum", "sgd-nesterov-wd", "adam", "adamw"])
def test_small_model_overfits_one_batch(rng, make_opt):
    fastnet.manual_seed(8)
    model = Sequential(Conv2D(1, 4, 3, padding=1), ReLU(), MaxPool2D(2), Flatten(),
                       Dense(4 * 3 * 3, 16, activation="relu"), Dense(16, 4))
    x = rng.standard_normal((16, 1, 6, 6)).astype(np.float32)
    labels = rng.integers(0, 4, 16)
    opt, loss_fn = make_opt(model.parameters()), CrossEntropyLoss()
    first = None
    for _ in range(150):
        opt.zero_grad()
        loss = loss_fn(model(x), labels)
        first = loss if first is None else first
        model.backward(loss_fn.backward())
        opt.step()
    assert loss < 0.05 * first and loss < 0.05
    assert (model.eval()(x).argmax(axis=1) == labels).all()


def test_mse_regression_fits(rng):
    fastnet.manual_seed(9)
    model = Sequential(Dense(3, 16, activation="tanh"), Dense(16, 2))
    x = rng.standard_normal((32, 3)).astype(np.float32)
    target = np.stack([x[:, 0] * x[:, 1], np.sin(x[:, 2])], axis=1)
    opt, loss_fn = Adam(model.parameters(), lr=1e-2), MSELoss()
    for _ in range(400):
        opt.zero_grad()
        loss = loss_fn(model(x), target)
        model.backward(loss_fn.backward())
        opt.step()
    assert loss < 0.02


def test_sgd_updates_parameters_of_two_dtypes(rng):
    """An optimizer over parameters of two dtypes gives each the update sgd_step gives
    (momentum, Nesterov and weight decay, over several steps), in its own dtype."""
    from fastnet.kernels import kernel

    shapes = [(3, 4), (5,), (2, 3, 3, 3)]
    dtypes = [np.float32, np.float64, np.float32]
    ps = [Parameter(rng.standard_normal(s).astype(d)) for s, d in zip(shapes, dtypes)]
    want = [p.data.copy() for p in ps]
    vel = [np.zeros(s, d) for s, d in zip(shapes, dtypes)]
    opt = SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True)
    for _ in range(3):
        for p in ps:
            p.grad = rng.standard_normal(p.shape).astype(p.dtype)
        opt.step()
        for p, r, v in zip(ps, want, vel):
            kernel("sgd_step")(r, v, p.grad, 0.1, 0.9, 0.01, True)
    for p, r in zip(ps, want):
        assert p.data.dtype == r.dtype
        np.testing.assert_array_equal(p.data, r)


def test_optimizer_skips_parameters_without_grad_and_state_round_trip(rng):
    fastnet.manual_seed(10)
    a, b = Dense(3, 2), Dense(2, 2)
    opt = Adam(a.parameters() + b.parameters(), lr=0.1)
    before = b.weight.data.copy()
    y = a(rng.standard_normal((4, 3)).astype(np.float32))
    a.backward(np.ones_like(y))
    opt.step()
    np.testing.assert_array_equal(b.weight.data, before)    # no grad: untouched
    assert opt.param_steps == [1, 1, 0, 0]
    state = opt.state_dict()
    opt2 = Adam(a.parameters() + b.parameters(), lr=0.1)
    opt2.load_state_dict(state)
    assert opt2.param_steps == [1, 1, 0, 0]
    np.testing.assert_array_equal(opt2.state[0]["exp_avg"], opt.state[0]["exp_avg"])
