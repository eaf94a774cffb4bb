"""Benchmarks of fastnet against the same maths in NumPy, PyTorch and ONNX Runtime.

``cases.all_cases()`` lists every case; ``case.build(impl)`` gives a ``Bench`` for impl
"fastnet", "numpy", "torch" or, where ``case.ort``, "onnxruntime" (``case.impls``).
``benchmarks/`` (pytest-benchmark) and ``python -m fastnet bench`` (runner.py) both time
these cases, fastnet and NumPy in a process that imported NumPy first, PyTorch and ONNX
Runtime each in a process of its own (worker.py). ``cases.cuda_cases()`` lists those that
run on a GPU (``case.build(impl, device="cuda")``, fastnet and torch), timed by
``benchmarks/test_cuda.py`` and ``benchmarks/cuda_bench.py``.
"""
from .cases import (IMPLS, TOLERANCE, Bench, Case, all_cases, available, compare, cuda_cases,
                    torch_available)

__all__ = ["IMPLS", "TOLERANCE", "Bench", "Case", "all_cases", "available", "compare",
           "cuda_cases", "torch_available"]
