"""Inference plans (fastnet/layers/plan.py): a Sequential's eval-mode forward on the CPU,
prepared once per input shape, gives bitwise the layer-by-layer result, sees every change
of the model, refuses bad input as the layers do, and is safe across threads."""
import copy
import pickle
import threading

import numpy as np
import pytest

from fastnet import models
from fastnet.layers import (AvgPool2D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten,
                            GlobalAvgPool2D, MaxPool2D, Parameter, ReLU, Sequential, Sigmoid,
                            Softmax, Tanh)

f32 = np.float32


def _misc():
    return Sequential(Conv2D(1, 4, 3, stride=2, padding=1), ReLU(), AvgPool2D(2),
                      Conv2D(4, 5, 3, padding=1, activation="tanh"), Sigmoid(),
                      MaxPool2D(3, stride=2, padding=1), Dropout(0.5), Flatten(),
                      Dense(5 * 4 * 4, 7), Tanh(), Dense(7, 3), ReLU(), Softmax())


MODELS = {
    "lenet": lambda: models.lenet((1, 28, 28)),
    "mlp": lambda: models.mlp((1, 28, 28), 10, (256, 256)),
    "misc": _misc,
    "gap": lambda: Sequential(Conv2D(1, 3, 3), ReLU(), GlobalAvgPool2D(), Dense(3, 2)),
}


def _layer_by_layer(model, x):
    for layer in model.layers:
        x = layer(x)
    return x


def _planned(model):
    return [p for p in (model._plans or {}).values() if p.steps is not None]


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("batch", [1, 3, 64])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_planned_forward_is_bitwise_the_layers_forward(name, batch, dtype, rng):
    model = MODELS[name]().to(dtype).eval()
    x = rng.standard_normal((batch, 1, 28, 28)).astype(dtype)
    x[0, 0, 3, 4], x[-1, 0, 9, 9], x[0, 0, 20, 5] = np.nan, np.inf, -0.0
    want = _layer_by_layer(model, x)
    first = model(x)  # builds the plan
    assert _planned(model)
    outs = [model(x) for _ in range(3)]
    for out in [first] + outs:
        assert out.dtype == dtype
        np.testing.assert_array_equal(out, want)
        assert np.array_equal(np.signbit(out), np.signbit(want))
    # each call returns a new array, never a buffer of the plan
    assert not any(np.shares_memory(a, b) for i, a in enumerate(outs) for b in outs[i + 1:])
    outs[0][...] = 7
    np.testing.assert_array_equal(model(x), want)


def test_relu_fused_into_a_layer_without_activation_is_bitwise_the_same(rng):
    model = Sequential(Conv2D(2, 3, 3, padding=1), ReLU(), Flatten(), Dense(3 * 25, 4), ReLU()).eval()
    x = rng.standard_normal((2, 2, 5, 5)).astype(f32)
    x[0, 1, 2, 2] = np.nan
    want = _layer_by_layer(model, x)
    model(x)
    plan = _planned(model)[0]
    assert len(plan.steps) == 3  # conv+relu, flatten, dense+relu
    np.testing.assert_array_equal(model(x), want)


def test_a_plan_sees_every_change_of_the_model(rng):
    model = models.lenet((1, 28, 28)).eval()
    x = rng.standard_normal((2, 1, 28, 28)).astype(f32)
    model(x)

    def check():
        np.testing.assert_array_equal(model(x), _layer_by_layer(model, x))

    conv, dense = model[0], model[7]
    conv.weight.data[...] *= -1  # in place
    check()
    dense.bias.data[:] = 3.0
    check()
    state = {k: v * 0.5 for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    check()
    conv.weight.data = conv.weight.data * 2  # a new array
    check()
    dense.weight = Parameter(dense.weight.data.copy() + 1)  # a new Parameter
    check()
    dense.activation = None  # the layer's configuration
    check()
    model[9].bias = None
    check()
    model.append(ReLU())
    assert model(x).min() >= 0
    check()
    y = model.to(np.float64)(x.astype(np.float64))
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y, _layer_by_layer(model, x.astype(np.float64)))


def test_input_shapes_each_get_their_plan(rng):
    model = models.lenet((1, 28, 28)).eval()
    for batch in (1, 5, 1, 64, 5, 2, 3, 7, 1):
        x = rng.standard_normal((batch, 1, 28, 28)).astype(f32)
        np.testing.assert_array_equal(model(x), _layer_by_layer(model, x))
    x = rng.standard_normal((1, 1, 32, 32)).astype(f32)  # LeNet's head wants 28x28
    with pytest.raises(ValueError, match=r"Dense\(in_features=400.*got \(1, 576\)"):
        model(x)


def test_training_mode_and_backward_are_not_affected(rng):
    model = models.lenet((1, 28, 28))
    x = rng.standard_normal((3, 1, 28, 28)).astype(f32)
    model.eval()
    want = model(x)
    model(x)
    model.train()
    out = model(x)  # training mode: the layers, keeping what backward needs
    np.testing.assert_array_equal(out, want)
    model.backward(np.ones_like(out))
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    np.testing.assert_array_equal(model(x), want)
    with pytest.raises(RuntimeError, match="no forward pass to differentiate"):
        model.backward(np.ones_like(out))  # eval mode keeps nothing for backward
    model[0].train()  # one layer in training mode: no plan, that layer keeps its input
    np.testing.assert_array_equal(model(x), want)
    assert model[0]._saved is not None


@pytest.mark.parametrize("bad, error, pattern", [
    (lambda x: x.astype(np.float64), TypeError, r"Conv2D.*expected float32 input .*got float64"),
    (lambda x: x.astype(np.int64), TypeError, r"Conv2D.*float32 or float64 array, got dtype int64"),
    (lambda x: x.astype(np.float16), TypeError, r"Conv2D.*got dtype float16"),
    (lambda x: x[:, 0], ValueError, r"Conv2D.*expected input of shape \(N, 1, \*, \*\), got \(2, 28, 28\)"),
    (lambda x: x[:0], ValueError, r"Conv2D.*empty input of shape \(0, 1, 28, 28\)"),
    (lambda x: x.tolist(), TypeError, r"Conv2D.*expected a numpy.ndarray, got list"),
    (lambda x: np.repeat(x, 2, axis=1), ValueError, r"\(N, 1, \*, \*\), got \(2, 2, 28, 28\)"),
])
def test_bad_input_is_refused_after_a_plan_was_built(bad, error, pattern, rng):
    model = models.lenet((1, 28, 28)).eval()
    x = rng.standard_normal((2, 1, 28, 28)).astype(f32)
    want = model(x)
    model(x)
    with pytest.raises(error, match=pattern):
        model(bad(x))
    np.testing.assert_array_equal(model(x), want)


def test_views_subclasses_and_fortran_order_input_take_the_layers_path(rng):
    model = models.lenet((1, 28, 28)).eval()
    big = rng.standard_normal((4, 1, 28, 56)).astype(f32)
    x = np.ascontiguousarray(big[:, :, :, ::2])
    want = model(x)
    model(x)
    np.testing.assert_array_equal(model(big[:, :, :, ::2]), want)  # strided view
    np.testing.assert_array_equal(model(np.asfortranarray(x)), want)

    class Sub(np.ndarray):
        pass

    np.testing.assert_array_equal(model(x.view(Sub)), want)


def test_layers_without_a_plan_form_keep_working(rng):
    # BatchNorm2D and a nested Sequential have no plan form: the outer model runs its
    # layers, the inner Sequential its own plan
    inner = Sequential(Conv2D(3, 3, 3, padding=1), ReLU())
    model = Sequential(Conv2D(1, 3, 3), BatchNorm2D(3), inner, GlobalAvgPool2D()).eval()
    x = rng.standard_normal((2, 1, 8, 8)).astype(f32)
    want = _layer_by_layer(model, x)
    for _ in range(3):
        np.testing.assert_array_equal(model(x), want)
    assert not _planned(model) and _planned(inner)


def test_plans_of_trivial_models_return_what_the_layers_return(rng):
    x = rng.standard_normal((2, 3, 4)).astype(f32)
    flat = Sequential(Flatten()).eval()
    for _ in range(2):
        y = flat(x)
        assert y.shape == (2, 12) and np.shares_memory(y, x)  # a view, as Flatten's
    empty = Sequential().eval()
    assert empty(x) is x and empty(x) is x
    drop = Sequential(Dropout(0.3), ReLU(), Dropout(0.9)).eval()
    for _ in range(2):
        np.testing.assert_array_equal(drop(x), np.maximum(x, 0))


def test_threads_running_one_model_get_their_own_results(rng):
    model = models.lenet((1, 28, 28)).eval()
    xs = [rng.standard_normal((b, 1, 28, 28)).astype(f32) for b in (1, 1, 3, 64)]
    want = [_layer_by_layer(model, x) for x in xs]
    errors = []
    start = threading.Barrier(len(xs))

    def work(i):
        try:
            start.wait()
            for _ in range(30):
                y = model(xs[i])
                if not np.array_equal(y, want[i]):
                    errors.append(i)
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_models_with_plans_copy_and_pickle(rng):
    model = models.mlp((1, 8, 8), 10, (16,)).eval()
    x = rng.standard_normal((2, 1, 8, 8)).astype(f32)
    want = model(x)
    model(x)
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        np.testing.assert_array_equal(other(x), want)
        other[1].weight.data[...] = 0
        np.testing.assert_array_equal(model(x), want)  # the copy has its own arrays


class _ScaledDense(Dense):
    def forward(self, x):
        return super().forward(x) * 2


class _ClippedTanh(Tanh):
    def forward(self, x):
        return np.clip(super().forward(x), 0, 0.5)


class _CountingConv(Conv2D):
    calls = 0

    def forward(self, x):
        type(self).calls += 1
        return super().forward(x)


def test_a_layer_whose_forward_is_overridden_is_called_every_time(rng):
    """A subclass overriding forward, or a forward set on the instance, is never replaced
    by the plan's kernel (the plan would run the parent's maths and skip the override)."""
    x = rng.standard_normal((2, 4)).astype(f32)
    model = Sequential(_ScaledDense(4, 3), _ClippedTanh()).eval()
    first = model(x)
    d = model.layers[0]
    np.testing.assert_allclose(first, np.clip(np.tanh(2 * (x @ d.weight.data.T + d.bias.data)),
                                              0, 0.5), rtol=1e-6, atol=1e-7)
    for _ in range(3):
        np.testing.assert_array_equal(model(x), first)
    plain = Sequential(Dense(4, 3)).eval()
    stock = plain.layers[0].forward
    plain.layers[0].forward = lambda v: stock(v) * 0
    for _ in range(3):
        assert not plain(x).any()
    counting = Sequential(_CountingConv(1, 2, 3), ReLU()).eval()
    xc = rng.standard_normal((1, 1, 6, 6)).astype(f32)
    for _ in range(3):
        counting(xc)
    assert _CountingConv.calls == 3


def test_training_elsewhere_keeps_this_models_plan(rng):
    """Dropout's call count and a recurrent layer's initial-state gradients change on every
    training call; setting them must not invalidate other models' plans."""
    from fastnet.layers import LSTM

    served = models.lenet((1, 28, 28)).eval()
    trained = Sequential(Flatten(), Dense(64, 32), Dropout(0.5), Dense(32, 10))
    lstm = LSTM(3, 4)
    h0 = (np.zeros((1, 2, 4), f32), np.zeros((1, 2, 4), f32))
    x = rng.standard_normal((1, 1, 28, 28)).astype(f32)
    served(x)
    plan = served._plans[x.shape]
    for _ in range(2):
        trained(rng.standard_normal((8, 1, 8, 8)).astype(f32))
        out, _ = lstm(rng.standard_normal((2, 5, 3)).astype(f32), h0)
        lstm.backward(np.ones_like(out))
        np.testing.assert_array_equal(served(x), _layer_by_layer(served, x))
        assert served._plans[x.shape] is plan


def test_many_input_shapes_keep_their_plans(rng):
    """Up to MAX_PLANS shapes keep a plan each (with 4 and all dropped when full, five
    batch sizes in turn rebuilt one on every call); past it the oldest goes."""
    from fastnet.layers.container import MAX_PLANS

    model = models.lenet((1, 28, 28)).eval()
    xs = [rng.standard_normal((b, 1, 28, 28)).astype(f32) for b in range(1, 7)]
    for x in xs:
        model(x)
    plans = dict(model._plans)
    for x in xs:
        np.testing.assert_array_equal(model(x), _layer_by_layer(model, x))
    assert all(model._plans[k] is plans[k] for k in plans)
    for b in range(7, MAX_PLANS + 2):
        model(rng.standard_normal((b, 1, 28, 28)).astype(f32))
    assert len(model._plans) == MAX_PLANS and xs[0].shape not in model._plans
