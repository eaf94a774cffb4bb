"""Fused optimizer kernels (in place), torch.optim semantics:
sgd_step(param, velocity, grad, lr, momentum, weight_decay, nesterov) and
adam_step(param, m, v, grad, lr, beta1, beta2, eps, weight_decay, step, decoupled); the
gradient clipping kernels vector_norm(out, x, norm_type), scale(x, alpha), clamp(x, lo, hi)."""
import numpy as np
import pytest

from fastnet.kernels import kernel
from tests import reference as ref

from .cases import ADAM_CONFIGS, NORM_TYPES, OPTIM_SHAPES as SHAPES, SGD_CONFIGS

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


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=str)
def test_vector_norm_matches_reference(rng, dtype, close, norm_type, shape):
    """||x||_p in x's dtype (float32 sums in fixed blocks, within float32 rounding)."""
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    out = np.full(1, -1.0, dtype)
    kernel("vector_norm")(out, x, norm_type)
    close(out, np.array([ref.vector_norm(x, norm_type)]), err_msg=f"p={norm_type}")


@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=str)
def test_vector_norm_propagates_nan_and_inf_and_is_thread_independent(rng, norm_type):
    """A NaN anywhere (also after a larger value, in a later block) gives NaN; an inf gives
    inf; the serial and the parallel build give the same bits."""
    from fastnet.kernels import optim

    x = rng.standard_normal(10007).astype(np.float32)
    out = np.empty(1, np.float32)
    for where, value, want in ((9000, np.nan, np.nan), (5, np.inf, np.inf)):
        y = x.copy()
        y[where] = value
        y[0] = 50.0  # the max before the NaN
        kernel("vector_norm")(out, y, norm_type)
        np.testing.assert_equal(out[0], want)
    mode, p = optim.norm_mode(norm_type), float(norm_type) if norm_type != np.inf else 2.0
    parts = [np.empty(3, np.float32) for _ in range(2)]
    optim._norm_partial.serial(parts[0], x, p, mode)
    optim._norm_partial.parallel(parts[1], x, p, mode)
    np.testing.assert_array_equal(parts[0], parts[1])


@pytest.mark.parametrize("shape", SHAPES[:3], ids=str)
def test_scale_and_clamp_in_place(rng, dtype, close, shape):
    """scale: x * alpha in x's dtype; clamp: into [lo, hi], NaN kept."""
    x = (rng.standard_normal(shape) * 2).astype(dtype)
    x.reshape(-1)[0] = np.nan
    y = x.copy()
    kernel("scale")(y, 0.3)
    np.testing.assert_array_equal(y, x * dtype.type(0.3))
    z = x.copy()
    kernel("clamp")(z, -0.5, 0.8)
    np.testing.assert_array_equal(z, ref.clamp(x, -0.5, 0.8))
