"""CUDA recurrent kernels and layers against the NumPy reference and the CPU kernels:
{rnn,lstm,gru}_forward / _backward. Tiny shapes: the simulator runs every GPU thread as a
Python thread. (The CPU kernels are checked against finite differences; here the CUDA ones
are held to the reference and to the CPU within rounding.)"""
import numpy as np
import pytest

import fastnet
from fastnet.device import to_numpy
from fastnet.kernels import kernel
from fastnet.layers import LSTM
from fastnet.losses import CrossEntropyLoss
from fastnet.models import MODELS
from fastnet.optim import SGD
from tests import reference as ref

from ..cases import CELLS, RECURRENT_SHAPES, SEQUENCE_COPY_CASES, cases_for



def _make(rng, dtype, cell, n, t, f, h, bias, init):
    g = CELLS[cell][1]
    a = dict(x=rng.standard_normal((n, t, f)),
             h0=rng.standard_normal((n, h)) if init else None,
             c0=rng.standard_normal((n, h)) if init and cell == "lstm" else None,
             w_ih=rng.uniform(-1, 1, (g * h, f)) / np.sqrt(h),
             w_hh=rng.uniform(-1, 1, (g * h, h)) / np.sqrt(h),
             b_ih=rng.uniform(-1, 1, g * h) if bias else None,
             b_hh=rng.uniform(-1, 1, g * h) if bias else None,
             dout=rng.standard_normal((n, t, h)),
             dh_n=rng.standard_normal((n, h)), dc_n=rng.standard_normal((n, h)))
    return {k: None if v is None else v.astype(dtype) for k, v in a.items()}


def _run(device, cell, a, with_dout=True):
    """forward then backward on ``device``; -> dict of host arrays"""
    op, g, act = CELLS[cell]
    if device == "cuda":
        def put(v):
            return None if v is None else fastnet.cuda.to_device(v)
    else:
        def put(v):
            return v
    d = {k: put(v) for k, v in a.items()}
    x = d["x"]
    n, t, _ = a["x"].shape
    h = a["w_hh"].shape[1]
    dt = a["x"].dtype

    def new(shape):
        return put(np.full(shape, np.nan, dt))

    out, h_n, c_n = new((n, t, h)), new((n, h)), new((n, h))
    w = (d["w_ih"], d["w_hh"], d["b_ih"], d["b_hh"])
    if op == "rnn":
        kernel("rnn_forward", device)(out, h_n, x, d["h0"], *w, act)
        saved = (act,)
    elif op == "lstm":
        saved = (new((n, t, 4 * h)), new((n, t, h)))
        kernel("lstm_forward", device)(out, h_n, c_n, *saved, x, d["h0"], d["c0"], *w)
    else:
        saved = (new((n, t, 3 * h)), new((n, t, h)))
        kernel("gru_forward", device)(out, h_n, *saved, x, d["h0"], *w)
    init = [d["h0"]] + ([d["c0"]] if op == "lstm" else [])
    dinit = [None if s is None else new((n, h)) for s in init]
    dparams = [None if p is None else new(p.shape) for p in (a["w_ih"], a["w_hh"], a["b_ih"],
                                                             a["b_hh"])]
    douts = [d["dout"] if with_dout else None, d["dh_n"]] + ([d["dc_n"]] if op == "lstm" else [])
    dx = new(a["x"].shape)
    kernel(op + "_backward", device)(dx, *dinit, *dparams, *douts, x, *init, d["w_ih"],
                                     d["w_hh"], out, *saved)
    names = ["out", "h_n"] + (["c_n"] if op == "lstm" else []) + ["dx", "dh0"] + \
        (["dc0"] if op == "lstm" else []) + ["dw_ih", "dw_hh", "db_ih", "db_hh"]
    vals = [out, h_n] + ([c_n] if op == "lstm" else []) + [dx] + dinit + dparams
    return {k: None if v is None else to_numpy(v) for k, v in zip(names, vals)}


def _reference(cell, a, with_dout=True):
    op, _, act = CELLS[cell]
    w = (a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"])
    dout = a["dout"] if with_dout else np.zeros_like(a["dout"])
    if op == "rnn":
        out, h_n = ref.rnn_forward(a["x"], a["h0"], *w, act)
        g = ref.rnn_backward(dout, a["dh_n"], a["x"], a["h0"], *w, act)
        return dict(zip(["out", "h_n", "dx", "dh0", "dw_ih", "dw_hh", "db_ih", "db_hh"],
                        (out, h_n) + g))
    if op == "lstm":
        f = ref.lstm_forward(a["x"], a["h0"], a["c0"], *w)
        g = ref.lstm_backward(dout, a["dh_n"], a["dc_n"], a["x"], a["h0"], a["c0"], *w)
        return dict(zip(["out", "h_n", "c_n", "dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih",
                         "db_hh"], f + g))
    out, h_n = ref.gru_forward(a["x"], a["h0"], *w)
    g = ref.gru_backward(dout, a["dh_n"], a["x"], a["h0"], *w)
    return dict(zip(["out", "h_n", "dx", "dh0", "dw_ih", "dw_hh", "db_ih", "db_hh"],
                    (out, h_n) + g))


def _compare(got, want, dtype, scale):
    rtol, atol = (1e-4, 1e-5 * scale) if dtype == np.float32 else (1e-10, 1e-10)
    for k, w in want.items():
        if w is None:
            assert got[k] is None, k
            continue
        assert got[k].dtype == dtype, k
        np.testing.assert_allclose(got[k], w, rtol=rtol, atol=atol, err_msg=k)


@pytest.mark.parametrize("shape", cases_for(RECURRENT_SHAPES, "cuda"), ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("cell", list(CELLS))
def test_matches_reference_and_cpu(rng, dtype, cell, shape):
    """(N, T, F, H) with biases and initial states; float32 and float64."""
    a = _make(rng, dtype, cell, *shape, True, True)
    got = _run("cuda", cell, a)
    _compare(got, _reference(cell, a), dtype, scale=10.0)
    _compare(got, _run("cpu", cell, a), dtype, scale=10.0)


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_no_bias_no_state_no_output_gradient(rng, cell):
    """bias=None, h0 / c0 None, dout None, batch 1, one timestep, float64."""
    a = _make(rng, np.float64, cell, 1, 1, 3, 5, False, False)
    got = _run("cuda", cell, a, with_dout=False)
    _compare(got, _reference(cell, a, with_dout=False), np.float64, 1.0)


def test_lstm_model_training_step_matches_cpu(rng):
    """The 'lstm' model (hidden 4) on CUDA: two SGD steps agree with the CPU in float64."""
    fastnet.manual_seed(5)
    cpu = MODELS["lstm"](in_shape=(1, 3, 3), num_classes=3, hidden=4).to(np.float64)
    fastnet.manual_seed(5)
    gpu = MODELS["lstm"](in_shape=(1, 3, 3), num_classes=3, hidden=4).to(np.float64).to("cuda")
    x = rng.random((2, 1, 3, 3))
    y = rng.integers(0, 3, 2)
    for model in (cpu, gpu):
        opt, loss_fn = SGD(model.parameters(), lr=0.5, momentum=0.9), CrossEntropyLoss()
        for _ in range(2):
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            model.backward(loss_fn.backward(), input_grad=False)
            opt.step()
        model.final_loss = float(loss)
    assert gpu.final_loss == pytest.approx(cpu.final_loss, rel=1e-10)
    for (name, pc), pg in zip(cpu.named_parameters(), gpu.parameters()):
        np.testing.assert_allclose(to_numpy(pg.data), pc.data, rtol=1e-9, atol=1e-12,
                                   err_msg=name)


def test_layer_on_cuda_returns_device_arrays_and_state_grads(rng):
    layer = LSTM(3, 4, dtype=np.float64).to("cuda")
    x = rng.standard_normal((2, 2, 3))
    h0, c0 = rng.standard_normal((1, 2, 4)), rng.standard_normal((1, 2, 4))
    out, (h_n, c_n) = layer(x, (h0, c0))
    assert not isinstance(out, np.ndarray) and h_n.shape == (1, 2, 4)
    layer.backward(None, np.ones((1, 2, 4)), None)
    assert layer.grad_h0.shape == (1, 2, 4) and not isinstance(layer.grad_c0, np.ndarray)
    cpu = LSTM(3, 4, dtype=np.float64)
    cpu.load_state_dict(layer.state_dict())
    cpu(x, (h0, c0))
    cpu.backward(None, np.ones((1, 2, 4)), None)
    np.testing.assert_allclose(to_numpy(layer.grad_c0), cpu.grad_c0, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"LSTM.*expected input of shape \(N, \*, 3\)"):
        layer(np.zeros((2, 2, 4)))


@pytest.mark.parametrize("case", cases_for(SEQUENCE_COPY_CASES, "cuda"),
                         ids=lambda c: "-".join(map(str, c)))
def test_sequence_copy_matches_reference_and_cpu(rng, dtype, dev, host, case):
    """sequence_copy on the device: bitwise the reference's (and so the CPU's) copy."""
    n, t, co, cx, out_col, x_col, width, reverse, out_tf, x_tf = case
    x = rng.standard_normal((t, n, cx) if x_tf else (n, t, cx)).astype(dtype)
    out = rng.standard_normal((t, n, co) if out_tf else (n, t, co)).astype(dtype)
    want = ref.sequence_copy(out, x, out_col, x_col, width, reverse, out_tf, x_tf)
    d_out = dev(out)
    kernel("sequence_copy", "cuda")(d_out, dev(x), out_col, x_col, width, reverse, out_tf, x_tf)
    np.testing.assert_array_equal(host(d_out), want)
