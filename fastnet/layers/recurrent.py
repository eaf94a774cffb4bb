"""Recurrent layers with PyTorch's parameters and calling convention: RNN, LSTM, GRU
(one layer, unidirectional, batch first), and the two adapters a sequence classifier
built as a ``Sequential`` needs: ``ImageRows`` (images read row by row) and
``LastHidden`` (the final hidden state of a recurrent layer's output)."""
import numpy as np

from ..kernels import _kernel
from ._args import positive_int
from ._init import kaiming_uniform
from .module import Module, Parameter, _float_dtype, check_grad, check_input


class _Recurrent(Module):
    """Shared by RNN, LSTM and GRU: parameters, validation, the forward / backward calls.

    Parameters (PyTorch's names and layouts, gates stacked along the first axis):
    ``weight_ih_l0`` (G*H, F), ``weight_hh_l0`` (G*H, H), ``bias_ih_l0`` and
    ``bias_hh_l0`` (G*H,), all initialised U(-1/sqrt(H), 1/sqrt(H)) as in PyTorch.

    Only what PyTorch calls ``num_layers=1, bidirectional=False, batch_first=True`` is
    implemented; other values are refused with a ValueError (stack layers by hand, or
    reverse the sequence for a backward pass). Inputs are (N, T, F); initial states are
    (1, N, H) as in PyTorch (a 2-D (N, H) state is refused, so that the shapes of code
    written for PyTorch carry over unchanged).

    ``backward(grad_output, grad_h_n=None[, grad_c_n=None], input_grad=True)`` takes the
    gradients of the forward's outputs; ``grad_output`` may be None when only the final
    state is used, and may also be given as one tuple shaped like the forward's return
    value (what ``LastHidden.backward`` passes on). It accumulates the parameters'
    gradients, returns d loss / d x (None with ``input_grad=False``) and leaves the
    gradients of the initial states in ``grad_h0`` (and ``grad_c0``), (1, N, H) arrays,
    or None when forward was called without them.
    """

    _RUN_STATE = frozenset({"grad_h0", "grad_c0"})  # (see Module._RUN_STATE)

    mode = None
    num_gates = 1

    def __init__(self, input_size, hidden_size, bias=True, batch_first=True, num_layers=1,
                 bidirectional=False, dtype="float32"):
        name = type(self).__name__
        self.input_size = positive_int(input_size, "input_size", name)
        self.hidden_size = positive_int(hidden_size, "hidden_size", name)
        if not isinstance(bias, (bool, np.bool_)):
            raise TypeError(f"{name}: bias must be True or False, got {bias!r}")
        if num_layers != 1 or isinstance(num_layers, bool):
            raise ValueError(f"{name}: only num_layers=1 is implemented, got {num_layers!r}")
        if bidirectional is not False:
            raise ValueError(f"{name}: only unidirectional layers are implemented "
                             f"(bidirectional=False), got bidirectional={bidirectional!r}")
        if batch_first is not True:
            raise ValueError(f"{name}: only batch_first=True is implemented (inputs (N, T, F)), "
                             f"got batch_first={batch_first!r}")
        dtype = _float_dtype(dtype, name)
        g, h, f = self.num_gates, self.hidden_size, self.input_size
        self.weight_ih_l0 = Parameter(kaiming_uniform((g * h, f), h, dtype))
        self.weight_hh_l0 = Parameter(kaiming_uniform((g * h, h), h, dtype))
        self.bias_ih_l0 = Parameter(kaiming_uniform((g * h,), h, dtype)) if bias else None
        self.bias_hh_l0 = Parameter(kaiming_uniform((g * h,), h, dtype)) if bias else None
        self.grad_h0 = None
        self.grad_c0 = None

    def config(self):
        return {"input_size": self.input_size, "hidden_size": self.hidden_size,
                "bias": self.bias_ih_l0 is not None}

    # ---- validation ---------------------------------------------------------------------
    def _check_state(self, h, what, n, dtype):
        device = self.device
        h = device.accept(h, self, f" ({what})")
        want = (1, n, self.hidden_size)
        if h.dtype != dtype:
            raise TypeError(f"{self!r}: expected {what} of dtype {dtype} (the input's), got "
                            f"{h.dtype}")
        if tuple(h.shape) != want:
            raise ValueError(f"{self!r}: expected {what} of shape (1, N, hidden_size) = "
                             f"{want}, got {tuple(h.shape)}")
        return device.asarray(h)

    def _check_x(self, x):
        return check_input(self, x, (None, None, self.input_size), self.weight_ih_l0.dtype)

    def _biases(self):
        return (None if self.bias_ih_l0 is None else self.bias_ih_l0.data,
                None if self.bias_hh_l0 is None else self.bias_hh_l0.data)

    def _flat(self, h):
        return None if h is None else h.reshape(h.shape[1], h.shape[2])

    # ---- calls (RNN and GRU; LSTM's state is a pair) -----------------------------------------
    def __call__(self, x, h0=None):
        return self.forward(x, h0)

    def backward(self, grad_output, grad_h_n=None, input_grad=True):
        if isinstance(grad_output, tuple):
            grad_output, grad_h_n = _unpack(self, grad_output, 1)
        return self._backward([grad_output, grad_h_n], input_grad)

    # ---- backward ---------------------------------------------------------------------------
    def _backward(self, grads, input_grad):
        """grads: [grad_output, grad_h_n(, grad_c_n)], each None or an array."""
        saved = self._saved_for_backward()
        x, states, out = saved[0], saved[1], saved[2]
        n, t, _ = x.shape
        dtype = x.dtype
        if all(g is None for g in grads):
            raise ValueError(f"{self!r}.backward: got no gradient (grad_output and the final "
                             "state gradients are all None)")
        dout = None if grads[0] is None else check_grad(self, grads[0], out.shape, dtype)
        dstate = [None if g is None else self._flat(check_grad(self, g, (1, n, self.hidden_size),
                                                               dtype))
                  for g in grads[1:]]
        dev = self.device
        dx = dev.empty(x.shape, dtype) if input_grad else None
        dinit = [None if s is None else dev.empty((n, self.hidden_size), dtype) for s in states]
        params = [self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0, self.bias_hh_l0]
        slots = [None if p is None else p.grad_slot(dev) for p in params]
        b_ih, b_hh = self._biases()
        _kernel(self.mode + "_backward", dev)(
            dx, *dinit, *slots, dout, *dstate, x, *[self._flat(s) for s in states],
            self.weight_ih_l0.data, self.weight_hh_l0.data, out, *saved[3:])
        for p, s in zip(params, slots):
            if p is not None:
                p.grad_done(s, dev)
        d3 = [None if d is None else d.reshape(1, n, self.hidden_size) for d in dinit]
        self.grad_h0 = d3[0]
        if len(d3) > 1:
            self.grad_c0 = d3[1]
        return dx


class RNN(_Recurrent):
    """Elman RNN as torch.nn.RNN (one layer): h_t = act(x_t W_ih^T + b_ih + h_{t-1}
    W_hh^T + b_hh), act "tanh" or "relu".

    ``forward(x, h0=None)``: x (N, T, input_size), h0 (1, N, hidden_size) or None (zeros)
    -> ``(output (N, T, hidden_size), h_n (1, N, hidden_size))``.
    ``backward(grad_output, grad_h_n=None, input_grad=True)`` -> dx; see ``grad_h0``.
    See the parent class for what is and is not implemented.
    """

    mode = "rnn"
    num_gates = 1

    def __init__(self, input_size, hidden_size, nonlinearity="tanh", bias=True, batch_first=True,
                 num_layers=1, bidirectional=False, dtype="float32"):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, bias, batch_first, num_layers, bidirectional,
                         dtype)

    def config(self):
        return {**super().config(), "nonlinearity": self.nonlinearity}

    def forward(self, x, h0=None):
        x = self._check_x(x)
        n, t, _ = x.shape
        if h0 is not None:
            h0 = self._check_state(h0, "h0", n, x.dtype)
        dev, hs = self.device, self.hidden_size
        out = dev.empty((n, t, hs), x.dtype)
        h_n = dev.empty((n, hs), x.dtype)
        _kernel("rnn_forward", dev)(out, h_n, x, self._flat(h0), self.weight_ih_l0.data,
                                    self.weight_hh_l0.data, *self._biases(), self.nonlinearity)
        if self.training:
            self._saved = (x, (h0,), out, self.nonlinearity)
        return out, h_n.reshape(1, n, hs)


class LSTM(_Recurrent):
    """LSTM as torch.nn.LSTM (one layer), gates i, f, g, o stacked in that order:
    c_t = f*c_{t-1} + i*g, h_t = o*tanh(c_t).

    ``forward(x, hx=None)``: x (N, T, input_size), hx = (h0, c0), each (1, N, hidden_size),
    or None (zeros) -> ``(output (N, T, hidden_size), (h_n, c_n))``.
    ``backward(grad_output, grad_h_n=None, grad_c_n=None, input_grad=True)`` -> dx; see
    ``grad_h0`` / ``grad_c0``. See the parent class for what is and is not implemented.
    """

    mode = "lstm"
    num_gates = 4

    def forward(self, x, hx=None):
        x = self._check_x(x)
        n, t, _ = x.shape
        h0 = c0 = None
        if hx is not None:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"{self!r}: expected hx = (h0, c0), a pair of arrays, got "
                                f"{type(hx).__name__}")
            h0 = self._check_state(hx[0], "h0", n, x.dtype)
            c0 = self._check_state(hx[1], "c0", n, x.dtype)
        dev, hs = self.device, self.hidden_size
        out = dev.empty((n, t, hs), x.dtype)
        h_n = dev.empty((n, hs), x.dtype)
        c_n = dev.empty((n, hs), x.dtype)
        gates = dev.empty((n, t, 4 * hs), x.dtype)
        cells = dev.empty((n, t, hs), x.dtype)
        _kernel("lstm_forward", dev)(out, h_n, c_n, gates, cells, x, self._flat(h0),
                                     self._flat(c0), self.weight_ih_l0.data,
                                     self.weight_hh_l0.data, *self._biases())
        if self.training:
            self._saved = (x, (h0, c0), out, gates, cells)
        return out, (h_n.reshape(1, n, hs), c_n.reshape(1, n, hs))

    def __call__(self, x, hx=None):
        return self.forward(x, hx)

    def backward(self, grad_output, grad_h_n=None, grad_c_n=None, input_grad=True):
        if isinstance(grad_output, tuple):
            grad_output, (grad_h_n, grad_c_n) = _unpack(self, grad_output, 2)
        return self._backward([grad_output, grad_h_n, grad_c_n], input_grad)


class GRU(_Recurrent):
    """GRU as torch.nn.GRU (one layer), gates r, z, n stacked in that order:
    n = tanh(W_in x + b_in + r*(W_hn h + b_hn)), h' = (1-z)*n + z*h.

    ``forward(x, h0=None)``: x (N, T, input_size), h0 (1, N, hidden_size) or None (zeros)
    -> ``(output (N, T, hidden_size), h_n (1, N, hidden_size))``.
    ``backward(grad_output, grad_h_n=None, input_grad=True)`` -> dx; see ``grad_h0``.
    See the parent class for what is and is not implemented.
    """

    mode = "gru"
    num_gates = 3

    def forward(self, x, h0=None):
        x = self._check_x(x)
        n, t, _ = x.shape
        if h0 is not None:
            h0 = self._check_state(h0, "h0", n, x.dtype)
        dev, hs = self.device, self.hidden_size
        out = dev.empty((n, t, hs), x.dtype)
        h_n = dev.empty((n, hs), x.dtype)
        gates = dev.empty((n, t, 3 * hs), x.dtype)
        hn = dev.empty((n, t, hs), x.dtype)
        _kernel("gru_forward", dev)(out, h_n, gates, hn, x, self._flat(h0),
                                    self.weight_ih_l0.data, self.weight_hh_l0.data,
                                    *self._biases())
        if self.training:
            self._saved = (x, (h0,), out, gates, hn)
        return out, h_n.reshape(1, n, hs)


def _unpack(layer, grads, n_states):
    """(grad_output, grad_h_n) or (grad_output, (grad_h_n, grad_c_n)) from one tuple."""
    ok = len(grads) == 2
    if ok and n_states == 2:
        ok = isinstance(grads[1], (tuple, list)) and len(grads[1]) == 2
    if not ok:
        shape = "(grad_output, grad_h_n)" if n_states == 1 else \
            "(grad_output, (grad_h_n, grad_c_n))"
        raise TypeError(f"{layer!r}.backward: a tuple gradient must be {shape}, shaped like "
                        "the forward's return value")
    return grads[0], grads[1]


class ImageRows(Module):
    """(N, 1, H, W) images -> (N, H, W) sequences: H timesteps of W features (a view), to
    read images row by row with a recurrent layer. Single-channel images only."""

    def forward(self, x):
        x = check_input(self, x, (None, 1, None, None))
        if self.training:
            self._saved = (x.shape, x.dtype)
        return x.reshape(x.shape[0], x.shape[2], x.shape[3])

    def backward(self, grad_out, input_grad=True):
        shape, dtype = self._saved_for_backward()
        grad_out = check_grad(self, grad_out, (shape[0], shape[2], shape[3]), dtype)
        return grad_out.reshape(shape) if input_grad else None


class LastHidden(Module):
    """The final hidden state of an RNN / LSTM / GRU as (N, H): takes the layer's whole
    return value, ``(output, h_n)`` or ``(output, (h_n, c_n))``, and returns h_n[0]
    (a view; for a one-layer unidirectional layer that is output[:, -1]). Its backward
    hands the recurrent layer a tuple gradient (None for the output sequence, the
    gradient for h_n), so no zero gradient for the other timesteps is ever formed."""

    def forward(self, x):
        if (not isinstance(x, tuple) or len(x) != 2
                or (isinstance(x[1], tuple) and len(x[1]) != 2)):
            raise TypeError(f"{self!r}: expected the return value of an RNN, LSTM or GRU, "
                            f"(output, h_n) or (output, (h_n, c_n)), got {type(x).__name__}")
        lstm = isinstance(x[1], tuple)
        h_n = x[1][0] if lstm else x[1]
        h_n = check_input(self, h_n, (1, None, None))
        if self.training:
            self._saved = (lstm, h_n.shape, h_n.dtype)
        return h_n.reshape(h_n.shape[1], h_n.shape[2])

    def backward(self, grad_out, input_grad=True):
        lstm, shape, dtype = self._saved_for_backward()
        grad_out = check_grad(self, grad_out, shape[1:], dtype)
        if not input_grad:
            return None
        g = grad_out.reshape(shape)
        return (None, (g, None)) if lstm else (None, g)
