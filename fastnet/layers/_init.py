"""PyTorch's default initialisation, drawn from fastnet's seedable generator."""
import math

from .._rng import generator


def kaiming_uniform(shape, fan_in, dtype):
    """PyTorch's default for Linear / Conv weights: kaiming_uniform_(a=sqrt(5)), which
    is U(-1/sqrt(fan_in), 1/sqrt(fan_in)); the same bound serves the bias."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return generator().uniform(-bound, bound, size=shape).astype(dtype)
