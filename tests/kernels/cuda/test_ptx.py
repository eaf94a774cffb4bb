"""Every CUDA kernel compiles to real PTX (numba.cuda.compile_ptx, no GPU needed) for the
commodity architectures sm_75 (Turing), sm_86 (Ampere) and sm_89 (Ada), and the PTX of
its float32 build has no double-precision instruction: a float64 literal or a Python
float argument in a float32 kernel silently halves (or worse) its speed on a GeForce
card, whose FP64 rate is 1/64 of FP32."""
import importlib
import re

import pytest
from numba import cuda

from .ptx_signatures import SIGNATURES

ARCHS = [(7, 5), (8, 6), (8, 9)]
F64 = re.compile(r"^\s*[^/\s][^\n]*\.f64\b", re.M)  # an instruction, not a comment


def _signatures(family):
    return SIGNATURES[family]()


def _raw_kernels(family):
    """Every @cuda.jit kernel (not device function) defined at the module's top level."""
    from numba.cuda.dispatcher import CUDADispatcher

    module = importlib.import_module(f"fastnet.kernels.cuda.{family}")
    return {name for name, obj in vars(module).items()
            if isinstance(obj, CUDADispatcher) and name.startswith("_")
            and not obj.targetoptions.get("device")}


@pytest.mark.parametrize("family", list(SIGNATURES))
def test_every_kernel_has_a_ptx_signature(family):
    listed = {getattr(k, "__name__", None) or k.py_func.__name__ for k, _ in _signatures(family)}
    missing = _raw_kernels(family) - listed
    assert not missing, f"{family}: kernels without a float32 PTX signature: {sorted(missing)}"


@pytest.mark.parametrize("cc", ARCHS, ids=lambda cc: f"sm_{cc[0]}{cc[1]}")
@pytest.mark.parametrize("family", list(SIGNATURES))
def test_float32_ptx_has_no_f64(family, cc):
    for kern, sig in _signatures(family):
        ptx, _ = cuda.compile_ptx(kern.py_func, sig, cc=cc)
        assert f".target sm_{cc[0]}{cc[1]}" in ptx
        name = kern.py_func.__name__
        bad = F64.findall(ptx)
        assert not bad, f"{family}.{name}{sig}: double precision in float32 PTX: {bad[:3]}"


def test_every_family_has_signatures():
    """Every public module of fastnet/kernels/cuda (a kernel family) is listed."""
    import pkgutil

    import fastnet.kernels.cuda as package

    families = {m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_")}
    assert families == set(SIGNATURES)


def test_the_f64_check_catches_a_promotion():
    """A float32 kernel with a bare Python float literal does get caught."""
    from numba import float32

    def scaled(out, x):
        i = cuda.grid(1)
        if i < out.size:
            out[i] = x[i] * 0.1  # float64 literal: the multiply happens in double

    ptx, _ = cuda.compile_ptx(scaled, (float32[::1], float32[::1]), cc=(8, 6))
    assert F64.findall(ptx)
