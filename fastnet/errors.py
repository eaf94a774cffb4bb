"""The one error class for files fastnet cannot use."""
from __future__ import annotations

import os


class FileFormatError(ValueError):
    """A file fastnet was asked to read is malformed, truncated, foreign or does not fit
    what reads it: a model file or checkpoint (``fastnet.load``, ``Trainer.resume``,
    ``fastnet.train.load_model``, the CLI), an IDX file (``fastnet.data.read_idx``).

    ``path`` is the file; the message is one line that names it and says what is wrong.
    A ``ValueError``, so code that caught ValueError before still does. A missing file is
    still ``FileNotFoundError``.
    """

    def __init__(self, path, message):
        self.path = os.fspath(path)
        message = " ".join(str(message).split())  # one line, whatever it quotes
        if self.path not in message:
            message = f"{self.path}: {message}"
        super().__init__(message)

    def __reduce__(self):  # picklable (e.g. across multiprocessing) despite two arguments
        return type(self), (self.path, str(self))
