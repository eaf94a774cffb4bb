"""How much of the DataLoader's batch preparation background threads hide behind training.

LeNet-5 training steps (SGD, momentum 0.9) on MNIST-shaped synthetic data (uint8 28x28,
10 classes), with augmentation on: RandomCrop(28, padding=2) and Normalize. For
num_workers = 0 (batches prepared in the training thread, between steps) and for
background threads, it times each epoch's

* wait: the time the training loop waits in ``next(loader)`` for its batch (with
  num_workers = 0: all of the batch preparation: gather, cast, crop, normalise);
* step: the training step;

and reports the fraction of the data time hidden, 1 - wait(N) / wait(0), and the epoch
time per batch. The settings take turns, epoch by epoch, for --rounds rounds; medians.
The wait is measured in the loop itself, so the fraction does not depend on a busy
machine's noisy step times as much as the epoch times do (which are shown too).
Run: python benchmarks/loader_overlap.py [--batches 40] [--rounds 5]
"""
import argparse
import statistics
import time

import numpy as np

import fastnet
from fastnet.data import ArrayDataset, Compose, DataLoader, Normalize, RandomCrop
from fastnet.losses import CrossEntropyLoss
from fastnet.models import lenet
from fastnet.optim import SGD


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=40, help="batches per epoch (default 40)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5, help="epochs timed per setting")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    n = args.batches * args.batch_size
    images = rng.integers(0, 256, size=(n, 1, 28, 28), dtype=np.uint8)
    dataset = ArrayDataset(images, rng.integers(0, 10, n))
    augment = Compose([RandomCrop(28, padding=2), Normalize([0.1307], [0.3081])])
    fastnet.manual_seed(0)
    model = lenet((1, 28, 28), 10)
    opt, loss_fn = SGD(model.parameters(), lr=0.01, momentum=0.9), CrossEntropyLoss()

    def step(x, y):
        opt.zero_grad()
        loss_fn(model(x), y)
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()

    def loader(workers):
        return DataLoader(dataset, args.batch_size, shuffle=True, seed=0, transform=augment,
                          num_workers=workers)

    def epoch(workers):
        wait = work = 0.0
        t_start = time.perf_counter()
        it = iter(loader(workers))
        while True:
            t0 = time.perf_counter()
            try:
                x, y = next(it)
            except StopIteration:
                break
            t1 = time.perf_counter()
            step(x, y)
            wait, work = wait + t1 - t0, work + time.perf_counter() - t1
        return wait, work, time.perf_counter() - t_start

    step(*next(iter(loader(0))))  # compiles (or loads) the kernels
    settings = [0, *args.workers]
    runs = {w: [] for w in settings}
    for _ in range(args.rounds):
        for w in settings:
            runs[w].append(epoch(w))
    med = {w: [statistics.median(r[k] for r in runs[w]) * 1e3 / args.batches for k in range(3)]
           for w in settings}
    info = fastnet.threading_info()
    print(f"fastnet {fastnet.__version__}, threading layer {info['threading_layer']}, "
          f"{info['num_threads']} threads, LeNet-5, {args.batches} batches of "
          f"{args.batch_size} 28x28 images, RandomCrop(28, padding=2) + Normalize, medians of "
          f"{args.rounds} epochs")
    print("num_workers  wait ms/batch  step ms/batch  epoch ms/batch  data time hidden")
    for w in settings:
        wait, work, total = med[w]
        hidden = 1 - wait / med[0][0]
        print(f"{w:11d}  {wait:13.2f}  {work:13.2f}  {total:14.2f}  {100 * hidden:15.1f}%")


if __name__ == "__main__":
    main()
