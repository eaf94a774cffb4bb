"""Recurrent kernels (CUDA): single-layer, unidirectional RNN (tanh / relu), LSTM and GRU,
batch first, the same equations, arrays and signatures as ``fastnet/kernels/recurrent.py``.

Forward: one GEMM (``gemm.py``) projects every timestep's input into ``gates`` (``out``
for the RNN); per timestep one GEMM h @ w_hh.T into a (N, G*H) scratch and one fused
kernel (one thread per (n, j) of the state) that adds both biases, applies the gate
nonlinearities, updates the cell and writes h_t. ``h_n`` / ``c_n`` are the running
state, C-contiguous, so every GEMM operand is a plain C-contiguous matrix.
Backward: per timestep one fused kernel writes the pre-activation gate gradients into
dG[:, t] and a C-contiguous copy of the hidden side, which one GEMM turns into dh for
t-1. After the loop dw_ih, dw_hh and dx are one GEMM each over all timesteps; bias
gradients are column sums, one thread per column adding rows in order (deterministic,
no atomics). Every element is written by exactly one thread: no racy ``+=``.
Backward kernels overwrite their outputs; None as on the CPU.
``sequence_copy``: one thread per copied element, the CPU's geometry.
"""
from numba import cuda

from ..codes import ACTIVATIONS, SIGMOID, TANH
from ..recurrent import copy_geometry
from ._device import through_activation, apply_activation
from ._launch import empty, flat, launch_1d, scalar
from .gemm import gemm


# ---- shared -----------------------------------------------------------------------------

@cuda.jit
def _state_kernel(dst, a, b):
    # dst = a + b over (N, H), None meaning zeros
    n, hs = dst.shape
    for e in range(cuda.grid(1), n * hs, cuda.gridsize(1)):
        i = e // hs
        j = e - i * hs
        v = dst.dtype.type(0)
        if a is not None:
            v += a[i, j]
        if b is not None:
            v += b[i, j]
        dst[i, j] = v


@cuda.jit
def _shift_kernel(h_prev, out, h0):
    # h_prev[:, 0] = h0 (zeros for None), h_prev[:, t] = out[:, t - 1]
    n, steps, hs = out.shape
    for e in range(cuda.grid(1), n * steps * hs, cuda.gridsize(1)):
        i = e // (steps * hs)
        r = e - i * steps * hs
        s = r // hs
        j = r - s * hs
        if s > 0:
            h_prev[i, s, j] = out[i, s - 1, j]
        elif h0 is not None:
            h_prev[i, s, j] = h0[i, j]
        else:
            h_prev[i, s, j] = out.dtype.type(0)


@cuda.jit
def _column_sums_kernel(out, a):
    # NOTE: one thread per column adding its rows in order: deterministic; neighbouring
    # threads read neighbouring addresses (coalesced).
    m, c = a.shape
    for j in range(cuda.grid(1), c, cuda.gridsize(1)):
        s = a.dtype.type(0)
        for i in range(m):
            s += a[i, j]
        out[j] = s


def _state(dst, a, b=None):
    grid, threads = launch_1d(dst.size)
    _state_kernel[grid, threads](dst, a, b)


def _column_sums(out, a):
    grid, threads = launch_1d(a.shape[1])
    _column_sums_kernel[grid, threads](out, a)


def _weight_grads(dx, dw_ih, dw_hh, db_ih, db_hh, dgx, dgh, x, out, h0, w_ih):
    n, t, f = x.shape
    g = dgx.shape[2]
    gx2 = dgx.reshape(n * t, g)
    gh2 = dgh.reshape(n * t, g)
    if dw_ih is not None:  # (None: a frozen weight)
        gemm(flat(dw_ih), gx2, x.reshape(n * t, f), ta=True)                  # (G*H, F)
    if dw_hh is not None:
        h_prev = empty(out.shape, out.dtype)
        grid, threads = launch_1d(out.size)
        _shift_kernel[grid, threads](h_prev, out, h0)
        gemm(flat(dw_hh), gh2, h_prev.reshape(n * t, out.shape[2]), ta=True)  # (G*H, H)
    if db_ih is not None:
        _column_sums(db_ih, gx2)
    if db_hh is not None:
        _column_sums(db_hh, gh2)
    if dx is not None:
        gemm(flat(dx), gx2, w_ih)                                             # (N*T, F)


def _project(gates, x, w_ih):
    n, t, f = x.shape
    gemm(flat(gates), x.reshape(n * t, f), w_ih, tb=True)


# ---- RNN --------------------------------------------------------------------------------

@cuda.jit
def _rnn_step_kernel(out, h, gh, b_ih, b_hh, t, code, one):
    n, hs = h.shape
    for e in range(cuda.grid(1), n * hs, cuda.gridsize(1)):
        i = e // hs
        j = e - i * hs
        v = out[i, t, j] + gh[i, j]
        if b_ih is not None:
            v += b_ih[j]
        if b_hh is not None:
            v += b_hh[j]
        v = apply_activation(v, code, one)
        out[i, t, j] = v
        h[i, j] = v


@cuda.jit
def _rnn_step_backward_kernel(dg, dgt, dh, dout, out, t, code, one):
    n, hs = dh.shape
    for e in range(cuda.grid(1), n * hs, cuda.gridsize(1)):
        i = e // hs
        j = e - i * hs
        v = dh[i, j]
        if dout is not None:
            v += dout[i, t, j]
        v = through_activation(v, out[i, t, j], code, one)
        dg[i, t, j] = v
        dgt[i, j] = v


def rnn_forward(out, h_n, x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity):
    """x (N, T, F), h0 (N, H) | None, w_ih (H, F), w_hh (H, H), b_ih, b_hh (H,) | None
    -> out (N, T, H), h_n (N, H); nonlinearity "tanh" or "relu\""""
    n, t, _ = x.shape
    hs = h_n.shape[1]
    code, one = ACTIVATIONS[nonlinearity], scalar(1, x.dtype)
    _project(out, x, w_ih)
    _state(h_n, h0)
    gh = empty((n, hs), x.dtype)
    grid, threads = launch_1d(n * hs)
    for s in range(t):
        gemm(flat(gh), h_n, w_hh, tb=True)
        _rnn_step_kernel[grid, threads](out, h_n, gh, b_ih, b_hh, s, code, one)


def rnn_backward(dx, dh0, dw_ih, dw_hh, db_ih, db_hh, dout, dh_n, x, h0, w_ih, w_hh, out,
                 nonlinearity):
    """dout (N, T, H) | None, dh_n (N, H) | None, x, h0, w_ih, w_hh, out as in forward ->
    dx (N, T, F) | None, dh0 (N, H) | None, dw_ih | None, dw_hh | None, db_ih | None,
    db_hh | None"""
    n, t, _ = x.shape
    hs = out.shape[2]
    code, one = ACTIVATIONS[nonlinearity], scalar(1, x.dtype)
    dg = empty(out.shape, x.dtype)
    dgt = empty((n, hs), x.dtype)
    dh = empty((n, hs), x.dtype)
    _state(dh, dh_n)
    grid, threads = launch_1d(n * hs)
    for s in range(t - 1, -1, -1):
        _rnn_step_backward_kernel[grid, threads](dg, dgt, dh, dout, out, s, code, one)
        if s > 0 or dh0 is not None:
            gemm(flat(dh), dgt, w_hh)
    if dh0 is not None:
        _state(dh0, dh)
    _weight_grads(dx, dw_ih, dw_hh, db_ih, db_hh, dg, dg, x, out, h0, w_ih)


# ---- LSTM -------------------------------------------------------------------------------

@cuda.jit
def _lstm_step_kernel(out, h, c, cells, gates, gh, b_ih, b_hh, t, one):
    n, hs = h.shape
    for e in range(cuda.grid(1), n * hs, cuda.gridsize(1)):
        i = e // hs
        j = e - i * hs
        a_i = gates[i, t, j] + gh[i, j]
        a_f = gates[i, t, hs + j] + gh[i, hs + j]
        a_g = gates[i, t, 2 * hs + j] + gh[i, 2 * hs + j]
        a_o = gates[i, t, 3 * hs + j] + gh[i, 3 * hs + j]
        if b_ih is not None:
            a_i += b_ih[j]
            a_f += b_ih[hs + j]
            a_g += b_ih[2 * hs + j]
            a_o += b_ih[3 * hs + j]
        if b_hh is not None:
            a_i += b_hh[j]
            a_f += b_hh[hs + j]
            a_g += b_hh[2 * hs + j]
            a_o += b_hh[3 * hs + j]
        ig = apply_activation(a_i, SIGMOID, one)
        fg = apply_activation(a_f, SIGMOID, one)
        gg = apply_activation(a_g, TANH, one)
        og = apply_activation(a_o, SIGMOID, one)
        cn = fg * c[i, j] + ig * gg
        hv = og * apply_activation(cn, TANH, one)
        gates[i, t, j] = ig
        gates[i, t, hs + j] = fg
        gates[i, t, 2 * hs + j] = gg
        gates[i, t, 3 * hs + j] = og
        c[i, j] = cn
        cells[i, t, j] = cn
        h[i, j] = hv
        out[i, t, j] = hv


@cuda.jit
def _lstm_step_backward_kernel(dg, dgt, dh, dc, dout, gates, cells, c0, t, one):
    n, hs = dh.shape
    for e in range(cuda.grid(1), n * hs, cuda.gridsize(1)):
        i = e // hs
        j = e - i * hs
        ig = gates[i, t, j]
        fg = gates[i, t, hs + j]
        gg = gates[i, t, 2 * hs + j]
        og = gates[i, t, 3 * hs + j]
        cp = one - one
        if t > 0:
            cp = cells[i, t - 1, j]
        elif c0 is not None:
            cp = c0[i, j]
        tc = apply_activation(cells[i, t, j], TANH, one)
        dht = dh[i, j]
        if dout is not None:
            dht += dout[i, t, j]
        dct = dc[i, j] + dht * og * (one - tc * tc)
        v_i = dct * gg * ig * (one - ig)
        v_f = dct * cp * fg * (one - fg)
        v_g = dct * ig * (one - gg * gg)
        v_o = dht * tc * og * (one - og)
        dg[i, t, j] = v_i
        dg[i, t, hs + j] = v_f
        dg[i, t, 2 * hs + j] = v_g
        dg[i, t, 3 * hs + j] = v_o
        dgt[i, j] = v_i
        dgt[i, hs + j] = v_f
        dgt[i, 2 * hs + j] = v_g
        dgt[i, 3 * hs + j] = v_o
        dc[i, j] = dct * fg


def lstm_forward(out, h_n, c_n, gates, cells, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    """x (N, T, F), h0, c0 (N, H) | None, w_ih (4H, F), w_hh (4H, H), b_ih, b_hh (4H,) |
    None -> out (N, T, H), h_n, c_n (N, H), gates (N, T, 4H) activated i, f, g, o,
    cells (N, T, H) c_t"""
    n, t, _ = x.shape
    hs = h_n.shape[1]
    one = scalar(1, x.dtype)
    _project(gates, x, w_ih)
    _state(h_n, h0)
    _state(c_n, c0)
    gh = empty((n, 4 * hs), x.dtype)
    grid, threads = launch_1d(n * hs)
    for s in range(t):
        gemm(flat(gh), h_n, w_hh, tb=True)
        _lstm_step_kernel[grid, threads](out, h_n, c_n, cells, gates, gh, b_ih, b_hh, s, one)


def lstm_backward(dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dout, dh_n, dc_n, x, h0, c0,
                  w_ih, w_hh, out, gates, cells):
    """dout (N, T, H) | None, dh_n, dc_n (N, H) | None, the rest as in forward -> dx (N, T, F) |
    None, dh0, dc0 (N, H) | None, dw_ih | None, dw_hh | None, db_ih | None, db_hh | None"""
    n, t, _ = x.shape
    hs = out.shape[2]
    one = scalar(1, x.dtype)
    dg = empty(gates.shape, x.dtype)
    dgt = empty((n, 4 * hs), x.dtype)
    dh = empty((n, hs), x.dtype)
    dc = empty((n, hs), x.dtype)
    _state(dh, dh_n)
    _state(dc, dc_n)
    grid, threads = launch_1d(n * hs)
    for s in range(t - 1, -1, -1):
        _lstm_step_backward_kernel[grid, threads](dg, dgt, dh, dc, dout, gates, cells, c0, s,
                                                  one)
        if s > 0 or dh0 is not None:
            gemm(flat(dh), dgt, w_hh)
    if dh0 is not None:
        _state(dh0, dh)
    if dc0 is not None:
        _state(dc0, dc)
    _weight_grads(dx, dw_ih, dw_hh, db_ih, db_hh, dg, dg, x, out, h0, w_ih)


# ---- GRU --------------------------------------------------------------------------------

@cuda.jit
def _gru_step_kernel(out, h, gates, hn, gh, b_ih, b_hh, t, one):
    n, hs = h.shape
    for e in range(cuda.grid(1), n * hs, cuda.gridsize(1)):
        i = e // hs
        j = e - i * hs
        a_r = gates[i, t, j] + gh[i, j]
        a_z = gates[i, t, hs + j] + gh[i, hs + j]
        a_n = gates[i, t, 2 * hs + j]
        ghn = gh[i, 2 * hs + j]
        if b_ih is not None:
            a_r += b_ih[j]
            a_z += b_ih[hs + j]
            a_n += b_ih[2 * hs + j]
        if b_hh is not None:
            a_r += b_hh[j]
            a_z += b_hh[hs + j]
            ghn += b_hh[2 * hs + j]
        r = apply_activation(a_r, SIGMOID, one)
        z = apply_activation(a_z, SIGMOID, one)
        nv = apply_activation(a_n + r * ghn, TANH, one)
        hv = (one - z) * nv + z * h[i, j]
        gates[i, t, j] = r
        gates[i, t, hs + j] = z
        gates[i, t, 2 * hs + j] = nv
        hn[i, t, j] = ghn
        h[i, j] = hv
        out[i, t, j] = hv


@cuda.jit
def _gru_step_backward_kernel(dgx, dgh, dght, dh, dhz, dout, gates, hn, out, h0, t, one):
    # dh: dG_{t+1}^h @ w_hh from the GEMM; dhz: dh_{t+1} * z_{t+1}, the direct path
    n, hs = dh.shape
    for e in range(cuda.grid(1), n * hs, cuda.gridsize(1)):
        i = e // hs
        j = e - i * hs
        r = gates[i, t, j]
        z = gates[i, t, hs + j]
        nv = gates[i, t, 2 * hs + j]
        hp = one - one
        if t > 0:
            hp = out[i, t - 1, j]
        elif h0 is not None:
            hp = h0[i, j]
        dht = dh[i, j] + dhz[i, j]
        if dout is not None:
            dht += dout[i, t, j]
        dan = dht * (one - z) * (one - nv * nv)
        daz = dht * (hp - nv) * z * (one - z)
        dar = dan * hn[i, t, j] * r * (one - r)
        dgx[i, t, j] = dar
        dgx[i, t, hs + j] = daz
        dgx[i, t, 2 * hs + j] = dan
        dgh[i, t, j] = dar
        dgh[i, t, hs + j] = daz
        dgh[i, t, 2 * hs + j] = dan * r
        dght[i, j] = dar
        dght[i, hs + j] = daz
        dght[i, 2 * hs + j] = dan * r
        dhz[i, j] = dht * z


def gru_forward(out, h_n, gates, hn, x, h0, w_ih, w_hh, b_ih, b_hh):
    """x (N, T, F), h0 (N, H) | None, w_ih (3H, F), w_hh (3H, H), b_ih, b_hh (3H,) | None
    -> out (N, T, H), h_n (N, H), gates (N, T, 3H) activated r, z, n,
    hn (N, T, H) = h_{t-1} @ W_hn.T + b_hn"""
    n, t, _ = x.shape
    hs = h_n.shape[1]
    one = scalar(1, x.dtype)
    _project(gates, x, w_ih)
    _state(h_n, h0)
    gh = empty((n, 3 * hs), x.dtype)
    grid, threads = launch_1d(n * hs)
    for s in range(t):
        gemm(flat(gh), h_n, w_hh, tb=True)
        _gru_step_kernel[grid, threads](out, h_n, gates, hn, gh, b_ih, b_hh, s, one)


def gru_backward(dx, dh0, dw_ih, dw_hh, db_ih, db_hh, dout, dh_n, x, h0, w_ih, w_hh, out,
                 gates, hn):
    """dout (N, T, H) | None, dh_n (N, H) | None, the rest as in forward -> dx (N, T, F) | None,
    dh0 (N, H) | None, dw_ih | None, dw_hh | None, db_ih | None, db_hh | None"""
    n, t, _ = x.shape
    hs = out.shape[2]
    one = scalar(1, x.dtype)
    dgx = empty(gates.shape, x.dtype)
    dgh = empty(gates.shape, x.dtype)
    dght = empty((n, 3 * hs), x.dtype)
    dh = empty((n, hs), x.dtype)
    dhz = empty((n, hs), x.dtype)
    _state(dh, dh_n)
    _state(dhz, None)
    grid, threads = launch_1d(n * hs)
    for s in range(t - 1, -1, -1):
        _gru_step_backward_kernel[grid, threads](dgx, dgh, dght, dh, dhz, dout, gates, hn, out,
                                                 h0, s, one)
        if s > 0 or dh0 is not None:
            gemm(flat(dh), dght, w_hh)
    if dh0 is not None:
        _state(dh0, dh, dhz)
    _weight_grads(dx, dw_ih, dw_hh, db_ih, db_hh, dgx, dgh, x, out, h0, w_ih)


# ---- sequence copies (stacked / bidirectional layers) -------------------------------------

@cuda.jit
def _sequence_copy_kernel(out, x, n, t, os_n, os_t, o0, xs_n, xs_t, x0, width):
    for e in range(cuda.grid(1), n * t * width, cuda.gridsize(1)):
        r = e // width
        j = e - r * width
        i = r // t
        k = r - i * t
        out[o0 + i * os_n + k * os_t + j] = x[x0 + i * xs_n + k * xs_t + j]


def sequence_copy(out, x, out_col, x_col, width, reverse, out_time_first, x_time_first):
    """x (N, T, CX), or (T, N, CX) with x_time_first -> out (N, T, CO), or (T, N, CO) with
    out_time_first: out[n, t, out_col:out_col+width] = x[n, T-1-t if reverse else t,
    x_col:x_col+width]; the rest of out is left as it was"""
    n, t, *geo = copy_geometry(out, x, out_col, x_col, reverse, out_time_first, x_time_first)
    grid, threads = launch_1d(n * t * width)
    _sequence_copy_kernel[grid, threads](flat(out), flat(x), n, t, *geo, width)
