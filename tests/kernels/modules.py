"""The CPU kernel modules (fastnet/kernels/, without the CUDA backend and the vector
code of _simd/, whose intrinsics are tested against their twins in tests/kernels/_simd/)."""
import importlib
import pkgutil

import fastnet.kernels


def kernel_modules():
    """Every CPU kernel module: the families and the modules of the conv package."""
    out = []
    for info in pkgutil.walk_packages(fastnet.kernels.__path__, "fastnet.kernels."):
        name = info.name
        if ".cuda" in name or "._simd" in name or name.endswith(("._jit", ".codes")):
            continue
        out.append(importlib.import_module(name))
    return out
