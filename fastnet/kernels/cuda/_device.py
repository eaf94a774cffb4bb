"""Device functions shared by the CUDA kernels (inlined into their callers)."""
import math

from numba import cuda

# the same codes as fastnet.kernels.activations.ACTIVATIONS
RELU, SIGMOID, TANH = 1, 2, 3


@cuda.jit(device=True, inline=True)
def apply_activation(v, code, one):
    """act(v) by code (0 identity, 1 relu, 2 sigmoid, 3 tanh); ``one`` is 1 in v's dtype.

    NOTE: constants come in typed (``one``): a bare 1.0 is float64 and would turn the
    float32 kernels' arithmetic into double precision (checked on the PTX by the tests).
    """
    if code == RELU:
        return v if v > 0 else one - one
    if code == SIGMOID:
        # exp(-v) overflows to inf for v << 0 and 1 / inf == 0: no NaN, no branch
        return one / (one + math.exp(-v))
    if code == TANH:
        return math.tanh(v)
    return v


@cuda.jit(device=True, inline=True)
def activation_grad(y, code, one):
    """d act / d v through the output y = act(v)."""
    if code == RELU:
        return one if y > 0 else one - one
    if code == SIGMOID:
        return y * (one - y)
    if code == TANH:
        return one - y * y
    return one
