"""How much of the DataLoader's batch preparation background threads hide behind training.

LeNet-5 training steps (SGD, momentum 0.9) on MNIST-shaped synthetic data (uint8 28x28,
10 classes), with augmentation on: RandomCrop(28, padding=2) and Normalize. It times

* data:  one pass over the loader alone (gather, cast, crop, normalise) per batch;
* step:  the training step alone, on batches prepared beforehand;
* epoch: the loader and the step together, with num_workers = 0 (in the training thread)
  and with background threads;

and reports the fraction of the data time hidden: (epoch(0) - epoch(N)) / data.
Medians of --repeat epochs. Run: python benchmarks/loader_overlap.py [--batches 40]
On a busy machine the threads compete with Numba's for the cores: time on a quiet one.
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
    ap.add_argument("--repeat", type=int, default=3, help="epochs timed per setting")
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

    def median_time(run):
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    batches = list(loader(0))
    step(*batches[0])  # compiles (or loads) the kernels
    data = median_time(lambda: [None for _ in loader(0)])
    train = median_time(lambda: [step(x, y) for x, y in batches])
    print(f"fastnet {fastnet.__version__}, threading layer "
          f"{fastnet.threading_info()['threading_layer']}, {fastnet.threading_info()['num_threads']} threads, LeNet-5, {args.batches} batches "
          f"of {args.batch_size} 28x28 images, RandomCrop(28, padding=2) + Normalize")
    per = 1e3 / args.batches
    print(f"data alone:  {data * per:7.2f} ms/batch")
    print(f"step alone:  {train * per:7.2f} ms/batch")
    results = {}
    for workers in [0, *args.workers]:
        results[workers] = median_time(lambda: [step(x, y) for x, y in loader(workers)])
    for workers, t in results.items():
        hidden = (results[0] - t) / data if workers else 0.0
        over = t - train
        print(f"num_workers={workers}: {t * per:7.2f} ms/batch, {over * per:6.2f} ms/batch over "
              f"the step alone, {100 * hidden:5.1f}% of the data time hidden")


if __name__ == "__main__":
    main()
