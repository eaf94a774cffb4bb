"""fastnet: JIT-compiled neural-network kernels with thin PyTorch-style layers."""
from . import _threads

_threads.configure()  # before any BLAS / Numba work: see fastnet/_threads.py

from . import kernels  # noqa: E402

__version__ = "0.1.0"
