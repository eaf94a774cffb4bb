"""The process-wide runtime of the CPU kernels: threads, BLAS and malloc, in one place.

``configure()`` runs once, at ``import fastnet`` (fastnet/__init__.py), before any BLAS
or Numba work; ``start()`` runs on the first CPU kernel lookup (fastnet.kernels.kernel,
through ``prepare``); ``threading_info()`` reports what was chosen.

Threads: how fastnet shares the CPU between Numba's thread pool and NumPy's BLAS.

A dense layer runs a BLAS GEMM (OpenBLAS threads) and then a Numba ``prange``
epilogue (Numba's threads). With Numba's OpenMP layer, GNU OpenMP's worker threads
busy-wait for ~ms after each parallel region (300000 spins by default); on a small
machine they then starve OpenBLAS's threads and a 0.4 ms layer takes 8 ms. These
settings fix it:

* ``GOMP_SPINCOUNT=3000`` makes idle OpenMP workers spin for about 40 microseconds
  (measured as CPU time after a kernel), then sleep. The kernels of one layer follow
  each other closely (a convolution's backward runs four or five) and find the workers
  still awake. Sleeping at once (``OMP_WAIT_POLICY=PASSIVE``, which fastnet set
  before) cost a wake-up of tens of microseconds per kernel: a LeNet-5 training step
  measured 8% slower, a strided convolution's forward and backward 11%; BLAS calls
  (dense layers, the MLP step) measured the same either way. libgomp reads the variable
  when it is loaded, which Numba does lazily on the first parallel launch, so
  ``configure()`` puts it in the environment at ``import fastnet``. A
  ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY`` the user set is left alone. (Kernels on
  small arrays run serially: see fastnet/kernels/_jit.py.)
* If a GNU OpenMP runtime was initialised before ``import fastnet`` (``import torch``
  first does that: torch loads its libgomp globally, Numba binds to it), the setting
  comes too late; fastnet then runs Numba's ``workqueue`` layer instead, unless the user
  picked a layer with NUMBA_THREADING_LAYER.
* The other way round, OpenBLAS's idle workers busy-wait ~60 ms after each GEMM and
  take the cores from the Numba kernels that follow (a convolution right after a dense
  layer ran 2x slower). ``configure()`` sets ``OPENBLAS_THREAD_TIMEOUT`` when OpenBLAS is
  not loaded yet, i.e. when fastnet is imported before NumPy (see _configure_openblas).
* Numba's ``workqueue`` layer (used when neither TBB nor OpenMP loads, or as above) aborts the
  process when two Python threads launch parallel kernels at once. When that layer
  is in use, ``kernel_lock`` serialises fastnet's CPU kernel calls; with the
  thread-safe layers (omp, tbb) it is a no-op and calls run concurrently.

Numba's pool is started on the first kernel lookup, not at import: a process that
imports fastnet but runs no kernel can still fork (GNU OpenMP is not fork-safe once
its threads exist).

Fork: a child forked after the pool started (``multiprocessing`` with the fork start
method, a DataLoader's workers, gunicorn) cannot use it: Numba terminates a child that
launches a GNU OpenMP region its parent's pool owns ("fork() called from a process already
using GNU OpenMP"; ``multiprocessing.Pool.map`` then hangs). So with the ``omp`` layer an
``os.register_at_fork`` hook makes every kernel of such a child run its serial build (each
parallel kernel has one, fastnet/kernels/_jit.py): the same results up to rounding (a
build may order a reduction or fuse a multiply-add differently), one core per
process, which is what a pool of worker processes wants anyway. (The workqueue and TBB
layers run in a forked child: measured for workqueue, documented by Numba for TBB.) The
hook also gives the child a fresh ``kernel_lock`` (another thread of the parent may have
held it at the fork).

Memory: glibc malloc settings that keep a training loop from page-faulting on every step.
Each training step allocates the same large arrays again (layer outputs, gradients,
scratch in Numba's worker threads). glibc returns freed large blocks to the kernel (they
were mmap'ed, or trimmed off the top of the heap) and the next step's allocations
page-fault on every 4 KiB page as they are first written: a LeNet-5 step on the 2-core
development machine took ~1900 minor faults and 9.1 ms instead of 5.8 ms. With a high
mmap threshold and trim threshold (``_configure_malloc``), freed blocks stay in the heap
and are reused. The cost is that the process keeps the memory of its largest step
instead of shrinking between steps, as with PyTorch's caching allocator on a GPU. Linux
with glibc only (a no-op elsewhere); FASTNET_MALLOC_TUNING=0 keeps glibc's defaults.

Environment variables read: OMP_WAIT_POLICY, GOMP_SPINCOUNT, NUMBA_THREADING_LAYER,
OPENBLAS_THREAD_TIMEOUT / GOTO_THREAD_TIMEOUT (each left alone when the user set it) and
FASTNET_MALLOC_TUNING.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
import warnings

_CONFIGURED = False
_STARTED = False
_SERIALISE = False
_LAYER = None  # Numba's threading layer, once the pool started
_AVOID_OMP = False
# True once the pool is started and kernels need no lock: fastnet.kernels.kernel then
# hands out CPU kernels as they are (one attribute read per lookup)
READY = False
# spins of an idle OpenMP worker before it sleeps (libgomp's default is 300000; 1000 and
# 10000 measured between this and the passive policy on a LeNet-5 step)
GOMP_SPINCOUNT = 3000
WE_SET_SPINCOUNT = False  # True when GOMP_SPINCOUNT is fastnet's doing
# OpenBLAS's idle workers spin for 2^16 cycles (~15 us) instead of 2^28 (see
# _configure_openblas): long enough for back-to-back GEMMs, short enough to leave the
# cores to Numba's kernels in between (a LeNet-5 step went from 12.7 to 8.0 ms, VGG-small
# from 186 to 134 ms; 2^4 and 2^20 measured the same within noise, the MLP unchanged)
OPENBLAS_THREAD_TIMEOUT = 16
WE_SET_BLAS_TIMEOUT = False  # True when OPENBLAS_THREAD_TIMEOUT is fastnet's doing
_LOCK = threading.RLock()
FORKED_SERIAL = False  # True in a child forked after the pool started (see Fork above)


def _shared_libgomp_loaded() -> bool:
    """Whether a GNU OpenMP runtime that Numba would bind to is already initialised.

    A libgomp loaded under its plain name (libgomp.so.1: the system's, or PyTorch's, which
    torch loads RTLD_GLOBAL) is the one Numba's omppool resolves to, and it has read its
    wait policy already. Copies that wheels renamed (scikit-learn's libgomp-<hash>.so)
    are private to their package and do not matter.
    """
    try:
        with open("/proc/self/maps") as f:
            names = {os.path.basename(line.split()[-1]) for line in f if "libgomp" in line}
    except OSError:
        return False
    return any(name.startswith("libgomp.so") for name in names)


def configure() -> None:
    """Set up the runtime once, before any BLAS or Numba work (``import fastnet`` calls
    it): OpenBLAS's spin, OpenMP's spin count or the threading layer, malloc."""
    global _CONFIGURED
    if _CONFIGURED:
        return
    _CONFIGURED = True
    _configure_openblas()
    _configure_openmp()
    _configure_malloc()


def _configure_openmp() -> None:
    """Choose the OpenMP spin count (or the threading layer) before Numba's pool starts."""
    global WE_SET_SPINCOUNT, _AVOID_OMP
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return
    if _shared_libgomp_loaded():
        # NOTE: too late for the environment: that runtime spins (e.g. torch was imported
        # first). Numba's workqueue layer has no spinning workers, so use it unless the
        # user chose a layer; PyTorch keeps its own runtime and its own speed.
        _AVOID_OMP = "NUMBA_THREADING_LAYER" not in os.environ
        if not _AVOID_OMP:
            warnings.warn(
                "fastnet: GNU OpenMP was loaded before fastnet with its default (spinning) "
                "wait policy, so Numba kernels and NumPy's BLAS may stall each other. "
                "Import fastnet first, start Python with GOMP_SPINCOUNT=3000, or leave "
                "NUMBA_THREADING_LAYER unset so that fastnet can pick the workqueue layer.",
                RuntimeWarning,
                stacklevel=4,
            )
        return
    os.environ["GOMP_SPINCOUNT"] = str(GOMP_SPINCOUNT)
    WE_SET_SPINCOUNT = True


def _openblas_loaded() -> bool:
    """Whether an OpenBLAS (NumPy's, SciPy's) is already loaded in this process."""
    try:
        with open("/proc/self/maps") as f:
            return any("openblas" in line.lower() for line in f)
    except OSError:
        return False


def _configure_openblas() -> None:
    """Shorten how long OpenBLAS's idle workers spin, if it is not loaded yet.

    After each GEMM, OpenBLAS's worker threads busy-wait for new work for 2^28 cycles
    (~60 ms) by default. A training step alternates BLAS calls with Numba kernels, so
    those spinning workers take half of each core from Numba's threads: on 2 cores the
    convolution kernels of a VGG-small step ran 2x slower right after a dense layer.
    OpenBLAS reads OPENBLAS_THREAD_TIMEOUT (2^n cycles) once, when it is loaded, so this
    only takes effect when fastnet is imported before NumPy (``python -m fastnet``
    always is); a value the user set is left alone.
    """
    global WE_SET_BLAS_TIMEOUT
    if "OPENBLAS_THREAD_TIMEOUT" in os.environ or "GOTO_THREAD_TIMEOUT" in os.environ:
        return
    if _openblas_loaded():
        return
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = str(OPENBLAS_THREAD_TIMEOUT)
    WE_SET_BLAS_TIMEOUT = True


def start() -> None:
    """Start Numba's thread pool and decide whether kernel calls must be serialised."""
    global _STARTED, _SERIALISE, READY, _LAYER
    if _STARTED:
        return
    with _LOCK:
        if _STARTED:
            return
        configure()
        from numba.np.ufunc import parallel

        if _AVOID_OMP:
            import numba

            numba.config.THREADING_LAYER = "workqueue"

        try:
            # NOTE: private but long-stable Numba API; it is what the first prange call runs.
            parallel._launch_threads()
            layer = parallel._threading_layer
        except Exception:  # pragma: no cover - Numba raises again, clearly, on first use
            layer = None
        _SERIALISE = layer not in ("omp", "tbb")
        _LAYER = layer
        _STARTED = True
        READY = not _SERIALISE


_locked = {}


def prepare(fn):
    """A CPU kernel ready to call: starts the pool on the first lookup; under the
    workqueue layer, a wrapper that holds ``kernel_lock`` around each call."""
    if not _STARTED:
        start()
    if not _SERIALISE:
        return fn
    wrapped = _locked.get(fn)
    if wrapped is None:
        def wrapped(*args, _fn=fn):
            with kernel_lock():
                return _fn(*args)
        _locked[fn] = wrapped
    return wrapped


def _after_fork_in_child() -> None:
    """os.register_at_fork hook (see Fork in the module docstring)."""
    global _LOCK, FORKED_SERIAL
    _LOCK = threading.RLock()
    if _STARTED and _LAYER == "omp" and not FORKED_SERIAL:
        from .kernels import _jit

        _jit.serial_only()
        FORKED_SERIAL = True


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


def threading_info() -> dict:
    """What fastnet runs with: Numba's threading layer, thread count, OpenMP settings."""
    import numba

    start()
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = None
    return {
        "threading_layer": layer,
        "num_threads": numba.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
        # None: OpenBLAS was loaded before fastnet and keeps its default (2^28 cycles)
        "openblas_thread_timeout": os.environ.get("OPENBLAS_THREAD_TIMEOUT",
                                                  os.environ.get("GOTO_THREAD_TIMEOUT")),
        "serialised": _SERIALISE,
        "forked_serial": FORKED_SERIAL,  # a child forked after the pool started: serial kernels
        "malloc_tuned": MALLOC_TUNED,  # see the module docstring
    }


def kernel_lock():
    """Context manager guarding a CPU kernel call (a real lock only under workqueue)."""
    return _LOCK if _SERIALISE else contextlib.nullcontext()


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
MMAP_THRESHOLD = 256 << 20  # blocks above this are still mmap'ed (and unmapped on free)
TRIM_THRESHOLD = 1 << 30    # free memory at the heap's top beyond this goes back to the OS
MALLOC_TUNED = False


def _configure_malloc() -> None:
    """glibc's mmap and trim thresholds (see the module docstring)."""
    global MALLOC_TUNED
    if MALLOC_TUNED or os.environ.get("FASTNET_MALLOC_TUNING", "1") == "0":
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
    MALLOC_TUNED = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
