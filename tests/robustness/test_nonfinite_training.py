"""A NaN or inf loss stops training at once, names where, and never reaches a checkpoint
(issue 19). Before, one NaN pixel turned the first conv's weights to NaN after one step
while the reported loss kept falling, and the poisoned model was checkpointed."""
import json
import subprocess
import sys

import numpy as np
import pytest

import fastnet
from fastnet.data import ArrayDataset, DataLoader
from fastnet.layers import Conv2D, Dense, Flatten, MaxPool2D, Sequential
from fastnet.optim import SGD
from fastnet.train import NonFiniteLossError, Trainer, load_model

BATCH, N = 8, 48  # 6 steps per epoch


def make(tmp_path=None, nan_at=None, seed=0):
    """A small LeNet-like trainer; ``nan_at`` = (epoch, step): that batch holds one NaN
    pixel (the loader is not shuffled, so the batch is known)."""
    rng = np.random.default_rng(seed)
    x = rng.random((N, 1, 6, 6)).astype(np.float32)
    y = rng.integers(0, 3, N)
    fastnet.manual_seed(seed)
    model = Sequential(Conv2D(1, 3, 3, padding=1, activation="relu"), MaxPool2D(2), Flatten(),
                       Dense(27, 3))
    trainer = Trainer(model, SGD(model.parameters(), lr=0.1, momentum=0.9), progress=False,
                      log=None, checkpoint_dir=tmp_path)

    class Poisoned(DataLoader):
        epoch = 0

        def __iter__(self):
            self.epoch += 1
            for step, (xb, yb) in enumerate(super().__iter__(), 1):
                if nan_at == (self.epoch, step):
                    xb = xb.copy()
                    xb[2, 0, 3, 3] = np.nan
                yield xb, yb

    return trainer, Poisoned(ArrayDataset(x, y), BATCH)


def params(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


def test_one_nan_pixel_stops_at_its_step_and_keeps_the_last_good_checkpoint(tmp_path):
    clean, loader = make(tmp_path / "clean")
    clean.fit(loader, epochs=2)
    after_two = params(clean.model)

    trainer, loader = make(tmp_path / "run", nan_at=(3, 4))
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit(loader, epochs=5)
    e = info.value
    assert (e.epoch, e.step) == (3, 4) and np.isnan(e.loss)
    assert "epoch 3, step 4 of 6" in str(e) and "last good checkpoint" in str(e)
    assert e.checkpoint == str(tmp_path / "run" / "checkpoint.npz")
    assert trainer.stop_reason == "non_finite" and trainer.epoch == 2
    # the checkpoint is the clean state after epoch 2, finite; so is the rolled-back trainer
    model, meta = load_model(e.checkpoint)
    assert meta["epoch"] == 2
    for k, v in model.state_dict().items():
        assert np.isfinite(v).all()
        np.testing.assert_array_equal(v, after_two[k], err_msg=k)
        np.testing.assert_array_equal(trainer.model.state_dict()[k], after_two[k], err_msg=k)


def test_nan_in_the_first_epoch_writes_no_checkpoint(tmp_path):
    trainer, loader = make(tmp_path, nan_at=(1, 2))
    before = params(trainer.model)
    with pytest.raises(NonFiniteLossError, match="No epoch of this run had completed") as info:
        trainer.fit(loader, epochs=2)
    assert info.value.checkpoint is None and (info.value.epoch, info.value.step) == (1, 2)
    assert not (tmp_path / "checkpoint.npz").exists() and not (tmp_path / "best.npz").exists()
    for k, v in trainer.model.state_dict().items():  # rolled back to before the fit
        np.testing.assert_array_equal(v, before[k])


def test_without_checkpoint_dir_it_stops_before_the_step():
    trainer, loader = make(nan_at=(1, 3))
    seen = []
    real_step = trainer.optimizer.step
    trainer.optimizer.step = lambda: (seen.append(1), real_step())
    with pytest.raises(NonFiniteLossError):
        trainer.fit(loader, epochs=1)
    assert len(seen) == 2 and trainer.stop_reason == "non_finite"
    assert all(np.isfinite(p.data).all() for p in trainer.model.parameters())


@pytest.mark.parametrize("bad", [np.inf, -np.inf])
def test_an_infinite_loss_stops_too(bad):
    trainer, loader = make()
    calls = {"n": 0}

    class Loss(type(trainer.loss_fn)):
        def __call__(self, logits, labels):
            calls["n"] += 1
            value = super().__call__(logits, labels)
            return bad if calls["n"] == 5 else value

    trainer.loss_fn = Loss()
    with pytest.raises(NonFiniteLossError, match=f"loss is {bad}") as info:
        trainer.fit(loader, epochs=1)
    assert info.value.step == 5


def test_parameters_poisoned_by_a_finite_step_are_not_checkpointed(tmp_path):
    """The last step of epoch 2 turns a weight to NaN while its own loss was finite: the
    end-of-epoch check refuses to save it."""
    trainer, loader = make(tmp_path)
    real_step = trainer.optimizer.step
    count = {"n": 0}

    def step():
        real_step()
        count["n"] += 1
        if count["n"] == 12:
            trainer.model[3].weight.data[0, 0] = np.nan

    trainer.optimizer.step = step
    with pytest.raises(NonFiniteLossError, match="parameter '3.weight' is no longer finite"
                       ) as info:
        trainer.fit(loader, epochs=3)
    assert info.value.epoch == 2 and info.value.step is None
    assert load_model(tmp_path / "checkpoint.npz")[1]["epoch"] == 1
    assert trainer.epoch == 1 and np.isfinite(trainer.model[3].weight.data).all()


def test_cli_stops_a_diverging_run_with_one_line_and_exit_1(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "fastnet", "train", "--model", "mlp", "--lr", "1e9", "--epochs",
         "2", "--no-progress", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fastnet train: Trainer: the training loss is"), err
    assert "Warning" not in proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stop_reason"] == "non_finite"
    assert not (out / "best.npz").exists() or load_model(out / "best.npz")


def test_a_nan_validation_loss_never_becomes_the_best(tmp_path):
    """A NaN validation metric counts as an epoch without improvement; it is never
    written as the best value (a NaN best made every checkpoint of the run unloadable)."""
    trainer, loader = make(tmp_path)
    rng = np.random.default_rng(5)
    xv = rng.random((8, 1, 6, 6)).astype(np.float32)
    xv[0, 0, 0, 0] = np.nan
    val = DataLoader(ArrayDataset(xv, rng.integers(0, 3, 8)), 8)
    trainer.fit(loader, val, epochs=2)
    assert np.isnan(trainer.history[0]["val_loss"]) and trainer.best is None
    assert trainer.bad_epochs == 2
    for name in ("checkpoint.npz",):
        model, meta = load_model(tmp_path / name)  # loadable
        assert meta["epoch"] == 2
    assert not (tmp_path / "best.npz").exists()
    resumed, loader2 = make(tmp_path)
    resumed.resume(tmp_path)
    assert resumed.epoch == 2


def test_the_stop_never_claims_another_runs_checkpoint(tmp_path):
    other, loader = make(tmp_path)
    other.fit(loader, epochs=3)  # another run's checkpoint.npz (epoch 3) in the directory
    trainer, loader = make(tmp_path, nan_at=(1, 2))
    with pytest.raises(NonFiniteLossError, match="No epoch of this run had completed") as info:
        trainer.fit(loader, epochs=2)
    assert info.value.checkpoint is None
    assert load_model(tmp_path / "checkpoint.npz")[1]["epoch"] == 3  # untouched


def test_after_resume_the_stop_keeps_the_resumed_checkpoint(tmp_path):
    first, loader = make(tmp_path)
    first.fit(loader, epochs=2)
    trainer, loader = make(tmp_path, nan_at=(1, 3))  # its loader's first epoch is epoch 3
    trainer.resume(tmp_path)
    with pytest.raises(NonFiniteLossError, match="Kept the last good checkpoint") as info:
        trainer.fit(loader, epochs=4)
    assert info.value.checkpoint == str(tmp_path / "checkpoint.npz") and info.value.epoch == 3
    assert trainer.epoch == 2
