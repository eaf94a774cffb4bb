"""All of fastnet's hand-written vector code: Numba intrinsics that emit LLVM IR, for the
loops that LLVM will not vectorise well on its own from plain Numba.

- ``tiles.py``: register-blocked GEMM tiles (conv forward, dx and dw; the recurrent
  layers' row-block GEMM);
- ``epilogue.py``: the convolution forward's epilogue rows (bias, bias + ReLU);
- ``pooling.py``: 2x2 / stride-2 pooling rows (max forward and backward, the average
  backward);
- ``softmax.py``: softmax, log-sum-exp and softmax-gradient rows of one vector;
- ``math.py``: the vectorisable float32 exp / tanh and the one-instruction intrinsics
  (fma, maxnum, a bitcast) they stand on;
- ``_ir.py``: what the emitters share (vector width, LLVM helpers, masked rows).

The rule, from llm.c: every intrinsic has a plain-Numba twin in its own module, named
``<intrinsic>_reference``, written the slow obvious way, and tests/kernels/_simd/ checks
the intrinsic against it (at the host's vector width; tests/kernels/_simd/test_width.py
also at AVX2's). A kernel that calls an intrinsic is tested end to end against
tests/reference.py as well.
"""
from ._ir import ACCUMULATORS, VEC_BYTES, lanes

__all__ = ["ACCUMULATORS", "VEC_BYTES", "lanes"]
