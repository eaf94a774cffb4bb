"""glibc malloc settings that keep a training loop from page-faulting on every step.

Each training step allocates the same large arrays again (layer outputs, gradients,
scratch in Numba's worker threads). glibc returns freed large blocks to the kernel (they
were mmap'ed, or trimmed off the top of the heap) and the next step's allocations
page-fault on every 4 KiB page as they are first written: a LeNet-5 step on the 2-core
development machine took ~1900 minor faults and 9.1 ms instead of 5.8 ms. With a high
mmap threshold and trim threshold, freed blocks stay in the heap and are reused. The cost
is that the process keeps the memory of its largest step instead of shrinking between
steps, as with PyTorch's caching allocator on a GPU.

Done once at ``import fastnet`` on Linux with glibc (a no-op elsewhere); set
FASTNET_MALLOC_TUNING=0 to keep glibc's defaults.
"""
import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
MMAP_THRESHOLD = 256 << 20  # blocks above this are still mmap'ed (and unmapped on free)
TRIM_THRESHOLD = 1 << 30    # free memory at the heap's top beyond this goes back to the OS
TUNED = False


def configure() -> None:
    global TUNED
    if TUNED or os.environ.get("FASTNET_MALLOC_TUNING", "1") == "0":
        return
    if not sys.platform.startswith("linux"):
        return
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            return
        mallopt = ctypes.CDLL(None).mallopt
    except (ValueError, OSError, AttributeError):
        return  # musl or another C library without glibc's mallopt parameters
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    TUNED = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
