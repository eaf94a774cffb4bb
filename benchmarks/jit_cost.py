"""JIT cost of the LeNet-5 training step: cold compile (empty Numba cache) and warm-cache
start (import fastnet, build the model, first training step done), each in a fresh
process. Run: python benchmarks/jit_cost.py [--repeat 3]

Every kernel is compiled with cache=True, so the first run in a cache directory pays for
compilation and later ones only load machine code. Numba's cache goes to NUMBA_CACHE_DIR
(here a temporary directory, so the cold figure really is cold).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import time
t0 = time.perf_counter()
import numpy as np
import fastnet
from fastnet.layers import Conv2D, Dense, Flatten, MaxPool2D, Sequential
from fastnet.losses import CrossEntropyLoss
from fastnet.optim import SGD
t_import = time.perf_counter()
fastnet.manual_seed(0)
model = Sequential(Conv2D(1, 6, 5, padding=2, activation="relu"), MaxPool2D(2),
                   Conv2D(6, 16, 5, activation="relu"), MaxPool2D(2), Flatten(),
                   Dense(400, 120, activation="relu"), Dense(120, 84, activation="relu"),
                   Dense(84, 10))
rng = np.random.default_rng(0)
x, y = rng.random((128, 1, 28, 28), np.float32), rng.integers(0, 10, 128)
opt, loss_fn = SGD(model.parameters(), lr=0.01, momentum=0.9), CrossEntropyLoss()
def step():
    opt.zero_grad()
    loss_fn(model(x), y)
    model.backward(loss_fn.backward(), input_grad=False)
    opt.step()
step()
t_first = time.perf_counter()
step()
t_second = time.perf_counter()
print({"import_s": t_import - t0, "first_step_done_s": t_first - t0,
       "steady_step_s": t_second - t_first})
"""


def run(cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                         text=True, check=True).stdout
    return eval(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    cold, warm = [], []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as cache:
            cold.append(run(cache))
            warm.append(run(cache))
    med = lambda rows, k: statistics.median(r[k] for r in rows)  # noqa: E731
    result = {
        "cold: import + first LeNet-5 step (s)": round(med(cold, "first_step_done_s"), 2),
        "warm cache: import (s)": round(med(warm, "import_s"), 2),
        "warm cache: import + first LeNet-5 step (s)": round(med(warm, "first_step_done_s"), 2),
        "steady-state step (ms)": round(1e3 * med(warm, "steady_step_s"), 2),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
