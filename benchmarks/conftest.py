"""pytest-benchmark over the cases of fastnet/bench/cases.py.

Each ``test_<family>.py`` names its FAMILY; every case of that family is run for each
implementation (fastnet, numpy, torch when installed), the three of one case in one
benchmark group, so that the table reads as ratios. Run:

    python -m pytest benchmarks/ --benchmark-only       # timings
    python -m pytest benchmarks/ --benchmark-disable    # each case once, a smoke test
    FASTNET_BENCH_QUICK=1 python -m pytest benchmarks/ ...   # the tiny shapes of --quick

test_cuda.py runs the GPU cases (``cuda_cases``: fastnet and PyTorch on CUDA, each call
synchronised); it is skipped without a GPU, and in Numba's CUDA simulator unless
FASTNET_BENCH_QUICK=1.

A case is warmed up (JIT compilation stays out of the timing) and checked once; then
``benchmark.pedantic`` runs it with its untimed setup (the forward pass before a
backward) for about --benchmark-max-time seconds, at least --benchmark-min-rounds
rounds. GFLOP/s or GB/s and samples/s go to ``extra_info`` (``--benchmark-json``).
"""
import importlib.util
import os

# NOTE: what ``import fastnet`` does when it comes before NumPy (fastnet/runtime.py,
# OPENBLAS_THREAD_TIMEOUT): here PyTorch comes first and loads NumPy's OpenBLAS, so set
# it before that. It shortens how long OpenBLAS's idle workers spin after a GEMM; PyTorch
# runs its GEMMs through its own libraries and is not affected.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "16")

if importlib.util.find_spec("torch") is not None:
    # NOTE: PyTorch first. Imported after fastnet, it would inherit the OpenMP spin count
    # fastnet sets and run several times slower than it does for its users; imported
    # first, it keeps its own OpenMP runtime and fastnet picks Numba's workqueue layer
    # (fastnet/runtime.py).
    import torch  # noqa: F401

import pytest

import fastnet
from fastnet.bench import IMPLS, all_cases, cuda_cases, torch_available
from fastnet.bench.runner import median_times

MAX_ROUNDS = 2000  # a 10 us case would otherwise run 100,000 rounds in its second
QUICK = os.environ.get("FASTNET_BENCH_QUICK", "0") == "1"
CUDA_IMPLS = ("fastnet", "torch")


def pytest_configure(config):
    if torch_available():
        from fastnet.bench import torch_twins

        torch_twins.set_threads(fastnet.threading_info()["num_threads"])


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
        for case in all_cases(QUICK) if case.family == family for impl in IMPLS])


@pytest.fixture
def run_case(benchmark, request):
    """run_case(case, impl, device="cpu"): time one implementation of one case."""
    def run(case, impl, device="cpu"):
        if impl == "torch" and not torch_available():
            pytest.skip("PyTorch is not installed")
        bench = case.build(impl, device)
        if benchmark.disabled:  # --benchmark-disable: run it once, as a test
            benchmark.pedantic(bench.run, setup=bench.setup)
            return
        bench.once()  # the warm-up
        estimate = max(median_times({impl: bench}, 1)[impl], 1e-6)
        max_time = float(request.config.getoption("benchmark_max_time"))
        min_rounds = int(request.config.getoption("benchmark_min_rounds"))
        rounds = min(max(min_rounds, int(max_time / estimate)), MAX_ROUNDS)
        benchmark.pedantic(bench.run, setup=bench.setup, rounds=rounds, warmup_rounds=1)
        benchmark.extra_info.update(
            {k: round(v, 2) for k, v in case.throughput(benchmark.stats.stats.median).items()})
    return run
