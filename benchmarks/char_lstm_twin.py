"""fastnet's character model against a PyTorch twin trained identically (issue 21).

Both train ``fastnet.models.CharLSTM``'s model (Embedding(V, 64) -> LSTM(64, 256, 2 layers)
-> Linear(256, V) at every position) on the CLI's data (``python -m fastnet train --model
char-lstm --data text``: the text of Python's pydoc_data, windows of 100 characters, split
90/5/5 by position), with the CLI's defaults: batch 64, Adam lr 0.003, cosine schedule
stepped per epoch, 12 epochs. They start from the same weights (fastnet's initialisation,
seeded, handed to PyTorch), see the same batches in the same order (fastnet's DataLoader,
seeded) and report the same measure: the mean cross-entropy over every position of the
validation and test windows, in bits per character.

    python benchmarks/char_lstm_twin.py                 # both, one after the other
    python benchmarks/char_lstm_twin.py --epochs 1      # a shorter look

Each run is its own process with the same thread count, the library imported after NumPy
as in a user's program, the PyTorch one without the malloc and OpenMP settings that
``import fastnet`` makes (as in the benchmark's twins); they run one after the other,
never side by side. The figures
and the wall time of each go to stdout, and with ``--json PATH`` to a file.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

LN2 = math.log(2)


def _data(seq_len):
    from fastnet.data import load_char_data

    return load_char_data(seq_len, 0.05, 0.05)


def _loader(dataset, batch, shuffle=False, seed=None):
    from fastnet.data import DataLoader

    return DataLoader(dataset, batch, shuffle=shuffle, seed=seed, int_features=True)


def _cosine(epoch, epochs, lr):
    return lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))


def _report(name, history, test, seconds):
    return {"impl": name, "history": history, "test_bpc": test, "seconds": seconds}


def run_fastnet(args, init_path):
    import fastnet
    from fastnet.losses import CrossEntropyLoss
    from fastnet.models import CharLSTM
    from fastnet.optim import Adam

    data = _data(args.seq_len)
    fastnet.manual_seed(args.seed)
    model = CharLSTM(data["vocab"].chars)
    np.savez(init_path, **{k: np.asarray(v) for k, v in model.state_dict().items()})
    opt, loss_fn = Adam(model.parameters(), lr=args.lr), CrossEntropyLoss()

    def bpc(dataset):
        model.eval()
        total, seen = 0.0, 0
        for x, y in _loader(dataset, args.batch_size):
            total += float(loss_fn(model(x), y)) * y.size
            seen += y.size
        return total / seen / LN2

    history = []
    start = time.perf_counter()
    for epoch in range(args.epochs):
        opt.lr = _cosine(epoch, args.epochs, args.lr)
        model.train()
        for x, y in _loader(data["train"], args.batch_size, True, args.seed + epoch):
            opt.zero_grad()
            loss_fn(model(x), y)
            model.backward(loss_fn.backward())
            opt.step()
        history.append(bpc(data["val"]))
        print(f"fastnet epoch {epoch + 1}: validation {history[-1]:.4f} bits/char", flush=True)
    test = bpc(data["test"])
    return _report("fastnet", history, test, time.perf_counter() - start)


def run_torch(args, init_path):
    import torch
    import torch.nn.functional as F

    from fastnet.bench.torch_twins import CharLSTM

    torch.set_num_threads(args.threads)
    data = _data(args.seq_len)
    init = np.load(init_path)

    v, e = init["embedding.weight"].shape
    h = init["lstm.weight_hh_l0"].shape[1]
    layers = sum(k.startswith("lstm.weight_hh_l") for k in init.files)
    model = CharLSTM(v, e, h, layers)
    model.load_state_dict({k: torch.from_numpy(init[k]) for k in init.files})
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)

    def bpc(dataset):
        model.eval()
        total, seen = 0.0, 0
        with torch.no_grad():
            for x, y in _loader(dataset, args.batch_size):
                y = torch.from_numpy(y)
                total += float(F.cross_entropy(model(torch.from_numpy(x)), y)) * y.numel()
                seen += y.numel()
        return total / seen / LN2

    history = []
    start = time.perf_counter()
    for epoch in range(args.epochs):
        for group in opt.param_groups:
            group["lr"] = _cosine(epoch, args.epochs, args.lr)
        model.train()
        for x, y in _loader(data["train"], args.batch_size, True, args.seed + epoch):
            opt.zero_grad()
            F.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y)).backward()
            opt.step()
        history.append(bpc(data["val"]))
        print(f"torch epoch {epoch + 1}: validation {history[-1]:.4f} bits/char", flush=True)
    test = bpc(data["test"])
    return _report("torch", history, test, time.perf_counter() - start)


def _child(args, impl, init_path, out_path):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", impl, "--init", init_path,
           "--result", out_path, "--epochs", str(args.epochs), "--seq-len", str(args.seq_len),
           "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--seed", str(args.seed),
           "--threads", str(args.threads)]
    env = dict(os.environ, NUMBA_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    if impl == "torch":
        # as the benchmark's twins run (fastnet/bench/runner.py): without the settings
        # ``import fastnet`` makes (its data loading is imported there), which PyTorch's
        # allocations would share. NOTE: glibc's malloc tuning alone took PyTorch's step
        # from ~190 to ~150 ms here: a PyTorch user gets that with jemalloc or tcmalloc.
        env.pop("GOMP_SPINCOUNT", None)
        env["FASTNET_MALLOC_TUNING"] = "0"
    subprocess.run(cmd, check=True, env=env)
    with open(out_path) as f:
        return json.load(f)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seq-len", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.003)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--worker", choices=["fastnet", "torch"], help=argparse.SUPPRESS)
    p.add_argument("--init", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        run = run_fastnet if args.worker == "fastnet" else run_torch
        with open(args.result, "w") as f:
            json.dump(run(args, args.init), f)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        init = os.path.join(tmp, "init.npz")
        runs = [_child(args, impl, init, os.path.join(tmp, impl + ".json"))
                for impl in ("fastnet", "torch")]  # fastnet writes the initial weights
    fn, pt = runs
    print(f"\n{'':8s} {'test bits/char':>15s} {'last validation':>16s} {'wall time':>10s}")
    for r in runs:
        print(f"{r['impl']:8s} {r['test_bpc']:15.4f} {r['history'][-1]:16.4f} "
              f"{r['seconds']:9.1f}s")
    print(f"difference (fastnet - torch): {fn['test_bpc'] - pt['test_bpc']:+.4f} bits/char on "
          f"the test text; torch's time / fastnet's: {pt['seconds'] / fn['seconds']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
