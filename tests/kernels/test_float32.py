"""float32 purity: no double-precision arithmetic in any float32 specialization of any
compiled CPU kernel (after running every op of the table on float32 inputs)."""
import re

import numba
import numpy as np
import pytest
from numba import prange
from numba.core import types as nbtypes
from numba.core.registry import CPUDispatcher

from fastnet.kernels import KERNELS, activations, kernel
from fastnet.kernels._jit import KernelFamily, is_parallel_kernel
from tests.kernels.modules import kernel_modules

MODULES = kernel_modules()


@pytest.fixture(autouse=True)
def kernel_build():
    """Overrides the serial/parallel parametrisation of tests/kernels/conftest.py: the scan
    runs every kernel and inspects both builds of each itself."""
    return "both"


# fpext (float -> double) and any double arithmetic or f64 math intrinsic. fptrunc
# (double -> float) is allowed: it is how Python-float hyper-parameters are cast to the
# array's dtype once, outside the loops.
DOUBLE_OP = re.compile(r"\b(fpext|fadd|fsub|fmul|fdiv|frem|fcmp|fneg)\b[^\n]*\bdouble\b"
                       r"|\bcall\b[^\n]*\bdouble\b[^\n]*@llvm\.[a-z.]+\.f64\b")


def _double_ops(llvm_ir):
    # Numba's CPython wrapper (@_ZN7cpython...) boxes a returned float32 as a Python
    # float, through a double: that is the call's result, not the kernel's arithmetic
    functions = re.split(r"^(?=define )", llvm_ir, flags=re.M)
    body = "".join(f for f in functions if not re.match(r"define [^\n]*@_ZN7cpython", f))
    return [m.group(0).strip()[:160] for m in DOUBLE_OP.finditer(body)]


def _exercise_conv_float32(call, a, xi, wc, st, pd, oh, ow):
    f = np.float32
    out = np.empty((2, 4, oh, ow), f)
    for act in (None, "relu"):
        for bias in (a(4), None):
            call("conv2d_forward", out, xi, wc, bias, st, pd, act)
        for dx, db in ((np.empty_like(xi), np.empty(4, f)), (None, None)):
            call("conv2d_backward", dx, np.empty_like(wc), db, a(*out.shape), xi, wc,
                 out if act else None, st, pd, act)
    # an inf input makes the fast dw non-finite: dw from the valid products (exact_dw.py)
    xn = xi.copy()
    xn.flat[0] = np.inf
    for act in (None, "relu"):
        call("conv2d_backward", None, np.empty_like(wc), None, a(*out.shape), xn, wc,
             out if act else None, st, pd, act)
    # stride 1, padded and not, padding past KH-1, dx of one input channel (the direct
    # kernels), C*KH*KW > 150; 12 output channels: dw on the channel-vector tiles (with
    # AVX-512, 8 or fewer take the dot-product tiles)
    for wc1 in (wc, a(3, 1, 3, 2), a(2, 17, 3, 3), a(12, 2, 3, 3)):
        xi1 = a(2, wc1.shape[1], 6, 5)
        for pd1 in ((1, 1), (0, 0), (3, 1)):
            out1 = np.empty((2, wc1.shape[0], 6 - 3 + 1 + 2 * pd1[0], 5 - wc1.shape[3] + 1 + 2 * pd1[1]), f)
            call("conv2d_forward", out1, xi1, wc1, None, (1, 1), pd1, "relu")
            call("conv2d_backward", np.empty_like(xi1), np.empty_like(wc1), np.empty(wc1.shape[0], f),
                 a(*out1.shape), xi1, wc1, out1, (1, 1), pd1, "relu")
    # dilation and groups (conv/grouped.py): depthwise x2 (dx, dw and db in one pass), every
    # activation
    xg, wg = a(2, 2, 7, 6), a(4, 1, 3, 2)
    outg = np.empty((2, 4, 3, 3), f)
    for act in (None, "relu", "sigmoid", "tanh"):
        call("conv2d_forward", outg, xg, wg, None, (1, 2), (0, 1), act, (2, 2), 2)
        call("conv2d_backward", np.empty_like(xg), np.empty_like(wg), np.empty(4, f),
             a(*outg.shape), xg, wg, outg if act else None, (1, 2), (0, 1), act, (2, 2), 2)
    # depthwise without dw (a frozen weight: dx alone) and without db; two input channels
    # per group (the general dw, dx and db kernels)
    call("conv2d_backward", np.empty_like(xg), None, None, a(*outg.shape), xg, wg, None, (1, 2),
         (0, 1), None, (2, 2), 2)
    xg2, wg2 = a(2, 4, 7, 6), a(4, 2, 3, 2)
    call("conv2d_forward", outg, xg2, wg2, None, (1, 2), (0, 1), None, (2, 2), 2)
    call("conv2d_backward", np.empty_like(xg2), np.empty_like(wg2), np.empty(4, f),
         a(*outg.shape), xg2, wg2, None, (1, 2), (0, 1), None, (2, 2), 2)


def _exercise_float32():
    """Run every op of the table on small float32 inputs (all None variants included);
    returns the ops that were run."""
    f = np.float32
    r = np.random.default_rng(0)
    run = set()

    def call(op, *args):
        run.add(op)
        return kernel(op)(*args)

    def a(*shape):
        return r.standard_normal(shape).astype(f)

    w, b = a(5, 6), a(5)
    for rows in (1, 4):  # the dot-product paths (batch 1), the tiles
        x = a(rows, 6)
        y = np.empty((rows, 5), f)
        for act in (None, "relu", "tanh"):
            for bias in (b, None):
                call("dense_forward", y, x, w, bias, act)
                for dx, db in ((np.empty_like(x), np.empty_like(b)), (None, None)):
                    call("dense_backward", dx, np.empty_like(w), db, a(rows, 5), x, w, y, act)
    # 48 outputs from 2 inputs: the weight gradient a.T @ b with a the larger operand takes
    # kernels/gemm.py's gemm_tn (and pack_blocks)
    w2, x2 = a(48, 2), a(3, 2)
    y2 = np.empty((3, 48), f)
    call("dense_forward", y2, x2, w2, None, None)
    call("dense_backward", np.empty_like(x2), np.empty_like(w2), np.empty(48, f), a(3, 48), x2,
         w2, y2, None)

    xi, wc = a(2, 3, 6, 5), a(4, 3, 3, 2)
    ks, st, pd = (3, 2), (2, 1), (1, 1)
    oh, ow = (6 + 2 - 3) // 2 + 1, (5 + 2 - 2) // 1 + 1
    cols = np.empty((3 * 3 * 2, 2 * oh * ow), f)
    call("im2col", cols, xi, ks, st, pd)
    call("col2im", np.empty_like(xi), cols, ks, st, pd)
    _exercise_conv_float32(call, a, xi, wc, st, pd, oh, ow)

    pooled = np.empty((2, 3, oh, ow), f)
    argmax = np.empty(pooled.shape, np.int32)
    call("max_pool2d_forward", pooled, argmax, xi, ks, st, pd)
    call("max_pool2d_backward", np.empty_like(xi), a(*pooled.shape), argmax, ks, st, pd)
    call("avg_pool2d_forward", pooled, xi, ks, st, pd)
    call("avg_pool2d_backward", np.empty_like(xi), a(*pooled.shape), ks, st, pd)
    pooled2 = np.empty((2, 3, 3, 2), f)  # 2x2 / stride 2 / no padding: its own kernels
    argmax2 = np.empty(pooled2.shape, np.int32)
    call("max_pool2d_forward", pooled2, argmax2, xi, (2, 2), (2, 2), (0, 0))
    call("avg_pool2d_forward", pooled2, xi, (2, 2), (2, 2), (0, 0))
    call("max_pool2d_backward", np.empty_like(xi), a(*pooled2.shape), argmax2, (2, 2), (2, 2), (0, 0))
    call("avg_pool2d_backward", np.empty_like(xi), a(*pooled2.shape), (2, 2), (2, 2), (0, 0))
    lp = np.empty((2, 3, xi.shape[2] - 1, xi.shape[3] - 1), f)  # every pow code compiles in one kernel
    call("lp_pool2d_forward", lp, xi, 1.5, (2, 2), (1, 1))
    call("lp_pool2d_backward", np.empty_like(xi), a(*lp.shape), xi, 3, (2, 2), (1, 1))

    z, g = a(3, 7), a(3, 7)
    for name in ("relu", "sigmoid", "tanh", "softmax", "log_softmax"):
        o = np.empty_like(z)
        call(f"{name}_forward", o, z)
        call(f"{name}_backward", np.empty_like(z), g, o)
    call("leaky_relu_forward", np.empty_like(z), z, 0.1)
    call("leaky_relu_backward", np.empty_like(z), g, z, 0.1)
    call("hardsigmoid_forward", np.empty_like(z), z)
    call("hardsigmoid_backward", np.empty_like(z), g, z)

    labels = np.array([0, 6, 3])
    for grad in (np.empty_like(z), None):
        call("softmax_cross_entropy_forward", grad, z, labels)
        call("mse_forward", grad, z, g)
    w3 = a(7)
    for red in ("mean", "none"):
        out, grad = (np.empty(3, f), None) if red == "none" else (None, np.empty_like(z))
        call("cross_entropy_forward", out, grad, z, labels, w3, -100, 0.1, False, red)
        out, grad = (np.empty_like(z), None) if red == "none" else (None, np.empty_like(z))
        call("bce_with_logits_forward", out, grad, z, g, z, w3, red)
        call("pointwise_loss_forward", out, grad, z, g, "huber", 0.5, red)
    call("cross_entropy_backward", np.empty_like(z), a(3), z, labels, None, -100, 0.0, True)
    call("bce_with_logits_backward", np.empty_like(z), g, z, g, None, None)
    call("pointwise_loss_backward", np.empty_like(z), g, z, g, "smooth_l1", 0.5)

    mask = np.empty(z.shape, np.uint8)
    call("dropout_forward", np.empty_like(z), mask, z, 0.5, 3)
    call("dropout_backward", np.empty_like(z), g, mask, 0.5)

    p = a(10)
    for vel in (np.zeros(10, f), None):
        call("sgd_step", p, vel, a(10), 0.1, 0.9 if vel is not None else 0.0, 0.01, True)
    for decoupled in (False, True):
        call("adam_step", p, np.zeros(10, f), np.zeros(10, f), a(10), 1e-3, 0.9, 0.999, 1e-8,
             0.01, 1, decoupled)
    call("accumulate", p, a(10))
    call("add", np.empty_like(p), p, a(10))
    for norm_type in (2.0, 1.0, float("inf"), 3.0):
        call("vector_norm", np.empty(1, f), p, norm_type)
    call("scale", p, 0.5)
    call("clamp", p, -0.5, 0.5)

    x3, c3 = a(3, 4, 5), np.empty((4,), f)
    for training in (True, False):
        for affine in (True, False):
            wb = (a(4), a(4)) if affine else (None, None)
            for running in ((np.zeros(4, f), np.ones(4, f), np.zeros((), np.int64)),
                            (None, None, None)):
                if not training and running[0] is None:
                    continue
                for momentum in (0.1, None) if running[0] is not None else (0.1,):
                    call("batch_norm_forward", np.empty_like(x3), c3, np.ones(4, f), *running,
                         x3, *wb, training, momentum, 1e-5)
            for dx in (np.empty_like(x3), None):
                dwb = (np.empty(4, f), np.empty(4, f)) if affine else (None, None)
                call("batch_norm_backward", dx, *dwb, a(3, 4, 5), x3, wb[0], c3, np.ones(4, f))
    x2, m2 = a(3, 5), np.empty(3, f)
    for wb in ((a(5), a(5)), (a(5), None), (None, None)):
        call("layer_norm_forward", np.empty_like(x2), m2, np.ones(3, f), x2, *wb, 1e-5)
        for outs in ((np.empty_like(x2), np.empty(5, f), np.empty(5, f)),
                     (None, np.empty(5, f), None), (None, None, np.empty(5, f))):
            call("layer_norm_backward", *outs, a(3, 5), x2, wb[0], m2, np.ones(3, f))
    call("global_avg_pool2d_forward", np.empty((2, 3), f), xi)
    call("global_avg_pool2d_backward", np.empty_like(xi), a(2, 3))

    n, t, fi, h = 2, 3, 4, 5  # recurrent: with and without biases / states / dout
    xr, out = a(n, t, fi), np.empty((n, t, h), f)
    for bias, h0 in ((True, a(n, h)), (False, None)):
        g = {k: (a(k * h, fi), a(k * h, h), a(k * h) if bias else None, a(k * h) if bias else None)
             for k in (1, 3, 4)}
        dw = {k: tuple(None if v is None else np.empty_like(v) for v in g[k]) for k in g}
        dh0 = None if h0 is None else np.empty_like(h0)
        dout = a(n, t, h) if bias else None
        for act in ("tanh", "relu"):
            call("rnn_forward", out, np.empty((n, h), f), xr, h0, *g[1], act)
            call("rnn_backward", np.empty_like(xr), dh0, *dw[1], dout, a(n, h), xr, h0,
                 g[1][0], g[1][1], out, act)
        gates, cells = np.empty((n, t, 4 * h), f), np.empty((n, t, h), f)
        call("lstm_forward", out, np.empty((n, h), f), np.empty((n, h), f), gates, cells, xr,
             h0, h0, *g[4])
        dc0 = None if h0 is None else np.empty_like(h0)  # (not dh0: outputs may not overlap)
        call("lstm_backward", np.empty_like(xr), dh0, dc0, *dw[4], dout, a(n, h), a(n, h),
             xr, h0, h0, g[4][0], g[4][1], out, gates, cells)
        gates = np.empty((n, t, 3 * h), f)
        call("gru_forward", out, np.empty((n, h), f), gates, cells, xr, h0, *g[3])
        call("gru_backward", np.empty_like(xr), dh0, *dw[3], dout, a(n, h), xr, h0, g[3][0],
             g[3][1], out, gates, cells)
    idx = np.array([2, 0, 2, 1], np.int64)
    emb_out = np.empty((4, 3), f)
    call("embedding_forward", emb_out, idx, a(3, 3))
    for pad in (None, 1):
        call("embedding_backward", np.empty((3, 3), f), a(4, 3), idx, pad)
    for reverse in (False, True):
        call("sequence_copy", np.empty((t, n, 2 * h), f), out, h, 0, h, reverse, True, False)
    return run


def _is_float32_signature(sig):
    """Float arrays all float32 (a call that mixes in float64 arrays computes in double,
    as NumPy would: tests make such calls on purpose)."""
    floats = [t.dtype for t in sig if isinstance(t, nbtypes.Array) and isinstance(t.dtype, nbtypes.Float)]
    return bool(floats) and all(d == nbtypes.float32 for d in floats)


def _float32_llvm(disp, sig):
    """Optimised LLVM IR of disp's specialization for sig. A specialization loaded from
    Numba's on-disk cache has no IR (inspect_llvm returns a stub), so those are
    recompiled into a fresh, uncached dispatcher with the same options."""
    if sig in disp.signatures and disp.stats.cache_hits.get(sig, 0) == 0:
        ir = disp.inspect_llvm(sig)
        if "define " in ir:
            return ir
    options = {k: v for k, v in disp.targetoptions.items() if k not in ("cache", "nopython")}
    fresh = numba.njit(**options)(disp.py_func)
    fresh.compile(sig)
    return fresh.inspect_llvm(sig)


def _parallel_kernels():
    """(name, parallel kernel, family) for every parallel kernel in the kernel modules,
    each member of a KernelFamily built so far under its key (family True)."""
    for mod in MODULES:
        for name, obj in vars(mod).items():
            if isinstance(obj, KernelFamily) and obj.__module__ == mod.__name__:
                for key, k in obj.members().items():
                    yield f"{mod.__name__}.{name}{list(key) if isinstance(key, tuple) else [key]}", k, True
            elif is_parallel_kernel(obj) and obj.py_func.__module__ == mod.__name__:
                yield f"{mod.__name__}.{name}", obj, False


def _kernel_dispatchers():
    """(name, dispatcher, family) for every Numba kernel in the kernel modules; a parallel
    kernel contributes its parallel and its serial build."""
    seen = {}
    for mod in MODULES:
        for name, obj in vars(mod).items():
            if isinstance(obj, CPUDispatcher) and obj.py_func.__module__ == mod.__name__:
                seen[id(obj)] = (f"{mod.__name__}.{name}", obj, False)
    for name, k, family in _parallel_kernels():
        seen[id(k.parallel)] = (f"{name}[parallel]", k.parallel, family)
        seen[id(k.serial)] = (f"{name}[serial]", k.serial, family)
    return list(seen.values())


def _twin_signatures(disp):
    """Signatures compiled for disp or, for a parallel kernel's build, for its twin build
    (small test inputs only ever reach the serial one)."""
    for _, k, _ in _parallel_kernels():
        if disp in k.dispatchers():
            return set(k.parallel.signatures) | set(k.serial.signatures)
    return set(disp.signatures)


def test_detector_flags_float64_promotion():
    """Self-test of the purity check: x[i] * 0.1 on float32 computes in double (flagged);
    x.dtype.type(0.1) keeps it float32 (not flagged), also when the kernel returns it. (x * 0.5 is exact in float32 and
    LLVM legitimately folds it back, so 0.1 is the honest probe.)"""
    def promoted(out, x):
        for i in prange(x.size):
            out[i] = x[i] * 0.1

    def typed(out, x):
        c = x.dtype.type(0.1)
        for i in prange(x.size):
            out[i] = x[i] * c if x[i] > 0 else x.dtype.type(0)

    def returns_promoted(out, x):
        out[0] = x[0] * x.dtype.type(0.1)
        return x[0] * 0.1

    def returns_float32(out, x):  # boxed as a Python float by the wrapper: not flagged
        out[0] = x[0] * x.dtype.type(0.1)
        return out[0]

    x = np.ones(16, np.float32)
    opts = dict(parallel=True, fastmath=activations.FASTMATH, nogil=True)
    for fn, want in ((promoted, True), (typed, False), (returns_promoted, True),
                     (returns_float32, False)):
        d = numba.njit(**opts)(fn)
        d(np.empty_like(x), x)
        (sig,) = d.signatures
        assert bool(_double_ops(_float32_llvm(d, sig))) == want, fn.__name__


# Helpers compiled on their own (for their own fast-math flags) and called by kernels: when
# their callers come from the on-disk cache they are never compiled.
CALLED_BY_KERNELS = {"fastnet.kernels.activations._sum_exp_shifted",
                     "fastnet.kernels.activations._exp_shifted"}


def test_float32_kernels_do_no_double_arithmetic():
    """After running every kernel on float32 inputs, no float32 specialization of any
    Numba kernel in fastnet.kernels contains double-precision arithmetic."""
    run = _exercise_float32()
    assert run == set(KERNELS), f"not exercised: {set(KERNELS) - run}"
    offenders = {}
    checked_families = set()
    for name, disp, family in _kernel_dispatchers():
        if disp.targetoptions.get("inline") == "always":
            continue  # inlined into the kernels below, checked through them
        if name in CALLED_BY_KERNELS:
            continue  # checked inside its callers' IR, which links its code in
        sigs = [s for s in _twin_signatures(disp) if _is_float32_signature(s)]
        if family and not sigs:
            continue  # a member that other tests built for float64 only (its key depends
            # on the vector length in values): nothing to check; see families below
        assert sigs, f"{name} was never compiled for float32"
        if family:
            checked_families.add(name.split("[")[0])
        for sig in sigs:
            ir = _float32_llvm(disp, sig)
            assert "define " in ir, f"{name}{sig}: no LLVM IR to inspect"
            found = _double_ops(ir)
            if found:
                offenders[f"{name}{sig}"] = found[:3]
    families = {f"{m.__name__}.{n}" for m in MODULES for n, o in vars(m).items()
                if isinstance(o, KernelFamily) and o.__module__ == m.__name__}
    assert families and families <= checked_families, families - checked_families
    assert not offenders, "double-precision arithmetic in float32 kernels:\n" + "\n".join(
        f"{k}:\n    " + "\n    ".join(v) for k, v in offenders.items())
