"""Device functions shared by the CUDA kernels (inlined into their callers)."""
import math

from numba import cuda

from ..codes import RELU, SIGMOID, TANH


@cuda.jit(device=True, inline=True)
def sigmoid(v, one):
    """1 / (1 + exp(-v)) through exp(-|v|) <= 1, which never overflows (the simulator
    raises on math.exp overflow where the GPU would give inf)."""
    e = math.exp(-abs(v))
    return one / (one + e) if v >= 0 else e / (one + e)


@cuda.jit(device=True, inline=True)
def apply_activation(v, code, one):
    """act(v) by code (fastnet.kernels.codes: IDENTITY, RELU, SIGMOID, TANH); ``one`` is 1 in v's dtype.

    NOTE: constants come in typed (``one``): a bare 1.0 is float64 and would turn the
    float32 kernels' arithmetic into double precision (checked on the PTX by the tests).
    """
    if code == RELU:  # (a NaN stays NaN, as on the CPU and in PyTorch)
        return one - one if v <= 0 else v
    if code == SIGMOID:
        return sigmoid(v, one)
    if code == TANH:
        return math.tanh(v)
    return v


@cuda.jit(device=True, inline=True)
def through_activation(g, y, code, one):
    """g * d act / d v through the output y = act(v)."""
    if code == RELU:  # a select, as on the CPU and in PyTorch: 0 where y <= 0 even for a
        return one - one if y <= 0 else g  # NaN g; g where y > 0 or y is NaN
    if code == SIGMOID:
        return g * (y * (one - y))
    if code == TANH:
        return g * (one - y * y)
    return g


# ---- block reductions --------------------------------------------------------------------
# NOTE: every thread of the block must call these (they synchronise the block), also
# threads whose row is past the end; ``lane`` is the thread's index within its group of
# ``t`` (a power of two) threads, ``sh`` a shared array of the block's size. The tree has
# a fixed shape, so results are deterministic for a given launch geometry.

@cuda.jit(device=True, inline=True)
def block_max(sh, tid, lane, t, v):
    """The max of v over each group of t threads, NaN-propagating, given to every thread
    of the group."""
    sh[tid] = v
    cuda.syncthreads()
    step = t // 2
    while step > 0:
        if lane < step:
            a = sh[tid]
            b = sh[tid + step]
            if b > a or b != b:
                sh[tid] = b
        cuda.syncthreads()
        step //= 2
    r = sh[tid - lane]
    cuda.syncthreads()  # sh is free for the next reduction
    return r


@cuda.jit(device=True, inline=True)
def block_sum(sh, tid, lane, t, v):
    """The sum of v over each group of t threads, given to every thread of the group."""
    sh[tid] = v
    cuda.syncthreads()
    step = t // 2
    while step > 0:
        if lane < step:
            sh[tid] += sh[tid + step]
        cuda.syncthreads()
        step //= 2
    r = sh[tid - lane]
    cuda.syncthreads()
    return r


@cuda.jit(device=True, inline=True)
def row_of_thread(t):
    """(thread index, lane within its row's t threads, row) of this thread."""
    tid = cuda.threadIdx.x
    return tid, tid & (t - 1), cuda.blockIdx.x * (cuda.blockDim.x // t) + tid // t


@cuda.jit(device=True, inline=True)
def row_max_sumexp(sh, x, tid, lane, t, row, valid):
    """(m, sum(exp(x[row, :] - m))) with m the row max, in x's dtype, for every thread
    of the row's group (-inf and 0 for a row past the end)."""
    c = x.shape[1]
    m = x.dtype.type(-math.inf)
    if valid:
        for j in range(lane, c, t):
            v = x[row, j]
            if v > m or v != v:
                m = v
    m = block_max(sh, tid, lane, t, m)
    s = x.dtype.type(0)
    if valid:
        for j in range(lane, c, t):
            s += math.exp(x[row, j] - m)
    s = block_sum(sh, tid, lane, t, s)
    return m, s
