"""The benchmark cases: one per (op, shape, direction), shared by ``benchmarks/``
(pytest-benchmark) and ``python -m fastnet bench``.

A case builds the same maths three or four ways (``case.build(impl)``): ``"fastnet"``
(the public layer / loss / optimizer API, fastnet_impl.py), ``"numpy"`` (as a NumPy user
would write it, numpy_twins.py), ``"torch"`` (PyTorch CPU with autograd, or in eval mode
under ``torch.inference_mode()`` for inference, torch_twins.py) and, for inference and the
forward cases of layers that compute the same in eval mode (``case.ort``),
``"onnxruntime"`` (an ONNX graph of the same parameters, onnx_twins.py), on the same
seeded inputs and weights, so that the twins can be checked against fastnet before
anything is timed and the timings read as ratios. ``case.impls`` lists a case's.

Layers and models are written once as a *spec*, a list of tuples each backend turns
into its own layers:

    ("dense", in, out, activation)   activation None or "relu" (fastnet fuses it)
    ("conv", in, out, k, stride, padding, activation[, bias[, groups[, dilation]]])
                                     bias True, groups and dilation 1 unless given
    ("maxpool", k) / ("avgpool", k)  window k, stride k, no padding
    ("lppool", p, k)                 power-average pooling of norm p, window k, stride k
    ("global_avgpool",)              mean over H and W: (N, C, H, W) -> (N, C)
    ("batchnorm1d", c) / ("batchnorm2d", c)  PyTorch's eps and momentum (training mode
                                     in a training step, running statistics in eval mode)
    ("layernorm", d)                 layer norm over the last axis of size d (PyTorch's eps)
    ("residual", block, shortcut)    block(x) + shortcut(x), both specs; shortcut None: + x
    ("relu",) ("sigmoid",) ("tanh",) ("hardsigmoid",) ("softmax",) ("flatten",)

Parameters are a dict with PyTorch's state_dict keys ("weight", or "0.weight" for a
model of several layers, "3.block.0.weight" / "3.shortcut.1.bias" inside a residual
entry; a batch norm's buffers too), PyTorch's default initialisation except for a batch
norm's weight and bias (random, not ones and zeros, so that the check tells the two
apart).

The same cases run on a GPU (``cuda_cases``, ``case.build(impl, device="cuda")``): fastnet
against PyTorch, the inputs copied to the device once, every timed call and setup ending
with a device synchronisation.
"""
from __future__ import annotations

import importlib
import importlib.util
import math
import zlib
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import numpy as np

IMPLS = ("fastnet", "numpy", "torch", "onnxruntime")
# the twins that run in a process of their own (worker.py), each imported first there
WORKER_IMPLS = ("torch", "onnxruntime")
_BACKENDS = {"fastnet": "fastnet.bench.fastnet_impl", "numpy": "fastnet.bench.numpy_twins",
             "torch": "fastnet.bench.torch_twins", "onnxruntime": "fastnet.bench.onnx_twins"}
# the import name, and the distribution to install, of each optional twin
_OPTIONAL = {"torch": ("torch", "torch"), "onnxruntime": ("onnxruntime", "fastnet[bench]")}
BATCH = 128
SGD_LR, MOMENTUM, ADAM_LR = 0.01, 0.9, 1e-3
F32 = 4  # bytes per element
# NOTE: the twins agree when max|got - fastnet| <= tolerance * max|fastnet| for every
# output: float32 sums taken in another order (BLAS blocking, pairwise sums) differ by
# far less than TOLERANCE; a wrong formula, layout or tie rule differs by O(1). A whole
# training step gets STEP_TOLERANCE: a pre-activation within rounding of 0 can land on
# the other side of a ReLU in another implementation, which switches its gradient on or
# off (PyTorch's VGG-small step differs from fastnet's and NumPy's by up to 5e-3 so,
# and all three by as much from a float64 run).
TOLERANCE, STEP_TOLERANCE = 1e-4, 2e-2


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def available(impl: str) -> bool:
    """Whether the twin ``impl`` can run here (fastnet and NumPy always can)."""
    if impl == "onnxruntime":
        return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))
    return impl not in _OPTIONAL or importlib.util.find_spec(_OPTIONAL[impl][0]) is not None


def install_hint(impl: str) -> str:
    """What to install for the twin ``impl``."""
    return _OPTIONAL[impl][1]


@dataclass
class Bench:
    """One implementation of one case, ready to time: ``setup()`` (untimed; e.g. the
    forward pass before a backward, since a layer keeps its forward state for one
    backward) then ``run()`` (timed). ``outputs(run())`` names the arrays it computed."""

    run: Callable[[], Any]
    outputs: Callable[[Any], dict]
    setup: Callable[[], None] | None = None  # returns None (pytest-benchmark's rule)
    # what once() runs instead of run(), where the check against fastnet needs other
    # inputs than the timed code: a dropout twin draws its own mask when timed (as its
    # users' code does) and applies fastnet's mask for the check
    check: Callable[[], Any] | None = None

    def once(self) -> dict:
        """Set up and run once (this is the warm-up call too); copies of the outputs."""
        if self.setup is not None:
            self.setup()
        result = (self.check or self.run)()
        return {k: np.array(v) for k, v in self.outputs(result).items()}

    def synchronized(self, sync: Callable[[], None]) -> "Bench":
        """This bench with ``sync()`` (a device synchronisation) at the end of ``run``,
        ``setup`` and ``check``: a GPU's queued work is then timed where it was queued."""
        def after(fn):
            if fn is None:
                return None

            def call():
                result = fn()
                sync()
                return result
            return call

        setup = None
        if self.setup is not None:
            def setup():
                self.setup()
                sync()

        return Bench(run=after(self.run), outputs=self.outputs, setup=setup,
                     check=after(self.check))


@dataclass(frozen=True)
class Case:
    family: str        # a benchmarks/ file: dense, conv, pool, activation, loss, optim, train
    op: str
    shape: str
    direction: str     # forward | backward | fwd+bwd (fused loss) | step | inference
    kind: str          # the builder each backend module defines
    inputs: Callable[[], dict]  # the builder's keyword arguments (seeded, built on demand)
    flops: int = 0     # compute-bound cases: reported as GFLOP/s
    nbytes: int = 0    # memory-bound cases: tensors read + written, reported as GB/s
    samples: int = 0   # batch size, for samples/s
    tolerance: float = TOLERANCE  # for the check of the twins against fastnet
    ort: bool = False  # an ONNX Runtime twin: inference, or a forward that eval mode computes

    @property
    def impls(self) -> tuple:
        """The implementations of this case (on the CPU): fastnet first."""
        return IMPLS if self.ort else tuple(i for i in IMPLS if i != "onnxruntime")

    @property
    def label(self) -> str:
        return f"{self.op} {self.shape}"

    @property
    def name(self) -> str:
        return f"{self.label} {self.direction}"

    def build(self, impl: str, device: str = "cpu") -> Bench:
        """The bench of implementation ``impl`` ("fastnet", "numpy", "torch") on ``device``
        ("cpu", or "cuda" for fastnet and torch: synchronised, see Bench.synchronized)."""
        if device != "cpu" and impl in ("numpy", "onnxruntime"):
            raise ValueError(f"the {impl} twins run on the CPU only")
        if impl not in self.impls:
            raise ValueError(f"{self.name} has no {impl} twin")
        builder = getattr(importlib.import_module(_BACKENDS[impl]), self.kind)
        if device == "cpu":
            return builder(**self.inputs())
        return builder(**self.inputs(), device=device).synchronized(_synchronize(impl))

    def throughput(self, seconds: float) -> dict:
        """GFLOP/s or GB/s, and samples/s, at ``seconds`` per call."""
        out = {}
        if self.flops:
            out["GFLOP/s"] = self.flops / seconds / 1e9
        if self.nbytes:
            out["GB/s"] = self.nbytes / seconds / 1e9
        if self.samples:
            out["samples/s"] = self.samples / seconds
        return out


def _synchronize(impl):
    if impl == "torch":
        import torch

        return torch.cuda.synchronize
    from fastnet import cuda

    return cuda.synchronize


def compare(got: dict, ref: dict, tolerance: float = TOLERANCE) -> str | None:
    """None when ``got`` has ``ref``'s outputs with the same shapes and values within
    tolerance, else what differs."""
    if sorted(got) != sorted(ref):
        return f"outputs {sorted(got)}, expected {sorted(ref)}"
    for key, r in ref.items():
        g = got[key]
        if g.shape != r.shape:
            return f"{key}: shape {g.shape}, expected {r.shape}"
        scale = float(np.max(np.abs(r), initial=0.0)) or 1.0
        err = float(np.max(np.abs(g.astype(np.float64) - r), initial=0.0)) / scale
        if not err <= tolerance:  # NaN fails too
            return f"{key}: max |difference| is {err:.1e} of max |value| (tolerance {tolerance:.0e})"
    return None


# ---- shapes, work, parameters -----------------------------------------------------------

def trace(spec, shape):
    """[(output shape, multiply-adds)] of each layer of ``spec`` on an input of ``shape``
    (a residual entry: its block's output, the multiply-adds of both branches)."""
    out = []
    for s in spec:
        kind, n = s[0], shape[0]
        macs = 0
        if kind == "dense":
            macs, shape = n * s[1] * s[2], (n, s[2])
        elif kind == "conv":
            cin, cout, k, stride, pad = s[1:6]
            span = conv_dilation(s) * (k - 1) + 1
            oh, ow = ((d + 2 * pad - span) // stride + 1 for d in shape[2:])
            macs = n * cout * oh * ow * cin // conv_groups(s) * k * k
            shape = (n, cout, oh, ow)
        elif kind in ("maxpool", "avgpool"):
            shape = shape[:2] + tuple(d // s[1] for d in shape[2:])
        elif kind == "lppool":
            shape = shape[:2] + tuple(d // s[2] for d in shape[2:])
        elif kind == "global_avgpool":
            shape = shape[:2]
        elif kind == "flatten":
            shape = (n, math.prod(shape[1:]))
        elif kind == "residual":
            branches = [trace(b, shape) for b in s[1:] if b is not None]
            macs = sum(m for layers in branches for _, m in layers)
            shape = branches[0][-1][0]
        out.append((shape, macs))
    return out


def conv_bias(s) -> bool:
    """Whether the conv spec entry ``s`` has a bias."""
    return len(s) < 8 or s[7]


def conv_groups(s) -> int:
    """The groups of the conv spec entry ``s`` (1 unless given)."""
    return s[8] if len(s) > 8 else 1


def conv_dilation(s) -> int:
    """The dilation of the conv spec entry ``s`` (1 unless given)."""
    return s[9] if len(s) > 9 else 1


def key_prefix(spec, i, outer=""):
    """The state_dict prefix of entry ``i`` of ``spec`` inside ``outer``: "i." in a model
    of several layers, none for a single layer (as Sequential and a bare layer name them)."""
    return outer + (f"{i}." if len(spec) > 1 else "")


def _rng(label):
    return np.random.default_rng(zlib.crc32(label.encode()))


def _normal(rng, shape):
    return rng.standard_normal(shape, dtype=np.float32)


def _param_shapes(spec, outer=""):
    """(state_dict key, shape, init) of every parameter and buffer in ``spec``; init is
    a fan-in (PyTorch's U(-1/sqrt(fan_in), 1/sqrt(fan_in))) or the name of a fill."""
    for i, s in enumerate(spec):
        if s[0] == "dense":
            entries = [("weight", (s[2], s[1]), s[1]), ("bias", (s[2],), s[1])]
        elif s[0] == "conv":
            cg = s[1] // conv_groups(s)
            fan_in = cg * s[3] * s[3]
            entries = [("weight", (s[2], cg, s[3], s[3]), fan_in)]
            entries += [("bias", (s[2],), fan_in)] if conv_bias(s) else []
        elif s[0] in ("batchnorm1d", "batchnorm2d"):
            c = s[1]
            entries = [("weight", (c,), "around one"), ("bias", (c,), "around zero"),
                       ("running_mean", (c,), "zeros"), ("running_var", (c,), "ones"),
                       ("num_batches_tracked", (), "count")]
        elif s[0] == "layernorm":
            entries = [("weight", (s[1],), "around one"), ("bias", (s[1],), "around zero")]
        elif s[0] == "residual":
            for name, branch in zip(("block", "shortcut"), s[1:]):
                if branch is not None:
                    yield from _param_shapes(branch, f"{key_prefix(spec, i, outer)}{name}.")
            continue
        else:
            continue
        for key, shape, init in entries:
            yield key_prefix(spec, i, outer) + key, shape, init


def _init(rng, shape, init):
    if init == "zeros":
        return np.zeros(shape, np.float32)
    if init == "ones":
        return np.ones(shape, np.float32)
    if init == "count":
        return np.array(0, np.int64)
    if init == "around one":
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if init == "around zero":
        return rng.uniform(-0.5, 0.5, shape).astype(np.float32)
    return rng.uniform(-1, 1, shape).astype(np.float32) / np.float32(math.sqrt(init))


def init_params(spec, rng):
    """PyTorch's default init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), with its state_dict keys
    (a batch norm: weight U(0.5, 1.5), bias U(-0.5, 0.5), PyTorch's initial buffers)."""
    return {key: _init(rng, shape, init) for key, shape, init in _param_shapes(spec)}


def _n_params(spec):
    """The number of trainable values (buffers left out)."""
    return sum(math.prod(shape) for key, shape, init in _param_shapes(spec)
               if key.rsplit(".", 1)[-1] in ("weight", "bias"))


def _dims(shape):
    return "x".join(map(str, shape))


# ---- the cases --------------------------------------------------------------------------

# the layer families whose forward computes in training mode what eval mode computes: their
# forward cases get an ONNX Runtime twin (not batch norm, dropout or the LSTM; layer norm
# is asked for by its case)
ORT_FAMILIES = ("dense", "conv", "pool", "activation")


def _layer_pair(family, op, shape, spec, x_shape, compute_bound, ort=None):
    """The forward and the backward case of one layer (a spec of one entry); ``ort``: an
    ONNX Runtime twin of the forward (by default for the ORT_FAMILIES)."""
    ort = family in ORT_FAMILIES if ort is None else ort
    label = f"{op} {shape}"
    y_shape, macs = trace(spec, x_shape)[-1]
    x_size, y_size = math.prod(x_shape), math.prod(y_shape)
    # memory-bound ops: forward reads x, writes y; backward reads dy (and y where the
    # derivative needs it: activations, softmax; x for a batch norm), writes dx
    saved = {"activation": y_size, "norm": x_size}.get(family, 0)
    work = [dict(flops=2 * macs), dict(flops=4 * macs)] if compute_bound else \
        [dict(nbytes=F32 * (x_size + y_size)), dict(nbytes=F32 * (y_size + saved + x_size))]

    def inputs(backward):
        rng = _rng(label)
        kw = dict(spec=spec, params=init_params(spec, rng), x=_normal(rng, x_shape))
        if backward:
            kw["dout"] = _normal(rng, y_shape)
        return kw

    return [Case(family, op, shape, direction, "layer_" + direction, partial(inputs, backward),
                 samples=x_shape[0], ort=not backward and ort, **w)
            for direction, backward, w in (("forward", False, work[0]), ("backward", True, work[1]))]


def _mlp(size):
    return [("flatten",), ("dense", size, 256, "relu"), ("dense", 256, 256, "relu"),
            ("dense", 256, 10, None)]


def _lenet(flat):
    return [("conv", 1, 6, 5, 1, 2, "relu"), ("maxpool", 2), ("conv", 6, 16, 5, 1, 0, "relu"),
            ("maxpool", 2), ("flatten",), ("dense", flat, 120, "relu"),
            ("dense", 120, 84, "relu"), ("dense", 84, 10, None)]


def _vgg(c1, c2, flat, hidden):
    return [("conv", 3, c1, 3, 1, 1, "relu"), ("conv", c1, c1, 3, 1, 1, "relu"), ("maxpool", 2),
            ("conv", c1, c2, 3, 1, 1, "relu"), ("conv", c2, c2, 3, 1, 1, "relu"), ("maxpool", 2),
            ("flatten",), ("dense", flat, hidden, "relu"), ("dense", hidden, 10, None)]


def _resnet(c, widths):
    """fastnet.models.resnet_small: a conv3x3-BN-ReLU stem, three stages of one basic
    block each (conv3x3-BN-ReLU-conv3x3-BN plus the input, or a 1x1 conv + BN projection
    of it where the width or the stride changes; ReLU after the sum), global average
    pooling, Dense(10). No conv has a bias (the batch norm after it has one)."""
    def conv(cin, cout, k, stride):
        return ("conv", cin, cout, k, stride, k // 2, None, False)

    def stage(cin, cout, stride):
        block = [conv(cin, cout, 3, stride), ("batchnorm2d", cout), ("relu",),
                 conv(cout, cout, 3, 1), ("batchnorm2d", cout)]
        shortcut = None if stride == 1 and cin == cout else \
            [conv(cin, cout, 1, stride), ("batchnorm2d", cout)]
        return [("residual", block, shortcut), ("relu",)]

    w1, w2, w3 = widths
    return [conv(c, w1, 3, 1), ("batchnorm2d", w1), ("relu",), *stage(w1, w1, 1),
            *stage(w1, w2, 2), *stage(w2, w3, 2), ("global_avgpool",), ("dense", w3, 10, None)]


def _train_inputs(label, spec, x_shape, classes=10):
    rng = _rng(label)
    return dict(spec=spec, params=init_params(spec, rng), x=_normal(rng, x_shape),
                labels=rng.integers(0, classes, x_shape[0]), lr=SGD_LR)


def _train_case(name, shape, spec, x_shape):
    layers = trace(spec, x_shape)
    first = next(i for i, s in enumerate(spec) if s[0] in ("dense", "conv"))
    # forward, weight gradient, and input gradient except for the first layer with weights
    flops = sum(2 * macs * (2 if i == first else 3) for i, (_, macs) in enumerate(layers))
    return Case("train", name, shape, "step", "train_step",
                partial(_train_inputs, f"{name} {shape}", spec, x_shape),
                flops=flops, samples=x_shape[0], tolerance=STEP_TOLERANCE)


def _inference_inputs(label, spec, x_shape):
    rng = _rng(label)
    return dict(spec=spec, params=init_params(spec, rng), x=_normal(rng, x_shape))


def _inference_case(name, shape, spec, x_shape):
    """The forward of a whole model in eval mode, as a program that serves it runs it:
    fastnet's ``model.eval()``, PyTorch's eval mode under ``torch.inference_mode()``, and
    ONNX Runtime."""
    flops = sum(2 * macs for _, macs in trace(spec, x_shape))
    return Case("inference", name, shape, "inference", "inference",
                partial(_inference_inputs, f"{name} {shape}", spec, x_shape),
                flops=flops, samples=x_shape[0], ort=True)


def _ce_inputs(label, rows, classes):
    rng = _rng(label)
    return dict(logits=_normal(rng, (rows, classes)), labels=rng.integers(0, classes, rows))


def _ce_options_inputs(label, rows, classes):
    rng = _rng(label)
    labels = rng.integers(0, classes, rows)
    labels[::7] = -100  # ignored
    return dict(logits=_normal(rng, (rows, classes)), labels=labels,
                weight=(rng.random(classes) + 0.5).astype(np.float32), label_smoothing=0.1)


def _bce_inputs(label, rows, classes):
    rng = _rng(label)
    return dict(logits=_normal(rng, (rows, classes)),
                target=rng.random((rows, classes)).astype(np.float32),
                pos_weight=(rng.random(classes) * 2).astype(np.float32))


def _optim_inputs(label, spec, lr):
    rng = _rng(label)
    params = init_params(spec, rng)
    return dict(params=params, grads={k: _normal(rng, v.shape) for k, v in params.items()}, lr=lr)


def _clip_inputs(label, spec):
    """Gradients of the vgg's parameters and a max_norm of half their total norm: every
    call scales them (the first by about 1/2, later ones by max_norm / (max_norm + 1e-6))."""
    rng = _rng(label)
    grads = {k: _normal(rng, v.shape) for k, v in init_params(spec, rng).items()}
    total = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads.values()))
    return dict(grads=grads, max_norm=total / 2)


# LSTM forward / backward: batch 64, 32 timesteps, 128 input features, 128 hidden units
LSTM_SHAPE = (64, 32, 128, 128)


def _lstm_inputs(label, n, t, f, h, backward):
    """PyTorch's LSTM parameters (keys, layouts, U(-1/sqrt(H), 1/sqrt(H))), x (N, T, F) and,
    for backward, the gradient of the output sequence (N, T, H)."""
    rng = _rng(label)
    bound = np.float32(1 / math.sqrt(h))
    shapes = {"weight_ih_l0": (4 * h, f), "weight_hh_l0": (4 * h, h), "bias_ih_l0": (4 * h,),
              "bias_hh_l0": (4 * h,)}
    params = {k: rng.uniform(-1, 1, s).astype(np.float32) * bound for k, s in shapes.items()}
    kw = dict(params=params, x=_normal(rng, (n, t, f)))
    if backward:
        kw["dout"] = _normal(rng, (n, t, h))
    return kw


def _lstm_pair(n, t, f, h):
    """An LSTM layer (one layer, batch first), forward and backward (through time, into the
    input and the four parameters)."""
    shape = f"{n}x{t}x{f}->{h}"
    macs = n * t * 4 * h * (f + h)  # input projection + recurrent GEMMs
    return [Case("recurrent", "lstm", shape, direction, "lstm_" + direction,
                 partial(_lstm_inputs, f"lstm {shape}", n, t, f, h, direction == "backward"),
                 flops=2 * macs * k, samples=n)
            for direction, k in (("forward", 1), ("backward", 2))]


# a bidirectional GRU layer (batch first) forward / backward, at the LSTM's shape
GRU_SHAPE = LSTM_SHAPE


def _recurrent_params(rng, gates, f, h, suffixes=("",), layers=1, prefix=""):
    """PyTorch's parameters of a recurrent layer (keys, layouts, U(-1/sqrt(H), 1/sqrt(H)))."""
    bound = np.float32(1 / math.sqrt(h))
    params = {}
    for k in range(layers):
        fk = f if k == 0 else h * len(suffixes)
        for sfx in suffixes:
            for name, shape in (("weight_ih", (gates * h, fk)), ("weight_hh", (gates * h, h)),
                                ("bias_ih", (gates * h,)), ("bias_hh", (gates * h,))):
                params[f"{prefix}{name}_l{k}{sfx}"] = \
                    rng.uniform(-1, 1, shape).astype(np.float32) * bound
    return params


def _gru_inputs(label, n, t, f, h, backward):
    """A bidirectional GRU's parameters, x (N, T, F) and, for backward, d out (N, T, 2H)."""
    rng = _rng(label)
    kw = dict(params=_recurrent_params(rng, 3, f, h, ("", "_reverse")),
              x=_normal(rng, (n, t, f)))
    if backward:
        kw["dout"] = _normal(rng, (n, t, 2 * h))
    return kw


def _gru_pair(n, t, f, h):
    """A bidirectional GRU layer (batch first), forward and backward (through time in both
    directions, into the input and the eight parameters)."""
    shape = f"{n}x{t}x{f}->2x{h} bidirectional"
    macs = 2 * n * t * 3 * h * (f + h)  # both directions: projection + recurrent GEMMs
    return [Case("recurrent", "gru", shape, direction, "gru_" + direction,
                 partial(_gru_inputs, f"gru {shape}", n, t, f, h, direction == "backward"),
                 flops=2 * macs * k, samples=n)
            for direction, k in (("forward", 1), ("backward", 2))]


# the character model's training step (``fastnet train --model char-lstm``): batch 64
# windows of 100 characters, a vocabulary of 96, embeddings of 64, an LSTM of 2 layers of
# 256 units, the head at every position, cross-entropy over (N, V, T), Adam
CHAR_LSTM_SHAPE = (64, 100, 96, 64, 256, 2)  # N, T, V, E, H, layers
CHAR_LR = 3e-3


def _char_lstm_inputs(label, n, t, v, e, h, layers):
    """A CharLSTM's state dict (PyTorch's initialisation), ids x and next ids (N, T)."""
    rng = _rng(label)
    params = {"embedding.weight": _normal(rng, (v, e)),
              **_recurrent_params(rng, 4, e, h, layers=layers, prefix="lstm.")}
    bound = np.float32(1 / math.sqrt(h))
    params["head.weight"] = rng.uniform(-1, 1, (v, h)).astype(np.float32) * bound
    params["head.bias"] = rng.uniform(-1, 1, v).astype(np.float32) * bound
    return dict(params=params, x=rng.integers(0, v, (n, t)), labels=rng.integers(0, v, (n, t)),
                lr=CHAR_LR)


def _char_lstm_case(n, t, v, e, h, layers):
    shape = f"{n}x{t} chars {v}-{e}-{layers}x{h}-{v}"
    macs = n * t * (sum(4 * h * ((e if k == 0 else h) + h) for k in range(layers)) + h * v)
    # forward, then backward: the weight gradients and the input gradients of every GEMM
    # (the first layer's too: they reach the embedding)
    return Case("train", "train char-lstm", shape, "step", "char_lstm_step",
                partial(_char_lstm_inputs, f"char-lstm {shape}", n, t, v, e, h, layers),
                flops=2 * macs * 3, samples=n, tolerance=STEP_TOLERANCE)


DROPOUT_P = 0.5


def _dropout_inputs(label, shape, p, backward):
    """x, p, the seed of the fastnet layer and the mask fastnet draws with it (its first
    call), for the twins' check; dout for backward."""
    from fastnet.layers import Dropout

    rng = _rng(label)
    x = _normal(rng, shape)
    assert np.all(x != 0)  # so that fastnet's output tells its mask
    seed = int(rng.integers(0, 2 ** 63))
    layer = Dropout(p)
    layer.seed = seed
    kw = dict(x=x, p=p, seed=seed, mask=np.asarray(layer(x)) != 0)
    if backward:
        kw["dout"] = _normal(rng, shape)
    return kw


def _dropout_pair(shape, p):
    """Inverted dropout in training mode, forward (mask drawn and applied) and backward."""
    label = f"dropout {_dims(shape)} p{p}"
    size = math.prod(shape)
    # forward: reads x, writes y and the one-byte mask; backward: reads dy and the mask
    work = {"forward": F32 * 2 * size + size, "backward": F32 * 2 * size + size}
    return [Case("dropout", "dropout", f"{_dims(shape)} p{p}", direction, "dropout_" + direction,
                 partial(_dropout_inputs, label, shape, p, direction == "backward"),
                 nbytes=work[direction], samples=shape[0])
            for direction in ("forward", "backward")]


def _embedding_inputs(label, v, d, n, t, backward):
    """A table (V, D) drawn N(0, 1) as PyTorch initialises it, int64 token ids (N, T) (every
    row used about N*T/V times: repeated indices) and, for backward, d out (N, T, D)."""
    rng = _rng(label)
    kw = dict(weight=_normal(rng, (v, d)), indices=rng.integers(0, v, (n, t)))
    if backward:
        kw["dout"] = _normal(rng, (n, t, d))
    return kw


def _embedding_pair(v, d, n, t):
    """An Embedding lookup of (N, T) token ids, forward (a row gather) and backward (the
    scatter-add of d out into the weight's gradient)."""
    shape = f"{n}x{t} ids {v}x{d}"
    m = n * t
    # forward: reads M rows and the ids, writes M rows; backward: reads d out and the ids,
    # writes the whole (V, D) gradient
    work = {"forward": F32 * 2 * m * d + 8 * m, "backward": F32 * (m * d + v * d) + 8 * m}
    return [Case("embedding", "embedding", shape, direction, "embedding_" + direction,
                 partial(_embedding_inputs, f"embedding {shape}", v, d, n, t,
                         direction == "backward"),
                 nbytes=work[direction], samples=n, ort=direction == "forward")
            for direction in ("forward", "backward")]


def all_cases(quick: bool = False) -> list:
    """Every case, at the issue's sizes (batch 128, float32) or, with ``quick``, at tiny
    sizes of the same structure (for tests and a fast look)."""
    n = 2 if quick else BATCH
    cases = []
    dense = [(64, 16), (96, 16)] if quick else [(784, 256), (4096, 256)]
    for i, o in dense:
        cases += _layer_pair("dense", "dense", f"{n}x{i}->{o} relu", [("dense", i, o, "relu")],
                             (n, i), compute_bound=True)
    # (C, H, W, out, k, stride, padding)
    # (the last: a 1x1 stride-2 ResNet shortcut, a plain GEMM that BLAS runs well)
    convs = [(1, 8, 8, 3, 5, 1, 2), (3, 7, 7, 4, 5, 1, 0), (4, 8, 8, 4, 3, 1, 1),
             (5, 6, 6, 5, 3, 1, 1), (3, 9, 9, 4, 3, 2, 1), (4, 8, 8, 6, 1, 2, 0)] if quick else \
        [(1, 28, 28, 6, 5, 1, 2), (6, 14, 14, 16, 5, 1, 0), (32, 32, 32, 32, 3, 1, 1),
         (64, 16, 16, 64, 3, 1, 1), (3, 32, 32, 16, 3, 2, 1), (32, 16, 16, 64, 1, 2, 0)]
    for c, h, w, o, k, s, p in convs:
        geometry = f"k{k}" + (f" s{s}" if s > 1 else "") + (f" p{p}" if p else "")
        cases += _layer_pair("conv", "conv2d", f"{_dims((n, c, h, w))}->{o} {geometry}",
                             [("conv", c, o, k, s, p, None)], (n, c, h, w), compute_bound=True)
    # a depthwise 3x3 conv (groups = channels) of MobileNet's size, padding 1
    c, h = (4, 8) if quick else (64, 56)
    dw_n = n if quick else 32
    cases += _layer_pair("conv", "depthwise_conv2d", f"{_dims((dw_n, c, h, h))} k3 p1",
                         [("conv", c, c, 3, 1, 1, None, True, c)], (dw_n, c, h, h), False)
    big = (n, 3, 8, 8) if quick else (n, 32, 32, 32)
    pools = [big, (n, 2, 6, 6) if quick else (n, 6, 28, 28)]
    for op, kind in (("max_pool2d", "maxpool"), ("avg_pool2d", "avgpool")):
        for shape in pools:
            cases += _layer_pair("pool", op, f"{_dims(shape)} k2", [(kind, 2)], shape, False)
    for shape in pools:
        cases += _layer_pair("pool", "lp_pool2d", f"{_dims(shape)} p2 k2", [("lppool", 2, 2)],
                             shape, False)
    for op in ("relu", "sigmoid", "tanh", "hardsigmoid"):
        cases += _layer_pair("activation", op, _dims(big), [(op,)], big, False)
    rows = [(n, 10), (4, 30)] if quick else [(BATCH, 10), (1024, 1000)]
    for shape in rows:
        cases += _layer_pair("activation", "softmax", _dims(shape), [("softmax",)], shape, False)
    for r, c in rows:
        cases.append(Case("loss", "cross_entropy", f"{r}x{c}", "fwd+bwd", "cross_entropy",
                          partial(_ce_inputs, f"cross_entropy {r}x{c}", r, c),
                          nbytes=F32 * 2 * r * c + 8 * r, samples=r))
    # the general kernels: class weights, label smoothing and ignored targets; the fused
    # binary cross-entropy with pos_weight
    r, c = rows[-1]
    cases.append(Case("loss", "cross_entropy_weighted_smoothed", f"{r}x{c}", "fwd+bwd",
                      "cross_entropy_options",
                      partial(_ce_options_inputs, f"cross_entropy_options {r}x{c}", r, c),
                      nbytes=F32 * 2 * r * c + 8 * r, samples=r))
    cases.append(Case("loss", "bce_with_logits", f"{r}x{c}", "fwd+bwd", "bce_with_logits",
                      partial(_bce_inputs, f"bce_with_logits {r}x{c}", r, c),
                      nbytes=F32 * 3 * r * c, samples=r))

    # batch norm in training mode: an image batch and a (N, C) batch of features
    bn = [(n, 3, 4, 4), (16, 8)] if quick else [(n, 32, 16, 16), (n, 256)]
    for shape in bn:
        kind = "batchnorm2d" if len(shape) == 4 else "batchnorm1d"
        cases += _layer_pair("norm", "batch_norm" + kind[-2:], _dims(shape),
                             [(kind, shape[1])], shape, False)
    # layer norm over the features of a batch of sequences: (N, T, D), 2048 rows of 512
    ln = (n, 3, 8) if quick else (n, 16, 512)
    # (no running statistics: eval mode computes the same, ONNX's LayerNormalization too)
    cases += _layer_pair("norm", "layer_norm", _dims(ln), [("layernorm", ln[-1])], ln, False,
                         ort=True)
    cases += _dropout_pair((n, 64) if quick else (n, 4096), DROPOUT_P)

    vgg = _vgg(4, 8, 8 * 2 * 2, 16) if quick else _vgg(32, 64, 64 * 8 * 8, 256)
    vgg_x = (n, 3, 8, 8) if quick else (n, 3, 32, 32)
    n_params = _n_params(vgg)
    # SGD with momentum reads p, g, v and writes p, v; Adam reads p, g, m, v, writes p, m, v
    for op, lr, streams in (("sgd_momentum", SGD_LR, 5), ("adam", ADAM_LR, 7)):
        shape = f"vgg-small {n_params} params"
        cases.append(Case("optim", op, shape, "step", op + "_step",
                          partial(_optim_inputs, f"{op} {shape}", vgg, lr),
                          nbytes=F32 * streams * n_params))
    # clip_grad_norm_: every gradient read for its norm, then read and written when scaled
    cases.append(Case("optim", "clip_grad_norm", f"vgg-small {n_params} params", "step",
                      "clip_grad_norm", partial(_clip_inputs, f"clip {n_params}", vgg),
                      nbytes=F32 * 3 * n_params))

    cases += _lstm_pair(*((2, 3, 5, 4) if quick else LSTM_SHAPE))
    cases += _gru_pair(*((2, 3, 5, 4) if quick else GRU_SHAPE))
    cases += _embedding_pair(*((20, 8, n, 5) if quick else (10000, 128, BATCH, 64)))

    image = (1, 8, 8) if quick else (1, 28, 28)  # the MLP's
    lenet_image = (1, 12, 12) if quick else (1, 28, 28)
    mlp_in = math.prod(image)
    mlp, lenet = _mlp(mlp_in), _lenet(16 if quick else 400)
    mlp_shape = f"{mlp_in}-256-256-10"
    resnet = _resnet(3, (4, 6, 8) if quick else (16, 32, 64))
    resnet_x = (n, 3, 8, 8) if quick else (n, 3, 32, 32)
    cases += [_train_case("train mlp", f"{_dims((n, *image))} {mlp_shape}", mlp, (n, *image)),
              _train_case("train lenet5", _dims((n, *lenet_image)), lenet, (n, *lenet_image)),
              _train_case("train vgg-small", _dims(vgg_x), vgg, vgg_x),
              _train_case("train resnet-small", _dims(resnet_x), resnet, resnet_x),
              _char_lstm_case(*((2, 5, 7, 4, 6, 2) if quick else CHAR_LSTM_SHAPE))]

    # inference: one image (a request served at a time) and a batch of 64 (3 when quick)
    for batch in (1, 3 if quick else 64):
        x_shape = (batch, *lenet_image)
        cases.append(_inference_case("lenet5", _dims(x_shape), lenet, x_shape))
    cases.append(_inference_case("mlp", f"{_dims((1, *image))} {mlp_shape}", mlp, (1, *image)))
    return cases


# ---- the GPU cases ----------------------------------------------------------------------

# families of all_cases() that also run on CUDA (fastnet and PyTorch on the GPU)
CUDA_FAMILIES = ("dense", "conv", "pool", "activation", "loss", "norm", "dropout", "optim",
                 "recurrent", "embedding", "train", "inference")
# kernel launches per call of the launch-overhead case
LAUNCHES = 100


def _gemm_inputs(label, n):
    rng = _rng(label)
    return dict(a=_normal(rng, (n, n)), b=_normal(rng, (n, n)))


def cuda_cases(quick: bool = False) -> list:
    """The cases that run on a GPU: a square FP32 GEMM (fastnet's through the dense
    kernel without bias, PyTorch's matmul with TF32 off), the cost of launching a small
    kernel, then every case of all_cases() in CUDA_FAMILIES."""
    cases = [Case("gemm", "sgemm", f"{k}^3", "forward", "sgemm",
                  partial(_gemm_inputs, f"sgemm {k}", k), flops=2 * k ** 3)
             for k in ((64,) if quick else (1024, 4096))]
    cases.append(Case("launch", "relu", f"1 element x{LAUNCHES} launches", "forward",
                      "launch_overhead", partial(dict, x=np.ones(1, np.float32))))
    return cases + [c for c in all_cases(quick) if c.family in CUDA_FAMILIES]
