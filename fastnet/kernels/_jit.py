"""Shared compile options for the CPU kernels."""
from functools import partial

from numba import njit

# NOTE: every fast-math flag except nnan/ninf: max pooling pads with -inf and the stable
# softmax / sigmoid rely on exp() overflowing to inf and 1/inf == 0, which LLVM may
# otherwise assume never happens.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

# nogil: kernels called from several Python threads run concurrently.
cpu_kernel = partial(njit, cache=True, nogil=True, fastmath=FASTMATH)
cpu_parallel_kernel = partial(njit, cache=True, nogil=True, fastmath=FASTMATH, parallel=True)

# Without "reassoc", for kernels whose accuracy depends on evaluation order: LLVM would
# otherwise rewrite (x - m) - logsum as x - (m + logsum) (see row_max_logsumexp).
FASTMATH_ORDERED = FASTMATH - {"reassoc"}
cpu_parallel_kernel_ordered = partial(njit, cache=True, nogil=True, fastmath=FASTMATH_ORDERED,
                                      parallel=True)
