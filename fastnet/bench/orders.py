"""``python -m fastnet bench --import-orders``: fastnet's headline cases (the training
steps and the inference cases of cases.py) in three processes that differ only in what
they import first, as the programs of fastnet's users do:

* ``numpy first``: ``import numpy; import fastnet`` (every program that uses NumPy);
* ``fastnet first``: ``import fastnet; import numpy``;
* ``torch first``: ``import torch`` (set to fastnet's thread count), then NumPy, then
  fastnet (a program that also uses PyTorch); only where PyTorch is installed.

The three processes run side by side, one at a time: each round times every case in
each process (the processes' order turns every round), so that a noisy neighbour slows
all three alike; the table shows the median per process and the slowest order's time
over the fastest's. A last row has two Python threads serving one model
(LeNet-5, batch 64, eval mode) against one thread making all the calls: about 1 when
the threads' kernels run at once, sharing the cores (and about 1, not less, because
every call already uses all of them).
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time

ORDERS = {
    "numpy first": "import numpy; import fastnet",
    "fastnet first": "import fastnet; import numpy",
    "torch first": "import torch; torch.set_num_threads({threads}); import numpy; import fastnet",
}
WORKER = "; from fastnet.bench.orders import serve; serve()"


def headline_cases(quick=False):
    from .cases import all_cases

    return [c for c in all_cases(quick=quick) if c.family in ("train", "inference")]


def concurrent_case(names):
    """The case two threads serve at once: LeNet-5's batched inference."""
    return next(n for n in names if n.startswith("lenet5") and n.endswith("inference")
                and not n.startswith("lenet5 1x"))


def _two_threads(bench, calls):
    """(seconds for one thread making ``calls`` calls, seconds for two threads making
    calls/2 each) of bench.run."""
    def work(k):
        for _ in range(k):
            bench.run()

    start = time.perf_counter()
    work(calls)
    one = time.perf_counter() - start
    threads = [threading.Thread(target=work, args=(calls // 2,)) for _ in range(2)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return one, time.perf_counter() - start


def serve():
    """The worker: one JSON request per line on stdin ({"case": name, "repeat": n} or
    {"concurrent": calls}), one JSON answer per line: {"times": [...]} or {"one": s,
    "two": s}; the first line out describes the process."""
    import fastnet

    from .runner import import_order, run_times

    quick = "--quick" in sys.argv
    cases = {c.name: c for c in headline_cases(quick)}
    benches = {}

    def bench(name):
        if name not in benches:
            benches[name] = cases[name].build("fastnet")
            benches[name].once()  # compiles, and the warm-up
        return benches[name]

    info = fastnet.threading_info()
    print(json.dumps({"order": import_order(), "layer": info["threading_layer"],
                      "threads": info["num_threads"], "serialised": info["serialised"]}),
          flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if "concurrent" in req:
            b = bench(concurrent_case(cases))
            _two_threads(b, 4)
            one, two = _two_threads(b, req["concurrent"])
            print(json.dumps({"one": one, "two": two}), flush=True)
            continue
        times = run_times({"fastnet": bench(req["case"])}, req["repeat"])["fastnet"]
        print(json.dumps({"times": times}), flush=True)


class _Process:
    def __init__(self, label, code, quick, env):
        args = [sys.executable, "-c", code + WORKER] + (["--quick"] if quick else [])
        self.label = label
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)
        self.info = self._answer()

    def _answer(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.label} process ended: exit code {self.proc.wait()}")
        return json.loads(line)

    def ask(self, **req):
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def run(quick=False, rounds=5, repeat=None, markdown=False, out=print, filter=None,
        no_torch=False) -> int:
    """Measure and print the table (see the module docstring); 0 when every process ran,
    2 when ``filter`` matches no case."""
    import fastnet

    from .cases import torch_available
    from .runner import clean_env, cpu_model

    threads = fastnet.threading_info()["num_threads"]
    orders = {k: v.format(threads=threads) for k, v in ORDERS.items()
              if k != "torch first" or (torch_available() and not no_torch)}
    cases = [c for c in headline_cases(quick) if not filter or filter in c.name]
    if not cases:
        print(f"fastnet bench: no training step or inference case matches --filter {filter!r}",
              file=sys.stderr)
        return 2
    env = clean_env()
    procs = [_Process(label, code, quick, env) for label, code in orders.items()]
    times = {(c.name, p.label): [] for c in cases for p in procs}
    conc = {p.label: [] for p in procs}
    try:
        for r in range(rounds):
            turn = procs[r % len(procs):] + procs[:r % len(procs)]
            for case in cases:
                n = repeat or (3 if quick else max(5, min(200, int(0.3 / _guess(case)))))
                for p in turn:
                    times[case.name, p.label] += p.ask(case=case.name, repeat=n)["times"]
            for p in turn:
                # (quick: enough tiny calls that starting two threads is not the time)
                a = p.ask(concurrent=400 if quick else 100)
                conc[p.label].append(a["two"] / a["one"])
    finally:
        for p in procs:
            p.close()

    sep = " | " if markdown else "  "
    labels = [p.label for p in procs]
    concurrent = f"2 threads / 1 thread, {concurrent_case([c.name for c in headline_cases(quick)])}"
    width = max(len(n) for n in [c.name for c in cases] + [concurrent])
    out(f"CPU: {cpu_model()}; {threads} threads; {rounds} rounds, the processes in turn")
    for p in procs:
        i = p.info
        out(f"{p.label}: imported {', then '.join(i['order'])}; Numba's {i['layer']} layer, "
            f"{i['threads']} threads{', kernel calls serialised' if i['serialised'] else ''}")
    head = [f"{'case':{width}s}"] + [f"{lab + ' ms':>16s}" for lab in labels] + ["slowest/fastest"]
    out(sep.join(head))
    if markdown:
        out(sep.join(["---"] * len(head)))
    for case in cases:
        med = [statistics.median(times[case.name, lab]) * 1e3 for lab in labels]
        out(sep.join([f"{case.name:{width}s}"] + [f"{m:16.4f}" for m in med]
                     + [f"{max(med) / min(med):15.2f}"]))
    med = [statistics.median(conc[lab]) for lab in labels]
    out(sep.join([f"{concurrent:{width}s}"] + [f"{m:16.2f}" for m in med] + [""]))
    return 0


def _guess(case):
    """A rough time per call, for choosing runs per round (~0.3 s)."""
    return max(case.flops / 40e9, 2e-5) if case.flops else 1e-3
