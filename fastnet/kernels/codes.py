"""Codes shared by the CPU and CUDA kernels: plain Python, so that either backend (and
the layers) can import them without the other's compiler.

Numba freezes module-level integers into the compiled code as constants, so a kernel
that branches on ``code == RELU`` compiles to the same code as one on a literal 1.
"""
# activations fused into epilogues (dense, conv, recurrent cells)
IDENTITY, RELU, SIGMOID, TANH = 0, 1, 2, 3
ACTIVATIONS = {None: IDENTITY, "relu": RELU, "sigmoid": SIGMOID, "tanh": TANH}
