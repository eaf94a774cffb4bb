"""``python -m fastnet bench``: every case, fastnet beside its NumPy and PyTorch twins, as
one compact table (or Markdown for benchmarks/RESULTS.md).

Per case: each twin is built, run once (the warm-up, which keeps JIT compilation out of
the timing) and its outputs checked against fastnet's; a twin that computes other
numbers is reported and not timed. Then fastnet and NumPy run ``repeat`` times each,
interleaved, and the median is shown. PyTorch runs in a subprocess (torch_worker.py):
this process has imported fastnet already, and PyTorch imported after it shares GNU
OpenMP with fastnet's passive wait policy and runs several times slower than a user's
PyTorch would.
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

from .cases import all_cases, compare, torch_available

OTHERS = ("numpy", "torch")
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


def median_times(benches: dict, repeat: int) -> dict:
    """{impl: median seconds of ``repeat`` timed runs}, the implementations interleaved."""
    times = {impl: [] for impl in benches}
    for _ in range(repeat):
        for impl, bench in benches.items():
            if bench.setup is not None:
                bench.setup()
            start = time.perf_counter()
            result = bench.run()  # noqa: F841 - freed after the clock stops, as in pytest-benchmark
            times[impl].append(time.perf_counter() - start)
    return {impl: statistics.median(t) for impl, t in times.items()}


def _worker_env():
    """This environment without the OpenMP and OpenBLAS spin times fastnet
    put there itself, and without its malloc settings (fastnet/runtime.py): the PyTorch
    twins should run as a PyTorch user's code does."""
    import fastnet
    from fastnet import runtime

    env = dict(os.environ)
    if runtime.WE_SET_SPINCOUNT:
        env.pop("GOMP_SPINCOUNT", None)
    if runtime.WE_SET_BLAS_TIMEOUT:
        env.pop("OPENBLAS_THREAD_TIMEOUT", None)
    env["FASTNET_MALLOC_TUNING"] = "0"  # the worker imports fastnet too: glibc's defaults
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastnet.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


class TorchWorker:
    """The parent's end of torch_worker.py: one request per case, outputs via a file."""

    def __init__(self, quick: bool, threads: int):
        code = "import torch; from fastnet.bench.torch_worker import main; main()"
        argv = [sys.executable, "-c", code, "--threads", str(threads)] + (["--quick"] if quick else [])
        self._dir = tempfile.TemporaryDirectory(prefix="fastnet-bench-")
        self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True, env=_worker_env())

    def measure(self, case, repeat):
        """(outputs, median seconds) of the PyTorch twin of ``case``; RuntimeError if it failed."""
        path = os.path.join(self._dir.name, "outputs.npz")
        try:
            self._proc.stdin.write(json.dumps({"case": case.name, "repeat": repeat,
                                               "outputs": path}) + "\n")
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
        except OSError:  # it has gone: a broken pipe
            line = ""
        if not line:
            raise RuntimeError(f"the PyTorch worker exited with status {self._proc.wait()}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        with np.load(path) as f:
            return dict(f), reply["seconds"]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        with contextlib.suppress(OSError):
            self._proc.stdin.close()
        self._proc.wait()
        self._dir.cleanup()


def measure(case, repeat, worker, problems):
    """{impl: median seconds, or a word saying why there is none} for one case."""
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
    if worker is not None:
        try:
            outputs, seconds = worker.measure(case, repeat)
        except RuntimeError as e:
            problems.append(f"{case.name}: the torch twin failed: {e}")
            cells["torch"] = "error"
        else:
            if not differs("torch", outputs):
                cells["torch"] = seconds
        time.sleep(WORKER_SETTLE_S)
        warm_up(benches, WARM_UP_S)
    cells.update(median_times(benches, repeat))
    return cells


# ---- the table --------------------------------------------------------------------------

COLUMNS = ["fastnet ms", "numpy ms", "torch ms", "numpy/fastnet", "torch/fastnet",
           "fastnet throughput", "samples/s"]


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


def header(threads, repeat, use_torch):
    """Machine, thread count, versions: what a table of timings needs beside it."""
    import fastnet

    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    versions = {"Python": platform.python_version(), "NumPy": np.__version__,
                "Numba": importlib.metadata.version("numba")}
    if use_torch:
        versions["PyTorch"] = importlib.metadata.version("torch")
    versions["fastnet"] = fastnet.__version__
    layer = fastnet.threading_info()["threading_layer"]
    return (f"CPU: {cpu}, {os.cpu_count()} logical cores; {threads} threads (Numba's {layer} "
            f"layer{'; PyTorch set to the same' if use_torch else ''})\n"
            + ", ".join(f"{k} {v}" for k, v in versions.items()) + "\n"
            + f"median of {repeat} runs after a warm-up; ratio = other's time / fastnet's "
              "(> 1: fastnet is faster); throughput is fastnet's")


def run(args) -> int:
    import fastnet

    cases = [c for c in all_cases(quick=args.quick) if not args.filter or args.filter in c.name]
    if not cases:
        print(f"fastnet bench: no case matches --filter {args.filter!r}", file=sys.stderr)
        return 2
    use_torch = not args.no_torch and torch_available()
    threads = fastnet.threading_info()["num_threads"]
    text = header(threads, args.repeat, use_torch)
    if not args.no_torch and not use_torch:
        text += "\nPyTorch is not installed: no torch column"
    print("\n".join((("- " if args.markdown else "") + line) for line in text.splitlines()) + "\n")
    table = Table(max(len(c.name) for c in cases), args.markdown)
    problems, forward = [], {}
    worker = TorchWorker(args.quick, threads) if use_torch else contextlib.nullcontext()
    with worker:
        for case in cases:
            times = measure(case, args.repeat, worker if use_torch else None, problems)
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
