"""A twin that runs in a process of its own: PyTorch or ONNX Runtime, imported first, as
in the programs of their users.

runner.py (and benchmarks/conftest.py) start it as ``python -c "import torch; from
fastnet.bench.worker import main; main()" --impl torch --threads N [--quick]`` (``import
onnxruntime`` for ``--impl onnxruntime``), without the GOMP_SPINCOUNT and
malloc settings fastnet made in the parent, so that the twin
runs as its users' code does; N is Numba's thread count in the fastnet process.

Requests come on stdin, one JSON line per case: {"case": name, "device": "cpu" or "cuda"
(optional), "outputs": path or null, and either "repeat": n or "max_time": seconds,
"min_rounds": n, "max_rounds": n (as many rounds as fit in max_time, see
runner.rounds_for)}. The worker builds the twin, runs it once (the warm-up), saves its
outputs to ``path`` (.npz) for the parent to check, times the runs and answers one JSON
line on stdout: {"seconds": median, "times": [seconds of each run]} or {"error": message}.
"""
import argparse
import importlib
import json
import statistics
import sys

import numpy as np

from .cases import all_cases, cuda_cases
from .runner import rounds_for, run_times

MODULES = {"torch": "fastnet.bench.torch_twins", "onnxruntime": "fastnet.bench.onnx_twins"}


def _rounds(bench, request):
    if "repeat" in request:
        return request["repeat"]
    return rounds_for(bench, request["max_time"], request["min_rounds"], request["max_rounds"])


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastnet.bench.worker")
    parser.add_argument("--impl", choices=sorted(MODULES), required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    replies, sys.stdout = sys.stdout, sys.stderr  # stray prints must not break the protocol
    importlib.import_module(MODULES[args.impl]).set_threads(args.threads)
    cases = {"cpu": {c.name: c for c in all_cases(quick=args.quick)}}
    for line in sys.stdin:
        request = json.loads(line)
        try:
            device = request.get("device", "cpu")
            if device not in cases:
                cases[device] = {c.name: c for c in cuda_cases(quick=args.quick)}
            bench = cases[device][request["case"]].build(args.impl, device)
            outputs = bench.once()
            if request.get("outputs"):
                np.savez(request["outputs"], **outputs)
            times = run_times({args.impl: bench}, _rounds(bench, request))[args.impl]
            reply = {"seconds": statistics.median(times), "times": times}
        except Exception as e:  # reported by the parent, which goes on with the next case
            reply = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(reply), file=replies, flush=True)
