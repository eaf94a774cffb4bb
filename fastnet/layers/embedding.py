import numpy as np

from ..device import to_numpy
from ..kernels import _kernel
from .._rng import generator
from ._args import is_int, positive_int
from .module import Module, Parameter, _float_dtype, check_grad, grad_slot


class Embedding(Module):
    """A lookup table, as torch.nn.Embedding: ``out = weight[indices]`` for integer indices
    of any shape, out indices.shape + (embedding_dim,); weight (num_embeddings,
    embedding_dim) initialised N(0, 1) as PyTorch does.

    ``padding_idx`` (an int in [-num_embeddings, num_embeddings), negative counted from the
    end as in PyTorch, or None): that row is zeroed at initialisation and never receives a
    gradient. Indices must be integer (any integer dtype; float and bool are refused, never
    cast) and in [0, num_embeddings); they are checked on the host before any kernel runs
    (indices already on the GPU are copied to the host for that check). Backward returns
    None: indices have no gradient. The weight gradient is a deterministic scatter-add
    (the same bits every run, whatever the thread count or device).
    """

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, dtype="float32"):
        self.num_embeddings = positive_int(num_embeddings, "num_embeddings", "Embedding")
        self.embedding_dim = positive_int(embedding_dim, "embedding_dim", "Embedding")
        if padding_idx is not None:
            if not is_int(padding_idx):
                raise TypeError(f"Embedding: padding_idx must be an int or None, got "
                                f"{padding_idx!r}")
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"Embedding: padding_idx must be within num_embeddings: in "
                                 f"[{-num_embeddings}, {num_embeddings}), got {padding_idx!r}")
            padding_idx = int(padding_idx) % num_embeddings  # as PyTorch stores it
        self.padding_idx = padding_idx
        dtype = _float_dtype(dtype, "Embedding")
        w = generator().standard_normal((num_embeddings, embedding_dim)).astype(dtype)
        if padding_idx is not None:
            w[padding_idx] = 0
        self.weight = Parameter(w)

    def config(self):
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim,
                "padding_idx": self.padding_idx}

    def _indices(self, indices):
        """The indices as a flat host int64 array, checked: integer, in range."""
        device = self.device
        indices = device.accept(indices, self, " indices")
        kind = np.dtype(indices.dtype).kind
        if kind not in "iu":
            hint = (" (a fastnet DataLoader casts features to float unless built with "
                    "int_features=True)" if kind == "f" else "")
            raise TypeError(f"{self!r}: indices must be an integer array (any integer dtype), "
                            f"got dtype {indices.dtype}{hint}")
        host = to_numpy(indices)
        if host.size:
            lo, hi = host.min(), host.max()
            if lo < 0 or hi >= self.num_embeddings:
                bad = lo if lo < 0 else hi
                raise ValueError(f"{self!r}: index {bad} is out of range for "
                                 f"{self.num_embeddings} embeddings [0, {self.num_embeddings})")
        # a copy: backward must see the indices checked here, whatever the caller does with
        # its array in between
        return np.array(host, dtype=np.int64).reshape(-1), tuple(host.shape)

    def forward(self, indices):
        flat, shape = self._indices(indices)
        w = self.weight.data
        device, d = self.device, self.embedding_dim
        out = device.empty(shape + (d,), w.dtype)
        on_device = device.asarray(flat)  # (the host array itself on the CPU)
        _kernel("embedding_forward", device)(out.reshape(flat.size, d), on_device, w)
        if self.training:
            # the host indices: the CUDA backward sorts them there
            self._saved = (flat, out.shape, w.dtype)
        return out

    def backward(self, grad_out, input_grad=True):
        flat, out_shape, dtype = self._saved_for_backward()
        grad_out = check_grad(self, grad_out, out_shape, dtype)
        dw = grad_slot(self.weight, self.device)
        if dw is not None:  # (frozen: nothing to compute)
            _kernel("embedding_backward", self.device)(
                dw, grad_out.reshape(flat.size, self.embedding_dim), flat, self.padding_idx)
            self.weight.grad_done(dw, self.device)
        return None  # indices have no gradient
