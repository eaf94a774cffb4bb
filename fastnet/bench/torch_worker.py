"""The PyTorch side of ``python -m fastnet bench``, in a process of its own.

runner.py starts it as ``python -c "import torch; from fastnet.bench.torch_worker import
main; main()" --threads N [--quick]``, torch imported before fastnet and without the
GOMP_SPINCOUNT fastnet set in the parent, so that PyTorch runs as in a user's program.
Requests come on stdin, one JSON line per case: {"case": name, "repeat": n, "outputs":
path}. The worker runs the torch twin once (the warm-up), saves its outputs to ``path``
(.npz) for the parent to check, times ``repeat`` runs and answers one JSON line on
stdout: {"seconds": median} or {"error": message}.
"""
import argparse
import json
import sys

import numpy as np

from .cases import all_cases
from .runner import median_times


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastnet.bench.torch_worker")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    replies, sys.stdout = sys.stdout, sys.stderr  # stray prints must not break the protocol
    from . import torch_twins

    torch_twins.set_threads(args.threads)
    cases = {c.name: c for c in all_cases(quick=args.quick)}
    for line in sys.stdin:
        request = json.loads(line)
        try:
            bench = cases[request["case"]].build("torch")
            np.savez(request["outputs"], **bench.once())
            reply = {"seconds": median_times({"torch": bench}, request["repeat"])["torch"]}
        except Exception as e:  # reported by the parent, which goes on with the next case
            reply = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(reply), file=replies, flush=True)
