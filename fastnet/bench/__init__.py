"""Benchmarks of fastnet against the same maths in NumPy and PyTorch.

``cases.all_cases()`` lists every case; ``case.build(impl)`` gives a ``Bench`` for impl
"fastnet", "numpy" or "torch". ``benchmarks/`` (pytest-benchmark) and
``python -m fastnet bench`` (runner.py) both time these cases.
"""
from .cases import IMPLS, TOLERANCE, Bench, Case, all_cases, compare, torch_available

__all__ = ["IMPLS", "TOLERANCE", "Bench", "Case", "all_cases", "compare", "torch_available"]
