"""How fastnet shares the CPU between Numba's thread pool and NumPy's BLAS.

A dense layer runs a BLAS GEMM (OpenBLAS threads) and then a Numba ``prange``
epilogue (Numba's threads). With Numba's OpenMP layer, GNU OpenMP's worker threads
busy-wait for ~ms after each parallel region; on a small machine they then starve
OpenBLAS's threads and a 0.4 ms layer takes 8 ms. Two settings fix it:

* ``OMP_WAIT_POLICY=PASSIVE`` makes idle OpenMP workers sleep at once. libgomp reads it
  when it is loaded, which Numba does lazily on the first parallel launch, so it has to
  be in the environment before then: ``configure()`` runs at ``import fastnet``, and
  launches Numba's pool right away so that the setting is the one in force.
  A value the user set themselves is left alone.
* Numba's ``workqueue`` layer (used when neither TBB nor OpenMP loads) aborts the
  process when two Python threads launch parallel kernels at once. When that layer
  is in use, ``kernel_lock`` serialises fastnet's CPU kernel calls; with the
  thread-safe layers (omp, tbb) it is a no-op and calls run concurrently.
"""
from __future__ import annotations

import contextlib
import os
import threading
import warnings

_CONFIGURED = False
_SERIALISE = False
_LOCK = threading.RLock()


def _libgomp_loaded() -> bool:
    try:
        with open("/proc/self/maps") as f:
            # vendored copies (scikit-learn, torch) are named libgomp-<hash>.so and are
            # not the one Numba links against
            return "/libgomp.so" in f.read()
    except OSError:
        return False


def configure() -> None:
    """Set the wait policy and start Numba's thread pool (idempotent)."""
    global _CONFIGURED, _SERIALISE
    if _CONFIGURED:
        return
    _CONFIGURED = True
    if "OMP_WAIT_POLICY" not in os.environ:
        if _libgomp_loaded():
            warnings.warn(
                "fastnet: GNU OpenMP was loaded before fastnet with its default (spinning) "
                "wait policy, so Numba kernels and NumPy's BLAS may stall each other. "
                "Import fastnet first or start Python with OMP_WAIT_POLICY=PASSIVE.",
                RuntimeWarning,
                stacklevel=3,
            )
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    from numba.np.ufunc import parallel

    try:
        # NOTE: private but long-stable Numba API; it is what the first prange call runs.
        parallel._launch_threads()
        layer = parallel._threading_layer
    except Exception:  # pragma: no cover - Numba falls back by itself on first use
        layer = None
    _SERIALISE = layer not in ("omp", "tbb")


def threading_info() -> dict:
    """What fastnet runs with: Numba's threading layer, thread count, OpenMP wait policy."""
    import numba

    configure()
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
