"""Explicit vector code for the convolution's epilogue (conv/implicit_gemm.py): a run of a
finished tile row, plus the bias, through the activation, into the output row.

The runs are short (an output row of a LeNet-5 layer is 28 or 10 values, and a tile run
may end mid-row), and as a Numba loop LLVM vectorised them with a remainder that such rows
never left: the epilogue took 40% of the 28x28 layer's forward at batch 64 (80 of 207 us)
and 30% of the 10x10 one's. Here a run is W values per step, the last step masked (as
the pooling rows of pooling.py):

* ``bias_row``: dst[d0 + i] = src[s0 + i] + bias, i < n;
* ``bias_relu_row``: the same through ReLU (0 where the sum is <= 0; NaN stays NaN):
  bitwise what ``activations.apply_activation(v + bias, RELU)`` gives.

Arrays are 1-D and contiguous; the callers keep every index inside them.
"""
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from ._ir import Rows, check_arrays, splat


def _bias_row(relu):
    name = "bias_relu_row" if relu else "bias_row"

    def row(typingctx, dst, src, d0, s0, n, bias):
        check_arrays(name, (dst, src))
        sig = types.void(dst, src, types.intp, types.intp, types.intp, dst.dtype)

        def codegen(context, builder, signature, args):
            e = Rows(context, builder, signature, args, 2)
            d0, s0, n, bias = args[2:]
            vty = e.vec(e.lanes)
            bv = splat(builder, bias, e.lanes)
            zero = ir.Constant(vty, [0.0] * e.lanes)
            for i, left in e.steps(n, e.lanes):
                v = builder.fadd(e.load(1, builder.add(s0, i), vty, left), bv)
                if relu:  # ordered <=: a NaN sum is kept, as apply_activation keeps it
                    v = builder.select(builder.fcmp_ordered("<=", v, zero), zero, v)
                e.store(v, 0, builder.add(d0, i), left)
            return context.get_dummy_value()
        return sig, codegen

    row.__name__ = row.__qualname__ = name
    return intrinsic(row)


bias_row = _bias_row(False)
bias_relu_row = _bias_row(True)


# ---- plain-Numba twins: the test references of the intrinsics (tests/kernels/_simd/) ---

@njit(cache=True)
def bias_row_reference(dst, src, d0, s0, n, bias):
    for i in range(n):
        dst[d0 + i] = src[s0 + i] + bias


@njit(cache=True)
def bias_relu_row_reference(dst, src, d0, s0, n, bias):
    zero = dst.dtype.type(0)
    for i in range(n):
        v = src[s0 + i] + bias
        dst[d0 + i] = zero if v <= 0 else v
