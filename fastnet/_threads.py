"""How fastnet shares the CPU between Numba's thread pool and NumPy's BLAS.

A dense layer runs a BLAS GEMM (OpenBLAS threads) and then a Numba ``prange``
epilogue (Numba's threads). With Numba's OpenMP layer, GNU OpenMP's worker threads
busy-wait for ~ms after each parallel region; on a small machine they then starve
OpenBLAS's threads and a 0.4 ms layer takes 8 ms. Two settings fix it:

* ``OMP_WAIT_POLICY=PASSIVE`` makes idle OpenMP workers sleep at once. libgomp reads it
  when it is loaded, which Numba does lazily on the first parallel launch, so
  ``configure()`` puts it in the environment at ``import fastnet``. A value the user set
  themselves is left alone. (Waking sleeping workers costs tens of microseconds, which
  is why small kernels run serially: see fastnet/kernels/_jit.py.)
* Numba's ``workqueue`` layer (used when neither TBB nor OpenMP loads) aborts the
  process when two Python threads launch parallel kernels at once. When that layer
  is in use, ``kernel_lock`` serialises fastnet's CPU kernel calls; with the
  thread-safe layers (omp, tbb) it is a no-op and calls run concurrently.

Numba's pool is started on the first kernel lookup, not at import: a process that
imports fastnet but runs no kernel can still fork (GNU OpenMP is not fork-safe once
its threads exist).
"""
from __future__ import annotations

import contextlib
import os
import threading
import warnings

_CONFIGURED = False
_STARTED = False
_SERIALISE = False
_LOCK = threading.RLock()


def _system_libgomp_loaded() -> bool:
    """Whether a libgomp that Numba could bind to is already in this process.

    Vendored copies inside wheels (torch, scikit-learn: site-packages/.../libgomp*.so)
    are private to their package; Numba's omppool links the system (or conda) one.
    """
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "libgomp" in line}
    except OSError:
        return False
    return any("site-packages" not in p and "dist-packages" not in p for p in paths)


def configure() -> None:
    """Put the OpenMP wait policy in the environment (idempotent, no threads started)."""
    global _CONFIGURED
    if _CONFIGURED:
        return
    _CONFIGURED = True
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return
    if _system_libgomp_loaded():
        warnings.warn(
            "fastnet: GNU OpenMP was loaded before fastnet with its default (spinning) "
            "wait policy, so Numba kernels and NumPy's BLAS may stall each other. "
            "Import fastnet first or start Python with OMP_WAIT_POLICY=PASSIVE.",
            RuntimeWarning,
            stacklevel=3,
        )
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def start() -> None:
    """Start Numba's thread pool and decide whether kernel calls must be serialised."""
    global _STARTED, _SERIALISE
    if _STARTED:
        return
    with _LOCK:
        if _STARTED:
            return
        configure()
        from numba.np.ufunc import parallel

        try:
            # NOTE: private but long-stable Numba API; it is what the first prange call runs.
            parallel._launch_threads()
            layer = parallel._threading_layer
        except Exception:  # pragma: no cover - Numba raises again, clearly, on first use
            layer = None
        _SERIALISE = layer not in ("omp", "tbb")
        _STARTED = True


def threading_info() -> dict:
    """What fastnet runs with: Numba's threading layer, thread count, OpenMP wait policy."""
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
        "serialised": _SERIALISE,
    }


def kernel_lock():
    """Context manager guarding a CPU kernel call (a real lock only under workqueue)."""
    return _LOCK if _SERIALISE else contextlib.nullcontext()
