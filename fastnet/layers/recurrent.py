"""Recurrent layers with PyTorch's parameters, structure and calling convention: RNN,
LSTM, GRU (stacked layers, one or two directions, batch first or not, dropout between
layers), and the two adapters a sequence classifier
built as a ``Sequential`` needs: ``ImageRows`` (images read row by row) and
``LastHidden`` (the final hidden state of a recurrent layer's output)."""
import numpy as np

from .. import _rng
from ..kernels import _kernel
from ._args import positive_int, real
from ._init import kaiming_uniform
from .module import Module, Parameter, _float_dtype, check_grad, check_input, grad_slot


class _Recurrent(Module):
    """Shared by RNN, LSTM and GRU: parameters, validation, the forward / backward calls.

    The structure of torch.nn's recurrent layers: ``num_layers`` stacked layers, each
    one direction or two (``bidirectional``), ``dropout`` on the outputs of every layer
    but the last in training mode. Parameters (PyTorch's names, layouts and order, gates
    stacked along the first axis): ``weight_ih_l{k}`` (G*H, F) for layer 0 and
    (G*H, num_directions*H) above it, ``weight_hh_l{k}`` (G*H, H), ``bias_ih_l{k}`` and
    ``bias_hh_l{k}`` (G*H,), and the same with the suffix ``_reverse`` for the backward
    direction; all initialised U(-1/sqrt(H), 1/sqrt(H)) as in PyTorch, so a PyTorch
    state_dict loads unchanged. Unlike PyTorch, ``batch_first`` defaults to True.

    Inputs are (N, T, F) (batch first) or (T, N, F); outputs (N, T, D*H) or (T, N, D*H),
    the forward direction's features first, D = num_directions. Initial and final states
    are (num_layers*D, N, H), layer by layer, forward direction first, as in PyTorch (a 2-D
    (N, H) state is refused, so that the shapes of code written for PyTorch carry over
    unchanged). The backward direction runs the single-direction kernels on a time-reversed
    copy of its input; ``sequence_copy`` makes those copies, the layouts and the
    concatenation of the directions, so every path runs on both devices.

    Dropout between layers is reproducible like the ``Dropout`` layer's: a layer built with
    ``dropout > 0`` draws a base seed from fastnet's generator (``fastnet.manual_seed``);
    the k-th training call's mask after layer l comes from (seed, k, l), and
    ``get_extra_state`` (seed and call count) lets a resumed run continue the stream.

    ``backward(grad_output, grad_h_n=None[, grad_c_n=None], input_grad=True)`` takes the
    gradients of the forward's outputs; ``grad_output`` may be None when only the final
    state is used, and may also be given as one tuple shaped like the forward's return
    value (what ``LastHidden.backward`` passes on). It accumulates the parameters'
    gradients, returns d loss / d x (None with ``input_grad=False``) and leaves the
    gradients of the initial states in ``grad_h0`` (and ``grad_c0``), (num_layers*D, N, H)
    arrays, or None when forward was called without them.
    """

    _RUN_STATE = frozenset({"grad_h0", "grad_c0", "calls"})  # (see Module._RUN_STATE)

    mode = None
    forward_op = backward_op = None
    num_gates = 1

    def __init__(self, input_size, hidden_size, bias=True, batch_first=True, num_layers=1,
                 bidirectional=False, dropout=0.0, dtype="float32"):
        name = type(self).__name__
        self.input_size = positive_int(input_size, "input_size", name)
        self.hidden_size = positive_int(hidden_size, "hidden_size", name)
        self.num_layers = positive_int(num_layers, "num_layers", name)
        for arg, value in (("bias", bias), ("batch_first", batch_first),
                           ("bidirectional", bidirectional)):
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{name}: {arg} must be True or False, got {value!r}")
        self.batch_first = bool(batch_first)
        self.bidirectional = bool(bidirectional)
        self.dropout = real(dropout, "dropout", name, 0.0, 1.0)
        dtype = _float_dtype(dtype, name)
        g, h = self.num_gates, self.hidden_size
        for k in range(self.num_layers):
            f = self.input_size if k == 0 else self.num_directions * h
            for sfx in self._suffixes():
                setattr(self, f"weight_ih_l{k}{sfx}",
                        Parameter(kaiming_uniform((g * h, f), h, dtype)))
                setattr(self, f"weight_hh_l{k}{sfx}",
                        Parameter(kaiming_uniform((g * h, h), h, dtype)))
                setattr(self, f"bias_ih_l{k}{sfx}",
                        Parameter(kaiming_uniform((g * h,), h, dtype)) if bias else None)
                setattr(self, f"bias_hh_l{k}{sfx}",
                        Parameter(kaiming_uniform((g * h,), h, dtype)) if bias else None)
        # (drawn only with dropout, so that a layer without it leaves fastnet's random
        # stream, and so every later layer's initialisation, as it was)
        self.seed = _rng.new_seed() if self.dropout > 0 else None
        self.calls = 0
        self.grad_h0 = None
        self.grad_c0 = None

    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    def _suffixes(self):
        return ("", "_reverse") if self.bidirectional else ("",)

    def _cell(self, k, d):
        """(w_ih, w_hh, b_ih, b_hh) Parameters (biases None without bias) of layer k,
        direction d."""
        names = _CELL_NAMES[d][k] if k < len(_CELL_NAMES[d]) else _cell_names(k, d)
        return (getattr(self, names[0]), getattr(self, names[1]), getattr(self, names[2]),
                getattr(self, names[3]))

    def config(self):
        return {"input_size": self.input_size, "hidden_size": self.hidden_size,
                "bias": self.bias_ih_l0 is not None, "batch_first": self.batch_first,
                "num_layers": self.num_layers, "bidirectional": self.bidirectional,
                "dropout": self.dropout}

    def get_extra_state(self):
        # the masks of the next call depend on both: a resumed run must continue the stream
        return None if self.seed is None else {"seed": self.seed, "calls": self.calls}

    def set_extra_state(self, state):
        self.seed, self.calls = int(state["seed"]), int(state["calls"])

    # ---- validation ---------------------------------------------------------------------
    def _check_state(self, h, what, n, dtype):
        device = self.device
        h = device.accept(h, self, f" ({what})")
        want = (self.num_layers * self.num_directions, n, self.hidden_size)
        if h.dtype != dtype:
            raise TypeError(f"{self!r}: expected {what} of dtype {dtype} (the input's), got "
                            f"{h.dtype}")
        if tuple(h.shape) != want:
            raise ValueError(f"{self!r}: expected {what} of shape (num_layers*num_directions, "
                             f"N, hidden_size) = {want}, got {tuple(h.shape)}")
        return device.asarray(h)

    def _check_x(self, x):
        return check_input(self, x, (None, None, self.input_size), self.weight_ih_l0.dtype)

    def _batch(self, x):
        """(N, T) of an input in this layer's layout."""
        return (x.shape[0], x.shape[1]) if self.batch_first else (x.shape[1], x.shape[0])

    # ---- calls (RNN and GRU; LSTM's state is a pair) -----------------------------------------
    def __call__(self, x, h0=None):
        return self.forward(x, h0)

    def forward(self, x, h0=None):
        x = self._check_x(x)
        n, _ = self._batch(x)
        if h0 is not None:
            h0 = self._check_state(h0, "h0", n, x.dtype)
        out, (h_n,) = self._forward(x, (h0,))
        return out, h_n

    def backward(self, grad_output, grad_h_n=None, input_grad=True):
        if isinstance(grad_output, tuple):
            grad_output, grad_h_n = _unpack(self, grad_output, 1)
        return self._backward([grad_output, grad_h_n], input_grad)

    # ---- forward ----------------------------------------------------------------------------
    def _direction(self, k, d, x, inits, finals):
        """Run layer k, direction d over x (N, T, F) batch first, C-contiguous (already
        time-reversed for d = 1), from inits (None or (N, H) each) into finals ((N, H)
        views); -> (out (N, T, H), what the kernel's backward needs besides out)."""
        dev, hs = self.device, self.hidden_size
        n, t, _ = x.shape
        w_ih, w_hh, b_ih, b_hh = (None if p is None else p.data for p in self._cell(k, d))
        out = dev.empty((n, t, hs), x.dtype)
        if self.mode == "rnn":
            _kernel("rnn_forward", dev)(out, *finals, x, *inits, w_ih, w_hh, b_ih, b_hh,
                                        self.nonlinearity)
            return out, (self.nonlinearity,)
        if self.mode == "lstm":
            saved = (dev.empty((n, t, 4 * hs), x.dtype), dev.empty((n, t, hs), x.dtype))
        else:
            saved = (dev.empty((n, t, 3 * hs), x.dtype), dev.empty((n, t, hs), x.dtype))
        _kernel(self.forward_op, dev)(out, *finals, *saved, x, *inits, w_ih, w_hh, b_ih, b_hh)
        return out, saved

    def _forward(self, x, states):
        """x checked, states: (h0[, c0]) checked or None -> (output, final states)."""
        dev, hs, dtype = self.device, self.hidden_size, x.dtype
        if self.num_layers == 1 and not self.bidirectional and self.batch_first:
            # one layer, one direction, batch first: the kernels on the caller's arrays,
            # no copy and no bookkeeping (views of the (1, N, H) states)
            n = x.shape[0]
            finals = [dev.empty((n, hs), dtype) for _ in states]
            inits = [None if s is None else s.reshape(n, hs) for s in states]
            out, saved = self._direction(0, 0, x, inits, finals)
            if self.training:
                self._saved = (None, x, inits, out, saved)
            return out, [f.reshape(1, n, hs) for f in finals]
        nl, nd = self.num_layers, self.num_directions
        n, t = self._batch(x)
        finals = [dev.empty((nl * nd, n, hs), dtype) for _ in states]
        drop = self.training and self.dropout > 0 and nl > 1
        if drop:
            if self.seed is None:  # (dropout set after the layer was built without it)
                self.seed = _rng.new_seed()
            call_seed = _rng.derive_seed(self.seed, self.calls)
            self.calls += 1
        layers = []  # per layer: ([per direction: (input, inits, out, saved)], dropout mask)
        y = x
        for k in range(nl):
            src, time_first = y, k == 0 and not self.batch_first
            if time_first:
                y = _copy(dev, (n, t, src.shape[2]), src, False, True)
            dirs = []
            for d in range(nd):
                i = k * nd + d
                xd = y if d == 0 else _copy(dev, (n, t, src.shape[2]), src, True, time_first)
                inits = [None if s is None else s[i] for s in states]
                out, saved = self._direction(k, d, xd, inits, [f[i] for f in finals])
                dirs.append((xd, inits, out, saved))
            last = k == nl - 1
            if nd == 1 and (not last or self.batch_first):
                y = dirs[0][2]
            else:
                shape = (t, n, nd * hs) if last and not self.batch_first else (n, t, nd * hs)
                y = dev.empty(shape, dtype)
                for d in range(nd):
                    _kernel("sequence_copy", dev)(y, dirs[d][2], d * hs, 0, hs, d == 1,
                                                  last and not self.batch_first, False)
            mask = None
            if drop and not last:
                mask = dev.empty(y.shape, np.uint8)
                dropped = dev.empty(y.shape, dtype)
                _kernel("dropout_forward", dev)(dropped, mask, y, self.dropout,
                                                _rng.derive_seed(call_seed, k))
                y = dropped
            layers.append((dirs, mask))
        if self.training:
            self._saved = (layers, x.shape, dtype, tuple(s is not None for s in states),
                           y.shape)
        return y, finals

    # ---- backward ---------------------------------------------------------------------------
    def _direction_backward(self, k, d, dx, dinit, dout, dfinal, x, inits, out, saved):
        """The kernel's backward for layer k, direction d (arguments as its forward's, the
        gradients of the states (N, H) views or None); accumulates the parameters' grads."""
        dev = self.device
        params = self._cell(k, d)
        slots = [grad_slot(p, dev) for p in params]  # (None: no bias, or frozen)
        _kernel(self.backward_op, dev)(dx, *dinit, *slots, dout, *dfinal, x, *inits,
                                       params[0].data, params[1].data, out, *saved)
        for p, s in zip(params, slots):
            if s is not None:
                p.grad_done(s, dev)

    def _backward(self, grads, input_grad):
        """grads: [grad_output, grad_h_n(, grad_c_n)], each None or an array."""
        saved = self._saved_for_backward()
        if all(g is None for g in grads):
            raise ValueError(f"{self!r}.backward: got no gradient (grad_output and the final "
                             "state gradients are all None)")
        dev, hs = self.device, self.hidden_size
        if saved[0] is None:  # one layer, one direction, batch first (see _forward)
            _, x, inits, out, extra = saved
            n, dtype = x.shape[0], x.dtype
            dout = None if grads[0] is None else check_grad(self, grads[0], out.shape, dtype)
            dfinal = [None if g is None else check_grad(self, g, (1, n, hs), dtype).reshape(n, hs)
                      for g in grads[1:]]
            dx = dev.empty(x.shape, dtype) if input_grad else None
            dinit = [None if s is None else dev.empty((n, hs), dtype) for s in inits]
            self._direction_backward(0, 0, dx, dinit, dout, dfinal, x, inits, out, extra)
            dinit = [None if d is None else d.reshape(1, n, hs) for d in dinit]
        else:
            dx, dinit = self._stacked_backward(grads, input_grad, *saved)
        self.grad_h0 = dinit[0]
        if len(dinit) > 1:
            self.grad_c0 = dinit[1]
        return dx

    def _stacked_backward(self, grads, input_grad, layers, x_shape, dtype, given, out_shape):
        """Backward through every layer and direction, last layer first -> (dx, [dh0, dc0])."""
        dev, hs = self.device, self.hidden_size
        nl, nd = self.num_layers, self.num_directions
        n, t = (x_shape[0], x_shape[1]) if self.batch_first else (x_shape[1], x_shape[0])
        dy = None if grads[0] is None else check_grad(self, grads[0], out_shape, dtype)
        dfinal = [None if g is None else check_grad(self, g, (nl * nd, n, hs), dtype)
                  for g in grads[1:]]
        dinit = [dev.empty((nl * nd, n, hs), dtype) if g else None for g in given]
        dy_time_first = not self.batch_first
        dx = None
        for k in range(nl - 1, -1, -1):
            dirs, _ = layers[k]
            f = dirs[0][0].shape[2]
            want_dx = k > 0 or input_grad
            dxs = []
            for d in range(nd):
                i = k * nd + d
                xd, inits, out, saved = dirs[d]
                if dy is None or (nd == 1 and not dy_time_first):
                    dout = dy
                else:
                    dout = _copy(dev, (n, t, hs), dy, d == 1, dy_time_first, d * hs, hs)
                dx_d = dev.empty((n, t, f), dtype) if want_dx else None
                self._direction_backward(
                    k, d, dx_d, [None if g is None else g[i] for g in dinit], dout,
                    [None if g is None else g[i] for g in dfinal], xd, inits, out, saved)
                dxs.append(dx_d)
            if not want_dx:
                return None, dinit
            dx = dxs[0]
            if nd == 2:
                back = _copy(dev, (n, t, f), dxs[1], True, False)
                _kernel("accumulate", dev)(dx, back)
            if k > 0:
                mask = layers[k - 1][1]
                if mask is not None:
                    _kernel("dropout_backward", dev)(dx, dx, mask, self.dropout)
            dy, dy_time_first = dx, False
        if dx is not None and not self.batch_first:
            dx = _copy(dev, x_shape, dx, False, False, out_time_first=True)
        return dx, dinit


def _cell_names(k, d):
    sfx = "_reverse" if d else ""
    return tuple(f"{w}_l{k}{sfx}" for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))


_CELL_NAMES = [[_cell_names(k, d) for k in range(8)] for d in range(2)]  # (the usual ones)


def _copy(dev, shape, x, reverse, x_time_first, x_col=0, width=None, out_time_first=False):
    """A new (N, T, C) array (or (T, N, C) with out_time_first) holding x's features
    [x_col, x_col + width), in or against time order (the sequence_copy op)."""
    out = dev.empty(shape, x.dtype)
    _kernel("sequence_copy", dev)(out, x, 0, x_col, shape[2] if width is None else width,
                                  reverse, out_time_first, x_time_first)
    return out


class RNN(_Recurrent):
    """Elman RNN as torch.nn.RNN: h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh),
    act "tanh" or "relu".

    ``forward(x, h0=None)``: x (N, T, input_size) ((T, N, input_size) with
    ``batch_first=False``), h0 (num_layers*D, N, hidden_size) or None (zeros) ->
    ``(output (N, T, D*hidden_size), h_n (num_layers*D, N, hidden_size))``, D = 2 when
    bidirectional. ``backward(grad_output, grad_h_n=None, input_grad=True)`` -> dx; see
    ``grad_h0`` and the parent class.
    """

    mode = "rnn"
    forward_op, backward_op = "rnn_forward", "rnn_backward"
    num_gates = 1

    def __init__(self, input_size, hidden_size, nonlinearity="tanh", bias=True, batch_first=True,
                 num_layers=1, bidirectional=False, dropout=0.0, dtype="float32"):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, bias, batch_first, num_layers, bidirectional,
                         dropout, dtype)

    def config(self):
        return {**super().config(), "nonlinearity": self.nonlinearity}


class LSTM(_Recurrent):
    """LSTM as torch.nn.LSTM, gates i, f, g, o stacked in that order:
    c_t = f*c_{t-1} + i*g, h_t = o*tanh(c_t).

    ``forward(x, hx=None)``: x (N, T, input_size) ((T, N, input_size) with
    ``batch_first=False``), hx = (h0, c0), each (num_layers*D, N, hidden_size), or None
    (zeros) -> ``(output (N, T, D*hidden_size), (h_n, c_n))``, h_n and c_n
    (num_layers*D, N, hidden_size), D = 2 when bidirectional.
    ``backward(grad_output, grad_h_n=None, grad_c_n=None, input_grad=True)`` -> dx; see
    ``grad_h0`` / ``grad_c0`` and the parent class.
    """

    mode = "lstm"
    forward_op, backward_op = "lstm_forward", "lstm_backward"
    num_gates = 4

    def forward(self, x, hx=None):
        x = self._check_x(x)
        n, _ = self._batch(x)
        h0 = c0 = None
        if hx is not None:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"{self!r}: expected hx = (h0, c0), a pair of arrays, got "
                                f"{type(hx).__name__}")
            h0 = self._check_state(hx[0], "h0", n, x.dtype)
            c0 = self._check_state(hx[1], "c0", n, x.dtype)
        out, (h_n, c_n) = self._forward(x, (h0, c0))
        return out, (h_n, c_n)

    def __call__(self, x, hx=None):
        return self.forward(x, hx)

    def backward(self, grad_output, grad_h_n=None, grad_c_n=None, input_grad=True):
        if isinstance(grad_output, tuple):
            grad_output, (grad_h_n, grad_c_n) = _unpack(self, grad_output, 2)
        return self._backward([grad_output, grad_h_n, grad_c_n], input_grad)


class GRU(_Recurrent):
    """GRU as torch.nn.GRU, gates r, z, n stacked in that order:
    n = tanh(W_in x + b_in + r*(W_hn h + b_hn)), h' = (1-z)*n + z*h.

    ``forward(x, h0=None)``: x (N, T, input_size) ((T, N, input_size) with
    ``batch_first=False``), h0 (num_layers*D, N, hidden_size) or None (zeros) ->
    ``(output (N, T, D*hidden_size), h_n (num_layers*D, N, hidden_size))``, D = 2 when
    bidirectional. ``backward(grad_output, grad_h_n=None, input_grad=True)`` -> dx; see
    ``grad_h0`` and the parent class.
    """

    mode = "gru"
    forward_op, backward_op = "gru_forward", "gru_backward"
    num_gates = 3


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
    """The last layer's final hidden state of an RNN / LSTM / GRU: takes the layer's whole
    return value, ``(output, h_n)`` or ``(output, (h_n, c_n))``, and returns h_n[-1] as
    (N, H) for a unidirectional layer (a view; for a one-layer batch-first layer that is
    output[:, -1]). For a bidirectional layer it returns the last layer's two final states
    side by side, (N, 2H) = concatenate([h_n[-2], h_n[-1]], axis=1): the forward
    direction's state after the last timestep, then the backward direction's after the
    first, as PyTorch users usually write it (a copy). Its backward hands the recurrent
    layer a tuple gradient (None for the output sequence, the gradient for h_n, zeros for
    the other layers' states), so no zero gradient for the timesteps is ever formed."""

    def forward(self, x):
        if (not isinstance(x, tuple) or len(x) != 2
                or (isinstance(x[1], tuple) and len(x[1]) != 2)):
            raise TypeError(f"{self!r}: expected the return value of an RNN, LSTM or GRU, "
                            f"(output, h_n) or (output, (h_n, c_n)), got {type(x).__name__}")
        lstm = isinstance(x[1], tuple)
        h_n = x[1][0] if lstm else x[1]
        h_n = check_input(self, h_n, (None, None, None))
        output = x[0]
        dirs = 0
        if getattr(output, "ndim", None) == 3 and output.shape[2] % h_n.shape[2] == 0:
            dirs = output.shape[2] // h_n.shape[2]
        if dirs not in (1, 2) or h_n.shape[0] % dirs:
            raise ValueError(f"{self!r}: the output's features ({getattr(output, 'shape', None)}"
                             f") are not 1 or 2 directions of h_n's {tuple(h_n.shape)}: expected "
                             "the unchanged return value of a recurrent layer")
        layers, n, hs = h_n.shape
        if self.training:
            self._saved = (lstm, h_n.shape, h_n.dtype, dirs)
        if dirs == 1:
            return h_n.reshape(n, hs) if layers == 1 else h_n[layers - 1]
        dev = self.device
        out = dev.empty((n, 2 * hs), h_n.dtype)
        for d in range(2):
            _kernel("sequence_copy", dev)(out.reshape(n, 1, 2 * hs),
                                          h_n[layers - 2 + d].reshape(n, 1, hs), d * hs, 0, hs,
                                          False, False, False)
        return out

    def backward(self, grad_out, input_grad=True):
        lstm, shape, dtype, dirs = self._saved_for_backward()
        layers, n, hs = shape
        grad_out = check_grad(self, grad_out, (n, dirs * hs), dtype)
        if not input_grad:
            return None
        if layers == 1:
            g = grad_out.reshape(shape)
        else:
            dev = self.device
            g = dev.zeros(shape, dtype)
            for d in range(dirs):
                _kernel("sequence_copy", dev)(g[layers - dirs + d].reshape(n, 1, hs),
                                              grad_out.reshape(n, 1, dirs * hs), 0, d * hs, hs,
                                              False, False, False)
        return (None, (g, None)) if lstm else (None, g)
