"""fastnet on CUDA against PyTorch on CUDA, on the same GPU, as one table.

    python benchmarks/cuda_bench.py [--repeat 20] [--quick] [--filter SUBSTR] [--no-torch]
                                    [--json FILE]

The cases are ``fastnet.bench.cuda_cases()``, the same that ``benchmarks/test_cuda.py``
times under pytest-benchmark: a square FP32 GEMM (1024^3, 4096^3; PyTorch with TF32 off),
the cost of a kernel launch from Python, and the CPU suite's cases of dense, conv,
pooling, activations and softmax, cross-entropy, batch norm, dropout, SGD / Adam, LSTM and
whole training steps (batch 128). Inputs are on the GPU before timing; every timed call
and every untimed setup ends with a device synchronisation; medians of ``--repeat`` runs
after a warm-up (JIT compilation is not throughput). PyTorch's outputs are checked
against fastnet's before PyTorch is timed, as ``python -m fastnet bench`` does on the
CPU; a twin that computes other numbers is reported and not timed.

Columns: fastnet and PyTorch ms, PyTorch / fastnet (> 1: fastnet is faster), fastnet's
GFLOP/s or GB/s (the launch case: us per launch), and device allocations fastnet made
during its timed runs (0: the caching allocator served every step). ``--quick``: tiny
shapes, a smoke test (it runs in Numba's CUDA simulator too, NUMBA_ENABLE_CUDASIM=1).
``--json FILE`` writes the rows for benchmarks/gpu_check.sh. Exit status 0, 1 when a case
failed or a twin differs, 2 without CUDA.
"""
import argparse
import importlib.util
import json
import os
import sys
import traceback
import warnings


def _torch_cuda():
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    return torch if torch.cuda.is_available() else None


def _allocations():
    from fastnet import cuda

    stats = getattr(cuda, "memory_stats", None)
    return None if stats is None else stats().get("device_allocations")


def measure(case, repeat, torch):
    """One table row (a dict) for ``case``."""
    from fastnet.bench import compare
    from fastnet.bench.cases import LAUNCHES
    from fastnet.bench.runner import median_times

    row = {"case": case.name, "status": "ok"}
    try:
        bench = case.build("fastnet", "cuda")
        ref = bench.once()  # the warm-up: compiles the kernels, fills the memory pool
        bench.once()
        before = _allocations()
        seconds = median_times({"fastnet": bench}, repeat)["fastnet"]
        after = _allocations()
    except Exception as e:
        traceback.print_exc()
        return {**row, "status": "error", "error": f"fastnet: {type(e).__name__}: {e}"}
    row["fastnet_ms"] = 1e3 * seconds
    if before is not None and after is not None:
        row["allocations"] = after - before
    if case.family == "launch":
        row["throughput"] = f"{1e6 * seconds / LAUNCHES:.1f} us/launch"
    else:
        rates = case.throughput(seconds)
        unit = next((u for u in ("GFLOP/s", "GB/s") if u in rates), None)
        row["throughput"] = f"{rates[unit]:.1f} {unit}" if unit else "-"
    if torch is None:
        return row
    try:
        tbench = case.build("torch", "cuda")
        err = compare(tbench.once(), ref, case.tolerance)
        if err:
            return {**row, "status": "differs", "error": f"the torch twin differs: {err}"}
        tbench.once()
        row["torch_ms"] = 1e3 * median_times({"torch": tbench}, repeat)["torch"]
        row["ratio"] = row["torch_ms"] / row["fastnet_ms"]
    except Exception as e:
        traceback.print_exc()
        return {**row, "status": "error", "error": f"torch: {type(e).__name__}: {e}"}
    return row


COLUMNS = [("fastnet_ms", "fastnet ms", "{:.4g}"), ("torch_ms", "torch ms", "{:.4g}"),
           ("ratio", "torch/fastnet", "{:.2f}"), ("throughput", "fastnet throughput", "{}"),
           ("allocations", "allocs", "{}"), ("status", "check", "{}")]


def print_header(width):
    print("  ".join(["case".ljust(width)] + [title.rjust(max(len(title), 9))
                                              for _, title, _ in COLUMNS]), flush=True)


def print_row(r, width):
    cells = [r["case"].ljust(width)]
    for key, title, fmt in COLUMNS:
        v = r.get(key)
        cells.append((fmt.format(v) if v is not None else "-").rjust(max(len(title), 9)))
    print("  ".join(cells).rstrip(), flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="tiny shapes (a smoke test)")
    p.add_argument("--filter", default="", help="only the cases whose name contains this")
    p.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = p.parse_args(argv)
    torch = None if args.no_torch else _torch_cuda()  # before fastnet, as in benchmarks/
    import fastnet
    from fastnet.bench import cuda_cases

    if not fastnet.cuda.is_available():
        print(f"cuda_bench: no CUDA: {fastnet.cuda.unavailable_reason()}", file=sys.stderr)
        return 2
    cases = [c for c in cuda_cases(args.quick) if args.filter in c.name]
    if not cases:
        print(f"cuda_bench: no case matches --filter {args.filter!r}", file=sys.stderr)
        return 2
    if fastnet.cuda.simulator():
        gpu = "Numba's CUDA simulator"
        # it runs the dropout hash's wrapping uint64 products as NumPy scalars, which warn
        warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning)
    else:
        from numba import cuda as ncuda

        gpu = ncuda.get_current_device().name
        gpu = gpu.decode() if isinstance(gpu, bytes) else gpu
    torch_note = (f"PyTorch {torch.__version__} (TF32 off)" if torch is not None else
                  "no PyTorch with CUDA: fastnet only")
    print(f"GPU: {gpu}; {torch_note}; median of {args.repeat} runs, each synchronised\n",
          flush=True)
    width = max(len(c.name) for c in cases)
    print_header(width)
    rows = []

    def save(complete):  # after every case: a run cut short still leaves its rows
        if args.json:
            with open(args.json + ".tmp", "w") as f:
                json.dump({"gpu": gpu, "torch": torch is not None and torch.__version__,
                           "cases": len(cases), "complete": complete, "rows": rows}, f,
                          indent=1, default=float)
            os.replace(args.json + ".tmp", args.json)

    for case in cases:
        rows.append(measure(case, args.repeat, torch))
        if "error" in rows[-1]:
            print(f"cuda_bench: {case.name}: {rows[-1]['error']}", file=sys.stderr, flush=True)
        print_row(rows[-1], width)
        save(False)
    save(True)
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
