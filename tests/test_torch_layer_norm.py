"""fastnet against numbers PyTorch computed (tests/data/torch_layer_norm.npz, written by
tests/data/make_torch_layer_norm.py with PyTorch 2.13): LayerNorm's forward and backward
for several normalized_shapes, with and without affine parameters (and bias=False), two
eps, float32 and float64, on each device; and three AdamW steps of a small model whose
first Linear and LayerNorm weight are frozen (requires_grad=False), as PyTorch freezes."""
import pathlib

import numpy as np
import pytest

from fastnet.device import to_numpy
from fastnet.layers import Dense, LayerNorm, ReLU, Sequential
from fastnet.losses import CrossEntropyLoss
from fastnet.optim import AdamW

REF = np.load(pathlib.Path(__file__).parent / "data" / "torch_layer_norm.npz")
CASES = sorted({k.split(".")[1] for k in REF.files if k.startswith("f32.")})
TOL = {"f32": dict(rtol=2e-5, atol=2e-5), "f64": dict(rtol=1e-11, atol=1e-12)}


def _config(key):
    """The LayerNorm arguments of a stored case."""
    affine, has_b = (bool(v) for v in REF[f"{key}.affine"])
    return (REF[f"{key}.x"], tuple(int(s) for s in REF[f"{key}.normalized_shape"]),
            float(REF[f"{key}.eps"]), affine, has_b)


@pytest.mark.parametrize("tag", ["f32", "f64"])
@pytest.mark.parametrize("case", CASES)
def test_layer_norm_matches_pytorch(device, tag, case):
    key = f"{tag}.{case}"
    x, normalized, eps, affine, has_b = _config(key)
    if len(normalized) == 1 and case.startswith("d"):
        normalized = normalized[0]  # (an int, as PyTorch takes it too)
    ln = LayerNorm(normalized, eps=eps, elementwise_affine=affine, bias=has_b,
                   dtype=x.dtype).to(device)
    state = {k: REF[f"{key}.{k}"] for k in ("weight", "bias") if f"{key}.{k}" in REF.files}
    assert list(ln.state_dict()) == list(state)  # PyTorch's keys
    ln.load_state_dict(state)
    out = ln(x)
    np.testing.assert_allclose(to_numpy(out), REF[f"{key}.out"], **TOL[tag])
    dx = ln.backward(REF[f"{key}.dout"])
    assert dx.dtype == x.dtype
    np.testing.assert_allclose(to_numpy(dx), REF[f"{key}.dx"], **TOL[tag])
    for name, p in ln.named_parameters():
        np.testing.assert_allclose(to_numpy(p.grad), REF[f"{key}.grad_{name}"], **TOL[tag],
                                   err_msg=name)


def _frozen_model():
    return Sequential(Dense(5, 8), LayerNorm(8), ReLU(), Dense(8, 3)).to(np.float64)


def test_frozen_parameters_train_as_in_pytorch():
    """PyTorch gives AdamW only the trainable parameters; fastnet's AdamW gets them all
    and skips the frozen ones (no update, no weight decay, no state)."""
    m = _frozen_model()
    m.load_state_dict({k[len("frozen.state0."):]: REF[k] for k in REF.files
                       if k.startswith("frozen.state0.")})
    m[0].requires_grad_(False)
    m[1].weight.requires_grad = False
    frozen = {"0.weight", "0.bias", "1.weight"}
    opt = AdamW(m.parameters(), lr=0.05, weight_decay=0.1)
    loss_fn = CrossEntropyLoss()
    for step in range(3):
        opt.zero_grad()
        loss_fn(m(REF[f"frozen.x{step}"]), REF[f"frozen.labels{step}"])
        m.backward(loss_fn.backward(), input_grad=False)
        opt.step()
    for name, p in m.named_parameters():
        assert (p.grad is None) == (name in frozen), name
    for i, (name, _) in enumerate(m.named_parameters()):
        assert (opt.state[i] == {}) == (name in frozen), name
    for k, v in m.state_dict().items():
        want = REF["frozen.state3." + k]
        if k in frozen:
            np.testing.assert_array_equal(v, want, err_msg=k)
            np.testing.assert_array_equal(v, REF["frozen.state0." + k], err_msg=k)
        else:
            np.testing.assert_allclose(v, want, rtol=1e-10, atol=1e-12, err_msg=k)
