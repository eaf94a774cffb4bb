"""fastnet on CUDA against PyTorch on CUDA, on the same GPU (PyTorch in its own process,
as on the CPU: conftest.py): a square
FP32 GEMM (TF32 off), the cost of a kernel launch, and the cases of the CPU suite's
families (dense, conv, pooling, activations and softmax, cross-entropy, batch norm,
dropout, SGD / Adam steps, LSTM, embedding, whole training steps), the inputs on the GPU before
timing, every timed call ending with a device synchronisation.

Skipped without a usable GPU (``fastnet.cuda.is_available()``), and in Numba's CUDA
simulator unless FASTNET_BENCH_QUICK=1 (tiny shapes). ``benchmarks/cuda_bench.py`` prints
the same cases as one table, each PyTorch result checked against fastnet's.
"""
import functools
import importlib.util
import os
import subprocess
import sys

import pytest

from fastnet import cuda

QUICK = os.environ.get("FASTNET_BENCH_QUICK", "0") == "1"  # as conftest.py reads it


def _skip_reason():
    reason = cuda.unavailable_reason()
    if reason is not None:
        return f"no CUDA GPU: {reason}"
    if cuda.simulator() and not QUICK:
        return ("Numba's CUDA simulator runs each GPU thread as a Python thread: benchmark "
                "shapes need a GPU (FASTNET_BENCH_QUICK=1 runs the tiny shapes)")
    return None


@functools.cache
def _torch_cuda_reason():
    if importlib.util.find_spec("torch") is None:
        return "PyTorch is not installed"
    # asked in a process of its own: torch is not imported into fastnet's
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                           capture_output=True, text=True)
    if probe.stdout.strip() != "True":
        return "this PyTorch has no CUDA (or sees no GPU)"
    return None


def test_cuda(run_case, cuda_case, impl):
    if (reason := _skip_reason()) is not None:
        pytest.skip(reason)
    if impl == "torch" and (reason := _torch_cuda_reason()) is not None:
        pytest.skip(reason)
    run_case(cuda_case, impl, "cuda")
