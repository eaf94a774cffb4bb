"""Snapshot every kernel output, to prove that a refactoring changed no bit of them.

    python benchmarks/kernel_snapshot.py save FILE.npz       # before the change
    python benchmarks/kernel_snapshot.py compare FILE.npz    # after it: exit 1 on any difference

Every op of the dispatch table ``fastnet.kernels.KERNELS`` runs on a fixed list of
seeded cases (float32 and float64, odd shapes, batch 1, every production path of the
convolution, which its geometry chooses) and every array it writes is stored: outputs,
gradients, arrays it overwrites in place (optimizer states, running statistics), argmax
and dropout masks, returned losses. Output buffers start as NaN (integers: their max), so
an element a kernel leaves unwritten shows up too. Each CPU case runs twice, with
``fastnet.kernels._jit.PARALLEL_MIN_WORK`` at 0 (every kernel takes its prange build) and
at 1 << 62 (the serial build); keys are ``cpu/{parallel|serial}/{case}/{op}.{output}``.

``compare`` reruns and compares each array: same dtype and shape and ``np.array_equal``
with NaN == NaN. Differences only in the sign of a zero or in NaN payloads are reported
as notes (``--strict`` makes them failures: byte-for-byte). It exits 1 on any mismatch,
on a key of the snapshot that the run no longer produces and on a case that raised.

Both first run the cases in a child process (``warm-up``) and discard its results: a
kernel compiled in the running process can differ by an ulp from the same kernel loaded
from Numba's on-disk cache (see the NOTE in main), so the outputs compared are always
those of cached code, what users run after their first start. The first run on a
checkout compiles everything (about 15 minutes on 2 cores); later runs take seconds.

The script refuses to run (exit 1, naming them) when an op of KERNELS has no case here,
so a new op cannot slip past it. It calls kernels only through the dispatch table
(``fastnet.kernels._kernel(op, device)``, unchecked; ``kernel(op, device)`` on checkouts
older than the argument checks), never module internals, so the same script runs on an
older checkout:

    PYTHONPATH=/path/to/old python benchmarks/kernel_snapshot.py save /tmp/old.npz

``--cuda`` (set ``NUMBA_ENABLE_CUDASIM=1`` without a GPU) runs tiny cases of every op on
the CUDA column instead, under keys ``cuda/{case}/...``; float32 only, and the simulator
runs each thread as a Python thread, so the shapes stay tiny. On a real GPU the results
need not match the simulator's bit for bit (fused multiply-adds, fast math).
``--filter SUBSTR`` runs the cases whose name contains SUBSTR (compare then checks only
the keys of those cases), ``--list`` prints the case names.
"""
import argparse
import os
import subprocess
import sys
import time
import warnings
import zlib

import numpy as np

F32, F64 = np.float32, np.float64
ACTS = (None, "relu", "sigmoid", "tanh")


# ---- cases -----------------------------------------------------------------------------

class Case:
    """One named case: ``fn(ctx)`` calls the ops named in ``ops`` and returns
    {"op.output": array or scalar}."""

    def __init__(self, name, ops, fn):
        self.name, self.ops, self.fn = name, tuple(ops), fn


class Ctx:
    """Inputs, outputs and kernels of one case on one device."""

    def __init__(self, device, name):
        self.device = device
        self.rng = np.random.default_rng(zlib.crc32(name.encode()))
        self.called = set()
        if device == "cuda":
            from fastnet import cuda as fcuda
            self._to_device = fcuda.to_device

    def k(self, op):
        import fastnet.kernels as kernels
        self.called.add(op)
        # the raw table where there is one (kernel() checks arguments and refuses the
        # out-of-contract mixed-dtype case below); kernel() on older checkouts
        return getattr(kernels, "_kernel", kernels.kernel)(op, self.device)

    def dev(self, host):
        """An input: a private copy of ``host`` on the device (None stays None)."""
        if host is None:
            return None
        host = np.array(host)
        return self._to_device(host) if self.device == "cuda" else host

    def randn(self, shape, dtype, scale=1.0, shift=0.0):
        return (self.rng.standard_normal(shape) * scale + shift).astype(dtype)

    def rand(self, shape, dtype, scale=1.0, shift=0.0):
        return self.dev(self.randn(shape, dtype, scale, shift))

    def out(self, shape, dtype):
        """An output buffer full of junk the kernel must overwrite."""
        dtype = np.dtype(dtype)
        fill = np.iinfo(dtype).max if dtype.kind in "iu" else np.nan
        return self.dev(np.full(shape, fill, dtype))

    def host(self, a):
        if a is None or isinstance(a, np.ndarray):
            return a
        if hasattr(a, "copy_to_host"):
            return a.copy_to_host()
        return np.float64(float(a))  # a loss: Python float, NumPy or device scalar


def _tag(dt):
    return {F32: "f32", F64: "f64"}[dt]


def _geom(v):
    return f"{v[0]}x{v[1]}" if v[0] != v[1] else str(v[0])


def _out_size(size, k, s, p):
    return (size + 2 * p - k) // s + 1


# dense ---------------------------------------------------------------------------------

def dense_case(n, fin, fout, act, bias, dt, want_dx=True, pass_out=None):
    name = (f"dense/n{n}-in{fin}-out{fout}-{act}-{'b' if bias else 'nob'}"
            f"-{'dx' if want_dx else 'nodx'}-{_tag(dt)}")

    def fn(c):
        x, w = c.rand((n, fin), dt), c.rand((fout, fin), dt, 0.3)
        b = c.rand(fout, dt) if bias else None
        out = c.out((n, fout), dt)
        c.k("dense_forward")(out, x, w, b, act)
        dout = c.rand((n, fout), dt)
        dx = c.out((n, fin), dt) if want_dx else None
        dw, db = c.out((fout, fin), dt), (c.out(fout, dt) if bias else None)
        give_out = act is not None or pass_out
        c.k("dense_backward")(dx, dw, db, dout, x, w, out if give_out else None, act)
        return {"dense_forward.out": out, "dense_backward.dx": dx,
                "dense_backward.dw": dw, "dense_backward.db": db}
    return Case(name, ("dense_forward", "dense_backward"), fn)


def dense_cases():
    cases = []
    shapes = [(1, 5, 3), (7, 13, 9), (64, 100, 70), (129, 33, 17)]
    i = 0
    for dt in (F32, F64):
        for shape in shapes:
            for act in ACTS:
                i += 1
                cases.append(dense_case(*shape, act, bias=i % 3 != 0, dt=dt, want_dx=i % 4 != 1))
    cases.append(dense_case(5, 8, 4, None, True, F32, pass_out=True))
    return cases


# im2col / col2im and conv2d -------------------------------------------------------------

def im2col_case(x_shape, ks, stride, pad, dt):
    n, ch, h, w = x_shape
    oh, ow = _out_size(h, ks[0], stride[0], pad[0]), _out_size(w, ks[1], stride[1], pad[1])
    name = (f"im2col/n{n}-c{ch}-{h}x{w}-k{_geom(ks)}-s{_geom(stride)}-p{_geom(pad)}-{_tag(dt)}")

    def fn(c):
        x = c.rand(x_shape, dt)
        cols = c.out((ch * ks[0] * ks[1], n * oh * ow), dt)
        c.k("im2col")(cols, x, ks, stride, pad)
        dcols = c.rand((ch * ks[0] * ks[1], n * oh * ow), dt)
        dx = c.out(x_shape, dt)
        c.k("col2im")(dx, dcols, ks, stride, pad)
        return {"im2col.cols": cols, "col2im.dx": dx}
    return Case(name, ("im2col", "col2im"), fn)


def conv_case(n, ch, hw, o, ks, stride, pad, act, dt, bias=True, want_dx=True, pass_out=False,
              dilation=(1, 1), groups=1):
    h, w = hw
    span = [d * (k - 1) + 1 for d, k in zip(dilation, ks)]
    oh, ow = _out_size(h, span[0], stride[0], pad[0]), _out_size(w, span[1], stride[1], pad[1])
    assert oh > 0 and ow > 0, (hw, ks, stride, pad)
    # dilation and groups (conv/grouped.py) in the name and the call only where not the
    # defaults: the other cases keep their names and calls
    extra = () if (tuple(dilation), groups) == ((1, 1), 1) else (tuple(dilation), groups)
    name = (f"conv2d/n{n}-c{ch}-{h}x{w}-o{o}-k{ks[0]}x{ks[1]}-s{_geom(stride)}-p{_geom(pad)}"
            + (f"-d{_geom(dilation)}-g{groups}" if extra else "")
            + f"-{act}-{'b' if bias else 'nob'}-{'dx' if want_dx else 'nodx'}"
            f"{'-out' if pass_out else ''}-{_tag(dt)}")

    def fn(c):
        x = c.rand((n, ch, h, w), dt)
        wt = c.rand((o, ch // groups) + tuple(ks), dt, 1.0 / np.sqrt(ch // groups * ks[0] * ks[1]))
        b = c.rand(o, dt) if bias else None
        out = c.out((n, o, oh, ow), dt)
        c.k("conv2d_forward")(out, x, wt, b, stride, pad, act, *extra)
        dout = c.rand((n, o, oh, ow), dt)
        dx = c.out((n, ch, h, w), dt) if want_dx else None
        dw = c.out((o, ch // groups) + tuple(ks), dt)
        db = c.out(o, dt) if bias else None
        give_out = act is not None or pass_out
        c.k("conv2d_backward")(dx, dw, db, dout, x, wt, out if give_out else None,
                               stride, pad, act, *extra)
        return {"conv2d_forward.out": out, "conv2d_backward.dx": dx,
                "conv2d_backward.dw": dw, "conv2d_backward.db": db}
    return Case(name, ("conv2d_forward", "conv2d_backward"), fn)


CONV_O = (1, 2, 3, 5, 6, 8, 12, 16, 20, 32, 40, 70)
CONV_C = (1, 3, 6, 16)
CONV_K = ((1, 1), (3, 3), (5, 5), (2, 3))
CONV_S = ((1, 1), (2, 2), (3, 3), (1, 2))
CONV_P = ((0, 0), (1, 1), (2, 2), (1, 0))
CONV_N = (1, 3, 9, 17)


def conv_cases():
    """Every (O, C) pair of the axes above (O picks the forward tile and the dw kernel,
    C the dx tile), the other axes cycled so that each value meets several of the
    others, then the special paths by hand."""
    count = len(CONV_O) * len(CONV_C)
    shuffle = np.random.default_rng(2024)

    def spread(values):  # each value equally often, in a fixed pseudo-random order
        return [values[j] for j in shuffle.permutation(np.arange(count) % len(values))]
    ks, strides, pads, acts, ns = (spread(CONV_K), spread(CONV_S), spread(CONV_P),
                                   spread(ACTS), spread(CONV_N))
    dts, biases, dxs = spread((F32, F64)), spread((True, True, False)), spread((True,) * 5 + (False,))
    cases = []
    for i in range(count):
        o, ch = CONV_O[i % len(CONV_O)], CONV_C[i // len(CONV_O)]
        h, w = 7 + (i * 5) % 14, 8 + (i * 7) % 13   # 7..20 x 8..20, mostly odd / non-square
        cases.append(conv_case(ns[i], ch, (h, w), o, ks[i], strides[i], pads[i], acts[i], dts[i],
                               bias=biases[i], want_dx=dxs[i]))
    # one input channel, stride 1, dx wanted: the direct dx kernel (LeNet's first layer
    # shape), against its micro-kernel neighbours (dx None, stride 2)
    for ks, pad, act, dt, bias, n in [((5, 5), (0, 0), "relu", F32, True, 17),
                                      ((5, 5), (2, 2), None, F64, True, 3),
                                      ((3, 3), (1, 1), "tanh", F32, False, 9),
                                      ((2, 3), (1, 0), "sigmoid", F64, True, 1),
                                      ((1, 1), (0, 0), None, F32, False, 3),
                                      ((3, 3), (2, 2), "relu", F64, True, 9)]:
        cases.append(conv_case(n, 1, (12, 11), 6, ks, (1, 1), pad, act, dt, bias=bias))
    cases += [
        conv_case(17, 1, (16, 16), 6, (5, 5), (1, 1), (0, 0), "relu", F32, want_dx=False),
        conv_case(3, 1, (13, 12), 6, (3, 3), (2, 2), (1, 1), "relu", F32),
        conv_case(3, 1, (13, 12), 5, (3, 3), (1, 2), (1, 0), None, F64),
        # LeNet-5's second layer, a small VGG's first two
        conv_case(9, 6, (14, 14), 16, (5, 5), (1, 1), (0, 0), "relu", F32),
        conv_case(3, 3, (16, 16), 32, (3, 3), (1, 1), (1, 1), "relu", F32, want_dx=False),
        conv_case(3, 32, (8, 8), 32, (3, 3), (1, 1), (1, 1), "relu", F32),
        # stride past the kernel: phases with no tap (dx 0 there)
        conv_case(3, 5, (11, 10), 9, (1, 1), (2, 2), (0, 0), None, F32),
        conv_case(3, 3, (13, 14), 4, (2, 3), (3, 3), (1, 0), "tanh", F64),
        conv_case(2, 2, (10, 11), 3, (2, 3), (3, 3), (0, 1), None, F32, pass_out=True),
        # padding past the kernel
        conv_case(2, 3, (7, 7), 2, (1, 1), (1, 1), (2, 2), "sigmoid", F32),
        conv_case(2, 3, (7, 8), 2, (2, 2), (1, 1), (2, 1), None, F64, bias=False),
        # > 64 output channels, several dw channel blocks, > 2 dw groups of images
        conv_case(17, 16, (9, 10), 70, (3, 3), (1, 1), (1, 1), "relu", F32),
        conv_case(17, 3, (9, 10), 70, (3, 3), (2, 2), (1, 1), None, F64),
        # the kernel as large as the input, batch 1
        conv_case(1, 3, (5, 5), 8, (5, 5), (1, 1), (0, 0), "sigmoid", F32),
        conv_case(1, 16, (20, 20), 40, (5, 5), (2, 2), (2, 2), "tanh", F32),
        # the activation axis on one geometry per dtype
        *[conv_case(3, 6, (10, 9), 12, (3, 3), (1, 1), (1, 1), a, dt)
          for dt in (F32, F64) for a in ACTS],
        # dilation and groups (conv/grouped.py): depthwise, depthwise x2 strided, groups
        # with dilation, dilation alone, padding past the dilated span
        conv_case(3, 8, (12, 11), 8, (3, 3), (1, 1), (1, 1), "relu", F32, groups=8),
        conv_case(2, 3, (11, 12), 6, (3, 3), (2, 2), (1, 1), None, F64, groups=3, want_dx=False),
        conv_case(3, 6, (13, 10), 4, (3, 2), (1, 2), (2, 1), "tanh", F32, dilation=(2, 3), groups=2),
        conv_case(1, 3, (14, 13), 5, (3, 3), (2, 1), (0, 2), "sigmoid", F64, dilation=(3, 2), bias=False),
        conv_case(2, 4, (6, 7), 4, (2, 2), (1, 1), (4, 3), None, F32, dilation=(2, 1), groups=4,
                  pass_out=True),
    ]
    return cases


def im2col_cases():
    return [im2col_case((2, 3, 7, 6), (3, 3), (1, 1), (1, 1), F32),
            im2col_case((3, 2, 9, 8), (2, 3), (2, 3), (1, 0), F64),
            im2col_case((1, 4, 5, 7), (1, 1), (2, 1), (0, 0), F32),
            im2col_case((2, 2, 10, 11), (2, 3), (3, 3), (2, 2), F32),
            im2col_case((17, 1, 12, 12), (5, 5), (1, 2), (2, 2), F64)]


# pooling --------------------------------------------------------------------------------

def pool_case(x_shape, ks, stride, pad, dt, argmax_dt=np.int32, special=None):
    n, ch, h, w = x_shape
    oh, ow = _out_size(h, ks[0], stride[0], pad[0]), _out_size(w, ks[1], stride[1], pad[1])
    name = (f"pool/n{n}-c{ch}-{h}x{w}-k{_geom(ks)}-s{_geom(stride)}-p{_geom(pad)}"
            f"-{np.dtype(argmax_dt).name}-{_tag(dt)}{'-' + special if special else ''}")
    ops = ("max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward", "avg_pool2d_backward")

    def fn(c):
        xh = c.randn(x_shape, dt)
        if special == "ties":  # equal values in a window: which one argmax takes
            xh = np.round(xh)
        elif special == "nonfinite":
            xh.reshape(-1)[::7] = np.nan
            xh.reshape(-1)[3::11] = np.inf
            xh.reshape(-1)[5::13] = -np.inf
        x = c.dev(xh)
        out, am = c.out((n, ch, oh, ow), dt), c.out((n, ch, oh, ow), argmax_dt)
        c.k("max_pool2d_forward")(out, am, x, ks, stride, pad)
        dout = c.rand((n, ch, oh, ow), dt)
        dx = c.out(x_shape, dt)
        c.k("max_pool2d_backward")(dx, dout, am, ks, stride, pad)
        aout = c.out((n, ch, oh, ow), dt)
        c.k("avg_pool2d_forward")(aout, x, ks, stride, pad)
        adx = c.out(x_shape, dt)
        c.k("avg_pool2d_backward")(adx, dout, ks, stride, pad)
        return {"max_pool2d_forward.out": out, "max_pool2d_forward.argmax": am,
                "max_pool2d_backward.dx": dx, "avg_pool2d_forward.out": aout,
                "avg_pool2d_backward.dx": adx}
    return Case(name, ops, fn)


def pool_cases():
    cases = []
    for dt in (F32, F64):
        for am in (np.int32, np.int64):
            for shape in [(3, 5, 12, 16), (2, 3, 13, 11), (1, 1, 7, 9), (17, 6, 28, 28)]:
                cases.append(pool_case(shape, (2, 2), (2, 2), (0, 0), dt, am))
        cases += [pool_case((3, 4, 13, 14), (3, 3), (2, 2), (1, 1), dt),
                  pool_case((2, 3, 11, 9), (2, 3), (1, 2), (1, 0), dt, np.int64),
                  pool_case((1, 2, 9, 10), (3, 2), (3, 1), (0, 1), dt),
                  pool_case((2, 3, 12, 10), (2, 2), (2, 2), (0, 0), dt, special="ties"),
                  pool_case((2, 3, 11, 10), (2, 2), (2, 2), (0, 0), dt, special="nonfinite"),
                  pool_case((2, 3, 11, 10), (3, 3), (2, 2), (1, 1), dt, special="nonfinite")]
    return cases


def gap_case(shape, dt):
    name = f"global_avg_pool/{'x'.join(map(str, shape))}-{_tag(dt)}"

    def fn(c):
        x = c.rand(shape, dt)
        out = c.out(shape[:2], dt)
        c.k("global_avg_pool2d_forward")(out, x)
        dx = c.out(shape, dt)
        c.k("global_avg_pool2d_backward")(dx, c.rand(shape[:2], dt))
        return {"global_avg_pool2d_forward.out": out, "global_avg_pool2d_backward.dx": dx}
    return Case(name, ("global_avg_pool2d_forward", "global_avg_pool2d_backward"), fn)


def lp_pool_case(x_shape, p, ks, stride, dt, special=None):
    n, ch, h, w = x_shape
    oh, ow = _out_size(h, ks[0], stride[0], 0), _out_size(w, ks[1], stride[1], 0)
    name = (f"lp_pool/n{n}-c{ch}-{h}x{w}-p{p}-k{_geom(ks)}-s{_geom(stride)}-{_tag(dt)}"
            f"{'-' + special if special else ''}")

    def fn(c):
        xh = c.randn(x_shape, dt)
        if special == "nonfinite":  # zero windows, NaN, inf (negative sums come from odd p)
            xh[:, :, :2, :2] = 0
            xh.reshape(-1)[::13] = np.nan
            xh.reshape(-1)[5::17] = np.inf
        x = c.dev(xh)
        out = c.out((n, ch, oh, ow), dt)
        c.k("lp_pool2d_forward")(out, x, p, ks, stride)
        dx = c.out(x_shape, dt)
        c.k("lp_pool2d_backward")(dx, c.rand((n, ch, oh, ow), dt), x, p, ks, stride)
        return {"lp_pool2d_forward.out": out, "lp_pool2d_backward.dx": dx}
    return Case(name, ("lp_pool2d_forward", "lp_pool2d_backward"), fn)


def lp_pool_cases():
    return [lp_pool_case(shape, p, ks, stride, dt, special)
            for dt in (F32, F64)
            for shape, p, ks, stride, special in [
                ((3, 4, 12, 16), 2, (2, 2), (2, 2), None),
                ((2, 3, 13, 11), 3, (3, 2), (1, 2), None),
                ((1, 2, 9, 10), 1.5, (3, 3), (2, 1), None),
                ((17, 6, 28, 28), 2, (3, 3), (2, 2), None),
                ((2, 3, 11, 10), 2, (2, 2), (1, 1), "nonfinite")]]


# activations ----------------------------------------------------------------------------

SLOPE = 0.01


def elementwise_case(shape, dt, special=None):
    name = (f"elementwise/{'x'.join(map(str, shape))}-{_tag(dt)}"
            f"{'-' + special if special else ''}")
    ops = [f"{a}_{d}" for a in ("relu", "leaky_relu", "sigmoid", "tanh")
           for d in ("forward", "backward")]

    def fn(c):
        xh = c.randn(shape, dt, 3.0)
        if special == "nonfinite":
            f = xh.reshape(-1)
            f[::5], f[1::7], f[2::9], f[3::4] = np.nan, np.inf, -np.inf, 0.0
            f[6::10] = 100.0  # saturated sigmoid / tanh
        x = c.dev(xh)
        res = {}
        for a in ("relu", "leaky_relu", "sigmoid", "tanh"):
            extra = (SLOPE,) if a == "leaky_relu" else ()
            out = c.out(shape, dt)
            c.k(f"{a}_forward")(out, x, *extra)
            dout = c.rand(shape, dt)
            dx = c.out(shape, dt)
            c.k(f"{a}_backward")(dx, dout, x if a == "leaky_relu" else out, *extra)
            res[f"{a}_forward.out"], res[f"{a}_backward.dx"] = out, dx
            if special == "alias":  # dx may alias dout
                c.k(f"{a}_backward")(dout, dout, x if a == "leaky_relu" else out, *extra)
                res[f"{a}_backward.dx_inplace"] = dout
        return res
    return Case(name, ops, fn)


def hardsigmoid_case(shape, dt, special=None):
    name = (f"hardsigmoid/{'x'.join(map(str, shape))}-{_tag(dt)}"
            f"{'-' + special if special else ''}")

    def fn(c):
        xh = c.randn(shape, dt, 3.0)
        if special == "nonfinite":  # NaN, +-inf and the boundaries +-3
            f = xh.reshape(-1)
            f[::5], f[1::7], f[2::9], f[3::4], f[4::6] = np.nan, np.inf, -np.inf, 3.0, -3.0
        x = c.dev(xh)
        out = c.out(shape, dt)
        c.k("hardsigmoid_forward")(out, x)
        dx = c.out(shape, dt)
        c.k("hardsigmoid_backward")(dx, c.rand(shape, dt), x)
        return {"hardsigmoid_forward.out": out, "hardsigmoid_backward.dx": dx}
    return Case(name, ("hardsigmoid_forward", "hardsigmoid_backward"), fn)


def elementwise_cases():
    shapes = [(1,), (7,), (3, 17), (2, 3, 5, 7), (128, 1000), (1 << 18) + 3]
    cases = [elementwise_case(s if isinstance(s, tuple) else (s,), dt)
             for dt in (F32, F64) for s in shapes]
    cases += [elementwise_case((5, 37), dt, "nonfinite") for dt in (F32, F64)]
    cases += [elementwise_case((4, 33), F32, "alias")]
    return cases


def rowwise_case(n, width, dt, special=None):
    name = f"rowwise/n{n}-c{width}-{_tag(dt)}{'-' + special if special else ''}"
    ops = ["softmax_forward", "softmax_backward", "log_softmax_forward",
           "log_softmax_backward", "softmax_cross_entropy_forward"]

    def fn(c):
        xh = c.randn((n, width), dt, 4.0)
        if special == "extreme":
            xh *= 2500.0  # logits of +-1e4
        elif special == "nonfinite":
            f = xh.reshape(-1)
            f[::5], f[2::7], f[3::11] = np.inf, -np.inf, np.nan
        labels_h = c.rng.integers(0, width, n)
        res = {}
        if special == "strided":  # rows of a wider array (not C-contiguous)
            wide = c.randn((n, 2 * width), dt, 4.0)
            x = wide[:, ::2]
        else:
            x = c.dev(xh)
        for op in ("softmax", "log_softmax"):
            out = c.out((n, width), dt)
            c.k(f"{op}_forward")(out, x)
            dout = c.rand((n, width), dt)
            dx = c.out((n, width), dt)
            c.k(f"{op}_backward")(dx, dout, out)
            res[f"{op}_forward.out"], res[f"{op}_backward.dx"] = out, dx
            if special == "alias":
                c.k(f"{op}_backward")(dout, dout, out)
                res[f"{op}_backward.dx_inplace"] = dout
        if special != "nonfinite":  # NaN logits: the loss is NaN, covered by the rows
            grad = c.out((n, width), dt)
            ce = c.k("softmax_cross_entropy_forward")
            res["softmax_cross_entropy_forward.loss"] = ce(grad, x, c.dev(labels_h.astype(np.int64)))
            res["softmax_cross_entropy_forward.grad"] = grad
            res["softmax_cross_entropy_forward.loss_nograd"] = ce(
                None, x, c.dev(labels_h.astype(np.int32)))
        return res
    return Case(name, ops if special != "nonfinite" else ops[:4], fn)


def rowwise_cases():
    cases = [rowwise_case(n, width, dt) for dt in (F32, F64)
             for width in (1, 3, 10, 16, 17, 100, 1000) for n in (1, 5, 128)]
    cases += [rowwise_case(5, w, dt, sp) for dt in (F32, F64) for w in (10, 33)
              for sp in ("extreme", "nonfinite", "strided", "alias")]

    def mixed(c):  # softmax backward of float32 output and a float64 gradient
        out = c.out((6, 10), F32)
        c.k("softmax_forward")(out, c.rand((6, 10), F32))
        dx = c.out((6, 10), F64)
        c.k("softmax_backward")(dx, c.rand((6, 10), F64), out)
        return {"softmax_forward.out": out, "softmax_backward.dx": dx}
    cases.append(Case("rowwise/mixed-f32-out-f64-grad", ("softmax_forward", "softmax_backward"),
                      mixed))
    return cases


# losses, dropout, optimizers, add / accumulate -----------------------------------------

def mse_case(shape, dt):
    name = f"mse/{'x'.join(map(str, shape))}-{_tag(dt)}"

    def fn(c):
        pred, target = c.rand(shape, dt), c.rand(shape, dt)
        grad = c.out(shape, dt)
        loss = c.k("mse_forward")(grad, pred, target)
        loss2 = c.k("mse_forward")(None, pred, target)
        return {"mse_forward.loss": loss, "mse_forward.grad": grad, "mse_forward.loss_nograd": loss2}
    return Case(name, ("mse_forward",), fn)


def loss_case(kind, n, c, dt, reduction, options=True):
    """cross_entropy (kind "ce" / "nll"), bce_with_logits or pointwise_loss ("l1", "mse",
    "smooth_l1", "huber") on (n, c), forward and, for "none", backward."""
    name = f"loss/{kind}-{n}x{c}-{reduction}-{'opts' if options else 'plain'}-{_tag(dt)}"
    none = reduction == "none"

    def run(c_, op, shape, out_shape, *args):
        out = c_.out(out_shape, dt) if none else None
        grad = None if none else c_.out(shape, dt)
        loss = c_.k(op + "_forward")(out, grad, *args, reduction)
        res = {f"{op}_forward.out": out} if none else {f"{op}_forward.loss": loss,
                                                         f"{op}_forward.grad": grad}
        if none:
            g = c_.out(shape, dt)
            c_.k(op + "_backward")(g, c_.rand(out_shape, dt), *args)
            res[f"{op}_backward.grad"] = g
        return res

    def fn(c_):
        if kind in ("ce", "nll"):
            labels = c_.rng.integers(0, c, n)
            labels[0] = -100 if options else labels[0]
            w = c_.rand((c,), dt, 0.5, 1.0) if options else None
            eps = 0.1 if options and kind == "ce" else 0.0
            return run(c_, "cross_entropy", (n, c), (n,), c_.rand((n, c), dt, 2.0),
                       c_.dev(labels), w, -100, eps, kind == "nll")
        if kind == "bce":
            x = c_.randn((n, c), dt, 3.0)
            x[0, 0] = 1e4
            w = c_.rand((n, c), dt) if options else None
            pw = c_.rand((c,), dt, 1.0, 1.5) if options else None
            return run(c_, "bce_with_logits", (n, c), (n, c), c_.dev(x),
                       c_.dev(c_.rng.random((n, c)).astype(dt)), w, pw)
        return run(c_, "pointwise_loss", (n, c), (n, c), c_.rand((n, c), dt),
                   c_.rand((n, c), dt), kind, 0.5)
    ops = {"ce": "cross_entropy", "nll": "cross_entropy", "bce": "bce_with_logits"}.get(
        kind, "pointwise_loss")
    return Case(name, (ops + "_forward",) + ((ops + "_backward",) if none else ()), fn)


def dropout_case(shape, p, seed, dt):
    name = f"dropout/{'x'.join(map(str, shape))}-p{p}-seed{seed}-{_tag(dt)}"

    def fn(c):
        x = c.rand(shape, dt)
        out, mask = c.out(shape, dt), c.out(shape, np.uint8)
        c.k("dropout_forward")(out, mask, x, p, seed)
        dx = c.out(shape, dt)
        c.k("dropout_backward")(dx, c.rand(shape, dt), mask, p)
        return {"dropout_forward.out": out, "dropout_forward.mask": mask,
                "dropout_backward.dx": dx}
    return Case(name, ("dropout_forward", "dropout_backward"), fn)


def sgd_case(shape, dt, momentum, weight_decay, nesterov, steps=2):
    name = (f"sgd/{'x'.join(map(str, shape))}-mu{momentum}-wd{weight_decay}"
            f"-{'nesterov' if nesterov else 'plain'}-{_tag(dt)}")

    def fn(c):
        param = c.rand(shape, dt)
        vel = c.rand(shape, dt, 0.1) if momentum else None
        for _ in range(steps):
            c.k("sgd_step")(param, vel, c.rand(shape, dt), 0.05, momentum, weight_decay, nesterov)
        return {"sgd_step.param": param, "sgd_step.velocity": vel}
    return Case(name, ("sgd_step",), fn)


def adam_case(shape, dt, weight_decay, decoupled, first_step):
    name = (f"adam/{'x'.join(map(str, shape))}-wd{weight_decay}"
            f"-{'adamw' if decoupled else 'adam'}-step{first_step}-{_tag(dt)}")

    def fn(c):
        param = c.rand(shape, dt)
        m = c.rand(shape, dt, 0.1) if first_step > 1 else c.dev(np.zeros(shape, dt))
        v = c.rand(shape, dt, 0.01, 0.02) if first_step > 1 else c.dev(np.zeros(shape, dt))
        for step in (first_step, first_step + 1):
            c.k("adam_step")(param, m, v, c.rand(shape, dt), 1e-3, 0.9, 0.999, 1e-8,
                             weight_decay, step, decoupled)
        return {"adam_step.param": param, "adam_step.m": m, "adam_step.v": v}
    return Case(name, ("adam_step",), fn)


def add_case(shape, dt):
    name = f"add/{'x'.join(map(str, shape))}-{_tag(dt)}"

    def fn(c):
        a, b = c.rand(shape, dt), c.rand(shape, dt)
        out = c.out(shape, dt)
        c.k("add")(out, a, b)
        acc = c.rand(shape, dt)
        c.k("accumulate")(acc, a)
        c.k("accumulate")(acc, b)
        return {"add.out": out, "accumulate.out": acc}
    return Case(name, ("add", "accumulate"), fn)


def clip_case(shape, dt):
    name = f"clip/{'x'.join(map(str, shape))}-{_tag(dt)}"

    def fn(c):
        x = c.rand(shape, dt)
        got = {}
        for p in (2.0, 1.0, float("inf"), 3.0):
            out = c.out((1,), dt)
            c.k("vector_norm")(out, x, p)
            got[f"vector_norm.out.p{p}"] = out
        c.k("scale")(x, 0.37)
        got["scale.x"] = x
        y = c.rand(shape, dt)
        c.k("clamp")(y, -0.3, 0.4)
        got["clamp.x"] = y
        return got
    return Case(name, ("vector_norm", "scale", "clamp"), fn)


def misc_cases():
    big = (1 << 18) + 5  # past PARALLEL_MIN_WORK's default: vector loops with a tail
    cases = [mse_case(s, dt) for dt in (F32, F64) for s in [(1,), (7, 3), (5000,), (64, 10)]]
    cases += [loss_case(kind, n, c, dt, red, opts) for dt in (F32, F64)
              for kind in ("ce", "nll", "bce", "l1", "mse", "smooth_l1", "huber")
              for n, c in [(3, 5), (300, 7)] for red in ("mean", "sum", "none")
              for opts in (False, True) if opts or kind in ("ce", "nll", "bce")]
    cases += [dropout_case(s, p, seed, dt) for dt in (F32, F64)
              for s, p, seed in [((1,), 0.5, 0), ((7, 13), 0.1, 1), ((128, 257), 0.5, 42),
                                 ((3, 5, 7), 0.0, 3), ((9, 11), 1.0, 4),
                                 ((big,), 0.25, (1 << 64) - 1), ((5, 6), 0.5, -3)]]
    cases += [sgd_case(s, dt, mu, wd, nes) for dt in (F32, F64)
              for s, mu, wd, nes in [((7,), 0.0, 0.0, False), ((13, 5), 0.9, 0.0, False),
                                     ((3, 4, 5), 0.9, 1e-4, True), ((big,), 0.9, 5e-4, False),
                                     ((33,), 0.0, 1e-2, False)]]
    cases += [adam_case(s, dt, wd, dec, st) for dt in (F32, F64)
              for s, wd, dec, st in [((7,), 0.0, False, 1), ((13, 5), 1e-2, False, 3),
                                     ((3, 4, 5), 1e-2, True, 1), ((big,), 0.0, True, 10)]]
    cases += [add_case(s, dt) for dt in (F32, F64)
              for s in [(1,), (7, 9), (2, 3, 5, 7), (big,)]]
    cases += [clip_case(s, dt) for dt in (F32, F64) for s in [(1,), (7, 9), (big,)]]
    return cases


# batch norm -----------------------------------------------------------------------------

def bn_case(shape, dt, affine=True, running="momentum", training=True, want_dx=True):
    name = (f"batch_norm/{'x'.join(map(str, shape))}-{'affine' if affine else 'plain'}"
            f"-{running}-{'train' if training else 'eval'}-{'dx' if want_dx else 'nodx'}"
            f"-{_tag(dt)}")
    ops = ("batch_norm_forward", "batch_norm_backward")

    def fn(c):
        n, ch, length = shape
        x = c.rand(shape, dt, 2.0, 0.5)
        w = c.rand(ch, dt, 0.2, 1.0) if affine else None
        b = c.rand(ch, dt) if affine else None
        rm = rv = nbt = None
        if running != "none":
            rm, rv = c.rand(ch, dt, 0.1), c.dev(np.abs(c.randn(ch, dt)) + dt(0.5))
            nbt = c.dev(np.array(3, np.int64))
        momentum = None if running == "cumulative" else 0.1
        out, mean, invstd = c.out(shape, dt), c.out(ch, dt), c.out(ch, dt)
        c.k("batch_norm_forward")(out, mean, invstd, rm, rv, nbt, x, w, b, training, momentum, 1e-5)
        dout = c.rand(shape, dt)
        dx = c.out(shape, dt) if want_dx else None
        dw, db = (c.out(ch, dt), c.out(ch, dt)) if affine else (None, None)
        c.k("batch_norm_backward")(dx, dw, db, dout, x, w, mean, invstd)
        return {"batch_norm_forward.out": out, "batch_norm_forward.save_mean": mean,
                "batch_norm_forward.save_invstd": invstd, "batch_norm_forward.running_mean": rm,
                "batch_norm_forward.running_var": rv, "batch_norm_forward.num_batches_tracked": nbt,
                "batch_norm_backward.dx": dx, "batch_norm_backward.dweight": dw,
                "batch_norm_backward.dbias": db}
    return Case(name, ops, fn)


def bn_cases():
    cases = []
    for dt in (F32, F64):
        cases += [bn_case((3, 4, 25), dt), bn_case((17, 5, 1), dt),
                  bn_case((1, 3, 7), dt, affine=False, want_dx=True),
                  bn_case((8, 33, 130), dt, running="cumulative"),
                  bn_case((4, 6, 9), dt, running="none", want_dx=False),
                  bn_case((5, 3, 11), dt, training=False),
                  bn_case((2, 7, 1), dt, affine=False, running="cumulative", want_dx=False)]
    return cases


# layer norm ------------------------------------------------------------------------------

def ln_case(shape, dt, weight=True, bias=True, want=(True, True, True)):
    name = (f"layer_norm/{'x'.join(map(str, shape))}-{'w' if weight else 'now'}"
            f"-{'b' if bias else 'nob'}-{''.join('1' if k else '0' for k in want)}-{_tag(dt)}")
    ops = ("layer_norm_forward", "layer_norm_backward")

    def fn(c):
        m, d = shape
        x = c.rand(shape, dt, 2.0, 0.5)
        w = c.rand(d, dt, 0.2, 1.0) if weight else None
        b = c.rand(d, dt) if bias else None
        out, mean, rstd = c.out(shape, dt), c.out(m, dt), c.out(m, dt)
        c.k("layer_norm_forward")(out, mean, rstd, x, w, b, 1e-5)
        dout = c.rand(shape, dt)
        dx = c.out(shape, dt) if want[0] else None
        dw = c.out(d, dt) if want[1] else None
        db = c.out(d, dt) if want[2] else None
        c.k("layer_norm_backward")(dx, dw, db, dout, x, w, mean, rstd)
        return {"layer_norm_forward.out": out, "layer_norm_forward.save_mean": mean,
                "layer_norm_forward.save_rstd": rstd, "layer_norm_backward.dx": dx,
                "layer_norm_backward.dweight": dw, "layer_norm_backward.dbias": db}
    return Case(name, ops, fn)


def ln_cases():
    cases = []
    for dt in (F32, F64):
        cases += [ln_case((3, 5), dt), ln_case((1, 9), dt, weight=False, bias=False),
                  ln_case((37, 70), dt, bias=False, want=(False, True, False)),
                  ln_case((130, 513), dt, want=(True, False, True))]
    return cases


# recurrent ------------------------------------------------------------------------------

CELLS = {"rnn": 1, "lstm": 4, "gru": 3}


def rnn_case(cell, n, t, f, h, dt, nonlin="tanh", h0=True, bias=True, want_dx=True,
             dout_given=True, dh_n_given=True):
    name = (f"{cell}/n{n}-t{t}-f{f}-h{h}-{nonlin if cell == 'rnn' else 'std'}"
            f"-{'h0' if h0 else 'noh0'}-{'b' if bias else 'nob'}-{'dx' if want_dx else 'nodx'}"
            f"-{'dout' if dout_given else 'nodout'}-{'dhn' if dh_n_given else 'nodhn'}-{_tag(dt)}")
    g = CELLS[cell]

    def fn(c):
        s = 1.0 / np.sqrt(h)
        x = c.rand((n, t, f), dt)
        h0a = c.rand((n, h), dt) if h0 else None
        c0a = c.rand((n, h), dt) if h0 and cell == "lstm" else None
        w_ih, w_hh = c.rand((g * h, f), dt, s), c.rand((g * h, h), dt, s)
        b_ih, b_hh = (c.rand(g * h, dt, s), c.rand(g * h, dt, s)) if bias else (None, None)
        weights = (w_ih, w_hh, b_ih, b_hh)
        out, h_n = c.out((n, t, h), dt), c.out((n, h), dt)
        res = {}
        if cell == "rnn":
            c.k("rnn_forward")(out, h_n, x, h0a, *weights, nonlin)
            saved, init = (nonlin,), (h0a,)
        elif cell == "lstm":
            c_n, gates, cells = c.out((n, h), dt), c.out((n, t, 4 * h), dt), c.out((n, t, h), dt)
            c.k("lstm_forward")(out, h_n, c_n, gates, cells, x, h0a, c0a, *weights)
            saved, init = (gates, cells), (h0a, c0a)
            res.update({"lstm_forward.c_n": c_n, "lstm_forward.gates": gates,
                        "lstm_forward.cells": cells})
        else:
            gates, hn = c.out((n, t, 3 * h), dt), c.out((n, t, h), dt)
            c.k("gru_forward")(out, h_n, gates, hn, x, h0a, *weights)
            saved, init = (gates, hn), (h0a,)
            res.update({"gru_forward.gates": gates, "gru_forward.hn": hn})
        res.update({f"{cell}_forward.out": out, f"{cell}_forward.h_n": h_n})
        douts = [c.rand((n, t, h), dt) if dout_given else None,
                 c.rand((n, h), dt) if dh_n_given else None]
        if cell == "lstm":
            douts.append(c.rand((n, h), dt) if dh_n_given else None)
        dx = c.out((n, t, f), dt) if want_dx else None
        dinit = [c.out((n, h), dt) if a is not None else None for a in init]
        dparams = [c.out(a.shape, dt) if a is not None else None for a in weights]
        c.k(f"{cell}_backward")(dx, *dinit, *dparams, *douts, x, *init, w_ih, w_hh, out, *saved)
        res[f"{cell}_backward.dx"] = dx
        for k, a in zip(["dh0", "dc0"] if cell == "lstm" else ["dh0"], dinit):
            res[f"{cell}_backward.{k}"] = a
        for k, a in zip(["dw_ih", "dw_hh", "db_ih", "db_hh"], dparams):
            res[f"{cell}_backward.{k}"] = a
        return res
    return Case(name, (f"{cell}_forward", f"{cell}_backward"), fn)


def sequence_copy_case(n, t, co, cx, out_col, x_col, width, reverse, out_tf, x_tf, dt):
    name = (f"sequence_copy/n{n}-t{t}-co{co}-cx{cx}-at{out_col},{x_col}-w{width}"
            f"-{'rev' if reverse else 'fwd'}-{'tn' if out_tf else 'nt'}{'tn' if x_tf else 'nt'}"
            f"-{_tag(dt)}")

    def fn(c):
        x = c.rand((t, n, cx) if x_tf else (n, t, cx), dt)
        out = c.out((t, n, co) if out_tf else (n, t, co), dt)
        c.k("sequence_copy")(out, x, out_col, x_col, width, reverse, out_tf, x_tf)
        return {"sequence_copy.out": out}
    return Case(name, ("sequence_copy",), fn)


def rnn_cases():
    cases = [sequence_copy_case(3, 4, 5, 5, 0, 0, 5, True, False, False, F32),
             sequence_copy_case(2, 5, 6, 3, 3, 0, 3, False, True, False, F64),
             sequence_copy_case(4, 3, 2, 7, 0, 4, 2, True, False, True, F32),
             sequence_copy_case(70, 40, 64, 128, 0, 64, 64, True, True, True, F32)]
    for cell in CELLS:
        for dt in (F32, F64):
            cases += [rnn_case(cell, 3, 4, 5, 7, dt),
                      rnn_case(cell, 1, 1, 3, 17, dt, h0=False, bias=False),
                      rnn_case(cell, 9, 6, 11, 20, dt, want_dx=False, dout_given=False),
                      rnn_case(cell, 2, 3, 4, 5, dt, dh_n_given=False, h0=False)]
        cases.append(rnn_case(cell, 16, 5, 32, 64, F32))
    cases += [rnn_case("rnn", 3, 4, 5, 7, dt, nonlin="relu") for dt in (F32, F64)]
    cases += [rnn_case("rnn", 4, 3, 6, 9, F32, nonlin="relu", h0=False, want_dx=False)]
    return cases


def embedding_case(m, v, d, dt, padding_idx=None, index_dtype=np.int64):
    name = (f"embedding/m{m}-v{v}-d{d}-pad{padding_idx}-{np.dtype(index_dtype).name}"
            f"-{_tag(dt)}")

    def fn(c):
        idx = c.dev(c.rng.integers(0, v, m).astype(index_dtype))
        out = c.out((m, d), dt)
        c.k("embedding_forward")(out, idx, c.rand((v, d), dt))
        dw = c.out((v, d), dt)
        c.k("embedding_backward")(dw, c.rand((m, d), dt), idx, padding_idx)
        return {"embedding_forward.out": out, "embedding_backward.dweight": dw}
    return Case(name, ("embedding_forward", "embedding_backward"), fn)


def embedding_cases():
    return [embedding_case(m, v, d, dt, p, it) for dt in (F32, F64)
            for m, v, d, p, it in [(1, 1, 1, None, np.int64), (40, 7, 5, 3, np.int32),
                                   (9, 30, 3, 0, np.uint8), (5000, 101, 17, None, np.int64)]]


def cpu_cases():
    return (dense_cases() + im2col_cases() + conv_cases() + pool_cases()
            + [gap_case(s, dt) for dt in (F32, F64) for s in [(1, 1, 1, 1), (3, 5, 7, 9),
                                                             (17, 32, 4, 4)]]
            + elementwise_cases() + rowwise_cases() + misc_cases() + bn_cases()
            + ln_cases() + rnn_cases()
            + lp_pool_cases()
            + [hardsigmoid_case(s, dt, sp) for dt in (F32, F64)
               for s, sp in [((7,), None), ((128, 1000), None), ((5, 37), "nonfinite")]]
            + embedding_cases())


def cuda_cases():
    """Tiny float32 cases of every op for the CUDA column (the simulator is slow)."""
    d = F32
    return [
        dense_case(3, 5, 4, "relu", True, d), dense_case(2, 3, 33, None, False, d, want_dx=False),
        dense_case(5, 7, 6, "sigmoid", True, d), dense_case(4, 6, 3, "tanh", False, d),
        im2col_case((2, 2, 5, 6), (3, 3), (1, 1), (1, 1), d),
        im2col_case((1, 2, 6, 5), (2, 3), (2, 1), (1, 0), d),
        conv_case(2, 2, (5, 6), 3, (3, 3), (1, 1), (1, 1), "relu", d),
        conv_case(2, 3, (6, 5), 4, (2, 3), (2, 1), (1, 0), None, d, bias=False),
        conv_case(1, 1, (6, 6), 5, (3, 3), (1, 1), (0, 0), "tanh", d, want_dx=False),
        conv_case(2, 2, (7, 6), 3, (1, 1), (3, 3), (0, 0), "sigmoid", d),
        conv_case(1, 3, (6, 7), 35, (2, 3), (1, 2), (2, 2), "relu", d),
        conv_case(3, 1, (5, 5), 2, (5, 5), (1, 1), (2, 2), None, d, pass_out=True),
        conv_case(1, 2, (5, 4), 4, (3, 2), (1, 2), (2, 1), "relu", d, dilation=(2, 1), groups=2),
        pool_case((2, 2, 5, 6), (2, 2), (2, 2), (0, 0), d),
        pool_case((1, 2, 5, 5), (3, 3), (2, 2), (1, 1), d),
        pool_case((1, 2, 6, 7), (2, 3), (1, 2), (1, 0), d),
        pool_case((1, 2, 4, 5), (2, 2), (2, 2), (0, 0), d, special="nonfinite"),
        gap_case((2, 3, 3, 4), d),
        lp_pool_case((1, 2, 5, 6), 2, (2, 2), (2, 2), d),
        lp_pool_case((1, 2, 6, 5), 3, (3, 2), (1, 2), d, special="nonfinite"),
        hardsigmoid_case((3, 37), d), hardsigmoid_case((5, 37), d, "nonfinite"),
        elementwise_case((3, 37), d), elementwise_case((5, 37), d, "nonfinite"),
        rowwise_case(3, 10, d), rowwise_case(2, 33, d), rowwise_case(1, 1, d),
        rowwise_case(2, 100, d), rowwise_case(2, 10, d, "extreme"),
        mse_case((5, 7), d),
        loss_case("ce", 3, 5, d, "mean"), loss_case("nll", 3, 4, d, "none"),
        loss_case("bce", 2, 3, d, "none"), loss_case("huber", 2, 3, d, "sum"),
        loss_case("l1", 2, 3, d, "none"),
        dropout_case((4, 33), 0.5, 7, d), dropout_case((9,), 0.0, 1, d),
        dropout_case((3, 5), 1.0, 2, d),
        sgd_case((37,), d, 0.9, 1e-4, True), sgd_case((5, 3), d, 0.0, 0.0, False),
        adam_case((37,), d, 1e-2, False, 1), adam_case((5, 3), d, 1e-2, True, 3),
        add_case((37,), d),
        bn_case((3, 4, 5), d), bn_case((4, 3, 1), d, affine=False, running="cumulative"),
        bn_case((2, 3, 4), d, training=False, want_dx=False),
        rnn_case("rnn", 2, 3, 4, 5, d), rnn_case("rnn", 2, 2, 3, 4, d, nonlin="relu", h0=False),
        rnn_case("lstm", 2, 3, 4, 5, d), rnn_case("lstm", 1, 2, 3, 4, d, h0=False, bias=False),
        rnn_case("gru", 2, 3, 4, 5, d), rnn_case("gru", 1, 2, 3, 4, d, want_dx=False,
                                                dout_given=False),
        embedding_case(9, 4, 3, d, 2), embedding_case(33, 11, 2, d, None, np.int32),
        sequence_copy_case(2, 3, 6, 3, 3, 0, 3, True, True, False, d),
    ]


# ---- running and comparing -------------------------------------------------------------

def _uncovered(cases, device):
    from fastnet.kernels import KERNELS
    covered = {op for case in cases for op in case.ops}
    return sorted(op for op, row in KERNELS.items() if device in row and op not in covered)


def _set_parallel_min_work(value):
    from fastnet.kernels import _jit
    if not hasattr(_jit, "PARALLEL_MIN_WORK"):
        raise SystemExit("kernel_snapshot: fastnet.kernels._jit.PARALLEL_MIN_WORK is gone: "
                         "update the script")
    old = _jit.PARALLEL_MIN_WORK
    _jit.PARALLEL_MIN_WORK = value
    return old


def run(cases, device, verbose):
    """-> ({key: array}, [(case name, error)])"""
    results, errors = {}, []
    runs = [("parallel", 0), ("serial", 1 << 62)] if device == "cpu" else [(None, None)]
    for build, threshold in runs:
        old = _set_parallel_min_work(threshold) if threshold is not None else None
        try:
            for case in cases:
                prefix = f"{device}/{build}/{case.name}" if build else f"{device}/{case.name}"
                ctx = Ctx(device, case.name)
                t0 = time.perf_counter()
                try:
                    got = case.fn(ctx)
                except Exception as e:  # a kernel mid-edit: report, go on
                    errors.append((prefix, f"{type(e).__name__}: {e}"))
                    print(f"ERROR {prefix}: {type(e).__name__}: {e}", flush=True)
                    continue
                if ctx.called != set(case.ops):
                    raise AssertionError(f"{case.name}: declares {sorted(case.ops)} but "
                                         f"called {sorted(ctx.called)}")
                for name, a in got.items():
                    if a is not None:
                        results[f"{prefix}/{name}"] = ctx.host(a)
                if verbose:
                    print(f"{time.perf_counter() - t0:8.2f} s  {prefix}", flush=True)
        finally:
            if old is not None:
                _set_parallel_min_work(old)
    return results, errors


def _case_of(key):
    """The case name in a key: cpu/{build}/{family}/{case}/{op.output} or
    cuda/{family}/{case}/{op.output}."""
    parts = key.split("/")
    return "/".join(parts[2:4] if parts[0] == "cpu" else parts[1:3])


def _bits_equal(a, b):
    return a.tobytes() == b.tobytes()


def compare_arrays(want, got):
    """None when equal, else a one-line description; ("note", text) when only the sign of
    a zero or a NaN payload differs."""
    if want.dtype != got.dtype:
        return f"dtype {want.dtype} -> {got.dtype}"
    if want.shape != got.shape:
        return f"shape {want.shape} -> {got.shape}"
    nan_ok = want.dtype.kind in "fc"
    if np.array_equal(want, got, equal_nan=nan_ok):
        return None if _bits_equal(want, got) else ("note", "equal, but bits differ "
                                                    "(signed zero or NaN payload)")
    w, g = want.reshape(-1), got.reshape(-1)
    if nan_ok:
        bad = ~((w == g) | (np.isnan(w) & np.isnan(g)))
    else:
        bad = w != g
    idx = np.flatnonzero(bad)
    first = np.unravel_index(idx[0], want.shape)
    msg = (f"{idx.size}/{w.size} elements differ; first at {tuple(int(i) for i in first)}: "
           f"{w[idx[0]]!r} -> {g[idx[0]]!r}")
    if nan_ok:
        with np.errstate(invalid="ignore", over="ignore"):
            d = np.abs(w[idx].astype(np.float64) - g[idx].astype(np.float64))
        d = d[np.isfinite(d)]
        if d.size:
            scale = np.max(np.abs(w[np.isfinite(w)]), initial=0.0)
            msg += f"; max |diff| {d.max():.3g} (max |value| {scale:.3g})"
    return msg


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["save", "compare", "list", "warm-up"],
                   help="warm-up: run the cases and keep nothing (what save and compare "
                        "first do in a child process)")
    p.add_argument("file", nargs="?", help="the .npz snapshot")
    p.add_argument("--cuda", action="store_true",
                   help="the CUDA column (tiny cases; NUMBA_ENABLE_CUDASIM=1 without a GPU)")
    p.add_argument("--filter", default="", help="only the cases whose name contains this")
    p.add_argument("--strict", action="store_true",
                   help="also fail on differences in signed zeros or NaN payloads")
    p.add_argument("-v", "--verbose", action="store_true", help="print each case's time")
    p.add_argument("--no-warm-up", action="store_true",
                   help="skip the child process that first fills Numba's cache")
    args = p.parse_args(argv)
    if args.mode in ("save", "compare") and not args.file:
        p.error(f"{args.mode} needs FILE")

    import fastnet
    device = "cuda" if args.cuda else "cpu"
    print(f"fastnet from {os.path.dirname(os.path.abspath(fastnet.__file__))}, "
          f"device {device}, numpy {np.__version__}", flush=True)
    if args.cuda:
        from fastnet import cuda as fcuda
        reason = fcuda.unavailable_reason()
        if reason is not None:
            print(f"kernel_snapshot: no CUDA: {reason} (set NUMBA_ENABLE_CUDASIM=1 for the "
                  "simulator)", file=sys.stderr)
            return 1
        print("CUDA " + ("simulator" if fcuda.simulator() else "GPU"), flush=True)
        if fcuda.simulator():  # the simulator runs the dropout hash's wrapping uint64
            # products as NumPy scalars, which warn (in its threads: not np.seterr)
            warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning)

    cases = cuda_cases() if args.cuda else cpu_cases()
    names = [c.name for c in cases]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        print(f"kernel_snapshot: duplicate case names: {dup}", file=sys.stderr)
        return 1
    missing = _uncovered(cases, device)
    if missing:
        print(f"kernel_snapshot: {len(missing)} op(s) of KERNELS have no {device} case here; "
              "add cases for them:\n  " + "\n  ".join(missing), file=sys.stderr)
        return 1
    cases = [c for c in cases if args.filter in c.name]
    if args.mode == "list":
        print("\n".join(c.name for c in cases))
        return 0

    if args.mode in ("save", "compare") and device == "cpu" and not args.no_warm_up:
        # NOTE: a kernel compiled in this process can give other bits than the same kernel
        # loaded from Numba's on-disk cache (measured on the baseline: 89 of 3142 arrays,
        # softmax rows of 33-1000 float32 values, batch norm and LSTM / GRU backward, off
        # by an ulp). Users run cached code after their first run, so both save and
        # compare compute with it: a child process compiles whatever is not cached yet.
        t0 = time.perf_counter()
        child = [sys.executable, os.path.abspath(__file__), "warm-up", "--filter", args.filter]
        done = subprocess.run(child, stdout=subprocess.DEVNULL)
        print(f"warm-up (a child process fills Numba's cache): {time.perf_counter() - t0:.1f} s"
              + ("" if done.returncode == 0 else f", exit status {done.returncode}"), flush=True)
    t0 = time.perf_counter()
    results, errors = run(cases, device, args.verbose)
    elapsed = time.perf_counter() - t0
    print(f"{len(cases)} cases, {len(results)} arrays in {elapsed:.1f} s", flush=True)
    if args.mode == "warm-up":
        return 0

    if args.mode == "save":
        np.savez_compressed(args.file, **results)
        print(f"saved {args.file}")
        if errors:
            print(f"{len(errors)} case run(s) raised (their keys are missing)", file=sys.stderr)
            return 1
        return 0

    with np.load(args.file) as snap:
        want = {k: snap[k] for k in snap.files}
    names = {c.name for c in cases}
    wanted = {k for k in want if k.startswith(f"{device}/") and _case_of(k) in names}
    mismatches, notes = 0, 0
    for key in sorted(wanted):
        if key not in results:
            print(f"MISSING  {key}")
            mismatches += 1
            continue
        d = compare_arrays(want[key], results[key])
        if isinstance(d, tuple):
            notes += 1
            print(f"{'MISMATCH' if args.strict else 'NOTE    '} {key}: {d[1]}")
            mismatches += args.strict
        elif d is not None:
            print(f"MISMATCH {key}: {d}")
            mismatches += 1
    new = sorted(set(results) - set(want))
    for key in new:
        print(f"NEW      {key} (not in the snapshot)")
    mismatches += len(errors)
    print(f"compared {len(wanted)} arrays: {mismatches} mismatch(es) "
          f"({len(errors)} case run(s) raised), {notes} bit-only note(s), {len(new)} new key(s)")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
