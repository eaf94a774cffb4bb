"""Character-level text: the English documentation shipped with Python, a vocabulary of its
characters, a split by position and (N, T) windows of character ids with their next
characters as targets.

The text is ``pydoc_data.topics.topics`` (part of the standard library: no download), its
values joined in the sorted order of their keys, so that it does not depend on a dict's
order. It differs a little between Python versions (the documentation changes), which is
why a character model stores its vocabulary (``fastnet.models.CharLSTM.vocab``) and the
vocabulary of a run is always the one of the text it trained on.
"""
from __future__ import annotations

import numbers

import numpy as np

from .loader import Dataset

__all__ = ["load_text", "CharVocab", "split_text", "TextWindows", "load_char_data"]

SEPARATOR = "\n\n"  # between two topics


def load_text() -> str:
    """The documentation topics of Python's ``pydoc_data`` (~465 KB of English), joined in
    the sorted order of their keys."""
    from pydoc_data.topics import topics

    return SEPARATOR.join(topics[key] for key in sorted(topics))


class CharVocab:
    """A character <-> id mapping: ids are the positions of the characters in ``chars``, a
    string of distinct characters (``from_text`` gives them sorted)."""

    def __init__(self, chars):
        if not isinstance(chars, str) or not chars:
            raise ValueError(f"CharVocab: expected a non-empty string of characters, got "
                             f"{chars!r:.60}")
        if len(set(chars)) != len(chars):
            raise ValueError("CharVocab: the characters must be distinct")
        self.chars = chars
        codes = np.array([ord(c) for c in chars], dtype=np.uint32)
        self._order = np.argsort(codes, kind="stable")
        self._sorted = codes[self._order]

    @classmethod
    def from_text(cls, text):
        """Every character that occurs in ``text``, sorted."""
        return cls("".join(sorted(set(text))))

    def __len__(self):
        return len(self.chars)

    def __eq__(self, other):
        return isinstance(other, CharVocab) and other.chars == self.chars

    def __repr__(self):
        return f"CharVocab({len(self)} characters)"

    def unknown(self, text):
        """The characters of ``text`` outside the vocabulary, sorted, each once."""
        known = set(self.chars)
        return sorted(set(text) - known)

    def encode(self, text) -> np.ndarray:
        """int64 ids of the characters of ``text``; a ValueError lists unknown characters."""
        if not isinstance(text, str):
            raise TypeError(f"CharVocab.encode: expected a string, got {type(text).__name__}")
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        pos = np.minimum(np.searchsorted(self._sorted, codes), len(self._sorted) - 1)
        bad = self._sorted[pos] != codes
        if bad.any():
            missing = self.unknown(text)
            raise ValueError(f"{len(missing)} character(s) not in the vocabulary: "
                             + ", ".join(repr(c) for c in missing[:20])
                             + (" ..." if len(missing) > 20 else ""))
        return self._order[pos].astype(np.int64)

    def decode(self, ids) -> str:
        """The characters of the ids ``ids`` (any integer array or sequence)."""
        ids = np.asarray(ids)
        if ids.size and (ids.dtype.kind not in "iu" or ids.min() < 0 or ids.max() >= len(self)):
            raise ValueError(f"CharVocab.decode: ids must be integers in [0, {len(self)})")
        return "".join(self.chars[i] for i in ids.reshape(-1).tolist())


def _fraction(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(f"split_text: {name} must be in [0, 1), got {value!r}")
    return float(value)


def split_text(ids, val_fraction=0.05, test_fraction=0.05):
    """(train, val, test) slices of ``ids`` by position: the text's first part trains, the
    next ``val_fraction`` validates and the last ``test_fraction`` tests (no window ever
    straddles two parts). A fraction of 0 gives an empty part."""
    val_fraction = _fraction(val_fraction, "val_fraction")
    test_fraction = _fraction(test_fraction, "test_fraction")
    if val_fraction + test_fraction >= 1:
        raise ValueError(f"split_text: val_fraction + test_fraction must be below 1, got "
                         f"{val_fraction} + {test_fraction}")
    n = len(ids)
    test_start = n - int(round(n * test_fraction))
    val_start = test_start - int(round(n * val_fraction))
    return ids[:val_start], ids[val_start:test_start], ids[test_start:]


class TextWindows(Dataset):
    """Windows of ``seq_len`` character ids from ``ids``, with the next characters as
    targets: sample i is ``(ids[s:s + seq_len], ids[s + 1:s + seq_len + 1])`` for the
    start ``s = i * stride`` (``stride`` defaults to ``seq_len``: windows side by side,
    every character of the text predicted once). Vectorised for the DataLoader
    (``dataset[index_array] -> (x (n, T), y (n, T))``, int64); batch it with
    ``DataLoader(..., int_features=True)``."""

    def __init__(self, ids, seq_len, stride=None):
        ids = np.asarray(ids)
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise TypeError(f"TextWindows: ids must be a 1-D integer array, got "
                            f"{ids.dtype} {ids.shape}")
        if isinstance(seq_len, bool) or not isinstance(seq_len, numbers.Integral) or seq_len < 1:
            raise ValueError(f"TextWindows: seq_len must be a positive int, got {seq_len!r}")
        stride = seq_len if stride is None else stride
        if isinstance(stride, bool) or not isinstance(stride, numbers.Integral) or stride < 1:
            raise ValueError(f"TextWindows: stride must be a positive int, got {stride!r}")
        if len(ids) < seq_len + 1:
            raise ValueError(f"TextWindows: {len(ids)} characters give no window of "
                             f"{seq_len} inputs and {seq_len} targets")
        self.ids = ids.astype(np.int64, copy=False)
        self.seq_len, self.stride = int(seq_len), int(stride)
        self._offsets = np.arange(self.seq_len, dtype=np.int64)

    def __len__(self):
        return (len(self.ids) - 1 - self.seq_len) // self.stride + 1

    def __getitem__(self, idx):
        idx = np.asarray(idx, dtype=np.int64)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"TextWindows: index out of range for {n} windows")
        pos = (idx % n * self.stride)[..., None] + self._offsets
        return self.ids[pos], self.ids[pos + 1]

    def __repr__(self):
        return (f"TextWindows({len(self)} windows of {self.seq_len} characters, "
                f"stride {self.stride})")


def load_char_data(seq_len=100, val_fraction=0.05, test_fraction=0.05, text=None):
    """The character-level data set: ``{"vocab": CharVocab, "train", "val", "test":
    TextWindows or None (an empty part), "chars": (train, val, test) lengths}`` of ``text``
    (default ``load_text()``), split by position."""
    text = load_text() if text is None else text
    vocab = CharVocab.from_text(text)
    parts = split_text(vocab.encode(text), val_fraction, test_fraction)
    sets = [TextWindows(p, seq_len) if len(p) else None for p in parts]
    return {"vocab": vocab, "train": sets[0], "val": sets[1], "test": sets[2],
            "chars": tuple(len(p) for p in parts)}
