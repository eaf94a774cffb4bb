"""What the MPI tests run in every rank: ``mpiexec -n N python -m tests.distributed.mpi_worker
CASE OUT_DIR``. Rank 0 writes the results to OUT_DIR for the test to check; a single
process (no mpiexec) writes the reference the same way.
"""
import json
import os
import sys
import time

import numpy as np

import fastnet
from fastnet import distributed as dist
from fastnet.data import ArrayDataset, DataLoader
from fastnet.layers import Dense, Flatten, ReLU, Residual, Sequential
from fastnet.losses import CrossEntropyLoss
from fastnet.models import MODELS
from fastnet.optim import SGD, Adam
from fastnet.train import evaluate

STEPS = 10
GLOBAL_BATCH = 12  # divisible by 1, 2 and 3 ranks


def residual_mlp(in_shape=(1, 8, 8), num_classes=10):
    return Sequential(Flatten(), Dense(64, 32, activation="relu"),
                      Residual(Sequential(Dense(32, 32), ReLU(), Dense(32, 32))),
                      ReLU(), Dense(32, num_classes))


def build(name, dtype):
    fastnet.manual_seed(0)  # the same on every rank; DDP broadcasts rank 0's anyway
    if name == "residual":
        model = residual_mlp()
    elif name == "tiny":  # for the CUDA simulator
        model = Sequential(Flatten(), Dense(64, 8, activation="relu"), Dense(8, 10))
    elif name == "lstm":
        model = MODELS["lstm"](in_shape=(1, 8, 8), hidden=16)
    else:
        model = MODELS[name](in_shape=(1, 8, 8))
    return model.to(dtype)


def data(dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((STEPS * GLOBAL_BATCH, 1, 8, 8)).astype(dtype)
    y = rng.integers(0, 10, STEPS * GLOBAL_BATCH)
    return x, y


def train_steps(name, dtype, optimizer, device="cpu", bucket_cap_mb=0.02, no_sync=False,
                steps=STEPS):
    """STEPS steps of GLOBAL_BATCH samples, each rank taking its share through a
    distributed DataLoader; returns the model's parameters."""
    x, y = data(dtype)
    model = build(name, dtype).to(device)
    net = dist.DistributedDataParallel(model, bucket_cap_mb=bucket_cap_mb)
    world = dist.world_size()
    loader = DataLoader(ArrayDataset(x, y), GLOBAL_BATCH // world, shuffle=True, seed=3,
                        dtype=dtype, distributed=True)
    if optimizer == "sgd":
        opt = SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    else:
        opt = Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
    loss = CrossEntropyLoss()
    batches = list(loader)
    assert len(batches) == STEPS
    for xb, yb in batches[:steps]:
        opt.zero_grad()
        if no_sync:  # two half batches: the first accumulated locally, the second averaged
            half = len(yb) // 2
            with net.no_sync():
                loss(net(xb[:half]), yb[:half])
                net.backward(loss.backward() * (half / len(yb)), input_grad=False)
            loss(net(xb[half:]), yb[half:])
            net.backward(loss.backward() * ((len(yb) - half) / len(yb)), input_grad=False)
        else:
            loss(net(xb), yb)
            net.backward(loss.backward(), input_grad=False)
        opt.step()
    return {k: np.asarray(v) for k, v in model.state_dict().items()}, net


def case_equivalence(out):
    """Parameters after STEPS steps, per model / optimizer / dtype; and whether every
    rank ended with bitwise the same parameters."""
    results, same = {}, {}
    for name in ("lenet", "residual", "lstm"):
        for opt in ("sgd", "adam"):
            for dtype in (np.float64, np.float32):
                tag = f"{name}-{opt}-{np.dtype(dtype).name}"
                state, net = train_steps(name, dtype, opt)
                for k, v in state.items():
                    results[f"{tag}/{k}"] = v
                same[tag] = _same_on_all_ranks(state)
    state, _ = train_steps("lenet", np.float64, "sgd", no_sync=True)
    for k, v in state.items():
        results[f"lenet-nosync-float64/{k}"] = v
    _write(out, results, {"same": same})


def _same_on_all_ranks(state):
    flat = np.concatenate([v.ravel().astype(np.float64) for v in state.values()])
    if dist.world_size() == 1:
        return True
    from mpi4py import MPI

    lo, hi = flat.copy(), flat.copy()
    MPI.COMM_WORLD.Allreduce(MPI.IN_PLACE, lo, op=MPI.MIN)
    MPI.COMM_WORLD.Allreduce(MPI.IN_PLACE, hi, op=MPI.MAX)
    return bool(np.array_equal(lo, hi))


def case_sharding(out):
    """Each rank's sample indices over two epochs of an uneven dataset (and the loader's
    length), gathered on rank 0; evaluation over the whole set split between ranks."""
    n = 23
    ds = ArrayDataset(np.arange(n, dtype=np.float32).reshape(n, 1), np.arange(n))
    loader = DataLoader(ds, 4, shuffle=True, seed=5, distributed=True)
    epochs = []
    for _ in range(2):
        epochs.append([int(v) for _, yb in loader for v in yb])
    mine = {"rank": dist.rank(), "len": len(loader), "epochs": epochs,
            "state": str(loader.state_dict())}
    gathered = _gather(mine)
    # evaluation: the whole set once, whatever the number of ranks
    fastnet.manual_seed(0)
    model = MODELS["mlp"](in_shape=(1, 8, 8))
    x, y = data(np.float32)
    metrics = evaluate(model, DataLoader(ArrayDataset(x[:37], y[:37]), 5))
    _write(out, {}, {"ranks": gathered, "eval": metrics})


def _gather(obj):
    if dist.world_size() == 1:
        return [obj]
    from mpi4py import MPI

    return MPI.COMM_WORLD.allgather(obj)


def case_batchnorm(out):
    """A model with BatchNorm and buffers trains, and the ranks stay identical."""
    fastnet.manual_seed(0)
    model = MODELS["resnet-small"](in_shape=(1, 8, 8))
    net = dist.DistributedDataParallel(model)
    x, y = data(np.float32)
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss = CrossEntropyLoss()
    w = dist.world_size()
    for step in range(3):
        idx = np.arange(step * GLOBAL_BATCH, (step + 1) * GLOBAL_BATCH)[dist.rank()::w]
        x[idx] *= 1 + dist.rank()  # different statistics on each rank
        opt.zero_grad()
        loss(net(x[idx]), y[idx])
        net.backward(loss.backward(), input_grad=False)
        opt.step()
    params = {k: np.asarray(p.data) for k, p in model.named_parameters()}
    same_params = _same_on_all_ranks(params)
    # evaluation first gives every rank rank 0's running statistics: the metrics are those
    # of the model rank 0 saves
    xe, ye = data(np.float32)  # (x was scaled per rank)
    metrics = evaluate(net, DataLoader(ArrayDataset(xe[:40], ye[:40]), 8))
    state = {k: np.asarray(v) for k, v in model.state_dict().items()}
    alone = evaluate(model, DataLoader(ArrayDataset(xe[:40], ye[:40]), 8), distributed=False)
    _write(out, {}, {"same": same_params and _same_on_all_ranks(state),
                     "eval": metrics, "eval_rank0_alone": alone})


def case_mismatch(out):
    """Rank 1 builds a different model: every rank must refuse it."""
    hidden = (32,) if dist.rank() == 1 else (64,)
    model = MODELS["mlp"](in_shape=(1, 8, 8), hidden=hidden)
    try:
        dist.DistributedDataParallel(model)
    except ValueError as e:
        print(f"rank {dist.rank()} refused: {e}", flush=True)
        sys.exit(3)
    print(f"rank {dist.rank()} accepted", flush=True)


def case_raise(out):
    """Rank 1 fails in the middle of training; rank 0 would wait in its allreduce."""
    model = MODELS["mlp"](in_shape=(1, 8, 8))
    net = dist.DistributedDataParallel(model)
    x, y = data(np.float32)
    loss = CrossEntropyLoss()
    for step in range(1000):
        if dist.rank() == 1 and step == 3:
            raise RuntimeError("deliberate failure on rank 1")
        loss(net(x[:6]), y[:6])
        net.backward(loss.backward(), input_grad=False)
        net.finish()
        time.sleep(0.01)


def case_nonfinite(out):
    """A NaN sample in the data: whichever rank draws it, every rank stops at the same step
    with NonFiniteLossError, before the update."""
    from fastnet.train import NonFiniteLossError, Trainer

    x, y = data(np.float32)
    x[17] = np.nan
    fastnet.manual_seed(0)
    model = MODELS["mlp"](in_shape=(1, 8, 8))
    loader = DataLoader(ArrayDataset(x, y), GLOBAL_BATCH // dist.world_size(), shuffle=True,
                        seed=2, distributed=True)
    trainer = Trainer(model, SGD(model.parameters(), lr=0.1), progress=False, log=None)
    try:
        trainer.fit(loader, epochs=2)
    except NonFiniteLossError as e:
        stopped = [e.epoch, e.step]
    else:
        stopped = None
    everyone = _gather({"stopped": stopped,
                        "finite": bool(all(np.isfinite(p.data).all() for p in model.parameters()))})
    _write(out, {}, {"ranks": everyone})


class Conditional(Sequential):
    """Dense -> ReLU -> [Dense, used only when ``use_extra``] -> Dense: a layer that some
    steps, or some ranks, leave out."""

    def __init__(self):
        super().__init__(Dense(64, 16), ReLU(), Dense(16, 16), Dense(16, 10))
        self.use_extra = False

    def _active(self):
        return [m for i, m in enumerate(self.layers) if i != 2 or self.use_extra]

    def forward(self, x):
        for m in self._active():
            x = m(x)
        return x

    def backward(self, grad, input_grad=True):
        for m in reversed(self._active()):
            grad = m.backward(grad, input_grad=True)
        return grad


def case_conditional(out):
    """A layer used on some ranks and steps only (pattern: per step, the ranks that use
    it): every rank ends each step with the same gradients, the average of the ranks' own
    (a missing gradient counting as zero), and nothing hangs."""
    import copy

    pattern = sys.argv[3].split(",")
    rank, world = dist.rank(), dist.world_size()
    fastnet.manual_seed(0)
    model = Conditional().to(np.float64)
    net = dist.DistributedDataParallel(model, bucket_cap_mb=1e-4)  # one bucket per parameter
    x, y = data(np.float64)
    x = x.reshape(len(x), -1)
    loss = CrossEntropyLoss()
    opt = SGD(model.parameters(), lr=0.1)
    worst, same = 0.0, True
    for step, users in enumerate(pattern):
        idx = np.arange(step * 6, step * 6 + 6)[rank::world]
        model.use_extra = str(rank) in users
        opt.zero_grad()
        twin = copy.deepcopy(model)  # this rank's own gradients, without the averaging
        loss(twin(x[idx]), y[idx])
        twin.backward(loss.backward())
        loss(net(x[idx]), y[idx])
        net.backward(loss.backward(), input_grad=False)
        if rank == 0:  # a gradient read on one rank alone (only waits: no collective)
            float(np.abs(model.layers[0].weight.grad).sum())
        dist.all_sum([1.0])
        for (name, p), q in zip(model.named_parameters(), twin.parameters()):
            own = np.zeros(p.shape) if q.grad is None else q.grad
            mean = np.array(dist.all_sum(own.ravel())).reshape(p.shape) / world
            anyone = dist.all_max(q.grad is not None)
            if not anyone:
                same &= p.grad is None
                continue
            worst = max(worst, float(np.abs(p.grad - mean).max()))
            flat = p.grad.ravel().astype(np.float64)
            same &= bool(np.array_equal(np.array(dist.all_sum(flat)) / world, flat))
        opt.step()
    # nested no_sync: the outer block still holds after the inner one
    with net.no_sync():
        with net.no_sync():
            pass
        held = not net._reducer.enabled
    _write(out, {}, {"worst": worst, "same": bool(same), "nested_no_sync_held": held,
                     "relaunched": net.comm_stats()["relaunched"]})


def case_uneven_loaders(out):
    """Each rank its own loader, of a different length: the Trainer refuses on every rank."""
    from fastnet.train import Trainer

    x, y = data(np.float32)
    n = 24 + 6 * dist.rank()
    fastnet.manual_seed(0)
    model = MODELS["mlp"](in_shape=(1, 8, 8))
    trainer = Trainer(model, SGD(model.parameters(), lr=0.1), progress=False, log=None)
    try:
        trainer.fit(DataLoader(ArrayDataset(x[:n], y[:n]), 6), epochs=1)
    except ValueError as e:
        print(f"rank {dist.rank()} refused: {e}", flush=True)
        sys.exit(0)


def case_cuda(out):
    """A tiny model on CUDA (the simulator): host buffers, or CUDA buffers when
    FASTNET_MPI_CUDA_AWARE=1 (the simulator's device memory is host memory)."""
    results = {}
    for opt in ("sgd", "adam"):
        state, net = train_steps("tiny", np.float64, opt, device="cuda", bucket_cap_mb=1e-3,
                                 steps=3)
        for k, v in state.items():
            results[f"tiny-{opt}-float64/{k}"] = v
    _write(out, results, {"cuda_aware": bool(net._reducer.cuda_aware) if net._reducer else None})


def _write(out, arrays, meta):
    if dist.rank() != 0:
        return
    os.makedirs(out, exist_ok=True)
    np.savez(os.path.join(out, "arrays.npz"), **arrays)
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump({"world": dist.world_size(), **meta}, f)


if __name__ == "__main__":
    if sys.argv[1] == "early":  # a failure before anything joined MPI
        if os.environ.get("PMI_RANK") == "1":
            raise RuntimeError("deliberate early failure on rank 1")
        dist.barrier()
    case, out = sys.argv[1], sys.argv[2]
    globals()[f"case_{case}"](out)
