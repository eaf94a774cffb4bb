"""float64 central differences for checking backward kernels.

``check_backward`` compares a kernel's backward against finite differences of the
kernel's OWN forward: with a fixed random R and L(x) = sum(forward(x) * R),
dL/dx is exactly backward(dout=R), so every input's gradient is checked at once.
Use tiny shapes: each input element costs two forward calls.
"""
import numpy as np


def numerical_grad(f, x, eps=1e-6):
    """d f / d x by central differences; f(x) -> scalar, x a float64 array (restored)."""
    assert x.dtype == np.float64, "finite differences need float64"
    grad = np.empty_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)  # views: x is perturbed in place
    for k in range(flat.size):
        orig = flat[k]
        flat[k] = orig + eps
        fp = float(f(x))
        flat[k] = orig - eps
        fm = float(f(x))
        flat[k] = orig
        gflat[k] = (fp - fm) / (2 * eps)
    return grad


def check_backward(forward, backward, inputs, rng, names=None, eps=1e-6, rtol=1e-6, atol=1e-7):
    """Assert backward(R, *inputs) == d sum(forward(*inputs) * R) / d inputs.

    forward(*inputs) -> array y (a fresh array each call); backward(dout, *inputs) -> one
    gradient per input, in order, None for an input not to be checked. All float64.
    """
    inputs = [np.array(a, dtype=np.float64) for a in inputs]
    names = names or [f"input {k}" for k in range(len(inputs))]
    y = forward(*inputs)
    r = rng.standard_normal(y.shape)
    grads = backward(r.copy(), *inputs)
    assert len(grads) == len(inputs)
    for k, (x, g) in enumerate(zip(inputs, grads)):
        if g is None:
            continue

        def loss(_, k=k):
            return np.sum(forward(*inputs) * r)

        num = numerical_grad(loss, inputs[k], eps)
        assert g.shape == x.shape, f"{names[k]}: gradient shape {g.shape} != {x.shape}"
        np.testing.assert_allclose(g, num, rtol=rtol, atol=atol,
                                   err_msg=f"backward vs finite differences: d/d {names[k]}")
