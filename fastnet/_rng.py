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


# The bit generators NumPy provides, by the name their state carries, each with the layout
# of its state: "u32" / "u64" / "u128" an int in that range, ("list", n, kind) n of them,
# ("range", lo, hi) an int in [lo, hi]. NumPy's own setters do not check everything (an
# MT19937 "pos" past its key crashes the interpreter on the next draw), so all is checked.
_CARRY = {"has_uint32": ("range", 0, 1), "uinteger": "u32"}
_LAYOUTS = {
    "PCG64": {"state": {"state": "u128", "inc": "u128"}, **_CARRY},
    "PCG64DXSM": {"state": {"state": "u128", "inc": "u128"}, **_CARRY},
    "SFC64": {"state": {"state": ("list", 4, "u64")}, **_CARRY},
    "Philox": {"state": {"counter": ("list", 4, "u64"), "key": ("list", 2, "u64")},
               "buffer": ("list", 4, "u64"), "buffer_pos": ("range", 0, 4), **_CARRY},
    "MT19937": {"state": {"key": ("list", 624, "u32"), "pos": ("range", 0, 624)}},
}
_BITS = {"u32": 32, "u64": 64, "u128": 128}


def _layout_problem(value, layout, where):
    """Where ``value`` does not have ``layout`` (see _LAYOUTS), or None."""
    if isinstance(layout, dict):
        if not isinstance(value, dict) or set(value) != set(layout):
            return f"{where} must be a dict with the keys {sorted(layout)}"
        for k, sub in layout.items():
            problem = _layout_problem(value[k], sub, f"{where}[{k!r}]")
            if problem:
                return problem
        return None
    if isinstance(layout, tuple) and layout[0] == "list":
        if isinstance(value, np.ndarray) and value.dtype.kind in "iu":
            value = value.tolist()
        if not isinstance(value, list) or len(value) != layout[1]:
            return f"{where} must be a list of {layout[1]} ints"
        for i, v in enumerate(value):
            problem = _layout_problem(v, layout[2], f"{where}[{i}]")
            if problem:
                return problem
        return None
    lo, hi = (layout[1], layout[2]) if isinstance(layout, tuple) else (0, (1 << _BITS[layout]) - 1)
    if isinstance(value, np.integer):
        value = int(value)
    if not (isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi):
        return f"{where} must be an int in [{lo}, {hi}], got {value!r:.40}"
    return None


def generator_from_state(state, owner) -> np.random.Generator:
    """A Generator whose bit generator (one of NumPy's, named in ``state``: PCG64,
    PCG64DXSM, MT19937, Philox, SFC64) has ``state``. ValueError when ``state`` is not such
    a state, its layout and every number checked first."""
    name = state.get("bit_generator") if isinstance(state, dict) else None
    if not isinstance(name, str) or name not in _LAYOUTS:
        raise ValueError(f"{owner}: not a NumPy bit-generator state (expected bit_generator "
                         f"{', '.join(_LAYOUTS)}): {state!r:.200}")
    problem = _layout_problem({k: v for k, v in state.items() if k != "bit_generator"},
                              _LAYOUTS[name], "the state")
    if problem:
        raise ValueError(f"{owner}: invalid {name} state: {problem}")
    g = np.random.Generator(getattr(np.random, name)())
    try:
        g.bit_generator.state = state
    except (TypeError, ValueError, KeyError, IndexError, OverflowError) as e:
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
