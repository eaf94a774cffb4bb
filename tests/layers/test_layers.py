"""Layers over the kernels: forward/backward against the reference (on every device),
whole-model finite differences, gradient accumulation, modes, dtypes, initialisation,
overfitting a batch; a CUDA training step against the CPU one."""
import numpy as np
import pytest

import fastnet
from fastnet import cuda as fcuda
from fastnet.device import device_of, to_numpy
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


def test_dense_layer_matches_reference(rng, dtype, close, device, to_dev):
    fastnet.manual_seed(1)
    layer = Dense(7, 5, activation="tanh").to(dtype).to(device)
    w, b = to_numpy(layer.weight.data), to_numpy(layer.bias.data)
    x = rng.standard_normal((6, 7)).astype(dtype)
    y = layer(to_dev(x))
    assert device_of(y) == device
    close(y, ref.dense_forward(x, w, b, "tanh"), err_msg="y")
    dout = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(to_dev(dout))
    rdx, rdw, rdb = ref.dense_backward(dout, x, w, to_numpy(y), "tanh")
    close(dx, rdx, err_msg="dx")
    close(layer.weight.grad, rdw, scale=3, err_msg="dw")
    close(layer.bias.grad, rdb, scale=3, err_msg="db")


def test_conv_layer_matches_reference(rng, dtype, close, device, to_dev):
    fastnet.manual_seed(2)
    layer = Conv2D(3, 4, (3, 2), stride=(2, 1), padding=(1, 2)).to(dtype).to(device)
    w, b = to_numpy(layer.weight.data), to_numpy(layer.bias.data)
    x = rng.standard_normal((2, 3, 7, 6)).astype(dtype)
    y = layer(to_dev(x))
    assert device_of(y) == device
    close(y, ref.conv2d_forward(x, w, b, (2, 1), (1, 2)), scale=3, err_msg="y")
    dout = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(to_dev(dout))
    rdx, rdw, rdb = ref.conv2d_backward(dout, x, w, (2, 1), (1, 2))
    close(dx, rdx, scale=3, err_msg="dx")
    close(layer.weight.grad, rdw, scale=10, err_msg="dw")
    close(layer.bias.grad, rdb, scale=10, err_msg="db")


def test_pool_and_activation_layers_match_reference(rng, dtype, close, device, to_dev):
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
        y = layer.to(device)(to_dev(x))
        assert device_of(y) == device
        close(y, want(), err_msg=repr(layer))


def _rows(f):
    """A reference over (rows, C) applied to the last axis of any shape."""
    return lambda dout, out: f(dout.reshape(-1, dout.shape[-1]),
                               out.reshape(-1, out.shape[-1])).reshape(dout.shape)


@pytest.mark.parametrize("layer, backward", [
    (ReLU(), ref.relu_backward), (Sigmoid(), ref.sigmoid_backward),
    (Tanh(), ref.tanh_backward), (Softmax(), _rows(ref.softmax_backward)),
    (LogSoftmax(), _rows(ref.log_softmax_backward)),
], ids=lambda v: type(v).__name__ if isinstance(v, fastnet.layers.Module) else "")
def test_activation_layer_gradients_match_reference(rng, dtype, close, device, to_dev, layer,
                                                    backward):
    layer.to(device)
    x = rng.standard_normal((2, 3, 5)).astype(dtype)
    dout = rng.standard_normal(x.shape).astype(dtype)
    out = to_numpy(layer(to_dev(x)))
    dx = layer.backward(to_dev(dout))
    assert device_of(dx) == device
    close(dx, backward(dout, out))


def test_leaky_relu_layer_gradient_matches_reference(rng, dtype, close, device, to_dev):
    layer = LeakyReLU(0.2).to(device)
    x = rng.standard_normal((3, 5)).astype(dtype)
    dout = rng.standard_normal(x.shape).astype(dtype)
    layer(to_dev(x))
    close(layer.backward(to_dev(dout)), ref.leaky_relu_backward(dout, x, 0.2))


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


def test_eval_mode_keeps_nothing_and_backward_then_fails(rng, device, to_dev):
    model = small_cnn().to(device).eval()
    x = to_dev(rng.standard_normal((1, 2, 7, 6)).astype(np.float32))
    y = to_numpy(model(x))
    assert all(getattr(m, "_saved", None) is None for m in model.modules())
    with pytest.raises(RuntimeError, match="training mode"):
        model.backward(np.ones_like(y))
    model.train()
    y2 = to_numpy(model(x))
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


def test_dropout_layer_train_eval_and_seeding(rng, device, to_dev):
    x = rng.standard_normal((32, 50)).astype(np.float32)
    fastnet.manual_seed(7)
    d1 = Dropout(0.25).to(device)
    fastnet.manual_seed(7)
    d2 = Dropout(0.25).to(device)
    y1, y2 = to_numpy(d1(to_dev(x))), to_numpy(d2(to_dev(x)))
    np.testing.assert_array_equal(y1, y2)                   # same seed, same masks
    assert not np.array_equal(to_numpy(d1(to_dev(x))), y1)  # a new mask each call
    kept = y1 != 0
    assert 0.70 < kept.mean() < 0.80
    np.testing.assert_allclose(y1[kept], x[kept] / 0.75, rtol=1e-6)
    g = d2.backward(to_dev(np.ones_like(y2)))
    np.testing.assert_allclose(to_numpy(g), kept / np.float32(0.75), rtol=1e-6)
    d1.eval()
    np.testing.assert_array_equal(to_numpy(d1(to_dev(x))), x)


def test_softmax_layer_on_extreme_logits(device, to_dev):
    x = to_dev(np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]], dtype=np.float32))
    y = to_numpy(Softmax().to(device)(x))
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y.sum(axis=1), 1, rtol=1e-6)
    ly = to_numpy(LogSoftmax().to(device)(x))
    assert np.isfinite(ly).all()
    np.testing.assert_allclose(ly[0], [0, -2e4, -1e4], rtol=1e-6)


def test_sequential_container_and_flatten(rng, device, to_dev):
    model = Sequential(Flatten(), Dense(12, 4))
    assert len(model) == 2 and isinstance(model[1], Dense) and list(model)[0] is model[0]
    model.append(ReLU())
    model.to(device)
    assert [k for k, _ in model.named_parameters()] == ["1.weight", "1.bias"]
    x = rng.standard_normal((5, 3, 2, 2)).astype(np.float32)
    y = to_numpy(model(to_dev(x)))
    assert y.shape == (5, 4) and (y >= 0).all()
    dx = model.backward(to_dev(np.ones_like(y)))
    assert dx.shape == x.shape and device_of(dx) == device
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


def test_loss_values_and_labels_on_the_device(rng, device, to_dev):
    """The losses against the NumPy reference; labels out of range raise ValueError (on
    CUDA, for labels already there, when the loss is read)."""
    logits = rng.standard_normal((4, 3)).astype(np.float32)
    labels = np.array([0, 2, 1, 2])
    want = ref.softmax_cross_entropy(logits, labels)[0]
    got = CrossEntropyLoss()(to_dev(logits), to_dev(labels.astype(np.int32)))
    assert float(got) == pytest.approx(want, rel=1e-6) and f"{got:.3f}" == f"{want:.3f}"
    with pytest.raises(ValueError, match="out of range"):
        float(CrossEntropyLoss()(to_dev(logits), to_dev(np.array([0, 3, 1, 2]))))
    with pytest.raises(ValueError, match="label 3 is out of range"):
        CrossEntropyLoss()(to_dev(logits), np.array([0, 3, 1, 2]))
    pred, target = rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
    assert float(MSELoss()(to_dev(pred), target)) == pytest.approx(ref.mse(pred, target)[0],
                                                                    rel=1e-12)


# ---- CUDA against the CPU ----------------------------------------------------------------

def _cuda_test_model(dtype):
    fastnet.manual_seed(3)
    return Sequential(
        Conv2D(2, 3, 3, padding=1, activation="relu", dtype=dtype), MaxPool2D(2),
        Conv2D(3, 4, 2, stride=1, dtype=dtype), Tanh(), AvgPool2D(2, stride=1),
        Flatten(), Dropout(0.25), Dense(4, 6, activation="sigmoid", dtype=dtype),
        LeakyReLU(0.1), Dense(6, 3, dtype=dtype))


def _step(model, opt, loss_fn, x, y):
    opt.zero_grad()
    loss = loss_fn(model(x), y)
    model.backward(loss_fn.backward(), input_grad=False)
    opt.step()
    return loss


@pytest.mark.cuda
@pytest.mark.parametrize("opt_cls,opt_args", [(SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
                                              (Adam, dict(lr=0.01, weight_decay=1e-3))],
                         ids=["sgd", "adam"])
def test_cuda_training_steps_match_cpu(rng, opt_cls, opt_args):
    """float64, the same init and dropout seeds: CUDA and CPU agree to rounding."""
    cpu, gpu = _cuda_test_model(np.float64), _cuda_test_model(np.float64).to("cuda")
    copt, gopt = opt_cls(cpu.parameters(), **opt_args), opt_cls(gpu.parameters(), **opt_args)
    x = rng.standard_normal((3, 2, 6, 6))
    y = rng.integers(0, 3, 3)
    loss_fn = CrossEntropyLoss()
    for _ in range(2):
        lc = _step(cpu, copt, loss_fn, x, y)
        lg = _step(gpu, gopt, loss_fn, x, y)
        assert isinstance(lc, float) and not isinstance(lg, float)
        assert float(lg) == pytest.approx(lc, rel=1e-10)
    for (name, pc), pg in zip(cpu.named_parameters(), gpu.parameters()):
        np.testing.assert_allclose(to_numpy(pg.data), pc.data, rtol=1e-9, atol=1e-12, err_msg=name)


@pytest.mark.cuda
def test_no_cuda_allocation_after_the_first_step(rng):
    """Buffers come back to fastnet's pool and are reused: steps 2.. allocate nothing."""
    fastnet.manual_seed(0)
    model = Sequential(Conv2D(1, 2, 3, padding=1, activation="relu"), MaxPool2D(2),
                       Flatten(), Dense(2 * 3 * 3, 4)).to("cuda")
    opt = Adam(model.parameters(), lr=1e-3)
    loss_fn = CrossEntropyLoss()
    x = fcuda.to_device(rng.standard_normal((4, 1, 6, 6)).astype(np.float32))
    y = fcuda.to_device(rng.integers(0, 4, 4))
    _step(model, opt, loss_fn, x, y)
    before = fcuda.memory_stats()["device_allocations"]
    for _ in range(2):
        loss = _step(model, opt, loss_fn, x, y)
    assert fcuda.memory_stats()["device_allocations"] == before
    assert np.isfinite(float(loss))
