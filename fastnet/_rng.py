"""fastnet's global random state: parameter initialisation and dropout seeds."""
import contextlib

import numpy as np

_generator = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Seed every later initialisation and dropout mask (like ``torch.manual_seed``)."""
    global _generator
    _generator = np.random.default_rng(seed)


@contextlib.contextmanager
def preserved():
    """Run a block without consuming the global generator (e.g. layers built by load)."""
    global _generator
    saved = _generator
    _generator = np.random.default_rng(0)
    try:
        yield
    finally:
        _generator = saved


def generator() -> np.random.Generator:
    return _generator


def new_seed() -> int:
    """A fresh 63-bit seed drawn from the global generator."""
    return int(_generator.integers(0, 2**63 - 1))


_MASK64 = (1 << 64) - 1


def derive_seed(base: int, k: int) -> int:
    """The k-th seed of a stream: SplitMix64 of base + k * golden gamma, so that streams
    k and k + 1 share no structure (adding k * gamma alone would make the dropout mask of
    call k + 1 the mask of call k shifted by one element)."""
    z = (base + (k + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)
