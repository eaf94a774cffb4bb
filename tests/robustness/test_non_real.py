"""Complex and other non-real inputs are refused with a TypeError (issue 19, item 6): by
every layer's forward and backward, the losses, parameters and state dicts, the
optimizers' hyper-parameters and ArrayDataset, before any kernel runs."""
import numpy as np
import pytest

from fastnet import layers as L
from fastnet import losses as FL
from fastnet import optim as O
from fastnet.data import ArrayDataset

NON_REAL = {
    "complex64": lambda s: np.ones(s, np.complex64),
    "complex128": lambda s: np.ones(s, np.complex128),
    "bool": lambda s: np.ones(s, bool),
    "int64": lambda s: np.ones(s, np.int64),
    "object": lambda s: np.ones(s, object),
    "str": lambda s: np.full(s, "1"),
}
FORWARD = {
    "Dense": ((2, 4), lambda: L.Dense(4, 3)),
    "Dense_relu": ((2, 4), lambda: L.Dense(4, 3, activation="relu")),
    "ReLU": ((2, 4), L.ReLU),
    "Sigmoid": ((2, 4), L.Sigmoid),
    "Tanh": ((2, 4), L.Tanh),
    "LeakyReLU": ((2, 4), lambda: L.LeakyReLU(0.1)),
    "Hardsigmoid": ((2, 4), L.Hardsigmoid),
    "Softmax": ((2, 4), L.Softmax),
    "LogSoftmax": ((2, 4), L.LogSoftmax),
    "Dropout": ((2, 4), lambda: L.Dropout(0.5)),
    "BatchNorm1D": ((2, 4), lambda: L.BatchNorm1D(4)),
    "Flatten": ((2, 4), L.Flatten),
    "Conv2D": ((1, 1, 4, 4), lambda: L.Conv2D(1, 2, 3)),
    "MaxPool2D": ((1, 1, 4, 4), lambda: L.MaxPool2D(2)),
    "AvgPool2D": ((1, 1, 4, 4), lambda: L.AvgPool2D(2)),
    "LPPool2D": ((1, 1, 4, 4), lambda: L.LPPool2D(2, 2)),
    "GlobalAvgPool2D": ((1, 1, 4, 4), L.GlobalAvgPool2D),
    "BatchNorm2D": ((1, 1, 4, 4), lambda: L.BatchNorm2D(1)),
    "RNN": ((1, 3, 4), lambda: L.RNN(4, 3)),
    "LSTM": ((1, 3, 4), lambda: L.LSTM(4, 3)),
    "GRU": ((1, 3, 4), lambda: L.GRU(4, 3)),
}


@pytest.mark.parametrize("kind", list(NON_REAL))
@pytest.mark.parametrize("layer", list(FORWARD))
def test_layers_refuse_non_real_input(layer, kind):
    shape, make = FORWARD[layer]
    with pytest.raises(TypeError):
        make()(NON_REAL[kind](shape))


@pytest.mark.parametrize("kind", ["complex64", "int64", "bool", "object"])
@pytest.mark.parametrize("layer", ["Dense", "ReLU", "Conv2D", "MaxPool2D", "LSTM", "Dropout"])
def test_backward_refuses_a_non_real_gradient(layer, kind):
    shape, make = FORWARD[layer]
    module = make()
    out = module(np.ones(shape, np.float32))
    out = out[0] if isinstance(out, tuple) else out
    with pytest.raises(TypeError, match="backward"):
        module.backward(NON_REAL[kind](out.shape))


@pytest.mark.parametrize("kind", ["complex64", "object", "str", "bool"])
def test_losses_refuse_non_real_predictions_and_targets(kind):
    bad = NON_REAL[kind]((2, 4))
    good = np.ones((2, 4), np.float32)
    with pytest.raises(TypeError):
        FL.CrossEntropyLoss()(bad, np.array([0, 1]))
    with pytest.raises(TypeError):
        FL.MSELoss()(bad, good)
    if kind != "bool":  # a bool target is a real 0 / 1 regression target
        with pytest.raises(TypeError):
            FL.MSELoss()(good, bad)


@pytest.mark.parametrize("labels", [np.array([0, 1], np.complex64), np.array(["0", "1"]),
                                    np.array([0, 1], object), np.array([0.5, 1.0])])
def test_cross_entropy_refuses_labels_that_are_not_integers(labels):
    with pytest.raises((TypeError, ValueError)):
        FL.CrossEntropyLoss()(np.ones((2, 4), np.float32), labels)


@pytest.mark.parametrize("kind", ["complex64", "bool", "object"])
def test_parameters_and_state_dicts_refuse_non_real_arrays(kind):
    layer = L.Dense(4, 3)
    value = NON_REAL[kind]((3, 4))
    with pytest.raises(TypeError):
        layer.weight.data = value
    with pytest.raises(TypeError):
        layer.weight.grad = value
    with pytest.raises(TypeError):
        layer.load_state_dict({"weight": value, "bias": np.zeros(3, np.float32)})


@pytest.mark.parametrize("make", [
    lambda: L.Dense(4, 3, dtype="complex64"),
    lambda: L.Dense(4, 3).to(np.complex128),
    lambda: O.SGD(L.Dense(4, 3).parameters(), lr=0.1j),
    lambda: O.SGD(L.Dense(4, 3).parameters(), lr="0.1"),
    lambda: O.Adam(L.Dense(4, 3).parameters(), betas=(0.9j, 0.99)),
    lambda: L.Dropout(0.5j),
    lambda: L.LeakyReLU(0.1j),
    lambda: L.BatchNorm1D(4, eps=1e-5j),
], ids=["dense-dtype", "to", "sgd-lr", "sgd-lr-str", "adam-betas", "dropout-p", "leaky-slope", "bn-eps"])
def test_non_real_hyper_parameters_are_refused(make):
    with pytest.raises(TypeError):
        make()


@pytest.mark.parametrize("where", ["x", "y"])
@pytest.mark.parametrize("kind", ["complex64", "object", "str"])
def test_array_dataset_refuses_non_real_data(where, kind):
    x, y = np.ones((4, 2), np.float32), np.zeros(4, np.int64)
    bad = NON_REAL[kind](x.shape if where == "x" else y.shape)
    with pytest.raises(TypeError, match=f"ArrayDataset: {where} must hold real numbers"):
        ArrayDataset(bad if where == "x" else x, bad if where == "y" else y)


# ---- the review of issue 19 ---------------------------------------------------------------
class _Custom:
    """A dataset of the protocol (not an ArrayDataset) that returns what it is given."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, idx):
        return self.x[idx], self.y[idx]


@pytest.mark.parametrize("where", ["x", "y"])
@pytest.mark.parametrize("kind", ["complex64", "complex128", "object", "str"])
def test_data_loader_refuses_non_real_batches_of_any_dataset(where, kind):
    """A custom dataset's complex batch lost its imaginary part (only a ComplexWarning)."""
    from fastnet.data import DataLoader

    x, y = np.ones((4, 2), np.float32), np.zeros(4, np.int64)
    bad = NON_REAL[kind](x.shape if where == "x" else y.shape)
    loader = DataLoader(_Custom(bad if where == "x" else x, bad if where == "y" else y), 2)
    with pytest.raises(TypeError, match=f"batch whose {where} holds {bad.dtype}, expected real"):
        next(iter(loader))
    xb, yb = next(iter(DataLoader(_Custom(x.astype(np.int16), y.astype(bool)), 2)))  # real: kept
    assert xb.dtype == np.float32 and yb.dtype == np.float32


@pytest.mark.parametrize("kind", ["complex64", "object", "str"])
def test_optimizer_load_state_dict_refuses_non_real_buffers(kind):
    layer = L.Dense(4, 3)
    opt = O.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    state = opt.state_dict()
    state["state"][0] = {"momentum_buffer": NON_REAL[kind]((3, 4))}
    state["hyperparameters"]["lr"] = 0.5
    with pytest.raises(TypeError, match=r"SGD.load_state_dict: buffer 'momentum_buffer' of "
                                        r"parameter 0 holds .*, expected real numbers"):
        opt.load_state_dict(state)
    assert opt.state == [{}, {}] and opt.lr == 0.1  # nothing changed


def test_buffer_data_refuses_another_dtype_kind_with_a_type_error():
    bn = L.BatchNorm1D(3)
    with pytest.raises(TypeError, match=r"Buffer.data: expected a f-kind array .*, got complex64"):
        bn.running_mean.data = np.zeros(3, np.complex64)
    with pytest.raises(TypeError, match="got int64"):
        bn.running_mean.data = np.zeros(3, np.int64)
    with pytest.raises(ValueError, match=r"Buffer.data: expected shape \(3,\), got \(4,\)"):
        bn.running_mean.data = np.zeros(4, np.float32)
    bn.running_mean.data = np.ones(3, np.float64)  # the same kind: taken
    assert bn.running_mean.data.sum() == 3


@pytest.mark.parametrize("make, name, value, error", [
    (lambda ps: O.SGD(ps, lr=0.1), "lr", 0.1j, TypeError),  # failed inside Numba at step()
    (lambda ps: O.SGD(ps, lr=0.1), "lr", "0.1", TypeError),
    (lambda ps: O.SGD(ps, lr=0.1), "lr", -0.1, ValueError),
    (lambda ps: O.SGD(ps, lr=0.1), "lr", float("nan"), ValueError),
    (lambda ps: O.SGD(ps, lr=0.1), "momentum", 0.9j, TypeError),
    (lambda ps: O.SGD(ps, lr=0.1, momentum=0.9, nesterov=True), "momentum", 0.0, ValueError),
    (lambda ps: O.SGD(ps, lr=0.1), "weight_decay", -1, ValueError),
    (lambda ps: O.Adam(ps), "betas", (0.9j, 0.99), TypeError),
    (lambda ps: O.Adam(ps), "betas", (0.9, 1.0), ValueError),
    (lambda ps: O.Adam(ps), "betas", 0.9, ValueError),
    (lambda ps: O.AdamW(ps), "eps", 0, ValueError),
])
def test_hyper_parameters_set_as_attributes_are_checked(make, name, value, error):
    layer = L.Dense(4, 3)
    opt = make(layer.parameters())
    before = getattr(opt, name)
    with pytest.raises(error, match=name.rstrip("s")):
        setattr(opt, name, value)
    assert getattr(opt, name) == before


def test_hyper_parameters_that_pass_are_kept_as_the_constructor_keeps_them():
    opt = O.Adam(L.Dense(4, 3).parameters())
    opt.lr = 0  # a schedule may reach 0 (the constructor asks for lr > 0)
    opt.betas = [0.5, np.float32(0.25)]
    assert opt.lr == 0.0 and type(opt.lr) is float and opt.betas == (0.5, 0.25)
    sgd = O.SGD(L.Dense(4, 3).parameters(), lr=0.1)
    sgd.nesterov = 0
    assert sgd.nesterov is False
