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


def get_state() -> dict:
    """The global generator's state (JSON-serialisable), e.g. for a training checkpoint."""
    return _generator.bit_generator.state


def set_state(state: dict) -> None:
    """Restore a state from ``get_state``."""
    global _generator
    _generator = generator_from_state(state, "fastnet RNG")


def generator_from_state(state, owner) -> np.random.Generator:
    """A Generator whose bit generator (named in ``state``, e.g. PCG64) has ``state``."""
    name = state.get("bit_generator") if isinstance(state, dict) else None
    bit_generator = getattr(np.random, name, None) if isinstance(name, str) else None
    if not (isinstance(bit_generator, type) and issubclass(bit_generator, np.random.BitGenerator)):
        raise ValueError(f"{owner}: not a NumPy bit-generator state: {state!r:.200}")
    g = np.random.Generator(bit_generator())
    try:
        g.bit_generator.state = state
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"{owner}: invalid {name} state: {e}") from e
    return g


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
