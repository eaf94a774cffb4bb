"""pytest-benchmark over the cases of fastnet/bench/cases.py.

Each ``test_<family>.py`` names its FAMILY; every case of that family is run for each of
its implementations (``case.impls``: fastnet, numpy, torch and, for inference and the
forwards of layers that eval mode computes the same, onnxruntime; those not installed
skip), the implementations of one case in one benchmark group, so that the table reads as
ratios. Run:

    python -m pytest benchmarks/ --benchmark-only       # timings
    python -m pytest benchmarks/ --benchmark-disable    # each case once, a smoke test
    FASTNET_BENCH_QUICK=1 python -m pytest benchmarks/ ...   # the tiny shapes of --quick

This process imports NumPy first and fastnet after it, as a user's program does; fastnet
and the NumPy twins are timed here. PyTorch and ONNX Runtime run in processes of their
own (fastnet/bench/worker.py, each imported first there, with Numba's thread count),
started on their first case and kept for the session; their timings are recorded into
the benchmark as measured there. The header (and ``machine_info`` in
``--benchmark-json``) says how each runs.

test_cuda.py runs the GPU cases (``cuda_cases``: fastnet and PyTorch on CUDA, each call
synchronised); it is skipped without a GPU, and in Numba's CUDA simulator unless
FASTNET_BENCH_QUICK=1.

A case is warmed up (JIT compilation stays out of the timing) and checked once; then
``benchmark.pedantic`` runs it with its untimed setup (the forward pass before a
backward) for about --benchmark-max-time seconds, at least --benchmark-min-rounds
rounds. GFLOP/s or GB/s and samples/s go to ``extra_info`` (``--benchmark-json``).
"""
import os
import time

import numpy  # noqa: F401,I001 - first, as in a user's program: fastnet is timed as users get it

import pytest

import fastnet
from fastnet.bench import all_cases, cuda_cases
from fastnet.bench.cases import WORKER_IMPLS, available, install_hint
from fastnet.bench.runner import BLAS_SETTLE_S, TwinWorker, describe, rounds_for, twin_states

MAX_ROUNDS = 2000  # a 10 us case would otherwise run 100,000 rounds in its second
QUICK = os.environ.get("FASTNET_BENCH_QUICK", "0") == "1"
CUDA_IMPLS = ("fastnet", "torch")


def pytest_report_header(config):
    return describe(twin_states())


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["fastnet_bench"] = describe(twin_states())


def pytest_generate_tests(metafunc):
    if "cuda_case" in metafunc.fixturenames:
        metafunc.parametrize("cuda_case, impl", [
            pytest.param(case, impl, id=f"{case.name}-{impl}-cuda",
                         marks=pytest.mark.benchmark(group=f"{case.name} cuda"))
            for case in cuda_cases(QUICK) for impl in CUDA_IMPLS])
    if "case" not in metafunc.fixturenames:
        return
    family = metafunc.module.FAMILY
    metafunc.parametrize("case, impl", [
        pytest.param(case, impl, id=f"{case.name}-{impl}",
                     marks=pytest.mark.benchmark(group=case.name))
        for case in all_cases(QUICK) if case.family == family for impl in case.impls])


@pytest.fixture(scope="session")
def twin_worker():
    """twin_worker(impl): the session's worker process of ``impl`` (started on first use)."""
    workers = {}

    def get(impl):
        if impl not in workers:
            threads = fastnet.threading_info()["num_threads"]
            workers[impl] = TwinWorker(impl, QUICK, threads)
        return workers[impl]

    yield get
    for worker in workers.values():
        worker.close()


def _record(benchmark, times):
    """Give ``benchmark`` the times of runs measured in another process.

    NOTE: pytest-benchmark has no public way to take timings measured elsewhere; this is
    what ``benchmark.pedantic`` does with the times it measures itself (pytest-benchmark
    4 and 5)."""
    benchmark._mode = "benchmark.pedantic(...) in a worker process"
    stats = benchmark._make_stats(1)
    for t in times:
        stats.update(t)


@pytest.fixture
def run_case(benchmark, request, twin_worker):
    """run_case(case, impl, device="cpu"): time one implementation of one case."""
    max_time = float(request.config.getoption("benchmark_max_time"))
    min_rounds = int(request.config.getoption("benchmark_min_rounds"))

    def in_worker(case, impl, device):
        if not available(impl):
            pytest.skip(f"{impl} is not installed (pip install {install_hint(impl)})")
        worker = twin_worker(impl)
        if benchmark.disabled:  # --benchmark-disable: run it once, as a test
            worker.measure(case, device, check=False, repeat=1)
            benchmark._mode = "run once in a worker process"
            return None
        return worker.measure(case, device, check=False, max_time=max_time,
                              min_rounds=min_rounds, max_rounds=MAX_ROUNDS)[1]

    def run(case, impl, device="cpu"):
        if impl in WORKER_IMPLS:
            times = in_worker(case, impl, device)
            if times is None:
                return
            _record(benchmark, times)
        else:
            bench = case.build(impl, device)
            if benchmark.disabled:  # --benchmark-disable: run it once, as a test
                benchmark.pedantic(bench.run, setup=bench.setup)
                return
            bench.once()  # the warm-up
            if impl == "fastnet":  # after the previous case's NumPy twin (see BLAS_SETTLE_S)
                time.sleep(BLAS_SETTLE_S)
            rounds = rounds_for(bench, max_time, min_rounds, MAX_ROUNDS)
            benchmark.pedantic(bench.run, setup=bench.setup, rounds=rounds, warmup_rounds=1)
        benchmark.extra_info.update(
            {k: round(v, 2) for k, v in case.throughput(benchmark.stats.stats.median).items()})
    return run
