"""CUDA fused optimizer kernels (in place), torch.optim semantics:
sgd_step(param, velocity, grad, lr, momentum, weight_decay, nesterov),
adam_step(param, m, v, grad, lr, beta1, beta2, eps, weight_decay, step, decoupled), and
the clipping kernels vector_norm, scale, clamp; against the reference and the CPU kernels."""
import numpy as np
import pytest

from fastnet.kernels import kernel
from tests import reference as ref

from ..cases import ADAM_CONFIGS, NORM_TYPES, OPTIM_SHAPES, SGD_CONFIGS, cases_for

STEPS = 3
SHAPES = cases_for(OPTIM_SHAPES, "cuda")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("config", list(SGD_CONFIGS))
def test_sgd_matches_reference_and_cpu_over_steps(rng, dtype, close, dev, host, config, shape):
    """Consecutive SGD steps from a zeroed velocity follow torch.optim.SGD and the CPU
    kernel; param and velocity stay in their dtype, grad is left alone."""
    cfg = SGD_CONFIGS[config]
    lr = 0.1
    param = rng.standard_normal(shape).astype(dtype)
    vel = np.zeros(shape, dtype) if cfg["momentum"] else None
    d_param, d_vel = dev(param), (None if vel is None else dev(vel))
    r_param, r_vel = param.copy(), None
    c_param, c_vel = param.copy(), (None if vel is None else vel.copy())
    args = (lr, cfg["momentum"], cfg["weight_decay"], cfg["nesterov"])
    for step in range(1, STEPS + 1):
        grad = rng.standard_normal(shape).astype(dtype)
        d_grad = dev(grad)
        kernel("sgd_step", "cuda")(d_param, d_vel, d_grad, *args)
        kernel("sgd_step", "cpu")(c_param, c_vel, grad, *args)
        r_param, r_vel = ref.sgd_step(r_param, r_vel, grad, lr, **cfg)
        got = host(d_param)
        close(got, r_param, err_msg=f"param vs reference after step {step}")
        close(got, c_param, err_msg=f"param vs cpu after step {step}")
        if vel is not None:
            close(host(d_vel), r_vel, err_msg=f"velocity after step {step}")
        np.testing.assert_array_equal(host(d_grad), grad, err_msg="grad must not be modified")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("config", list(ADAM_CONFIGS))
def test_adam_matches_reference_and_cpu_over_steps(rng, dtype, close, dev, host, config, shape):
    """Consecutive Adam / AdamW steps (bias correction per step) follow torch.optim and
    the CPU kernel; param, m and v stay in their dtype."""
    cfg = ADAM_CONFIGS[config]
    hp = (1e-2, 0.9, 0.999, 1e-8)
    param = rng.standard_normal(shape).astype(dtype)
    m, v = np.zeros(shape, dtype), np.zeros(shape, dtype)
    d = [dev(a) for a in (param, m, v)]
    r = [param.copy(), m.copy(), v.copy()]
    c = [param.copy(), m.copy(), v.copy()]
    for step in range(1, STEPS + 1):
        grad = rng.standard_normal(shape).astype(dtype)
        kernel("adam_step", "cuda")(*d, dev(grad), *hp, cfg["weight_decay"], step, cfg["decoupled"])
        kernel("adam_step", "cpu")(*c, grad, *hp, cfg["weight_decay"], step, cfg["decoupled"])
        r = ref.adam_step(*r, grad, *hp, cfg["weight_decay"], step, cfg["decoupled"])
        for name, got, want, cpu in zip("pmv", map(host, d), r, c):
            close(got, want, err_msg=f"{name} vs reference after step {step}")
            close(got, cpu, err_msg=f"{name} vs cpu after step {step}")


def test_first_adam_step_is_lr_times_sign(rng, dev, host):
    """Bias correction makes the first Adam step lr * g / (|g| + eps') ~= lr * sign(g)."""
    p = rng.standard_normal(100)
    g = rng.standard_normal(100)
    d = dev(p)
    kernel("adam_step", "cuda")(d, dev(np.zeros(100)), dev(np.zeros(100)), dev(g), 1e-3, 0.9,
                                0.999, 1e-8, 0.0, 1, False)
    np.testing.assert_allclose(p - host(d), 1e-3 * g / (np.abs(g) + 1e-8), rtol=1e-9)


@pytest.mark.parametrize("shape", SHAPES[:2], ids=str)  # one block; two (the simulator is slow)
def test_vector_norm_matches_reference_and_cpu(rng, dtype, close, dev, host, shape):
    """Every reduction (squares, |x|, max, |x|^p) against the reference and the CPU; a NaN
    propagates."""
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    d_x = dev(x)
    for p in NORM_TYPES:
        d_out = dev(np.zeros(1, dtype))
        kernel("vector_norm", "cuda")(d_out, d_x, p)
        got = host(d_out)
        close(got, np.array([ref.vector_norm(x, p)]), err_msg=f"p={p}")
        cpu = np.empty(1, dtype)
        kernel("vector_norm", "cpu")(cpu, x, p)
        close(got, cpu, err_msg=f"p={p} vs cpu")
    y = x.copy()
    y.reshape(-1)[-1] = np.nan
    d_out = dev(np.zeros(1, dtype))
    kernel("vector_norm", "cuda")(d_out, dev(y), float("inf"))
    assert np.isnan(host(d_out)[0])


@pytest.mark.parametrize("shape", SHAPES[1:2], ids=str)
def test_scale_and_clamp_bitwise_as_cpu(rng, dtype, dev, host, shape):
    x = (rng.standard_normal(shape) * 2).astype(dtype)
    x.reshape(-1)[0] = np.nan
    for op, args in (("scale", (0.3,)), ("clamp", (-0.5, 0.8))):
        d, c = dev(x), x.copy()
        kernel(op, "cuda")(d, *args)
        kernel(op, "cpu")(c, *args)
        np.testing.assert_array_equal(host(d), c, err_msg=op)
