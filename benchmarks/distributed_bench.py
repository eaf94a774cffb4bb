"""Data-parallel training on one machine: N ranks x T threads against one process.

    python benchmarks/distributed_bench.py                      # LeNet-5 and VGG-small
    python benchmarks/distributed_bench.py --models lenet5 --steps 100 --rounds 5

For each model, in turn and for ``--rounds`` rounds (the medians are printed):

- ``1 rank x T threads``: one process, the global batch;
- ``N ranks x T/N threads``: ``mpiexec -n N``, each rank batch / N, DistributedDataParallel
  with its overlap (buckets reduced while backward goes on);
- the same without the overlap (every bucket reduced after backward), which exposes the
  whole allreduce;
- the allreduce alone: the model's gradient buckets reduced back to back, no compute.

A step is what the Trainer does: zero_grad, forward, loss, the loss summed over the ranks,
backward (gradients averaged), SGD step with momentum. Reported: samples/s over all
ranks, the ratio to one process, the time per step spent waiting for the averaging after
backward, and the share of the allreduce's time that the overlap hides.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# the input of each model, as in the bench's training steps (fastnet/bench/cases.py)
IN_SHAPES = {"lenet5": (1, 28, 28), "vgg-small": (3, 32, 32), "resnet-small": (3, 32, 32),
             "mlp": (1, 28, 28)}
ALLREDUCE_SIZES = (8 << 10, 64 << 10, 512 << 10, 1 << 20, 4 << 20)  # bytes


def _worker(args):
    import fastnet
    from fastnet import distributed as dist
    from fastnet.losses import CrossEntropyLoss
    from fastnet.models import MODELS
    from fastnet.optim import SGD

    world, rank = dist.world_size(), dist.rank()
    fastnet.manual_seed(0)
    in_shape = IN_SHAPES[args.model]
    model = MODELS[args.model](in_shape=in_shape)
    net = dist.DistributedDataParallel(model, bucket_cap_mb=args.bucket_mb,
                                       overlap=not args.no_overlap)
    opt = SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss = CrossEntropyLoss()
    per_rank = args.batch // world
    rng = np.random.default_rng(rank)
    x = rng.standard_normal((per_rank,) + in_shape).astype(np.float32)
    y = rng.integers(0, 10, per_rank)

    def step():
        opt.zero_grad()
        value = float(loss(net(x), y))
        dist.all_sum([value * per_rank, per_rank])
        net.backward(loss.backward(), input_grad=False)
        opt.step()

    for _ in range(args.warmup):
        step()
    dist.barrier()
    net.comm_stats(reset=True)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = dist.all_max(time.perf_counter() - start)
    stats = net.comm_stats()
    result = {"step_s": seconds / args.steps, "samples_per_s": args.batch * args.steps / seconds,
              "wait_s": stats.get("wait_s", 0.0) / args.steps,
              "pack_s": stats.get("pack_s", 0.0) / args.steps,
              "unpack_s": stats.get("unpack_s", 0.0) / args.steps,
              "buckets": stats.get("bucket_count", 0),
              "grad_bytes": sum(p.data.nbytes for p in model.parameters())}
    if world > 1 and net._reducer is not None:  # the allreduce alone, on the same buckets
        from mpi4py import MPI

        buffers = [b.buffer.copy() for b in net._reducer.buckets]
        for _ in range(3):
            MPI.Request.Waitall([MPI.COMM_WORLD.Iallreduce(MPI.IN_PLACE, b) for b in buffers])
        dist.barrier()
        t0 = time.perf_counter()
        reps = 20
        for _ in range(reps):
            MPI.Request.Waitall([MPI.COMM_WORLD.Iallreduce(MPI.IN_PLACE, b) for b in buffers])
        result["allreduce_s"] = dist.all_max(time.perf_counter() - t0) / reps
        result["bucket_bytes"] = [b.nbytes for b in buffers]
    if rank == 0:
        print("RESULT " + json.dumps(result), flush=True)


def _allreduce_worker(args):
    """Blocking allreduces of float32 buffers of ALLREDUCE_SIZES bytes: median seconds."""
    from mpi4py import MPI

    from fastnet import distributed as dist

    comm, out = MPI.COMM_WORLD, {}
    for size in ALLREDUCE_SIZES:
        buf = np.ones(size // 4, dtype=np.float32)
        times = []
        for i in range(60):
            comm.Barrier()
            t0 = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, buf)
            times.append(dist.all_max(time.perf_counter() - t0))
        out[size] = statistics.median(times[10:])
    if dist.rank() == 0:
        print("RESULT " + json.dumps(out), flush=True)


def allreduce_fit(ranks):
    """(measured {bytes: s}, alpha s, beta bytes/s) of the model
    t = 2 ceil(log2 N) alpha + 2(N-1)/N S / beta (comm_time's)."""
    env = dict(os.environ, NUMBA_NUM_THREADS="1", PYTHONPATH=ROOT)
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    proc = subprocess.run([mpiexec if os.path.exists(mpiexec) else shutil.which("mpiexec"),
                           "-n", str(ranks), sys.executable, os.path.abspath(__file__),
                           "--allreduce-worker"], env=env, capture_output=True, text=True,
                          timeout=600)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    measured = {int(k): v for k, v in json.loads(line[len("RESULT "):]).items()}
    moved = np.array([2 * (ranks - 1) / ranks * s for s in measured])
    steps = np.full_like(moved, 2 * int(np.ceil(np.log2(ranks))))
    t = np.array(list(measured.values()))
    (a, inv_b), *_ = np.linalg.lstsq(np.stack([steps, moved], 1), t, rcond=None)
    return measured, max(a, 0.0), 1 / inv_b


def equivalence():
    """The largest per-tensor ||ranks - one|| / ||one|| and elementwise max |ranks - one| /
    max |one| over each model's parameters, for 2 and 3 ranks."""
    import tempfile

    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    mpiexec = mpiexec if os.path.exists(mpiexec) else shutil.which("mpiexec")
    env = dict(os.environ, PYTHONPATH=ROOT)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, 2, 3):
            out = os.path.join(tmp, str(n))
            cmd = ([mpiexec, "-n", str(n)] if n > 1 else []) + [
                sys.executable, "-m", "tests.distributed.mpi_worker", "equivalence", out]
            subprocess.run(cmd, cwd=ROOT, env=env, check=True, timeout=600)
            with np.load(os.path.join(out, "arrays.npz")) as f:
                results[n] = {k: f[k] for k in f.files}
    tags = sorted({k.split("/")[0] for k in results[1]}, key=lambda t: t.split("-")[::-1])
    print("| model, optimizer, dtype | 2 ranks: norm-wise / element-wise | 3 ranks: norm-wise / "
          "element-wise |")
    print("| --- | --- | --- |")
    for tag in tags:
        cells = []
        for n in (2, 3):
            keys = [k for k in results[1] if k.startswith(tag + "/")]
            norm = max(np.linalg.norm(results[n][k] - results[1][k]) / np.linalg.norm(results[1][k])
                       for k in keys)
            elem = max(np.abs(results[n][k] - results[1][k]).max() / np.abs(results[1][k]).max()
                       for k in keys)
            cells.append(f"{norm:.1e} / {elem:.1e}")
        print(f"| {tag} | {cells[0]} | {cells[1]} |")


def _run(ranks, threads, model, args, overlap=True):
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--model", model,
           "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--bucket-mb", str(args.bucket_mb)]
    if not overlap:
        cmd.append("--no-overlap")
    if ranks > 1:
        mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
        cmd = [mpiexec if os.path.exists(mpiexec) else shutil.which("mpiexec"), "-n",
               str(ranks)] + cmd
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="lenet5,vgg-small,resnet-small")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="threads in all (default 2)")
    parser.add_argument("--batch", type=int, default=64, help="global batch (default 64)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bucket-mb", type=float, default=None)
    parser.add_argument("--json", metavar="PATH", help="also write the medians here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--no-overlap", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--allreduce-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--equivalence", action="store_true",
                        help="only the parameters of N ranks against one process after 10 "
                             "steps (tests/distributed/mpi_worker.py), as relative errors")
    parser.add_argument("--allreduce", action="store_true",
                        help="only the allreduce's cost for 2 and 3 ranks, fitted to the ring "
                             "model t = alpha + 2(N-1)/N bytes / beta")
    args = parser.parse_args()
    if args.allreduce_worker:
        return _allreduce_worker(args)
    if args.equivalence:
        return equivalence()
    if args.allreduce:
        for ranks in (2, 3):
            measured, a, b = allreduce_fit(ranks)
            print(f"{ranks} ranks: alpha {1e6 * a:.1f} us, beta {b / 1e9:.2f} GB/s; measured vs "
                  "model: " + ", ".join(
                      f"{s >> 10} KB {1e3 * t:.3f}/{1e3 * comm_time([s], ranks, a, b):.3f} ms"
                      for s, t in measured.items()))
        return None
    if args.bucket_mb is None:
        from fastnet.distributed import DEFAULT_BUCKET_MB

        args.bucket_mb = DEFAULT_BUCKET_MB
    if args.worker:
        return _worker(args)
    import platform

    n, t = args.ranks, args.threads
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores; global "
          f"batch {args.batch}, {args.steps} steps x {args.rounds} rounds, buckets of "
          f"{args.bucket_mb} MB; medians")
    rows = {}
    for model in args.models.split(","):
        runs = {"one": [], "ddp": [], "ddp_no_overlap": []}
        for _ in range(args.rounds):
            runs["one"].append(_run(1, t, model, args))
            runs["ddp"].append(_run(n, max(1, t // n), model, args))
            runs["ddp_no_overlap"].append(_run(n, max(1, t // n), model, args, overlap=False))
        med = {k: {f: statistics.median(r[f] for r in v) for f in v[0]
                   if f not in ("buckets", "bucket_bytes")} for k, v in runs.items()}
        med["bucket_bytes"] = runs["ddp"][0]["bucket_bytes"]
        med["buckets"] = runs["ddp"][0]["buckets"]
        rows[model] = med
        one, ddp, off = med["one"], med["ddp"], med["ddp_no_overlap"]
        hidden = max(0.0, 1 - ddp["wait_s"] / off["wait_s"]) if off["wait_s"] > 0 else float("nan")
        print(f"\n## {model}: {one['grad_bytes'] / 1e6:.2f} MB of gradients in "
              f"{med['buckets']} buckets")
        print("| run | step (ms) | samples/s | vs 1 rank | wait after backward (ms/step) |")
        print("| --- | --- | --- | --- | --- |")
        print(f"| 1 rank x {t} threads | {1e3 * one['step_s']:.2f} | {one['samples_per_s']:.0f} "
              f"| 1.00 | - |")
        for name, r in ((f"{n} ranks x {max(1, t // n)} thread(s), overlap", ddp),
                        (f"{n} ranks x {max(1, t // n)} thread(s), no overlap", off)):
            print(f"| {name} | {1e3 * r['step_s']:.2f} | {r['samples_per_s']:.0f} | "
                  f"{r['samples_per_s'] / one['samples_per_s']:.2f} | {1e3 * r['wait_s']:.3f} |")
        print(f"\nallreduce alone: {1e3 * ddp['allreduce_s']:.3f} ms/step; the overlap hides "
              f"{100 * hidden:.0f}% of the wait that reducing after backward leaves "
              f"({1e3 * off['wait_s']:.3f} -> {1e3 * ddp['wait_s']:.3f} ms)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    if n == 2:
        predict(rows, allreduce_fit(2))


# Networks for the prediction: (name, alpha s per message step, beta bytes/s). Assumed, not
# measured: TCP over 10 Gb/s Ethernet, and an RDMA-class 100 Gb/s fabric, each at ~90% of
# its line rate.
NETWORKS = (("10 Gb/s", 30e-6, 0.9 * 10e9 / 8), ("100 Gb/s", 5e-6, 0.9 * 100e9 / 8))


def comm_time(bucket_bytes, n, alpha, beta):
    """Allreduce of each bucket: 2 ceil(log2 N) latency steps (reduce-scatter + allgather)
    and 2 (N - 1) / N of its bytes through each machine's link."""
    if n == 1:
        return 0.0
    steps = 2 * int(np.ceil(np.log2(n)))
    return sum(steps * alpha + 2 * (n - 1) / n * b / beta for b in bucket_bytes)


def predict(rows, fit):
    measured, alpha, beta = fit
    print(f"\n## The cost model, checked here (loopback, 2 ranks: alpha {1e6 * alpha:.1f} us, "
          f"beta {beta / 1e9:.2f} GB/s fitted to allreduces of 8 KB to 4 MB)")
    print("| model | gradients | allreduce alone: model / measured (ms) | wait without "
          "overlap: measured (ms) |")
    print("| --- | --- | --- | --- |")
    for model, med in rows.items():
        ddp, off = med["ddp"], med["ddp_no_overlap"]
        predicted = comm_time(med["bucket_bytes"], 2, alpha, beta)
        print(f"| {model} | {ddp['grad_bytes'] / 1e6:.2f} MB in {len(med['bucket_bytes'])} "
              f"buckets | {1e3 * predicted:.3f} / {1e3 * ddp['allreduce_s']:.3f} | "
              f"{1e3 * off['wait_s']:.3f} |")
    print("\n## Predicted: one machine like this one per rank, batch 64 per machine (weak "
          "scaling), step = compute + allreduce not hidden (overlap: the share hidden here, "
          "none for a model in one bucket)")
    print("| model | network | machines | allreduce (ms) | step, no overlap (ms) | "
          "efficiency | step, overlap as measured here (ms) | efficiency |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for model, med in rows.items():
        one, ddp, off = med["one"], med["ddp"], med["ddp_no_overlap"]
        compute = one["step_s"]
        # the share of the allreduce the overlap hid here; none with one bucket (it leaves
        # when backward is over: what "hid" here was the ranks' meeting)
        hidden = (max(0.0, 1 - ddp["wait_s"] / off["wait_s"])
                  if off["wait_s"] > 0 and len(med["bucket_bytes"]) > 1 else 0.0)
        for net, a, b in NETWORKS:
            for machines in (2, 8, 32):
                c = comm_time(med["bucket_bytes"], machines, a, b)
                plain, lapped = compute + c, compute + (1 - hidden) * c
                print(f"| {model} | {net} | {machines} | {1e3 * c:.2f} | {1e3 * plain:.1f} | "
                      f"{100 * compute / plain:.0f}% | {1e3 * lapped:.1f} | "
                      f"{100 * compute / lapped:.0f}% |")


if __name__ == "__main__":
    main()
