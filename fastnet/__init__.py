"""fastnet: JIT-compiled neural-network kernels with thin PyTorch-style layers.

    import fastnet
    from fastnet.layers import Sequential, Dense

Files: ``fastnet.load``, ``Trainer.resume``, ``fastnet.train.load_model``, the CLI and
``fastnet.data.read_idx`` treat the files they read as untrusted. Anything malformed,
truncated, foreign, oversized or not fitting the architecture it describes raises
``fastnet.FileFormatError`` (a ValueError) whose one-line message names the file and what
is wrong, before anything large is allocated; a missing file is FileNotFoundError.

See README.md.
"""
from . import runtime

runtime.configure()  # threads, BLAS, malloc: before any BLAS / Numba work (fastnet/runtime.py)

from . import cuda, data, distributed, kernels, layers, losses, optim, train  # noqa: E402
from ._rng import manual_seed  # noqa: E402
from .runtime import threading_info  # noqa: E402
from .device import Device, is_available  # noqa: E402
from .errors import FileFormatError  # noqa: E402
from .serialization import load, save  # noqa: E402

__version__ = "0.1.0"
__all__ = ["layers", "losses", "optim", "kernels", "cuda", "data", "train", "distributed", "Device",
           "is_available", "manual_seed", "save", "load", "threading_info", "FileFormatError"]
