"""fastnet: JIT-compiled neural-network kernels with thin PyTorch-style layers.

    import fastnet
    from fastnet.layers import Sequential, Dense

See README.md.
"""
from . import runtime

runtime.configure()  # threads, BLAS, malloc: before any BLAS / Numba work (fastnet/runtime.py)

from . import cuda, data, kernels, layers, losses, optim, train  # noqa: E402
from ._rng import manual_seed  # noqa: E402
from .runtime import threading_info  # noqa: E402
from .device import Device, is_available  # noqa: E402
from .serialization import load, save  # noqa: E402

__version__ = "0.1.0"
__all__ = ["layers", "losses", "optim", "kernels", "cuda", "data", "train", "Device",
           "is_available", "manual_seed", "save", "load", "threading_info"]
