"""Frozen parameters (``Parameter.requires_grad = False``) and ``Module.apply``.

A frozen parameter gets no gradient from any layer's backward (its kernel output is None:
never computed), while the input's gradient and the other parameters' gradients are
bitwise those of an unfrozen run; ``zero_grad`` and the optimizers leave it alone; state
dicts do not change. PyTorch's numbers for a frozen AdamW run are in
tests/test_torch_layer_norm.py."""
import copy
import pickle

import numpy as np
import pytest

from fastnet.data import ArrayDataset, DataLoader
from fastnet.device import to_numpy
from fastnet.layers import (GRU, LSTM, RNN, BatchNorm1D, Conv2D, Dense, Embedding, LayerNorm,
                            Parameter, ReLU, Sequential)
from fastnet.losses import CrossEntropyLoss
from fastnet.optim import SGD, Adam, AdamW
from fastnet.train import Trainer


def test_requires_grad_api_follows_pytorch():
    p = Parameter(np.ones(3, np.float32))
    assert p.requires_grad is True
    assert p.requires_grad_(False) is p and p.requires_grad is False
    assert "requires_grad=False" in repr(p)
    assert pickle.loads(pickle.dumps(p)).requires_grad is False
    assert copy.deepcopy(p).requires_grad is False
    p.requires_grad = True
    with pytest.raises(TypeError, match="Parameter.requires_grad: expected a bool"):
        p.requires_grad = 1
    model = Sequential(Dense(2, 3), Dense(3, 1))
    before = model.state_dict()
    assert model.requires_grad_(False) is model
    assert not any(p.requires_grad for p in model.parameters())
    after = model.state_dict()
    assert list(after) == list(before)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])
    with pytest.raises(TypeError, match="Sequential.requires_grad_: expected a bool"):
        model.requires_grad_("no")
    model[1].requires_grad_()
    assert [p.requires_grad for p in model.parameters()] == [False, False, True, True]


# (layer, input shape, names of the parameters to freeze, integer input): every family
# of backward kernels, each weight kind frozen somewhere (with its bias trained or not)
CASES = {
    "dense-relu": (lambda: Dense(3, 4, activation="relu"), (2, 3), ["weight"], False),
    "dense-all": (lambda: Dense(3, 4), (2, 3), ["weight", "bias"], False),
    "conv-one-channel": (lambda: Conv2D(1, 2, 3, padding=1), (2, 1, 4, 4), ["weight"], False),
    "conv-strided": (lambda: Conv2D(2, 3, 3, stride=2), (2, 2, 5, 5), ["weight"], False),
    "conv-depthwise": (lambda: Conv2D(2, 4, 3, padding=2, dilation=2, groups=2), (2, 2, 4, 4),
                       ["weight"], False),
    "batch-norm-weight": (lambda: BatchNorm1D(3), (4, 3), ["weight"], False),
    "batch-norm-bias": (lambda: BatchNorm1D(3), (4, 3), ["bias"], False),
    "layer-norm-weight": (lambda: LayerNorm(4), (3, 4), ["weight"], False),
    "layer-norm-all": (lambda: LayerNorm(4), (3, 4), ["weight", "bias"], False),
    "rnn": (lambda: RNN(3, 4), (2, 3, 3), ["weight_ih_l0", "bias_ih_l0"], False),
    "lstm": (lambda: LSTM(3, 4), (2, 3, 3), ["weight_hh_l0"], False),
    "gru": (lambda: GRU(3, 4), (2, 3, 3), ["weight_ih_l0", "weight_hh_l0"], False),
    "embedding": (lambda: Embedding(5, 3), (2, 3), ["weight"], True),
}


# in the simulator, one case per changed CUDA path (dense, conv and recurrent weight
# gradients skipped (conv: both paths), layer norm's optional outputs; batch norm's scratch is the layer's)
CUDA_CASES = {"dense-relu", "conv-strided", "conv-depthwise", "gru", "layer-norm-weight"}


def _run(layer, x, dout, input_grad=True):
    out = layer(x)
    out = out[0] if isinstance(out, tuple) else out
    return to_numpy(layer.backward(dout(out), input_grad=input_grad)) if input_grad else \
        layer.backward(dout(out), input_grad=input_grad)


@pytest.mark.parametrize("case", list(CASES))
def test_a_frozen_parameter_gets_no_gradient_and_changes_nothing_else(rng, device, to_dev, case):
    if device == "cuda" and case not in CUDA_CASES:
        pytest.skip("covered on the CPU; the simulator runs one case per CUDA path")
    make, shape, frozen, integer = CASES[case]
    trained = make().to(device)
    frozen_layer = copy.deepcopy(trained)
    for name in frozen:
        getattr(frozen_layer, name).requires_grad = False
    x = rng.integers(0, 5, shape) if integer else rng.standard_normal(shape).astype(np.float32)
    x = x if integer else to_dev(x)
    g = {}

    def dout(out):
        if "dout" not in g:
            g["dout"] = to_dev(rng.standard_normal(out.shape).astype(np.float32))
        return g["dout"]

    dx_trained = _run(trained, x, dout, input_grad=not integer)
    dx_frozen = _run(frozen_layer, x, dout, input_grad=not integer)
    if not integer:  # the input's gradient is still computed, bitwise the same
        np.testing.assert_array_equal(dx_frozen, dx_trained)
    for (name, p), (_, q) in zip(trained.named_parameters(), frozen_layer.named_parameters()):
        if name in frozen:
            assert q.grad is None, name
        else:
            np.testing.assert_array_equal(to_numpy(q.grad), to_numpy(p.grad), err_msg=name)
    # a whole frozen layer whose input gradient is not wanted: nothing to do at all
    frozen_layer.requires_grad_(False)
    assert _run(frozen_layer, x, dout, input_grad=False) is None
    assert all(p.grad is None for n, p in frozen_layer.named_parameters() if n in frozen)


def _grads(model, x, y, loss_fn):
    loss_fn(model(x), y)
    model.backward(loss_fn.backward(), input_grad=False)


@pytest.mark.parametrize("opt_cls, kw", [(SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.1)),
                                         (Adam, dict(lr=0.01, weight_decay=0.1)),
                                         (AdamW, dict(lr=0.01))], ids=["sgd", "adam", "adamw"])
def test_optimizers_skip_frozen_parameters_and_freezing_can_change(rng, opt_cls, kw):
    """Steps with the first layer frozen, then unfrozen, against a model whose frozen
    gradients are simply discarded (set to None) before each step."""
    model = Sequential(Dense(4, 5), ReLU(), Dense(5, 3))
    discard = copy.deepcopy(model)
    opt, opt_d = opt_cls(model.parameters(), **kw), opt_cls(discard.parameters(), **kw)
    loss_fn = CrossEntropyLoss()
    first = [p.data.copy() for p in model[0].parameters()]
    for step in range(4):
        frozen = step < 2
        model[0].requires_grad_(not frozen)
        x = rng.standard_normal((6, 4)).astype(np.float32)
        y = rng.integers(0, 3, 6)
        for m, o in ((model, opt), (discard, opt_d)):
            o.zero_grad()
            _grads(m, x, y, loss_fn)
        if frozen:
            assert all(p.grad is None for p in model[0].parameters())
            for p in discard[0].parameters():
                p.grad = None
        opt.step()
        opt_d.step()
        if frozen:
            for p, before in zip(model[0].parameters(), first):
                np.testing.assert_array_equal(p.data, before)  # no update, no weight decay
            assert opt.state[0] == {} and opt.param_steps[0] == 0  # no state created
    for (name, p), q in zip(model.named_parameters(), discard.parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)
    assert opt.param_steps == [2, 2, 4, 4]


def test_zero_grad_leaves_a_frozen_parameter_alone(rng):
    model = Sequential(Dense(3, 2))
    _grads(model, rng.standard_normal((2, 3)).astype(np.float32), np.array([0, 1]),
           CrossEntropyLoss())
    kept = model[0].weight.grad
    model[0].weight.requires_grad = False
    model.zero_grad()
    assert model[0].weight.grad is kept and model[0].bias.grad is None
    opt = SGD(model.parameters(), lr=0.1)
    opt.zero_grad()
    opt.step()  # the stale gradient of the frozen weight is not applied
    assert model[0].weight.grad is kept


def test_trainer_with_a_frozen_layer(rng):
    """Trainer epochs: the frozen layer's weights bitwise unchanged, the others trained,
    exactly as a loop that discards the frozen layer's gradients."""
    x = rng.standard_normal((24, 6)).astype(np.float32)
    y = rng.integers(0, 3, 24)
    model = Sequential(Dense(6, 8), LayerNorm(8), ReLU(), Dense(8, 3))
    reference = copy.deepcopy(model)
    model[0].requires_grad_(False)
    frozen = {k: v for k, v in model.state_dict().items() if k.startswith("0.")}
    before = model.state_dict()
    trainer = Trainer(model, Adam(model.parameters(), lr=0.01), progress=False,
                      log=lambda line: None)
    trainer.fit(DataLoader(ArrayDataset(x, y), 8, shuffle=False), epochs=2)
    after = model.state_dict()
    for k in after:
        if k in frozen:
            np.testing.assert_array_equal(after[k], frozen[k], err_msg=k)
        else:
            assert not np.array_equal(after[k], before[k]), k
    opt = Adam(reference.parameters(), lr=0.01)
    loss_fn = CrossEntropyLoss()
    for _ in range(2):
        for i in range(0, 24, 8):
            opt.zero_grad()
            _grads(reference, x[i:i + 8], y[i:i + 8], loss_fn)
            for p in reference[0].parameters():
                p.grad = None
            opt.step()
    for k, v in reference.state_dict().items():
        np.testing.assert_array_equal(after[k], v, err_msg=k)


def test_apply_visits_children_first_then_self_and_returns_self():
    model = Sequential(Dense(2, 3), Sequential(ReLU(), Dense(3, 1)))
    seen = []
    assert model.apply(seen.append) is model
    assert seen == [model[0], model[1][0], model[1][1], model[1], model]  # as PyTorch

    def init(m):  # the typical use: re-initialise every Dense layer
        if isinstance(m, Dense):
            m.weight.data[...] = 0.5
            m.bias.data[...] = 0.0

    model.apply(init)
    for m in (model[0], model[1][1]):
        assert np.all(m.weight.data == 0.5) and np.all(m.bias.data == 0)


def test_clipping_skips_the_stale_gradient_of_a_frozen_parameter(rng):
    """zero_grad keeps a frozen parameter's old gradient (PyTorch's would drop it): the
    clipping functions neither count nor scale it, so the norm is the trained ones'."""
    from fastnet.optim import clip_grad_norm_, clip_grad_value_
    frozen = Parameter(np.ones(2, np.float32))
    frozen.grad = np.float32([30.0, 40.0])
    frozen.requires_grad_(False)
    live = Parameter(np.ones(2, np.float32))
    live.grad = np.float32([3.0, 4.0])
    assert clip_grad_norm_([frozen, live], 1.0) == 5.0
    np.testing.assert_array_equal(frozen.grad, [30.0, 40.0])
    np.testing.assert_allclose(live.grad, [0.6, 0.8], rtol=1e-6)
    clip_grad_value_([frozen, live], 0.5)
    np.testing.assert_array_equal(frozen.grad, [30.0, 40.0])
    assert clip_grad_norm_([frozen], 1.0) == 0.0
