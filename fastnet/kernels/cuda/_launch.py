"""What every CUDA launcher needs: grid sizes, scratch arrays, typed scalars, and the
device-resident scalar that losses return."""
import math

import numpy as np

from ...cuda import empty, simulator, zeros  # noqa: F401  (scratch comes from the pool)

# Threads per block for elementwise and row kernels. The CUDA simulator runs every
# thread as a Python thread, so it gets small blocks (the kernels are written for any
# power of two).
THREADS = 32 if simulator() else 256


def blocks(n, threads=THREADS):
    """Blocks of ``threads`` covering ``n`` items (at least one)."""
    return max(1, -(-int(n) // threads))


MAX_BLOCKS = 4096  # 1M threads, a few waves on any GPU; grid-stride loops do the rest


def pow2(n):
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(int(n) - 1, 0).bit_length()


def launch_1d(n):
    """(blocks, threads) for n independent items, walked by grid-stride loops: blocks of
    THREADS, or a single block of at least a warp when n is smaller. A function of n
    alone, so per-block partial sums (mse) do not depend on the GPU."""
    threads = THREADS if n >= THREADS else max(32, pow2(n))
    return min(blocks(n, threads), MAX_BLOCKS), threads


ROW_ITEMS = 8  # elements per thread in a row kernel before a row gets more threads


def launch_rows(n, c):
    """(blocks, threads, t) for a row kernel over (n, c): t threads per row (a power of
    two, about c / ROW_ITEMS, at most THREADS) and up to THREADS // t rows per block."""
    t = min(THREADS, pow2(-(-c // ROW_ITEMS)))
    rows = min(THREADS // t, pow2(n))
    return blocks(n, rows), rows * t, t


def scalar(value, dtype):
    """A Python number as the array's dtype, so float32 kernels get float32 arguments
    (a Python float would be typed float64 and drag the arithmetic to double)."""
    return np.dtype(dtype).type(value)


def flat(a):
    """A 1-D view of a C-contiguous device array."""
    return a.reshape(a.size) if a.ndim != 1 else a


class DeviceScalar:
    """A scalar result (a loss) left on the GPU: reading it (``float(loss)``,
    ``loss.item()``, formatting, arithmetic) copies it to the host, which waits for the
    queued kernels. Not reading it keeps a training step free of host round trips.

    ``check(host_buffer)`` may raise for errors found on the device (a label out of
    range), reported when the value is read."""

    __slots__ = ("_buf", "_check", "_value")

    def __init__(self, buf, check=None):
        self._buf, self._check, self._value = buf, check, None

    def item(self) -> float:
        if self._value is None:
            host = self._buf.copy_to_host()
            if self._check is not None:
                self._check(host)
            self._value = float(host[0])
        return self._value

    __float__ = item

    def __format__(self, spec):
        return format(self.item(), spec)

    def __repr__(self):
        return repr(self.item())

    def __bool__(self):
        return bool(self.item())

    def __eq__(self, other):
        return self.item() == other

    def __lt__(self, other):
        return self.item() < other

    def __le__(self, other):
        return self.item() <= other

    def __gt__(self, other):
        return self.item() > other

    def __ge__(self, other):
        return self.item() >= other

    def __hash__(self):
        return hash(self.item())

    def __add__(self, other):
        return self.item() + other

    __radd__ = __add__

    def __sub__(self, other):
        return self.item() - other

    def __rsub__(self, other):
        return other - self.item()

    def __mul__(self, other):
        return self.item() * other

    __rmul__ = __mul__

    def __truediv__(self, other):
        return self.item() / other

    def __rtruediv__(self, other):
        return other / self.item()

    def __neg__(self):
        return -self.item()


def isfinite(x):  # for DeviceScalar users who check the loss: math.isfinite(loss) works too
    return math.isfinite(float(x))

