"""Fused optimizer kernels (in place), torch.optim semantics:
sgd_step(param, velocity, grad, lr, momentum, weight_decay, nesterov) and
adam_step(param, m, v, grad, lr, beta1, beta2, eps, weight_decay, step, decoupled)."""
import numpy as np
import pytest

from fastnet.kernels import kernel
from tests import reference as ref

from .cases import ADAM_CONFIGS, OPTIM_SHAPES as SHAPES, SGD_CONFIGS

STEPS = 5


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("config", list(SGD_CONFIGS))
def test_sgd_matches_torch_semantics_over_steps(rng, dtype, close, config, shape):
    """Several consecutive SGD steps from a zeroed velocity follow torch.optim.SGD (whose
    first step sets buf = g); param and velocity stay in their dtype."""
    cfg = SGD_CONFIGS[config]
    lr = 0.1
    param = rng.standard_normal(shape).astype(dtype)
    velocity = np.zeros(shape, dtype) if cfg["momentum"] else None
    r_param, r_vel = param.copy(), None
    for step in range(STEPS):
        grad = rng.standard_normal(shape).astype(dtype)
        grad_copy = grad.copy()
        kernel("sgd_step")(param, velocity, grad, lr, cfg["momentum"], cfg["weight_decay"],
                           cfg["nesterov"])
        r_param, r_vel = ref.sgd_step(r_param, r_vel, grad, lr, **cfg)
        close(param, r_param, err_msg=f"param after step {step + 1}")
        if velocity is not None:
            close(velocity, r_vel, err_msg=f"velocity after step {step + 1}")
        np.testing.assert_array_equal(grad, grad_copy, err_msg="grad must not be modified")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("config", list(ADAM_CONFIGS))
def test_adam_matches_torch_semantics_over_steps(rng, dtype, close, config, shape):
    """Several consecutive Adam / AdamW steps (bias correction per step) follow
    torch.optim.Adam / AdamW; param, m and v stay in their dtype."""
    cfg = ADAM_CONFIGS[config]
    hp = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8)
    param = rng.standard_normal(shape).astype(dtype)
    m, v = np.zeros(shape, dtype), np.zeros(shape, dtype)
    r_param, r_m, r_v = param.copy(), m.copy(), v.copy()
    for step in range(1, STEPS + 1):
        grad = rng.standard_normal(shape).astype(dtype)
        kernel("adam_step")(param, m, v, grad, hp["lr"], hp["beta1"], hp["beta2"], hp["eps"],
                            cfg["weight_decay"], step, cfg["decoupled"])
        r_param, r_m, r_v = ref.adam_step(r_param, r_m, r_v, grad, hp["lr"], hp["beta1"],
                                          hp["beta2"], hp["eps"], cfg["weight_decay"], step,
                                          cfg["decoupled"])
        close(param, r_param, err_msg=f"param after step {step}")
        close(m, r_m, err_msg=f"m after step {step}")
        close(v, r_v, err_msg=f"v after step {step}")


def test_adam_vs_adamw_differ_only_through_decay(rng):
    """With weight decay, Adam (L2 in the gradient) and AdamW (decoupled) take different
    steps; with weight_decay=0 they are identical."""
    shape = (50,)
    base = rng.standard_normal(shape)
    grad = rng.standard_normal(shape)
    results = {}
    for wd in (0.0, 0.1):
        for decoupled in (False, True):
            p, m, v = base.copy(), np.zeros(shape), np.zeros(shape)
            kernel("adam_step")(p, m, v, grad, 1e-2, 0.9, 0.999, 1e-8, wd, 1, decoupled)
            results[wd, decoupled] = p
    np.testing.assert_array_equal(results[0.0, False], results[0.0, True])
    assert not np.allclose(results[0.1, False], results[0.1, True], rtol=0, atol=1e-6)


def test_first_adam_step_is_lr_times_sign(rng):
    """Bias correction makes the first Adam step lr * g / (|g| + eps') ~= lr * sign(g)."""
    p = rng.standard_normal(100)
    g = rng.standard_normal(100)
    before = p.copy()
    kernel("adam_step")(p, np.zeros(100), np.zeros(100), g, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1, False)
    np.testing.assert_allclose(before - p, 1e-3 * g / (np.abs(g) + 1e-8), rtol=1e-9)
