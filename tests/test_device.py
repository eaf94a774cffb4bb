"""Devices without a GPU: availability, the reasons given, and the CPU side of the
device rules (the tests marked `cuda` check the CUDA side in the simulator or on a GPU)."""
import importlib.util

import numpy as np
import pytest

import fastnet
from fastnet.device import CPU, Device, device_of, to_numpy
from fastnet.layers import Dense


def test_cpu_always_available_and_device_equality():
    assert fastnet.is_available("cpu") and not fastnet.is_available("tpu")
    assert Device("cpu") == "cpu" == CPU and device_of(np.zeros(2)) == CPU
    assert to_numpy(np.ones(2)).sum() == 2
    with pytest.raises(TypeError, match="expected a numpy.ndarray or a CUDA array, got list"):
        device_of([1.0])


def test_missing_numba_cuda_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "numba_cuda" else real(name, *a))
    assert "pip install \"fastnet[cuda]\"" in fastnet.cuda.unavailable_reason()
    with pytest.raises(RuntimeError, match=r"fastnet\[cuda\]"):
        Device("cuda")


@pytest.mark.skipif(fastnet.cuda.is_available(), reason="a GPU is present")
def test_without_gpu_cuda_is_unavailable_and_kernels_refuse():
    assert not fastnet.cuda.is_available()
    with pytest.raises(RuntimeError, match="device 'cuda' is not available"):
        Dense(2, 2).to("cuda")
    with pytest.raises(RuntimeError, match="cannot run the CUDA kernel relu_forward"):
        fastnet.kernels.kernel("relu_forward", "cuda")(np.zeros(1), np.zeros(1))


def test_import_does_not_import_numba_cuda():
    """`import fastnet` (and CPU training) never loads the CUDA target."""
    import subprocess
    import sys

    code = ("import sys, numpy as np, fastnet; from fastnet.layers import Dense; "
            "Dense(3, 2)(np.ones((1, 3), np.float32)); "
            "print(any(m.startswith('numba_cuda') or m == 'numba.cuda' for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
