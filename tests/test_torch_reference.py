"""fastnet against numbers PyTorch computed (tests/data/torch_reference.npz, written by
tests/data/make_torch_reference.py with PyTorch 2.13): a PyTorch state dict loads
unchanged into the same architecture, and the forward pass, the loss, every gradient and
four steps of SGD (Nesterov, weight decay), Adam and AdamW agree, in float64."""
import pathlib

import numpy as np
import pytest

from fastnet.layers import (AvgPool2D, Conv2D, Dense, Flatten, LeakyReLU, LogSoftmax, MaxPool2D,
                            ReLU, Sequential, Sigmoid, Softmax, Tanh)
from fastnet.losses import CrossEntropyLoss, MSELoss
from fastnet.optim import SGD, Adam, AdamW

REF = np.load(pathlib.Path(__file__).parent / "data" / "torch_reference.npz")


def model():
    return Sequential(
        Conv2D(2, 3, (3, 2), stride=(2, 1), padding=(1, 0)), ReLU(),
        MaxPool2D(2, stride=1, padding=1),
        Conv2D(3, 4, 2, padding=1), Tanh(), AvgPool2D((2, 3), stride=(2, 1)),
        Flatten(), Dense(4 * 3 * 5, 7), Sigmoid(), Dense(7, 6), LeakyReLU(0.1), Dense(6, 5),
    ).to(np.float64)


def torch_state(prefix="state"):
    return {k[len(prefix) + 1:]: REF[k] for k in REF.files if k.startswith(prefix + ".")}


def loaded():
    m = model()
    m.load_state_dict(torch_state())
    return m


def test_torch_state_dict_has_our_keys_and_layouts():
    assert list(torch_state()) == list(model().state_dict())


def test_forward_loss_and_gradients_match_pytorch():
    m = loaded()
    loss_fn = CrossEntropyLoss()
    logits = m(REF["x"])
    np.testing.assert_allclose(logits, REF["logits"], rtol=1e-12, atol=1e-12)
    assert loss_fn(logits, REF["labels"]) == pytest.approx(float(REF["loss"]), rel=1e-12)
    dx = m.backward(loss_fn.backward())
    np.testing.assert_allclose(dx, REF["dx"], rtol=1e-10, atol=1e-13)
    for name, p in m.named_parameters():
        np.testing.assert_allclose(p.grad, REF["grad." + name], rtol=1e-10, atol=1e-13, err_msg=name)
    np.testing.assert_allclose(Softmax().eval()(logits), REF["softmax"], rtol=1e-12)
    np.testing.assert_allclose(LogSoftmax().eval()(logits), REF["log_softmax"], rtol=1e-12)
    assert MSELoss()(logits, REF["mse_target"]) == pytest.approx(float(REF["mse"]), rel=1e-12)


@pytest.mark.parametrize("name, make", [
    ("sgd", lambda ps: SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("adam", lambda ps: Adam(ps, lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.01)),
    ("adamw", lambda ps: AdamW(ps, lr=0.01, weight_decay=0.1)),
])
def test_optimizer_trajectories_match_pytorch(name, make):
    m = loaded()
    opt, loss_fn = make(m.parameters()), CrossEntropyLoss()
    for _ in range(4):
        opt.zero_grad()
        loss_fn(m(REF["x"]), REF["labels"])
        m.backward(loss_fn.backward())
        opt.step()
    for k, v in m.state_dict().items():
        np.testing.assert_allclose(v, REF[f"{name}.{k}"], rtol=1e-9, atol=1e-12, err_msg=k)
