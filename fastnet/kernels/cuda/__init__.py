"""The CUDA kernels: the same families, public names and signatures as the CPU side
(``fastnet/kernels/<family>.py``), as ``@cuda.jit`` kernels plus their launchers.

This package imports numba-cuda, so nothing imports it until a CUDA kernel is first
called: the dispatch table holds ``CudaKernel`` stand-ins that load their module then.
Launchers take device arrays (``fastnet.cuda`` allocates them), queue their kernels on
the default stream and return without waiting. Backward kernels overwrite their outputs.
"""
