"""Recurrent kernels (CPU): single-layer, unidirectional RNN (tanh / relu), LSTM and GRU,
batch first, with PyTorch's equations and gate order (LSTM i, f, g, o; GRU r, z, n).

Shapes: x (N, T, F), out (N, T, H), h0 / c0 / h_n / c_n (N, H), w_ih (G*H, F),
w_hh (G*H, H), b_ih / b_hh (G*H,) or None, with G = 1 (RNN), 4 (LSTM), 3 (GRU).

Forward: the input projection of every timestep is one GEMM (NumPy's BLAS),
x (N*T, F) @ w_ih.T, written into ``gates`` (N, T, G*H) (into ``out`` for the RNN);
then per timestep one GEMM h @ w_hh.T and one fused Numba pass that adds both biases,
applies every gate nonlinearity, updates the cell and writes h_t. That pass overwrites
gates[:, t] with the activated gates, which are what backward needs: ``gates`` is the
projection's workspace and the saved activations at once. ``cells`` (LSTM) keeps c_t and
``hn`` (GRU) keeps W_hn h_{t-1} + b_hn. ``h_n`` (and ``c_n``) serve as the running state.

Backward through time: per timestep one fused pass forms the pre-activation gate
gradients dG[:, t] and one GEMM dG_t @ w_hh carries dh back to t-1. After the loop
dw_ih = dG.T @ x, dw_hh = dG.T @ h_prev and dx = dG @ w_ih are one GEMM each over all
timesteps, and the bias gradients are column sums in a fixed order (deterministic).
Backward kernels overwrite their outputs; pass ``None`` for an output that is not
needed (dx, dh0 / dc0 without an initial state, db_* without bias). ``h0`` / ``c0`` /
``dout`` / ``dh_n`` / ``dc_n`` may be None, meaning zeros (``dout`` None: only the final
state is used downstream).
"""
import numpy as np
from numba import prange

from . import _jit
from ._jit import parallel_kernel
from .activations import ACTIVATIONS, activation_grad, apply_activation
from .dense import sum_rows

_SIGMOID, _TANH = ACTIVATIONS["sigmoid"], ACTIVATIONS["tanh"]

# NOTE: the gate nonlinearities are most of a step's time; apply_activation's float32
# sigmoid and tanh (kernels/_math.py) are plain arithmetic, so the step loops vectorise.


def _run(kern, work, *args):
    """The parallel build of a step kernel when one timestep has enough work (a
    ParallelKernel would judge by its largest argument, the whole sequence)."""
    build = kern.parallel if work >= _jit.PARALLEL_MIN_WORK else kern.serial
    build(*args)


def _state(h_n, h0):
    """Start the running state h_n at h0 (zeros for None)."""
    if h0 is None:
        h_n.fill(0)
    else:
        np.copyto(h_n, h0)


def _zeros_like_state(a, n, h, dtype):
    return np.zeros((n, h), dtype) if a is None else a


@parallel_kernel
def _column_sums(out, a):
    # out (M,) = a (N, M) summed over rows, deterministically (see dense.sum_rows)
    sum_rows(out, a)


def _weight_grads(dx, dw_ih, dw_hh, db_ih, db_hh, dgx, dgh, x, h_prev, w_ih):
    """The GEMMs over all timesteps after the BPTT loop; dgx / dgh (N, T, G*H) the
    gradients of the input-side and hidden-side pre-activations (the same array except
    for the GRU)."""
    n, t, f = x.shape
    gh = dgx.shape[2]
    gx2 = dgx.reshape(n * t, gh)
    gh2 = dgh.reshape(n * t, gh)
    np.matmul(gx2.T, x.reshape(n * t, f), out=dw_ih)
    np.matmul(gh2.T, h_prev.reshape(n * t, h_prev.shape[2]), out=dw_hh)
    if db_ih is not None:
        _column_sums(db_ih, gx2)
    if db_hh is not None:
        if dgh is dgx and db_ih is not None:
            db_hh[:] = db_ih
        else:
            _column_sums(db_hh, gh2)
    if dx is not None:
        np.matmul(gx2, w_ih, out=dx.reshape(n * t, f))


def _shifted(out, h0):
    """h_prev (N, T, H): h0 (or zeros) then out[:, :-1]."""
    h_prev = np.empty_like(out)
    if h0 is None:
        h_prev[:, 0] = 0
    else:
        h_prev[:, 0] = h0
    h_prev[:, 1:] = out[:, :-1]
    return h_prev


# ---- RNN: h_t = act(x_t @ w_ih.T + b_ih + h_{t-1} @ w_hh.T + b_hh) ---------------------------

@parallel_kernel
def _rnn_step(out, h, gh, b_ih, b_hh, t, code):
    # NOTE: the step kernels work row by row on 1-D views, one simple loop per stage:
    # a loop that stores to several arrays needs more runtime alias checks than LLVM
    # allows and stays scalar.
    n, hs = h.shape
    for i in prange(n):
        o = out[i, t]
        a = gh[i]
        for j in range(hs):
            v = o[j] + a[j]
            if b_ih is not None:
                v += b_ih[j]
            if b_hh is not None:
                v += b_hh[j]
            o[j] = apply_activation(v, code)
        hi = h[i]
        for j in range(hs):
            hi[j] = o[j]


@parallel_kernel
def _rnn_step_backward(dg, dh, dout, out, t, code):
    n, hs = dh.shape
    for i in prange(n):
        for j in range(hs):
            d = dh[i, j]
            if dout is not None:
                d += dout[i, t, j]
            dg[i, t, j] = d * activation_grad(out[i, t, j], code)


def rnn_forward(out, h_n, x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity):
    """x (N, T, F), h0 (N, H) | None, w_ih (H, F), w_hh (H, H), b_ih, b_hh (H,) | None
    -> out (N, T, H), h_n (N, H); nonlinearity "tanh" or "relu\""""
    n, t, f = x.shape
    hs = h_n.shape[1]
    code = ACTIVATIONS[nonlinearity]
    np.matmul(x.reshape(n * t, f), w_ih.T, out=out.reshape(n * t, hs))
    _state(h_n, h0)
    gh = np.empty((n, hs), out.dtype)
    for s in range(t):
        np.matmul(h_n, w_hh.T, out=gh)
        _run(_rnn_step, n * hs, out, h_n, gh, b_ih, b_hh, s, code)


def rnn_backward(dx, dh0, dw_ih, dw_hh, db_ih, db_hh, dout, dh_n, x, h0, w_ih, w_hh, out,
                 nonlinearity):
    """dout (N, T, H) | None, dh_n (N, H) | None, x, h0, w_ih, w_hh, out as in forward ->
    dx (N, T, F) | None, dh0 (N, H) | None, dw_ih, dw_hh, db_ih | None, db_hh | None"""
    n, t, f = x.shape
    hs = out.shape[2]
    code = ACTIVATIONS[nonlinearity]
    dg = np.empty_like(out)
    dh = np.zeros((n, hs), out.dtype) if dh_n is None else dh_n.copy()
    for s in range(t - 1, -1, -1):
        _run(_rnn_step_backward, n * hs, dg, dh, dout, out, s, code)
        if s > 0 or dh0 is not None:
            np.matmul(dg[:, s], w_hh, out=dh)
    if dh0 is not None:
        dh0[:] = dh
    _weight_grads(dx, dw_ih, dw_hh, db_ih, db_hh, dg, dg, x, _shifted(out, h0), w_ih)


# ---- LSTM (gates i, f, g, o): c_t = f*c_{t-1} + i*g, h_t = o*tanh(c_t) ----------------------

@parallel_kernel
def _lstm_step(out, h, c, cells, gates, gh, b_ih, b_hh, t):
    # NOTE: every loop runs from 0 over a view (the gate's slice of the row): with
    # g[2 * hs + j] or range(2 * hs, 3 * hs), LLVM cannot prove the index non-negative,
    # keeps Numba's negative-index wraparound in the loop, and it stays scalar (10x
    # slower). Likewise in the other step kernels.
    n, hs = h.shape
    for i in prange(n):
        g = gates[i, t]
        a = gh[i]
        for j in range(g.size):
            v = g[j] + a[j]
            if b_ih is not None:
                v += b_ih[j]
            if b_hh is not None:
                v += b_hh[j]
            g[j] = v
        gif, gg, go = g[:2 * hs], g[2 * hs:3 * hs], g[3 * hs:]
        for j in range(gif.size):          # i, f
            gif[j] = apply_activation(gif[j], _SIGMOID)
        for j in range(gg.size):           # g
            gg[j] = apply_activation(gg[j], _TANH)
        for j in range(go.size):           # o
            go[j] = apply_activation(go[j], _SIGMOID)
        gi, gf = g[:hs], g[hs:2 * hs]
        ci = c[i]
        for j in range(hs):
            ci[j] = gf[j] * ci[j] + gi[j] * gg[j]
        o = out[i, t]
        for j in range(hs):
            o[j] = go[j] * apply_activation(ci[j], _TANH)
        cr = cells[i, t]
        hi = h[i]
        for j in range(hs):  # loops: an array assignment brings Numba's broadcasting code
            cr[j] = ci[j]
            hi[j] = o[j]


@parallel_kernel
def _lstm_step_backward(dg, dh, dc, dout, gates, cells, c0, t):
    # dh (scratch, overwritten by the next GEMM) takes dout[:, t] in place
    n, hs = dh.shape
    for i in prange(n):
        one = type(dh[i, 0])(1)
        g = gates[i, t]
        gi, gf, gg, go = g[:hs], g[hs:2 * hs], g[2 * hs:3 * hs], g[3 * hs:]
        d = dg[i, t]
        di, df, dgg, do_ = d[:hs], d[hs:2 * hs], d[2 * hs:3 * hs], d[3 * hs:]
        dhi = dh[i]
        dci = dc[i]
        ct = cells[i, t]
        cp = c0[i] if t == 0 else cells[i, t - 1]
        if dout is not None:
            do = dout[i, t]
            for j in range(hs):
                dhi[j] += do[j]
        for j in range(hs):                # dc_t and the o gate
            og = go[j]
            tc = apply_activation(ct[j], _TANH)
            dci[j] += dhi[j] * og * (one - tc * tc)
            do_[j] = dhi[j] * tc * og * (one - og)
        for j in range(hs):                # i, f, g
            ig = gi[j]
            fg = gf[j]
            g_ = gg[j]
            dct = dci[j]
            di[j] = dct * g_ * ig * (one - ig)
            df[j] = dct * cp[j] * fg * (one - fg)
            dgg[j] = dct * ig * (one - g_ * g_)
        for j in range(hs):                # dc_{t-1}
            dci[j] *= gf[j]


def lstm_forward(out, h_n, c_n, gates, cells, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    """x (N, T, F), h0, c0 (N, H) | None, w_ih (4H, F), w_hh (4H, H), b_ih, b_hh (4H,) |
    None -> out (N, T, H), h_n, c_n (N, H), gates (N, T, 4H) activated i, f, g, o,
    cells (N, T, H) c_t"""
    n, t, f = x.shape
    hs = h_n.shape[1]
    np.matmul(x.reshape(n * t, f), w_ih.T, out=gates.reshape(n * t, 4 * hs))
    _state(h_n, h0)
    _state(c_n, c0)
    gh = np.empty((n, 4 * hs), out.dtype)
    for s in range(t):
        np.matmul(h_n, w_hh.T, out=gh)
        _run(_lstm_step, n * 4 * hs, out, h_n, c_n, cells, gates, gh, b_ih, b_hh, s)


def lstm_backward(dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dout, dh_n, dc_n, x, h0, c0,
                  w_ih, w_hh, out, gates, cells):
    """dout (N, T, H) | None, dh_n, dc_n (N, H) | None, the rest as in forward -> dx (N, T, F) |
    None, dh0, dc0 (N, H) | None, dw_ih, dw_hh, db_ih | None, db_hh | None"""
    n, t, f = x.shape
    hs = out.shape[2]
    dg = np.empty_like(gates)
    dh = np.zeros((n, hs), out.dtype) if dh_n is None else dh_n.copy()
    dc = np.zeros((n, hs), out.dtype) if dc_n is None else dc_n.copy()
    c0 = _zeros_like_state(c0, n, hs, out.dtype)
    for s in range(t - 1, -1, -1):
        _run(_lstm_step_backward, n * 4 * hs, dg, dh, dc, dout, gates, cells, c0, s)
        if s > 0 or dh0 is not None:
            np.matmul(dg[:, s], w_hh, out=dh)
    if dh0 is not None:
        dh0[:] = dh
    if dc0 is not None:
        dc0[:] = dc
    _weight_grads(dx, dw_ih, dw_hh, db_ih, db_hh, dg, dg, x, _shifted(out, h0), w_ih)


# ---- GRU (gates r, z, n): n = tanh(W_in x + b_in + r*(W_hn h + b_hn)), h' = (1-z)*n + z*h ----

@parallel_kernel
def _gru_step(out, h, gates, hn, gh, b_ih, b_hh, t):
    n, hs = h.shape
    # NOTE: loops from 0 over the gates' slices (see _lstm_step)
    for i in prange(n):
        one = type(h[i, 0])(1)
        g = gates[i, t]
        a = gh[i]
        hr = hn[i, t]
        for j in range(2 * hs):            # r, z
            v = g[j] + a[j]
            if b_ih is not None:
                v += b_ih[j]
            if b_hh is not None:
                v += b_hh[j]
            g[j] = apply_activation(v, _SIGMOID)
        gr, gz, gn, an = g[:hs], g[hs:2 * hs], g[2 * hs:], a[2 * hs:]
        for j in range(hs):                # W_hn h + b_hn
            v = an[j]
            if b_hh is not None:
                v += b_hh[2 * hs:][j]
            hr[j] = v
        for j in range(hs):                # n
            v = gn[j] + gr[j] * hr[j]
            if b_ih is not None:
                v += b_ih[2 * hs:][j]
            gn[j] = apply_activation(v, _TANH)
        o = out[i, t]
        hi = h[i]
        for j in range(hs):
            z = gz[j]
            o[j] = (one - z) * gn[j] + z * hi[j]
            hi[j] = o[j]


@parallel_kernel
def _gru_step_backward(dgx, dgh, dh, dhz, dout, gates, hn, out, h0, t):
    # dh: dG_{t+1}^h @ w_hh from the GEMM; dhz: dh_{t+1} * z_{t+1}, the direct path
    n, hs = dh.shape
    for i in prange(n):
        for j in range(hs):
            one = type(dh[i, j])(1)
            r = gates[i, t, j]
            z = gates[i, t, hs + j]
            nn = gates[i, t, 2 * hs + j]
            hp = h0[i, j] if t == 0 else out[i, t - 1, j]
            dht = dh[i, j] + dhz[i, j]
            if dout is not None:
                dht += dout[i, t, j]
            dan = dht * (one - z) * (one - nn * nn)
            daz = dht * (hp - nn) * z * (one - z)
            dar = dan * hn[i, t, j] * r * (one - r)
            dgx[i, t, j] = dar
            dgx[i, t, hs + j] = daz
            dgx[i, t, 2 * hs + j] = dan
            dgh[i, t, j] = dar
            dgh[i, t, hs + j] = daz
            dgh[i, t, 2 * hs + j] = dan * r
            dhz[i, j] = dht * z


def gru_forward(out, h_n, gates, hn, x, h0, w_ih, w_hh, b_ih, b_hh):
    """x (N, T, F), h0 (N, H) | None, w_ih (3H, F), w_hh (3H, H), b_ih, b_hh (3H,) | None
    -> out (N, T, H), h_n (N, H), gates (N, T, 3H) activated r, z, n,
    hn (N, T, H) = h_{t-1} @ W_hn.T + b_hn"""
    n, t, f = x.shape
    hs = h_n.shape[1]
    np.matmul(x.reshape(n * t, f), w_ih.T, out=gates.reshape(n * t, 3 * hs))
    _state(h_n, h0)
    gh = np.empty((n, 3 * hs), out.dtype)
    for s in range(t):
        np.matmul(h_n, w_hh.T, out=gh)
        _run(_gru_step, n * 3 * hs, out, h_n, gates, hn, gh, b_ih, b_hh, s)


def gru_backward(dx, dh0, dw_ih, dw_hh, db_ih, db_hh, dout, dh_n, x, h0, w_ih, w_hh, out,
                 gates, hn):
    """dout (N, T, H) | None, dh_n (N, H) | None, the rest as in forward -> dx (N, T, F) | None,
    dh0 (N, H) | None, dw_ih, dw_hh, db_ih | None, db_hh | None"""
    n, t, f = x.shape
    hs = out.shape[2]
    dgx = np.empty_like(gates)
    dgh = np.empty_like(gates)
    dh = np.zeros((n, hs), out.dtype) if dh_n is None else dh_n.copy()
    dhz = np.zeros((n, hs), out.dtype)
    h0z = _zeros_like_state(h0, n, hs, out.dtype)
    for s in range(t - 1, -1, -1):
        _run(_gru_step_backward, n * 3 * hs, dgx, dgh, dh, dhz, dout, gates, hn, out, h0z, s)
        if s > 0 or dh0 is not None:
            np.matmul(dgh[:, s], w_hh, out=dh)
    if dh0 is not None:
        np.add(dh, dhz, out=dh0)
    _weight_grads(dx, dw_ih, dw_hh, db_ih, db_hh, dgx, dgh, x, _shifted(out, h0), w_ih)
