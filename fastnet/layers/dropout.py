import numpy as np

from .. import _rng
from ..kernels import _kernel
from ._args import real
from .activation import _check_any
from .module import Module, check_grad
from .plan import Step


class Dropout(Module):
    """Inverted dropout: in training, zero each element with probability p and scale the
    rest by 1 / (1 - p); in eval mode, the identity.

    Masks are reproducible: the layer draws a base seed from fastnet's generator when it
    is built (``fastnet.manual_seed``) and derives the k-th call's mask from (seed, k).
    """

    _RUN_STATE = frozenset({"calls"})  # (see Module._RUN_STATE)

    def __init__(self, p=0.5):
        self.p = real(p, "p", "Dropout", 0.0, 1.0)
        self.seed = _rng.new_seed()
        self.calls = 0

    def config(self):
        return {"p": self.p}

    def get_extra_state(self):
        # The mask of the next call depends on both: a resumed run must continue the stream.
        return {"seed": self.seed, "calls": self.calls}

    def set_extra_state(self, state):
        self.seed, self.calls = int(state["seed"]), int(state["calls"])

    def forward(self, x):
        x = _check_any(self, x)
        if not self.training or self.p == 0:
            return x
        out = self.device.empty(x.shape, x.dtype)
        mask = self.device.empty(x.shape, np.uint8)
        seed = _rng.derive_seed(self.seed, self.calls)
        self.calls += 1
        _kernel("dropout_forward", self.device)(out, mask, x, self.p, seed)
        self._saved = (mask, x.dtype)
        return out

    def _plan_step(self, shape, dtype, following):
        return Step(_identity, shape, dtype, view=True), 0  # eval mode: the input itself

    def backward(self, grad_out, input_grad=True):
        if not self.training or self.p == 0:
            return grad_out if input_grad else None
        mask, dtype = self._saved_for_backward()
        grad_out = check_grad(self, grad_out, mask.shape, dtype)
        if not input_grad:
            return None
        dx = self.device.empty(mask.shape, dtype)
        _kernel("dropout_backward", self.device)(dx, grad_out, mask, self.p)
        return dx


def _identity(x):
    return x
