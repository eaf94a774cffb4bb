"""The dispatch table (fastnet.kernels.KERNELS / kernel()); the float32-purity check of
every compiled CPU kernel is in test_float32.py."""
import inspect
import re
import types

import numpy as np
import pytest
from numba import prange
from numba.core.registry import CPUDispatcher

from fastnet.kernels import KERNELS, kernel
from fastnet.kernels._jit import is_parallel_kernel
from tests.kernels.modules import kernel_modules

MODULES = kernel_modules()


@pytest.fixture(autouse=True)
def kernel_build():
    """Overrides the serial/parallel parametrisation of tests/kernels/conftest.py: these
    tests look at the table and at both builds of every kernel themselves."""
    return "both"


def test_every_op_has_a_cpu_kernel():
    """Every row of the table has a callable "cpu" entry, and kernel(op) a callable (the
    kernel behind its argument checks)."""
    assert KERNELS
    for op, row in KERNELS.items():
        assert "cpu" in row and callable(row["cpu"]), op
        assert callable(kernel(op)) and callable(kernel(op, "cpu"))


def test_every_backward_has_its_forward():
    """An op named *_backward has a matching *_forward in the table."""
    for op in KERNELS:
        if op.endswith("_backward"):
            assert op[: -len("_backward")] + "_forward" in KERNELS, op


def test_table_rows_name_their_kernels():
    """Each cpu entry is the module function of the same name (the table is literal)."""
    for op, row in KERNELS.items():
        fn = row["cpu"]
        name = getattr(fn, "__name__", None) or fn.py_func.__name__
        assert name == op, f"{op} -> {name}"


def test_every_public_kernel_is_in_the_table():
    """Public *_forward / *_backward / *_step functions of the kernel modules are all dispatched."""
    table = {id(row["cpu"]) for row in KERNELS.values()}
    for mod in MODULES:
        for name, obj in vars(mod).items():
            if name.startswith("_") or not re.search(r"_(forward|backward|step)$", name):
                continue
            if getattr(obj, "__module__", None) != mod.__name__ and not isinstance(obj, CPUDispatcher):
                continue
            assert id(obj) in table, f"{mod.__name__}.{name} is not in KERNELS"


def test_every_kernel_has_a_docstring():
    """Each public kernel carries its (shape) docstring."""
    for op, row in KERNELS.items():
        fn = row["cpu"]
        doc = getattr(fn, "py_func", fn).__doc__
        assert doc and doc.strip(), op


def test_each_backward_sits_below_its_forward():
    """In each module the public X_backward is defined right after X_forward."""
    for mod in MODULES:
        public = []
        for name, obj in vars(mod).items():
            fn = getattr(obj, "py_func", obj)
            if (not name.startswith("_") and isinstance(fn, types.FunctionType)
                    and fn.__module__ == mod.__name__):
                public.append((fn.__code__.co_firstlineno, name))
        order = [name for _, name in sorted(public)]
        for k, name in enumerate(order):
            if name.endswith("_backward"):
                fwd = name[: -len("_backward")] + "_forward"
                assert k > 0 and order[k - 1] == fwd, f"{mod.__name__}: {name} follows {order[:k][-1:]}"


def test_serialised_dispatch_wraps_and_returns(monkeypatch):
    """Under Numba's workqueue layer kernel() hands out a locking wrapper (one per kernel)
    that passes the arguments through and returns the kernel's result."""
    from fastnet import runtime
    runtime.start()
    monkeypatch.setattr(runtime, "_SERIALISE", True)
    monkeypatch.setattr(runtime, "READY", False)
    fn = kernel("mse_forward")
    assert fn is not KERNELS["mse_forward"]["cpu"] and kernel("mse_forward") is fn
    pred, target = np.array([1.0, 2.0]), np.array([0.0, 0.0])
    grad = np.empty(2)
    assert fn(grad, pred, target) == 2.5
    np.testing.assert_array_equal(grad, [1.0, 2.0])


def _params(fn):
    return list(inspect.signature(getattr(fn, "py_func", fn)).parameters)


def test_every_op_has_a_cuda_kernel_with_the_cpu_signature():
    """Every row has a "cuda" entry naming a launcher of fastnet.kernels.cuda with the cpu
    kernel's parameters. (Importing the CUDA modules needs numba-cuda, not a GPU.)"""
    import importlib

    from fastnet.kernels import CudaKernel

    pytest.importorskip("numba_cuda", reason="the cuda extra is not installed")
    for op, row in KERNELS.items():
        entry = row.get("cuda")
        assert isinstance(entry, CudaKernel) and entry.name == op, op
        launcher = getattr(importlib.import_module(f"fastnet.kernels.cuda.{entry.family}"), op)
        assert _params(launcher) == _params(row["cpu"]), op


def test_kernel_family_builds_each_member_once():
    """A KernelFamily builds one parallel kernel per key, on first use, and keeps it; the
    constants reach the kernel as its closure (what Numba's cache keys members on)."""
    from fastnet.kernels._jit import KernelFamily

    def make(scale):
        def kernel(out, x):
            for i in prange(x.size):
                out[i] = x[i] * scale
        return kernel

    fam = KernelFamily(make)
    assert fam.members() == {} and fam.dispatchers() == ()
    x = np.arange(5, dtype=np.float32)
    for scale in (2, 3):
        out = np.empty_like(x)
        fam[scale](out, x)
        np.testing.assert_array_equal(out, x * scale)
    assert fam[2] is fam[2] and fam[2] is not fam[3]
    assert set(fam.members()) == {2, 3} and len(fam.dispatchers()) == 4
    assert is_parallel_kernel(fam[2]) and fam[2].py_func.__closure__[0].cell_contents == 2


def test_jit_seconds_and_the_first_compile_callback():
    """on_first_compile calls back once, when one of fastnet's kernels compiles (not a
    user's Numba function), and only within its block; jit_seconds counts the compile."""
    from numba import njit

    from fastnet.kernels._jit import jit_seconds, on_first_compile

    def jitted(module):  # compiled for each call of this test: never in the cache
        def f(x):
            return x + 1
        f.__module__ = module
        return njit(f)

    calls = []
    before = jit_seconds()
    with on_first_compile(lambda: calls.append("compiling")):
        assert jitted("user_code")(1) == 2 and calls == []
        k = jitted("fastnet.kernels.stand_in")
        assert k(1) == 2 and k(1.5) == 2.5  # two signatures, two compiles: one call
    assert calls == ["compiling"] and jit_seconds() > before
    assert jitted("fastnet.kernels.stand_in")(1) == 2 and calls == ["compiling"]


def test_unknown_op_or_device_raises():
    """kernel() names what is missing: an unknown op or device is a RuntimeError."""
    with pytest.raises(RuntimeError, match="no_such_op"):
        kernel("no_such_op")
    with pytest.raises(RuntimeError, match="tpu"):
        kernel("relu_forward", "tpu")


def test_device_object_is_accepted():
    """kernel(op, device) takes anything whose str() is the device name (fastnet.Device)."""
    class Dev:
        def __str__(self):
            return "cpu"

    x = np.array([-1.0, 2.0])
    out = np.empty_like(x)
    kernel("relu_forward", Dev())(out, x)
    np.testing.assert_array_equal(out, [0.0, 2.0])
