"""fastnet's global random state: parameter initialisation and dropout seeds."""
import numpy as np

_generator = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Seed every later initialisation and dropout mask (like ``torch.manual_seed``)."""
    global _generator
    _generator = np.random.default_rng(seed)


def generator() -> np.random.Generator:
    return _generator


def new_seed() -> int:
    """A fresh 63-bit seed drawn from the global generator."""
    return int(_generator.integers(0, 2**63 - 1))
