"""fastnet.runtime: the same thread pool whatever was imported first (TBB, loaded by
fastnet; without it, the OpenMP spin count libgomp really uses), no other thread pool
woken by fastnet's kernels, the glibc malloc settings, and concurrent inference from
several Python threads neither crashes nor changes answers (also under Numba's
non-thread-safe workqueue layer)."""
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import fastnet
from fastnet.models import lenet


# a process without TBB: Numba's extension cannot be imported (as where no wheel exists)
NO_TBB = "import sys; sys.modules['numba.np.ufunc.tbbpool'] = None\n"


def _run(code, no_tbb=False, **env):
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_DISPLAY_ENV")}
    full_env.update(env)
    source = (NO_TBB if no_tbb else "") + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", source], env=full_env,
                          capture_output=True, text=True, timeout=300)


INTERLEAVED = """
    import numpy as np, fastnet
    from fastnet.layers import Dense
    layer = Dense(784, 256, activation="relu")   # parallel kernels, back to back
    x = np.ones((128, 784), np.float32)
    for _ in range(20):
        y = layer(x)
        layer.backward(y)
    print(fastnet.threading_info())
"""


def _tbb_installed():
    from fastnet import runtime
    runtime.start()
    return runtime.TBB is not None


needs_tbb = pytest.mark.skipif(not _tbb_installed(), reason="TBB is not installed (x86-64 only)")


def test_without_tbb_libgomp_runs_with_fastnets_spin_count():
    """OMP_DISPLAY_ENV makes libgomp print the settings it initialised with: fastnet's
    spin count shows it set it before Numba loaded libgomp."""
    r = _run(INTERLEAVED, no_tbb=True, OMP_DISPLAY_ENV="VERBOSE")
    assert r.returncode == 0, r.stderr
    info = eval(r.stdout.strip().splitlines()[-1])
    assert info["gomp_spincount"] == str(fastnet.runtime.GOMP_SPINCOUNT)
    assert info["omp_wait_policy"] is None
    if info["threading_layer"] == "omp":
        assert f"GOMP_SPINCOUNT = '{fastnet.runtime.GOMP_SPINCOUNT}'" in r.stderr, r.stderr
    assert info["threading_layer"] in ("omp", "workqueue") and info["tbb"] is None


ORDER = """
    import os
    {first}
    import numpy as np, fastnet
    from fastnet.layers import Dense
    layer = Dense(300, 200, activation="relu")
    y = layer(np.ones((200, 300), np.float32))
    layer.backward(y)
    info = fastnet.threading_info()
    print(repr((info["threading_layer"], info["serialised"], info["tbb"] is not None,
                {{k: os.environ.get(k) for k in ("GOMP_SPINCOUNT", "OPENBLAS_THREAD_TIMEOUT")}})))
"""


@needs_tbb
@pytest.mark.parametrize("first", ["", "import numpy", "import torch", "import ctypes, "
                                   "ctypes.util; ctypes.CDLL(ctypes.util.find_library('gomp') "
                                   "or 'libgomp.so.1', mode=ctypes.RTLD_GLOBAL)"],
                         ids=["fastnet-first", "numpy-first", "torch-first", "libgomp-first"])
def test_the_same_pool_whatever_was_imported_first(first):
    """TBB's pool in every import order, not serialised, and no environment variable set
    for another library (a torch imported after fastnet keeps its own OpenMP settings)."""
    if "torch" in first:
        pytest.importorskip("torch")
    r = _run(ORDER.format(first=first))
    assert r.returncode == 0, r.stderr[-3000:]
    layer, serialised, tbb, env = eval(r.stdout.strip().splitlines()[-1])
    assert (layer, serialised, tbb) == ("tbb", False, True)
    assert env == {"GOMP_SPINCOUNT": None, "OPENBLAS_THREAD_TIMEOUT": None}


@pytest.mark.parametrize("name, value", [("OMP_WAIT_POLICY", "ACTIVE"), ("GOMP_SPINCOUNT", "7")])
def test_openmp_settings_of_the_user_are_kept(name, value):
    r = _run(INTERLEAVED, **{name: value})
    assert r.returncode == 0, r.stderr
    info = eval(r.stdout.strip().splitlines()[-1])
    assert info["omp_wait_policy"] == (value if name == "OMP_WAIT_POLICY" else None)
    assert info["gomp_spincount"] == (value if name == "GOMP_SPINCOUNT" else None)


def _concurrent_inference_matches_serial(n_threads=4, calls=24):
    fastnet.manual_seed(0)
    model = lenet().eval()
    rng = np.random.default_rng(0)
    inputs = [rng.random((int(rng.integers(1, 40)), 1, 8, 8), dtype=np.float32) for _ in range(calls)]
    serial = [model(x) for x in inputs]
    with ThreadPoolExecutor(n_threads) as pool:
        for _ in range(3):
            parallel = list(pool.map(model, inputs))
            for a, b in zip(serial, parallel):
                np.testing.assert_array_equal(a, b)


def test_concurrent_inference_from_threads_matches_serial():
    _concurrent_inference_matches_serial()


def test_concurrent_inference_under_workqueue_layer():
    """Numba's workqueue layer aborts the process on concurrent parallel launches; fastnet
    must serialise its kernels there instead."""
    r = _run("""
        import fastnet
        from tests.test_runtime import _concurrent_inference_matches_serial
        _concurrent_inference_matches_serial()
        info = fastnet.threading_info()
        assert info["threading_layer"] == "workqueue" and info["serialised"], info
        print("ok")
    """, NUMBA_THREADING_LAYER="workqueue", PYTHONPATH=os.getcwd())
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


def test_without_tbb_an_openmp_runtime_loaded_first_makes_fastnet_avoid_it():
    """``import torch`` before fastnet loads a libgomp globally with its spinning default;
    Numba would bind to it. Loading the system libgomp the same way stands in for torch:
    without TBB, fastnet must then run Numba's workqueue layer, serialised, and leave the
    environment alone."""
    r = _run(no_tbb=True, code="""
        import ctypes, ctypes.util, os
        ctypes.CDLL(ctypes.util.find_library("gomp") or "libgomp.so.1", mode=ctypes.RTLD_GLOBAL)
        import warnings
        warnings.simplefilter("error")
        import numpy as np, fastnet
        from fastnet import runtime
        from fastnet.layers import Dense
        layer = Dense(300, 200, activation="relu")   # large enough for the parallel build
        x = np.ones((200, 300), np.float32)
        y = layer(x)
        layer.backward(y)
        assert np.allclose(y, np.maximum(x @ layer.weight.data.T + layer.bias.data, 0), atol=1e-4)
        info = fastnet.threading_info()
        assert info["threading_layer"] == "workqueue" and info["serialised"], info
        assert "GOMP_SPINCOUNT" not in os.environ and not runtime.WE_SET_SPINCOUNT
        print("ok")
    """)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


SPIN_CPU = """
    import resource, time
    {first}
    import numpy as np, fastnet
    from fastnet.layers import Dense, Conv2D
    dense, conv = Dense(784, 256, activation="relu"), Conv2D(3, 16, 3, padding=1)
    x, xc = np.ones((128, 784), np.float32), np.ones((64, 3, 16, 16), np.float32)
    for _ in range(5):            # the kernels of dense and conv layers, forward and backward
        dense.backward(dense(x))
        conv.backward(conv(xc))
    before = resource.getrusage(resource.RUSAGE_SELF)
    time.sleep(0.2)               # the main thread idles; do other threads spin?
    after = resource.getrusage(resource.RUSAGE_SELF)
    print((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
"""


@needs_tbb
@pytest.mark.parametrize("first", ["import numpy", "import fastnet"])
def test_no_thread_spins_after_fastnets_kernels(first):
    """fastnet's kernels wake no BLAS thread pool (OpenBLAS's idle workers busy-wait ~60
    ms after a GEMM and took the cores from the Numba kernels that followed: a LeNet-5
    step ran 2x slower with NumPy imported first), and TBB's workers sleep when idle:
    while the process sleeps, its threads use (almost) no CPU."""
    r = _run(SPIN_CPU.format(first=first))
    assert r.returncode == 0, r.stderr[-3000:]
    spin = float(r.stdout.strip().splitlines()[-1])
    assert spin < 0.03, f"threads used {spin:.3f} s of CPU while the process slept"


FAULTS = """
    import resource
    import numpy as np
    import fastnet
    from fastnet import runtime
    from fastnet.layers import Conv2D, Dense, Flatten, MaxPool2D, Sequential
    from fastnet.losses import CrossEntropyLoss
    from fastnet.optim import SGD
    model = Sequential(Conv2D(1, 6, 5, padding=2, activation="relu"), MaxPool2D(2),
                       Conv2D(6, 16, 5, activation="relu"), MaxPool2D(2), Flatten(),
                       Dense(400, 120, activation="relu"), Dense(120, 10))
    opt, loss_fn = SGD(model.parameters(), lr=0.01, momentum=0.9), CrossEntropyLoss()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 128)
    def step():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()
    for _ in range(3):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        step()
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
    print(repr((runtime.MALLOC_TUNED, fastnet.threading_info()["malloc_tuned"], faults)))
"""


def test_training_steps_reuse_memory_instead_of_page_faulting():
    """With fastnet's glibc malloc settings a LeNet-5 training step at batch 128 reuses
    the memory of the previous step; with glibc's defaults it took ~1900 page faults
    per step here (9.1 ms instead of 5.8 ms). FASTNET_MALLOC_TUNING=0 keeps the defaults."""
    import platform
    r = _run(FAULTS)
    assert r.returncode == 0, r.stderr[-3000:]
    tuned, reported, faults = eval(r.stdout.strip().splitlines()[-1])
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert tuned and reported
        assert faults < 50, f"{faults} minor page faults per training step"
    r = _run(FAULTS, FASTNET_MALLOC_TUNING="0")
    assert r.returncode == 0, r.stderr[-3000:]
    tuned, reported, _ = eval(r.stdout.strip().splitlines()[-1])
    assert not tuned and not reported


@pytest.mark.parametrize("layer", ["workqueue", "tbb"])
def test_no_openmp_setting_when_the_user_chose_another_layer(layer):
    """GOMP_SPINCOUNT is for Numba's OpenMP pool only: with another layer chosen, fastnet
    leaves the environment (which a later torch and child processes inherit) alone."""
    if layer == "tbb" and not _tbb_installed():
        pytest.skip("TBB is not installed (x86-64 only)")
    r = _run(INTERLEAVED, NUMBA_THREADING_LAYER=layer)
    assert r.returncode == 0, r.stderr[-3000:]
    info = eval(r.stdout.strip().splitlines()[-1])
    assert info["threading_layer"] == layer and info["gomp_spincount"] is None
