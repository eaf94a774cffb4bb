"""The process-wide runtime of the CPU kernels: threads and malloc, in one place.

``configure()`` runs once, at ``import fastnet`` (fastnet/__init__.py), before any Numba
work; ``start()`` runs on the first CPU kernel lookup (fastnet.kernels.kernel,
through ``prepare``); ``threading_info()`` reports what was chosen.

Threads: fastnet's CPU kernels run on Numba's thread pool and on nothing else (the
matrix products too: kernels/gemm.py, no BLAS), so that what a program imported before
fastnet cannot change how fast they run.

* The pool is Numba's ``tbb`` layer when Intel's TBB is installed (the ``tbb`` package,
  a dependency of fastnet where PyPI has wheels for it). Numba's TBB extension does not
  find a pip-installed libtbb by itself (it is not on the loader's path), so
  ``configure()`` loads it from the package first; Numba then takes the layer it prefers.
  Measured on the 2-core development machine (2026-12): a kernel launch costs ~1.5 us
  back to back and ~18 us after a pause, and TBB's idle workers use no CPU after a
  kernel, whatever GNU OpenMP runtime torch or another library loaded; two Python
  threads running inference share the two workers instead of oversubscribing the
  cores, and a forked child can run parallel kernels.
* Without TBB, Numba's OpenMP layer (``omp``). Its GNU OpenMP workers spin for
  ``GOMP_SPINCOUNT`` iterations after each parallel region, then sleep, and waking a
  sleeping worker costs ~70 us on the development machine (a virtual machine).
  ``configure()`` sets a spin count before Numba loads libgomp (libgomp reads it once):
  long enough for the kernels of a step to find the workers awake, shorter than
  libgomp's default. A ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY`` the user set is left
  alone. Spinning workers are what makes this layer fragile: with another process busy
  on one of the two cores, a LeNet-5 step took 17-20 ms under omp and 6.5 ms under
  tbb; and two Python threads running kernels at once each get their own team of
  workers (4 threads on 2 cores: 2x slower than one thread doing all the calls).
* If a GNU OpenMP runtime was initialised before ``import fastnet`` (``import torch``
  first does that: torch loads its libgomp globally, Numba binds to it) and TBB is not
  there, fastnet runs Numba's ``workqueue`` layer instead, unless the user picked a layer
  with NUMBA_THREADING_LAYER.
* Numba's ``workqueue`` layer aborts the process when two Python threads launch parallel
  kernels at once. When that layer is in use, ``kernel_lock`` serialises fastnet's CPU
  kernel calls; with the thread-safe layers (tbb, omp) it is a no-op and calls run
  concurrently.

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

Environment variables read: NUMBA_THREADING_LAYER, OMP_WAIT_POLICY, GOMP_SPINCOUNT (each
left alone when the user set it) and FASTNET_MALLOC_TUNING. None of them has to be set
before NumPy or torch is imported.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading

_CONFIGURED = False
_STARTED = False
_SERIALISE = False
_LAYER = None  # Numba's threading layer, once the pool started
_AVOID_OMP = False
# True once the pool is started and kernels need no lock: fastnet.kernels.kernel then
# hands out CPU kernels as they are (one attribute read per lookup)
READY = False
# spins of an idle OpenMP worker before it sleeps, without TBB (libgomp's default is
# 300000). Measured on the development machine (2026-12, Numba's omp layer, NumPy first):
# with 3000 the workers were asleep by the next launch even back to back (~77 us per
# launch; a LeNet-5 step 4.4-8.2 ms), with 30000 a launch took 1.7 us after gaps up to
# 0.1 ms and the workers spun ~1.2 ms of CPU after the last kernel (LeNet-5 3.9 ms, the
# same as 300000, which spins ~7 ms)
GOMP_SPINCOUNT = 30000
WE_SET_SPINCOUNT = False  # True when GOMP_SPINCOUNT is fastnet's doing
TBB = None  # the libtbb that configure() loaded for Numba's tbb layer, if any
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
    """Set up the runtime once, before any Numba work (``import fastnet`` calls it): TBB
    for Numba's pool, or else OpenMP's spin count or the threading layer; malloc."""
    global _CONFIGURED
    if _CONFIGURED:
        return
    _CONFIGURED = True
    if not _load_tbb():
        _configure_openmp()
    _configure_malloc()


def _configure_openmp() -> None:
    """Choose the OpenMP spin count (or the threading layer) before Numba's pool starts."""
    global WE_SET_SPINCOUNT, _AVOID_OMP
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return
    if os.environ.get("NUMBA_THREADING_LAYER", "").lower() in ("workqueue", "tbb", "safe"):
        return  # the user chose a layer that is not OpenMP: nothing to set for it
    if _shared_libgomp_loaded():
        # NOTE: too late for the environment: that runtime spins for libgomp's default
        # (e.g. torch was imported first), and spinning workers stall whatever else wants
        # the cores. Numba's workqueue layer has none, so use it unless the user chose a
        # layer; PyTorch keeps its own runtime and its own speed.
        _AVOID_OMP = "NUMBA_THREADING_LAYER" not in os.environ
        return
    os.environ["GOMP_SPINCOUNT"] = str(GOMP_SPINCOUNT)
    WE_SET_SPINCOUNT = True


def _tbb_candidates():
    """Where a pip- or conda-installed libtbb lies: the environment's lib folder, then
    the files the ``tbb`` distribution installed."""
    names = ("libtbb.so.12", "libtbb.12.dylib")
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        for name in names:
            yield os.path.join(prefix, "lib", name)
    try:
        import importlib.metadata as metadata

        for f in metadata.files("tbb") or ():
            if os.path.basename(str(f)) in names:
                yield str(f.locate())
    except Exception:  # not installed, or no RECORD
        return


def _load_tbb() -> bool:
    """Make Numba's tbb layer available (see Threads above); True when it will be used.

    Numba's TBB extension links against libtbb.so.12 without a search path; a library
    already loaded under that name satisfies it, so loading the installed one first is
    enough. Not when the user chose another layer, nor when Numba's pool already started
    (its layer is chosen then).
    """
    global TBB
    layer = os.environ.get("NUMBA_THREADING_LAYER", "default").lower()
    if layer not in ("default", "tbb", "safe", "threadsafe", "forksafe"):
        return False
    from numba.np.ufunc import parallel

    if getattr(parallel, "_is_initialized", False):
        return parallel._threading_layer == "tbb"
    try:
        from numba.np.ufunc import tbbpool  # noqa: F401  (a system or conda TBB)
        TBB = "found by the loader"
        return True
    except ImportError:
        pass
    for path in _tbb_candidates():
        if not os.path.exists(path):
            continue
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            from numba.np.ufunc import tbbpool  # noqa: F401,F811
        except (OSError, ImportError):
            continue
        TBB = path
        return True
    return False


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
    """What fastnet runs with: Numba's threading layer, thread count, TBB or the OpenMP
    settings, whether kernel calls are serialised, malloc."""
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
        "tbb": TBB,  # the libtbb loaded for the tbb layer (see Threads above)
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
