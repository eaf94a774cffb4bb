"""Codes shared by the CPU and CUDA kernels: plain Python, so that either backend (and
the layers) can import them without the other's compiler.

Numba freezes module-level integers into the compiled code as constants, so a kernel
that branches on ``code == RELU`` compiles to the same code as one on a literal 1.
"""
# activations fused into epilogues (dense, conv, recurrent cells)
IDENTITY, RELU, SIGMOID, TANH = 0, 1, 2, 3
ACTIVATIONS = {None: IDENTITY, "relu": RELU, "sigmoid": SIGMOID, "tanh": TANH}

# hardsigmoid's gradient factor: PyTorch's ``scalar_t one_sixth(1.0f / 6.0f)``, the float32
# 1/6 for every dtype (a float64 gradient is 0.1666666716337204 * dout, as in PyTorch);
# a plain Python float so that this module stays free of NumPy
HARDSIGMOID_ONE_SIXTH = 0.1666666716337204
