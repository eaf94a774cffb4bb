"""fastnet.distributed in one process (no launcher): the defaults, the pass-through, the
environment detection, and the distributed DataLoader's shares for given ranks."""
import copy
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import fastnet
from fastnet import distributed as dist
from fastnet.data import ArrayDataset, DataLoader
from fastnet.losses import CrossEntropyLoss
from fastnet.models import MODELS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_outside_mpi():
    assert (dist.rank(), dist.world_size(), dist.is_main(), dist.local_rank()) == (0, 1, True, 0)
    assert dist.all_sum([1, 2.5]) == [1.0, 2.5]
    assert dist.all_max(3) == 3.0
    assert dist.broadcast_object({"a": 1}) == {"a": 1}
    dist.barrier()


def test_import_fastnet_does_not_import_mpi4py():
    code = ("import sys, fastnet, fastnet.distributed as d\n"
            "from fastnet.train import Trainer\n"
            "assert d.world_size() == 1\n"
            "print('mpi4py' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in dist.SIZE_VARIABLES}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.stdout.strip() == "False", proc.stderr


@pytest.mark.parametrize("env,size", [
    ({}, 1),
    ({"PMI_SIZE": "4"}, 4),
    ({"OMPI_COMM_WORLD_SIZE": "3"}, 3),
    ({"MV2_COMM_WORLD_SIZE": "2"}, 2),
    ({"SLURM_STEP_NUM_TASKS": "8", "SLURM_STEP_ID": "0"}, 8),
    ({"SLURM_STEP_NUM_TASKS": "8", "SLURM_STEP_ID": "batch"}, 1),  # the batch script itself
    ({"PMI_SIZE": "not a number"}, 1),
])
def test_launched_size(monkeypatch, env, size):
    for name in dist.SIZE_VARIABLES + ("SLURM_STEP_ID",):
        monkeypatch.delenv(name, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert dist.launched_size() == size


def test_ddp_is_a_pass_through_on_one_rank():
    fastnet.manual_seed(0)
    a = MODELS["lenet"](in_shape=(1, 8, 8))
    b = copy.deepcopy(a)
    net = dist.DistributedDataParallel(b)
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    y = np.arange(5)
    loss = CrossEntropyLoss()
    for model in (a, net):
        loss(model(x), y)
        model.backward(loss.backward(), input_grad=False)
    for (ka, pa), (kb, pb) in zip(a.named_parameters(), net.named_parameters()):
        assert kb == "module." + ka
        np.testing.assert_array_equal(pa.grad, pb.grad)
    assert list(net.state_dict()) == ["module." + k for k in a.state_dict()]
    assert net.comm_stats() == {}
    with net.no_sync():
        pass
    assert net.finish() is net
    assert all(x is y for x, y in zip(net.layers, b.layers))  # the model's attributes show through
    assert "ranks=1" in repr(net)


def test_ddp_arguments():
    model = MODELS["mlp"](in_shape=(1, 8, 8))
    with pytest.raises(TypeError, match="expected a fastnet Module"):
        dist.DistributedDataParallel(object())
    with pytest.raises(ValueError, match="bucket_cap_mb must be a positive"):
        dist.DistributedDataParallel(model, bucket_cap_mb=0)
    net = dist.DistributedDataParallel(model)
    with pytest.raises(TypeError, match="already wrapped"):
        dist.DistributedDataParallel(net)
    with pytest.raises(TypeError, match="move or convert the model before wrapping"):
        net.to(np.float64)


def test_parameter_copies_leave_the_averaging_behind():
    p = fastnet.layers.module.Parameter(np.ones(3, np.float32))
    p._reducer = None
    for q in (copy.deepcopy(p), pickle.loads(pickle.dumps(p))):
        assert q._reducer is None and q.grad is None
        np.testing.assert_array_equal(q.data, p.data)


def _shares(n, batch, world, drop_last=False, shuffle=True):
    ds = ArrayDataset(np.zeros((n, 1), np.float32), np.arange(n))
    loaders = [DataLoader(ds, batch, shuffle=shuffle, seed=7, drop_last=drop_last,
                          distributed=True, rank=r, world_size=world) for r in range(world)]
    return loaders, [[int(v) for _, y in loader for v in y] for loader in loaders]


@pytest.mark.parametrize("n,batch,world", [(23, 4, 2), (23, 4, 3), (24, 4, 3), (2, 1, 3),
                                           (100, 7, 4), (1, 5, 2)])
def test_distributed_shares(n, batch, world):
    loaders, shares = _shares(n, batch, world)
    share = -(-n // world)
    assert all(len(s) == share for s in shares)
    assert len({len(loader) for loader in loaders}) == 1
    assert len(loaders[0]) == -(-share // batch)
    seen = [i for s in shares for i in s]
    assert sorted(set(seen)) == list(range(n))
    # the same order as one process draws, dealt out position by position
    one = DataLoader(ArrayDataset(np.zeros((n, 1), np.float32), np.arange(n)), batch,
                     shuffle=True, seed=7)
    order = [int(v) for _, y in one for v in y]
    assert [shares[p % world][p // world] for p in range(n)] == order


@pytest.mark.parametrize("n,batch,world", [(23, 5, 2), (10, 2, 3), (24, 4, 3), (100, 7, 4)])
def test_distributed_drop_last_is_one_process_with_the_global_batch(n, batch, world):
    """drop_last cuts the order to a multiple of W (no padding, no repeat) and drops each
    rank's incomplete last batch: the steps of one process with batch W * batch."""
    loaders, shares = _shares(n, batch, world, drop_last=True)
    steps = n // (world * batch)
    assert all(len(loader) == steps for loader in loaders)
    one = DataLoader(ArrayDataset(np.zeros((n, 1), np.float32), np.arange(n)), world * batch,
                     shuffle=True, seed=7, drop_last=True)
    assert len(one) == steps
    list(one)  # (_shares took the loaders' first epoch: compare the second)
    batches = [[list(y) for _, y in loader] for loader in loaders]
    for k, (_, y) in enumerate(one):
        mine = [i for r in range(world) for i in batches[r][k]]
        assert sorted(mine) == sorted(y.tolist())


def test_distributed_drop_last_and_state():
    loaders, shares = _shares(23, 5, 2, drop_last=True)
    assert all(len(s) == 10 for s in shares) and len(loaders[0]) == 2
    # the state does not depend on the rank or world size: it is the generator's
    states = {str(loader.state_dict()) for loader in loaders}
    other, _ = _shares(23, 5, 3, drop_last=True)
    states |= {str(loader.state_dict()) for loader in other}
    assert len(states) == 1


def test_distributed_loader_arguments():
    ds = ArrayDataset(np.zeros((4, 1), np.float32), np.arange(4))
    with pytest.raises(ValueError, match="rank and world_size need distributed=True"):
        DataLoader(ds, 2, rank=0, world_size=2)
    with pytest.raises(ValueError, match=r"rank must be an int in \[0, 2\)"):
        DataLoader(ds, 2, distributed=True, rank=2, world_size=2)
    with pytest.raises(ValueError, match="world_size must be a positive int"):
        DataLoader(ds, 2, distributed=True, rank=0, world_size=0)
    with pytest.raises(ValueError, match="give world_size together with rank"):
        DataLoader(ds, 2, distributed=True, rank=1)
    with pytest.raises(TypeError, match="distributed must be True or False"):
        DataLoader(ds, 2, distributed="yes")
    # outside MPI, distributed=True is the whole dataset on rank 0 of 1
    loader = DataLoader(ds, 2, distributed=True)
    assert (loader.rank, loader.world_size, len(loader)) == (0, 1, 2)
    assert "distributed=True, rank=0, world_size=1" in repr(loader)


def test_eval_batches_cover_the_set_once():
    ds = ArrayDataset(np.zeros((11, 1), np.float32), np.arange(11))
    loader = DataLoader(ds, 3, shuffle=True, seed=1, distributed=True, rank=1, world_size=2)
    before = str(loader.state_dict())
    seen = [int(v) for r in range(3) for _, y in loader._eval_batches(r, 3) for v in y]
    assert sorted(seen) == list(range(11))
    assert str(loader.state_dict()) == before  # the generator is untouched


def test_a_huge_world_size_costs_only_the_share():
    """The padded order is never built: world_size 10**12 over 5 samples allocates this
    rank's one position, not 10**12 (the padding still repeats the order cyclically)."""
    import tracemalloc

    ds = ArrayDataset(np.zeros((5, 1), np.float32), np.arange(5))
    tracemalloc.start()
    try:
        loader = DataLoader(ds, 2, shuffle=False, distributed=True, rank=7, world_size=10**12)
        batches = [list(y) for _, y in loader]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(loader) == 1 and batches == [[7 % 5]]
    assert peak < 10**6


class _FakeRequest:
    def Wait(self):
        pass


class _FakeMPI:
    """What _Reducer uses of mpi4py's MPI, for ``size`` ranks that all hold this rank's
    gradients: the in-place sums are this rank's values times ``size``."""

    IN_PLACE, SUM, MAX = object(), "sum", "max"

    class Request:
        @staticmethod
        def Testall(requests):
            return True

        @staticmethod
        def Waitall(requests):
            pass


class _FakeComm:
    def __init__(self, size):
        self.size, self.sent = size, []

    def Get_size(self):
        return self.size

    def Iallreduce(self, _, buf, op):
        self.sent.append(buf.size)
        buf *= self.size  # (flags too: a rank that has one, all have one)
        return _FakeRequest()

    def Allreduce(self, _, buf, op):
        pass


def test_reducer_neither_waits_for_nor_sends_frozen_gradients(rng):
    """_Reducer (the gradient averaging of DistributedDataParallel) with frozen
    parameters, freezing changed between steps: no backward waits for a frozen gradient
    (every bucket leaves during backward once the reducer has learned the calls), a frozen
    parameter's gradient is neither averaged nor replaced, and the averages of the others
    are the one-process gradients."""
    from fastnet.layers import Dense, LayerNorm, ReLU, Sequential

    model = Sequential(Dense(4, 6), LayerNorm(6), ReLU(), Dense(6, 3))
    plain = copy.deepcopy(model)
    params = model.parameters()
    # tiny buckets: the frozen parameters share buckets with trained ones
    reducer = dist._Reducer(_FakeComm(2), _FakeMPI, params, 64, True, False)
    for p in params:
        p._reducer = reducer
    loss_fn = CrossEntropyLoss()

    def step(m, x, y, r=None):
        loss_fn(m(x), y)
        if r is not None:
            r.begin()
        m.backward(loss_fn.backward(), input_grad=False)
        if r is not None:
            r.end()

    kept = None
    for k, frozen in enumerate([(), (), ("0.weight", "1.bias"), ("0.weight", "1.bias"), ()]):
        for m in (model, plain):
            for name, p in m.named_parameters():
                p.requires_grad = name not in frozen
            m.zero_grad()
        x = rng.standard_normal((5, 4)).astype(np.float32)
        y = rng.integers(0, 3, 5)
        reducer.reset_stats()
        step(model, x, y, reducer)
        step(plain, x, y)
        if k >= 1 and frozen == ():  # learned: all buckets left inside backward
            assert reducer.stats["launched_in_backward"] == len(reducer.buckets)
        if k == 3:  # frozen for the second time: the frozen ones are not waited for
            assert reducer.stats["launched_in_backward"] == len(reducer.buckets)
        for (name, p), q in zip(model.named_parameters(), plain.parameters()):
            if name in frozen:
                # the gradient from before the freezing, unchanged (taken out of its bucket,
                # which the next sends overwrite)
                np.testing.assert_array_equal(p.grad, kept[name], err_msg=name)
            else:
                np.testing.assert_allclose(p.grad, q.grad, rtol=1e-6, err_msg=name)
        if k == 1:
            kept = {name: p.grad.copy() for name, p in model.named_parameters()}
    reducer.finish()
