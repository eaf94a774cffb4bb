"""fastnet against numbers PyTorch computed (tests/data/torch_norm.npz, written by
tests/data/make_torch_norm.py with PyTorch 2.13) for a small ResNet-like net: BatchNorm2d
and BatchNorm1d (momentum 0.1, 0.3 and None), residual blocks with identity and
projection shortcuts, global average pooling. The PyTorch state dict (buffers included)
loads unchanged; training-mode logits, loss, input and parameter gradients, the running
statistics after two SGD steps and the eval-mode output agree in float64."""
import pathlib

import numpy as np
import pytest

from fastnet.layers import (BatchNorm1D, BatchNorm2D, Conv2D, Dense, GlobalAvgPool2D, ReLU,
                            Residual, Sequential)
from fastnet.losses import CrossEntropyLoss
from fastnet.optim import SGD

REF = np.load(pathlib.Path(__file__).parent / "data" / "torch_norm.npz")


def model():
    return Sequential(
        Conv2D(2, 4, 3, padding=1, bias=False), BatchNorm2D(4), ReLU(),
        Residual(Sequential(Conv2D(4, 4, 3, padding=1, bias=False), BatchNorm2D(4), ReLU(),
                            Conv2D(4, 4, 3, padding=1, bias=False), BatchNorm2D(4))),
        ReLU(),
        Residual(Sequential(Conv2D(4, 6, 3, stride=2, padding=1, bias=False), BatchNorm2D(6),
                            ReLU(), Conv2D(6, 6, 3, padding=1, bias=False),
                            BatchNorm2D(6, momentum=None)),
                 Sequential(Conv2D(4, 6, 1, stride=2, bias=False), BatchNorm2D(6))),
        ReLU(),
        GlobalAvgPool2D(),
        Dense(6, 5), BatchNorm1D(5, momentum=0.3), ReLU(), Dense(5, 3),
    ).to(np.float64)


def torch_state(prefix):
    return {k[len(prefix) + 1:]: REF[k] for k in REF.files if k.startswith(prefix + ".")}


def test_torch_state_dict_loads_unchanged():
    m = model()
    assert list(torch_state("state")) == list(m.state_dict())
    m.load_state_dict(torch_state("state"))
    for k, v in m.state_dict().items():
        assert v.dtype == REF["state." + k].dtype, k
        np.testing.assert_array_equal(v, REF["state." + k], err_msg=k)
    assert m.state_dict()["1.num_batches_tracked"].dtype == np.int64


def test_training_steps_running_statistics_and_eval_match_pytorch():
    m = model()
    m.load_state_dict(torch_state("state"))
    loss_fn = CrossEntropyLoss()
    logits = m(REF["x"])
    np.testing.assert_allclose(logits, REF["logits"], rtol=1e-10, atol=1e-12)
    assert loss_fn(logits, REF["labels"]) == pytest.approx(float(REF["loss"]), rel=1e-12)
    dx = m.backward(loss_fn.backward())
    np.testing.assert_allclose(dx, REF["dx"], rtol=1e-9, atol=1e-12)
    for name, p in m.named_parameters():
        np.testing.assert_allclose(p.grad, REF["grad." + name], rtol=1e-9, atol=1e-12, err_msg=name)
    opt = SGD(m.parameters(), lr=0.1)
    opt.step()
    opt.zero_grad()
    loss_fn(m(REF["x2"]), REF["labels"])
    m.backward(loss_fn.backward(), input_grad=False)
    opt.step()
    want = torch_state("state2")
    for k, v in m.state_dict().items():
        np.testing.assert_allclose(v, want[k], rtol=1e-10, atol=1e-12, err_msg=k)
    assert m.state_dict()["3.block.4.num_batches_tracked"] == 7
    np.testing.assert_allclose(m.eval()(REF["x2"]), REF["eval_logits"], rtol=1e-10, atol=1e-12)
