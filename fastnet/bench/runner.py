"""``python -m fastnet bench``: every case, fastnet beside its NumPy, PyTorch and ONNX
Runtime twins, as one compact table (or Markdown for benchmarks/RESULTS.md).

fastnet is timed as a user's program runs it: in a process that imported NumPy first and
fastnet after it. ``python -m fastnet`` imports fastnet first by its nature, so ``run``
starts the runner again in a fresh process, ``python -c "import numpy; ..."`` (without
the settings fastnet's import put in the environment), and prints what it prints; a
process that imported NumPy first (a script, the tests) runs the cases itself.

Per case: each twin is built, run once (the warm-up, which keeps JIT compilation out of
the timing) and its outputs checked against fastnet's; a twin that computes other
numbers is reported and not timed. Then fastnet and NumPy run ``repeat`` times each,
fastnet first (see BLAS_SETTLE_S), and the median is shown. PyTorch and ONNX Runtime run
in processes of their own (worker.py), each imported first there, as in their users'
programs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from .cases import WORKER_IMPLS, all_cases, available, compare, install_hint

OTHERS = ("numpy",) + WORKER_IMPLS
SHORT = {"onnxruntime": "ort"}  # column names
# NOTE: after each PyTorch case the worker's OpenMP threads spin on both cores for a few
# ms (libgomp's default 300000 spins; the worker runs with PyTorch's own settings), and
# fastnet's two-thread kernels timed in that window ran up to 2x slower (softmax
# 1024x1000 forward 0.60 ms against 0.29 ms with --no-torch). So the parent waits for
# them to go to sleep before timing its own twins.
WORKER_SETTLE_S = 0.05
# ... and after that pause (the cores idle), the first ms of work ran slower again (an SGD
# step measured 0.56-0.59 ms right after it, 0.26-0.36 ms without it): so both twins run,
# untimed, for this long before the timed runs.
WARM_UP_S = 0.05
# NOTE: the NumPy twin runs in this process, and NumPy's OpenBLAS workers busy-wait for
# ~60 ms after each of its GEMMs (2^28 cycles): fastnet timed interleaved with it ran up
# to 2x slower (a LeNet-5 step 7.5 ms against 3.6 ms in a process of its own, 2026-12).
# So fastnet's runs are timed first, after this pause, and the NumPy twin's after them.
BLAS_SETTLE_S = 0.2


def warm_up(benches: dict, seconds: float) -> None:
    """Run every implementation, interleaved, untimed, until ``seconds`` have passed (at
    least once each)."""
    deadline = time.perf_counter() + seconds
    while True:
        for bench in benches.values():
            if bench.setup is not None:
                bench.setup()
            bench.run()
        if time.perf_counter() >= deadline:
            return


def run_times(benches: dict, repeat: int) -> dict:
    """{impl: [seconds of each of ``repeat`` timed runs]}, the implementations interleaved."""
    times = {impl: [] for impl in benches}
    for _ in range(repeat):
        for impl, bench in benches.items():
            if bench.setup is not None:
                bench.setup()
            start = time.perf_counter()
            result = bench.run()  # noqa: F841 - freed after the clock stops, as in pytest-benchmark
            times[impl].append(time.perf_counter() - start)
    return times


def median_times(benches: dict, repeat: int) -> dict:
    """{impl: median seconds of ``repeat`` timed runs}, the implementations interleaved."""
    return {impl: statistics.median(t) for impl, t in run_times(benches, repeat).items()}


def rounds_for(bench, max_time: float, min_rounds: int, max_rounds: int) -> int:
    """How many runs of ``bench`` (warmed up) fill about ``max_time`` seconds, within
    [min_rounds, max_rounds] (pytest-benchmark's rule, with a cap for tiny cases)."""
    estimate = max(median_times({"_": bench}, 1)["_"], 1e-6)
    return min(max(min_rounds, int(max_time / estimate)), max_rounds)


def import_order() -> list:
    """The benchmarked libraries in the order this process began to import them.

    NOTE: sys.modules holds modules in the order their imports *completed*, and a package
    completes after what it imports (``python -m fastnet`` completes numpy, then
    fastnet). So each library is placed by its first module to complete: for fastnet that
    is fastnet.runtime, which fastnet/__init__.py imports before anything else."""
    names = ("numpy", "fastnet", "torch", "onnxruntime")
    order = []
    for key in sys.modules:
        top = key.partition(".")[0]
        if top in names and top not in order:
            order.append(top)
    return order


def clean_env(malloc_tuning=True):
    """This environment without what ``import fastnet`` put there (fastnet/runtime.py: the
    OpenMP spin count, when fastnet runs OpenMP; with ``malloc_tuning`` False, glibc's malloc defaults
    too, for a process that is not fastnet's), and fastnet on the path: a fresh process
    then starts as a user's program does."""
    import fastnet
    from fastnet import runtime

    env = dict(os.environ)
    if runtime.WE_SET_SPINCOUNT:
        env.pop("GOMP_SPINCOUNT", None)
    if not malloc_tuning:
        env["FASTNET_MALLOC_TUNING"] = "0"  # the worker imports fastnet too: glibc's defaults
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastnet.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


class TwinWorker:
    """The parent's end of worker.py for the twin ``impl``: one request per case, outputs
    via a file."""

    def __init__(self, impl: str, quick: bool, threads: int):
        self.impl = impl
        code = f"import {impl}; from fastnet.bench.worker import main; main()"
        argv = [sys.executable, "-c", code, "--impl", impl, "--threads", str(threads)]
        self._dir = tempfile.TemporaryDirectory(prefix="fastnet-bench-")
        self._proc = subprocess.Popen(argv + (["--quick"] if quick else []),
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True, env=clean_env(malloc_tuning=False))

    def measure(self, case, device="cpu", check=True, **rounds):
        """(outputs or None, [seconds of each timed run]) of this twin of ``case``;
        ``rounds``: repeat=n, or max_time, min_rounds and max_rounds (see rounds_for).
        RuntimeError if it failed."""
        path = os.path.join(self._dir.name, "outputs.npz") if check else None
        request = {"case": case.name, "device": device, "outputs": path, **rounds}
        try:
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
        except OSError:  # it has gone: a broken pipe
            line = ""
        if not line:
            raise RuntimeError(f"the {self.impl} worker exited with status {self._proc.wait()}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        if not check:
            return None, reply["times"]
        with np.load(path) as f:
            return dict(f), reply["times"]

    def close(self):
        with contextlib.suppress(OSError):
            self._proc.stdin.close()
        self._proc.wait()
        self._dir.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def measure(case, repeat, workers, problems):
    """{impl: median seconds, or a word saying why there is none} for one case;
    ``workers``: {impl: TwinWorker} of the twins that run in their own process."""
    benches = {impl: case.build(impl) for impl in ("fastnet", "numpy")}
    ref = benches["fastnet"].once()
    cells = {}

    def differs(impl, outputs):
        err = compare(outputs, ref, case.tolerance)
        if err:
            problems.append(f"{case.name}: the {impl} twin differs from fastnet: {err}")
            cells[impl] = "differs"
        return err

    if differs("numpy", benches["numpy"].once()):
        del benches["numpy"]
    ran = [w for impl, w in workers.items() if impl in case.impls]
    for worker in ran:
        try:
            outputs, times = worker.measure(case, repeat=repeat)
        except RuntimeError as e:
            problems.append(f"{case.name}: the {worker.impl} twin failed: {e}")
            cells[worker.impl] = "error"
        else:
            if not differs(worker.impl, outputs):
                cells[worker.impl] = statistics.median(times)
    time.sleep(max(BLAS_SETTLE_S, WORKER_SETTLE_S if ran else 0))
    for impl, bench in benches.items():  # fastnet first (see BLAS_SETTLE_S)
        warm_up({impl: bench}, WARM_UP_S)
        cells.update(median_times({impl: bench}, repeat))
    return cells


# ---- the table --------------------------------------------------------------------------

COLUMNS = [f"{SHORT.get(i, i)} ms" for i in ("fastnet",) + OTHERS] + \
    [f"{SHORT.get(i, i)}/fastnet" for i in OTHERS] + ["fastnet throughput", "samples/s"]


def _cells(name, times, work):
    """The table row: times in ms, ratios (> 1: fastnet faster), fastnet's throughput."""
    fast = times.get("fastnet")
    row = [name] + [f"{times[i] * 1e3:.4g}" if isinstance(times.get(i), float) else
                    times.get(i, "-") for i in ("fastnet",) + OTHERS]
    for impl in OTHERS:
        t = times.get(impl)
        row.append(f"{t / fast:.2f}" if isinstance(t, float) else "-")
    rates = work.throughput(fast)
    unit = next((u for u in ("GFLOP/s", "GB/s") if u in rates), None)
    row.append(f"{rates[unit]:.1f} {unit}" if unit else "-")
    row.append(f"{rates['samples/s']:.0f}" if "samples/s" in rates else "-")
    return row


class Table:
    """Prints rows as they come, as aligned text or Markdown."""

    def __init__(self, width, markdown):
        self.widths = [width] + [max(len(c), 10) for c in COLUMNS]
        self.markdown = markdown
        self._line(["case"] + COLUMNS)
        if markdown:
            self._line(["---"] + ["---:"] * len(COLUMNS))

    def _line(self, cells):
        if self.markdown:
            text = "| " + " | ".join(cells) + " |"
        else:
            text = "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(cells, self.widths)))
        print(text.rstrip(), flush=True)

    def row(self, name, times, work):
        self._line(_cells(name, times, work))


def cpu_model() -> str:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    return cpu


def _blas_threads() -> str:
    """NumPy's BLAS and its thread count, as threadpoolctl finds them (when installed)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "BLAS with its default thread count"
    blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    ours = [i for i in blas if "numpy" in i.get("filepath", "")] or blas  # not SciPy's
    return "; ".join(f"{i['internal_api']} with {i['num_threads']} threads" for i in ours) or \
        "no BLAS found"


# how each twin of worker.py runs (``threads``: Numba's thread count in the fastnet process)
TWIN_SETUP = {
    "torch": "its own process, torch imported first, torch.set_num_threads({threads})",
    "onnxruntime": "its own process, onnxruntime imported first, intra_op_num_threads="
                   "{threads}, inter_op_num_threads=1, sequential execution, all graph "
                   "optimisations",
}
# the versions in the header: (name, distribution), those installed
DISTRIBUTIONS = [("NumPy", "numpy"), ("Numba", "numba"), ("PyTorch", "torch"),
                 ("onnxruntime", "onnxruntime"), ("onnx", "onnx")]


def describe(twins: dict) -> list:
    """What a table of timings needs beside it: the CPU, how this (fastnet's) process
    imported its libraries and runs its threads, how each twin runs, the versions.
    ``twins``: {impl of WORKER_IMPLS: True when it runs, else why not}."""
    import fastnet

    info = fastnet.threading_info()
    threads = info["num_threads"]
    versions = [f"Python {platform.python_version()}"]
    for name, dist in DISTRIBUTIONS:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions.append(f"{name} {importlib.metadata.version(dist)}")
    versions.append(f"fastnet {fastnet.__version__}")
    lines = [f"CPU: {cpu_model()}, {os.cpu_count()} logical cores",
             f"fastnet: in a process that imported {', then '.join(import_order())}; Numba's "
             f"{info['threading_layer']} threading layer, {threads} threads",
             f"numpy twin: in the fastnet process, {_blas_threads()}"]
    lines += [f"{impl} twin: " + (f"in {TWIN_SETUP[impl].format(threads=threads)}" if state is True
                                  else state) for impl, state in twins.items()]
    return lines + [", ".join(versions)]


def twin_states(no_torch=False) -> dict:
    """{impl of WORKER_IMPLS: True when it runs, else why not (for describe)}."""
    states = {}
    for impl in WORKER_IMPLS:
        if impl == "torch" and no_torch:
            states[impl] = "left out (--no-torch)"
        elif not available(impl):
            states[impl] = f"not installed (pip install {install_hint(impl)}): its column is empty"
        else:
            states[impl] = True
    return states


# ``run`` in a fresh process that imports NumPy first (see the module docstring)
RELAUNCH = ("import numpy, argparse, json, sys; from fastnet.bench.runner import run; "
            "sys.exit(run(argparse.Namespace(**json.loads(sys.argv[1]))))")


def run(args) -> int:
    order = import_order()
    if "numpy" not in order or order.index("fastnet") < order.index("numpy"):
        options = {k: v for k, v in vars(args).items() if k != "func"}
        sys.stdout.flush()
        return subprocess.run([sys.executable, "-c", RELAUNCH, json.dumps(options)],
                              env=clean_env()).returncode

    import fastnet

    cases = [c for c in all_cases(quick=args.quick) if not args.filter or args.filter in c.name]
    if not cases:
        print(f"fastnet bench: no case matches --filter {args.filter!r}", file=sys.stderr)
        return 2
    threads = fastnet.threading_info()["num_threads"]
    states = twin_states(args.no_torch)
    lines = describe(states) + [
        f"median of {args.repeat} runs after a warm-up; ratio = other's time / fastnet's "
        "(> 1: fastnet is faster); throughput is fastnet's; -: the case has no such twin, "
        "or the twin does not run here (see above)"]
    print("\n".join((("- " if args.markdown else "") + line) for line in lines) + "\n")
    table = Table(max(len(c.name) for c in cases), args.markdown)
    problems, forward = [], {}
    with contextlib.ExitStack() as stack:
        workers = {impl: stack.enter_context(TwinWorker(impl, args.quick, threads))
                   for impl, state in states.items() if state is True}
        for case in cases:
            times = measure(case, args.repeat, workers, problems)
            table.row(case.name, times, case)
            if case.direction == "forward":
                forward[case.label] = (case, times)
            elif case.direction == "backward" and case.label in forward:
                fcase, ftimes = forward.pop(case.label)
                total = {i: ftimes[i] + times[i] for i in times if
                         isinstance(times[i], float) and isinstance(ftimes.get(i), float)}
                both = dataclasses.replace(case, direction="fwd+bwd", flops=fcase.flops + case.flops,
                                           nbytes=fcase.nbytes + case.nbytes)
                table.row(both.name, total, both)
    for p in problems:
        print(f"fastnet bench: {p}", file=sys.stderr)
    return 1 if problems else 0
