"""Benchmarks of fastnet against the same maths in NumPy and PyTorch.

``cases.all_cases()`` lists every case; ``case.build(impl)`` gives a ``Bench`` for impl
"fastnet", "numpy" or "torch". ``benchmarks/`` (pytest-benchmark) and
``python -m fastnet bench`` (runner.py) both time these cases. ``cases.cuda_cases()``
lists those that run on a GPU (``case.build(impl, device="cuda")``, fastnet and torch),
timed by ``benchmarks/test_cuda.py`` and ``benchmarks/cuda_bench.py``.
"""
from .cases import (IMPLS, TOLERANCE, Bench, Case, all_cases, compare, cuda_cases,
                    torch_available)

__all__ = ["IMPLS", "TOLERANCE", "Bench", "Case", "all_cases", "compare", "cuda_cases",
           "torch_available"]
