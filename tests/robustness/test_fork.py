"""Forked workers (issue 19): a child forked after fastnet's kernels ran can run kernels.
Before, GNU OpenMP's check in Numba killed it ("fork() called from a process already
using GNU OpenMP") and multiprocessing.Pool.map hung. Under the tbb layer (fastnet's
default where TBB is installed) the child runs the parallel builds; under omp, serial
ones. Each case runs in a fresh
interpreter, since the test process's own pool state must not decide the outcome."""
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")

PRELUDE = """
import multiprocessing as mp, os, sys
import numpy as np
import fastnet
from fastnet import runtime
from fastnet.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sequential

def step(seed):
    # a LeNet-like forward and backward, big enough for the parallel builds
    fastnet.manual_seed(seed)
    model = Sequential(Conv2D(1, 8, 5, padding=2, activation="relu"), MaxPool2D(2),
                       Flatten(), Dense(8 * 14 * 14, 10))
    x = np.random.default_rng(seed).standard_normal((64, 1, 28, 28)).astype(np.float32)
    y = model(x)
    model.backward(np.ones_like(y))
    big = ReLU()(np.linspace(-1, 1, 1 << 20, dtype=np.float32).reshape(1024, 1024))
    return [y.copy(), big] + [p.grad.copy() for p in model.parameters()]

def same(a, b):
    # the serial builds a forked child runs may round differently from the parallel ones
    return all(np.allclose(u, v, rtol=1e-5, atol=1e-5) for u, v in zip(a, b))
"""


def run(body, env=None, timeout=300):
    code = PRELUDE + textwrap.dedent(body)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Terminating" not in proc.stderr, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("layer", ["tbb", "omp"])
def test_pool_map_after_kernels_ran_gives_the_parents_results(layer):
    if layer == "tbb" and not _tbb():
        pytest.skip("TBB is not installed (fastnet depends on it on x86-64 only)")
    out = run("""
        parent = step(0)
        assert runtime.threading_info()["threading_layer"] == LAYER
        with mp.get_context("fork").Pool(2) as pool:
            results = pool.map(step, [0, 0, 1])
        assert same(results[0], parent) and same(results[1], parent)
        assert not same(results[2], parent)
        if LAYER == "tbb":  # the parallel builds, in the same order: bitwise the same
            assert all(np.array_equal(u, v) for u, v in zip(results[0], parent))
        print("ok")
    """.replace("LAYER", repr(layer)), env={"NUMBA_THREADING_LAYER": layer})
    assert out.strip() == "ok"


def _tbb():
    from fastnet import runtime
    runtime.start()
    return runtime.TBB is not None


def test_a_forked_child_runs_serial_builds_and_says_so():
    """(omp: the TBB layer needs no serial builds in a child)"""
    out = run("""
        parent = step(3)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            ok = same(step(3), parent) and runtime.threading_info()["forked_serial"]
            os.write(w, b"1" if ok else b"0")
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert os.read(r, 1) == b"1"
        assert not runtime.threading_info()["forked_serial"]  # the parent keeps its pool
        print("ok")
    """, env={"NUMBA_THREADING_LAYER": "omp"})
    assert out.strip() == "ok"


def test_a_fork_before_any_kernel_keeps_the_parallel_pool():
    out = run("""
        pid = os.fork()
        if pid == 0:
            step(0)
            os._exit(0 if not runtime.threading_info()["forked_serial"] else 3)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
    """)
    assert out.strip() == "0"


def test_workqueue_layer_children_work_too():
    out = run("""
        parent = step(0)
        assert runtime.threading_info()["threading_layer"] == "workqueue"
        with mp.get_context("fork").Pool(2) as pool:
            assert all(same(r, parent) for r in pool.map(step, [0, 0]))
        print("ok")
    """, env={"NUMBA_THREADING_LAYER": "workqueue"})
    assert out.strip() == "ok"


def test_an_inference_plan_built_before_a_fork_runs_serial_builds_in_the_child():
    # the prepared convolution picks its builds once per threshold: in the child, whose
    # kernels must all run serially (under omp), it picks again
    out = run("""
        fastnet.manual_seed(0)
        model = Sequential(Conv2D(1, 8, 5, padding=2), ReLU(), MaxPool2D(2), Flatten(),
                           Dense(8 * 14 * 14, 10)).eval()
        x = np.random.default_rng(0).standard_normal((64, 1, 28, 28)).astype(np.float32)
        want = model(x)
        assert np.array_equal(model(x), want)  # the plan, on the parallel builds
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the parent's plan, inherited
            ok = model._plans and same([model(x), model(x)], [want, want])
            os.write(w, b"1" if ok and runtime.threading_info()["forked_serial"] else b"0")
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert os.read(r, 1) == b"1"
        print("ok")
    """, env={"NUMBA_THREADING_LAYER": "omp"})
    assert out.strip() == "ok"
