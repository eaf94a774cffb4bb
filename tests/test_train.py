"""fastnet.train: schedules, the Trainer's loop, early stopping, checkpoints, resume
equivalence (bit for bit, Dropout included) and Ctrl-C."""
import json
import re
import sys

import numpy as np
import pytest

import fastnet
from fastnet.data import ArrayDataset, DataLoader, train_val_split
from fastnet.layers import Conv2D, Dense, Dropout, Flatten, Sequential
from fastnet.models import MODELS, vgg_small
from fastnet.optim import SGD, Adam
from fastnet.train import (COMPILE_NOTICE, CosineLR, OneCycleLR, ReduceLROnPlateau, StepLR,
                           Trainer, WarmupCosine, load_model, plot_history)

EPOCHS = 4


def data():
    rng = np.random.default_rng(0)
    x = rng.random((120, 1, 4, 4)).astype(np.float32)
    y = (x[:, 0, 0, 0] > 0.5).astype(np.int64) + 2 * (x[:, 0, 3, 3] > 0.5)
    return train_val_split(ArrayDataset(x, y), 0.2, seed=0)


TRAIN, VAL = data()


def setup(seed, optimizer=SGD, **trainer_kwargs):
    """A fresh model, optimizer, loaders and trainer, as a new process would build them."""
    fastnet.manual_seed(seed)
    model = Sequential(Conv2D(1, 2, 3, padding=1, activation="relu"), Flatten(),
                       Dense(32, 32, activation="relu"), Dropout(0.3), Dense(32, 4))
    opt = optimizer(model.parameters(), lr=0.1, momentum=0.9) if optimizer is SGD \
        else optimizer(model.parameters(), lr=0.01)
    trainer_kwargs.setdefault("schedule", CosineLR(EPOCHS))
    trainer = Trainer(model, opt, progress=False, log=None, **trainer_kwargs)
    return trainer, DataLoader(TRAIN, 16, shuffle=True, seed=seed), DataLoader(VAL, 32)


def without_timing(history):
    return [{k: v for k, v in r.items() if k not in ("samples_per_s", "seconds")} for r in history]


def assert_same_state(a, b):
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb
        np.testing.assert_array_equal(va, vb, err_msg=ka)
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert sa["param_steps"] == sb["param_steps"] and sa["hyperparameters"] == sb["hyperparameters"]
    for bufs_a, bufs_b in zip(sa["state"], sb["state"]):
        for k in bufs_a:
            np.testing.assert_array_equal(bufs_a[k], bufs_b[k])
    assert a.model[3].calls == b.model[3].calls and a.model[3].seed == b.model[3].seed
    assert without_timing(a.history) == without_timing(b.history)


@pytest.fixture(scope="module")
def uninterrupted():
    trainer, train_loader, val_loader = setup(0)
    trainer.fit(train_loader, val_loader, epochs=EPOCHS)
    return trainer


# ---- schedules ------------------------------------------------------------------------------
def test_schedules():
    step = StepLR(2, gamma=0.5)
    assert [step(e, 0.8) for e in range(5)] == [0.8, 0.8, 0.4, 0.4, 0.2]
    cos = CosineLR(4, min_lr=0.1)
    np.testing.assert_allclose([cos(e, 1.1) for e in range(5)],
                               [1.1, 0.1 + 0.5 * (1 + np.cos(np.pi / 4)), 0.6,
                                0.1 + 0.5 * (1 - np.cos(np.pi / 4)), 0.1])
    assert cos(9, 1.1) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="step_size must be a positive int, got 0"):
        StepLR(0)
    with pytest.raises(ValueError, match=r"gamma must be in \(0, 1\], got 2"):
        StepLR(1, 2)
    with pytest.raises(ValueError, match="total_epochs must be a positive int, got 0"):
        CosineLR(0)


# ---- the loop -------------------------------------------------------------------------------
def test_fit_records_every_epoch_and_follows_the_schedule(uninterrupted):
    history = uninterrupted.history
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert set(history[0]) == {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr",
                               "samples_per_s", "seconds"}
    np.testing.assert_allclose([r["lr"] for r in history], [CosineLR(4)(e, 0.1) for e in range(4)])
    assert all(0 <= r["val_acc"] <= 1 and r["val_loss"] > 0 and r["samples_per_s"] > 0 for r in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert uninterrupted.stop_reason == "completed" and uninterrupted.epoch == 4
    assert uninterrupted.input_shape == [1, 4, 4]


def test_training_is_deterministic(uninterrupted):
    again, train_loader, val_loader = setup(0)
    again.fit(train_loader, val_loader, epochs=EPOCHS)
    assert_same_state(uninterrupted, again)


def test_log_line_per_epoch():
    lines = []
    trainer, train_loader, val_loader = setup(0)
    trainer.log = lines.append
    trainer.fit(train_loader, val_loader, epochs=1)
    lines = [line for line in lines if line != COMPILE_NOTICE]  # a cold Numba cache compiles
    assert len(lines) == 1 and lines[0].startswith("epoch   1/1  loss ")
    assert "val acc" in lines[0]
    assert re.search(r"samples/s(  \(\+[\d.]+ s compiling, not counted\))?$", lines[0])


def test_samples_per_s_leaves_out_the_jit(monkeypatch):
    """The seconds Numba spends compiling kernels (or loading them from its cache) during an
    epoch are left out of its samples/s, not out of its seconds: the same fake clock twice,
    the second time with 3 s of JIT in the first step."""
    import fastnet.train as train_module

    def first_epoch(jit_in_first_step):
        now, jit = [0.0], [0]

        def clock():
            now[0] += 1.0
            return now[0]

        def jit_seconds():  # 0 when the epoch's Stopwatch starts, then jit_in_first_step
            jit[0] += 1
            return 0.0 if jit[0] == 1 else jit_in_first_step

        monkeypatch.setattr(train_module, "_now", clock)
        monkeypatch.setattr(train_module, "jit_seconds", jit_seconds)
        trainer, train_loader, _ = setup(0)
        return trainer.fit(train_loader, epochs=1)[0]

    plain, jitted = first_epoch(0.0), first_epoch(3.0)
    assert jitted["seconds"] == plain["seconds"]
    seen = len(TRAIN)
    assert seen / jitted["samples_per_s"] == pytest.approx(seen / plain["samples_per_s"] - 3.0)


def test_compile_notice_once_above_the_epoch_line(monkeypatch):
    """When a kernel compiles (here: a stand-in that reports one at once), the trainer logs
    COMPILE_NOTICE once, and that epoch's line says how long the JIT took."""
    import contextlib

    import fastnet.train as train_module

    @contextlib.contextmanager
    def compiles_at_once(callback):
        callback()
        yield

    monkeypatch.setattr(train_module, "on_first_compile", compiles_at_once)
    lines = []
    trainer, train_loader, val_loader = setup(0)
    trainer.log = lines.append
    trainer.fit(train_loader, val_loader, epochs=2)
    assert lines[0] == train_module.COMPILE_NOTICE and len(lines) == 3
    assert lines[1].startswith("epoch   1/2") and lines[1].endswith(" s compiling, not counted)")
    assert lines[2].startswith("epoch   2/2") and lines[2].endswith("samples/s")


def test_resume_gives_the_uninterrupted_run_bit_for_bit(tmp_path, uninterrupted):
    first, train_loader, val_loader = setup(0, checkpoint_dir=tmp_path)
    first.fit(train_loader, val_loader, epochs=2)
    assert first.model[3].calls > 0  # dropout ran, so its counter must be restored
    # A "new process": other seed, so init, dropout seed and shuffling all differ until restored.
    second, train_loader, val_loader = setup(99, checkpoint_dir=tmp_path)
    history = second.fit(train_loader, val_loader, epochs=EPOCHS, resume=tmp_path / "checkpoint.npz")
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert_same_state(uninterrupted, second)
    np.testing.assert_array_equal(fastnet._rng.generator().integers(0, 2**62, 4),
                                  np.asarray(uninterrupted_rng_draw()))


STEPS_PER_EPOCH = 6  # 96 training samples in batches of 16


@pytest.mark.parametrize("schedule, clip", [
    (lambda: OneCycleLR(0.3, 3 * STEPS_PER_EPOCH), 0.5),
    (lambda: WarmupCosine(4, 3 * STEPS_PER_EPOCH, min_lr=0.001), None),
    (lambda: ReduceLROnPlateau(factor=0.5, patience=0, threshold=0.05), 1.0)],
    ids=["onecycle-clip", "warmup-cosine", "plateau-clip"])
def test_resume_with_step_and_plateau_schedules_and_clipping_bit_for_bit(tmp_path, schedule, clip):
    """Per-step and plateau schedules (their step count and counters in the checkpoint) and
    clipping: 1 epoch + resume + 2 gives the uninterrupted 3 epochs, lr sequence included."""
    def run(seed, epochs, **kw):
        trainer, train_loader, val_loader = setup(seed, schedule=schedule(), clip_grad_norm=clip,
                                                  **kw)
        lrs = []
        real_step = trainer.optimizer.step
        trainer.optimizer.step = lambda: (lrs.append(trainer.optimizer.lr), real_step())
        trainer.fit(train_loader, val_loader, epochs=epochs,
                    resume=kw.get("checkpoint_dir") if seed == 99 else None)
        return trainer, lrs

    straight, lrs = run(0, 3)
    assert straight.steps == len(lrs) == 3 * STEPS_PER_EPOCH
    if isinstance(straight.schedule, ReduceLROnPlateau):
        assert len(set(lrs)) > 1  # it did reduce the lr
    else:
        assert lrs == [straight.schedule(k, 0.1) for k in range(len(lrs))]
    run(0, 1, checkpoint_dir=tmp_path)
    resumed, rest = run(99, 3, checkpoint_dir=tmp_path)
    assert rest == lrs[STEPS_PER_EPOCH:]
    assert resumed.steps == straight.steps
    assert resumed.schedule.state_dict() == straight.schedule.state_dict()
    assert_same_state(straight, resumed)


def test_a_malformed_plateau_state_is_refused_and_changes_nothing(tmp_path):
    from fastnet.errors import FileFormatError
    from fastnet.serialization import read_npz, write_npz

    trainer, train_loader, val_loader = setup(0, schedule=ReduceLROnPlateau(),
                                              checkpoint_dir=tmp_path)
    trainer.fit(train_loader, val_loader, epochs=1)
    meta, arrays = read_npz(tmp_path / "checkpoint.npz", "test", kind="checkpoint")
    meta["schedule"]["state"]["num_bad_epochs"] = -3
    write_npz(tmp_path / "bad.npz", meta, arrays, "test")
    fresh, _, _ = setup(0, schedule=ReduceLROnPlateau())
    with pytest.raises(FileFormatError, match="the counters must be ints >= 0"):
        fresh.resume(tmp_path / "bad.npz")
    assert fresh.epoch == 0 and fresh.schedule.last_epoch == 0


def test_schedule_granularity_and_plateau_checks():
    """A callable with granularity "step" gets the run's step count before every step;
    a plateau schedule must match the monitor and needs validation data."""
    calls = []

    def per_step(step, base_lr):
        calls.append(step)
        return base_lr * 0.5

    per_step.granularity = "step"
    trainer, train_loader, val_loader = setup(0, schedule=per_step)
    trainer.fit(train_loader, epochs=2)
    assert calls == list(range(2 * STEPS_PER_EPOCH)) and trainer.optimizer.lr == 0.05
    with pytest.raises(ValueError, match="mode 'min' and is stepped with monitor 'val_acc'"):
        setup(0, schedule=ReduceLROnPlateau(), monitor="val_acc")
    trainer, train_loader, _ = setup(0, schedule=ReduceLROnPlateau())
    with pytest.raises(ValueError, match="ReduceLROnPlateau schedule needs a val_loader"):
        trainer.fit(train_loader)
    with pytest.raises(ValueError, match="clip_grad_norm must be a number > 0"):
        setup(0, clip_grad_norm=0.0)


def uninterrupted_rng_draw():
    """What fastnet's RNG gives after setup(0) and 4 epochs (training draws nothing)."""
    setup(0)
    return fastnet._rng.generator().integers(0, 2**62, 4)


def test_ctrl_c_saves_the_last_epoch_and_resuming_repeats_the_partial_one(tmp_path, uninterrupted):
    trainer, train_loader, val_loader = setup(0, checkpoint_dir=tmp_path)
    steps = {"n": 0}
    real_step = trainer.optimizer.step

    def step_then_ctrl_c():
        steps["n"] += 1
        if steps["n"] == 2 * len(train_loader) + 3:  # the 3rd step of epoch 3
            raise KeyboardInterrupt
        real_step()

    trainer.optimizer.step = step_then_ctrl_c
    lines = []
    trainer.log = lines.append
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(train_loader, val_loader, epochs=EPOCHS)
    assert trainer.stop_reason == "interrupted" and trainer.epoch == 2 and len(trainer.history) == 2
    assert lines[-1].startswith("interrupted in epoch 3: saved the state after epoch 2 to ")
    model, info = load_model(tmp_path / "checkpoint.npz")
    assert info["epoch"] == 2
    resumed, fresh_train_loader, fresh_val_loader = setup(5, checkpoint_dir=tmp_path)
    resumed.fit(fresh_train_loader, fresh_val_loader, epochs=EPOCHS, resume=tmp_path)
    assert_same_state(uninterrupted, resumed)
    # The interrupted trainer was rolled back as well: fit again on the same objects.
    trainer.optimizer.step = real_step
    trainer.fit(train_loader, val_loader, epochs=EPOCHS)
    assert_same_state(uninterrupted, trainer)


def test_ctrl_c_without_checkpoint_dir_just_propagates():
    trainer, train_loader, val_loader = setup(0)

    def ctrl_c():
        raise KeyboardInterrupt

    trainer.optimizer.step = ctrl_c
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(train_loader, val_loader, epochs=1)
    assert trainer.stop_reason == "interrupted"


def test_early_stopping_keeps_the_best_epoch(tmp_path, monkeypatch):
    trainer, train_loader, val_loader = setup(0, checkpoint_dir=tmp_path, patience=2)
    val_losses = iter([1.0, 0.5, 0.6, 0.7, 0.4])
    monkeypatch.setattr(trainer, "evaluate", lambda loader: {"loss": next(val_losses), "acc": 0.5})
    history = trainer.fit(train_loader, val_loader, epochs=5)
    assert len(history) == 4 and trainer.stop_reason == "early_stopping"
    assert history[-1]["stopped"] == ("early stopping: val_loss has not improved for 2 epochs "
                                      "(best 0.5000 at epoch 2)")
    assert trainer.best == {"epoch": 2, "monitor": "val_loss", "value": 0.5}
    best, info = load_model(tmp_path / "best.npz")
    assert info["epoch"] == 2 and load_model(tmp_path / "checkpoint.npz")[1]["epoch"] == 4
    for k, v in best.state_dict().items():
        np.testing.assert_array_equal(v, trainer.best_state_dict[k])
    again, train_loader, val_loader = setup(0, checkpoint_dir=tmp_path, patience=2)
    assert len(again.fit(train_loader, val_loader, epochs=5, resume=tmp_path)) == 4  # stays stopped
    assert again.stop_reason == "early_stopping"


def test_accuracy_can_be_monitored():
    trainer, train_loader, val_loader = setup(0, monitor="val_acc")
    trainer.fit(train_loader, val_loader, epochs=2)
    assert trainer.best["monitor"] == "val_acc"
    assert trainer.best["value"] == max(r["val_acc"] for r in trainer.history)


def test_trainer_arguments_are_checked():
    model = Sequential(Dense(2, 2))
    opt = SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="monitor must be 'val_loss' or 'val_acc', got 'loss'"):
        Trainer(model, opt, monitor="loss")
    with pytest.raises(ValueError, match="patience must be a positive int or None, got 0"):
        Trainer(model, opt, patience=0)
    with pytest.raises(ValueError, match="early stopping .patience. needs a val_loader"):
        Trainer(model, opt, patience=2).fit(DataLoader(ArrayDataset(np.zeros((4, 2)), np.zeros(4, int)), 2))
    with pytest.raises(ValueError, match="epochs must be a positive int, got 0"):
        Trainer(model, opt).fit([], epochs=0)


@pytest.mark.skipif(fastnet.is_available("cuda"), reason="a CUDA device is available here")
def test_unavailable_device_is_a_clear_error():
    model = Sequential(Dense(2, 2))
    with pytest.raises(RuntimeError, match="device 'cuda' is not available"):
        Trainer(model, SGD(model.parameters(), lr=0.1), device="cuda")


# ---- bad checkpoints: a clear ValueError, and the trainer is left as it was ---------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    trainer, train_loader, val_loader = setup(0, checkpoint_dir=folder)
    trainer.fit(train_loader, val_loader, epochs=1)
    return folder / "checkpoint.npz"


def rewrite(path, target, edit_meta=None, drop=None):
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays["__fastnet__"]))
    if edit_meta:
        edit_meta(meta)
    arrays["__fastnet__"] = np.array(json.dumps(meta))
    for k in drop or ():
        del arrays[k]
    np.savez(target, **arrays)
    return target


@pytest.mark.parametrize("make, message", [
    (lambda p, t: t.write_bytes(p.read_bytes()[:3000]) and t,
     r"not a readable fastnet checkpoint file \(truncated or corrupt\)"),
    (lambda p, t: t.write_bytes(b"garbage" * 100) and t, "not a readable fastnet checkpoint file"),
    (lambda p, t: np.savez(t, w=np.zeros(3)) or t, "is an .npz file but not a fastnet checkpoint file"),
    (lambda p, t: rewrite(p, t, lambda m: m.update(version=7)),
     "has format version 7; this fastnet reads version 1"),
    (lambda p, t: rewrite(p, t, lambda m: m["model"]["layers"][2]["config"].update(out_features=64)),
     r"holds a different model architecture: model.layers\[2\].config.out_features: 64 in the "
     "checkpoint, 32 in the model"),
    (lambda p, t: rewrite(p, t, lambda m: m["optimizer"].update(type="Adam")),
     "was trained with Adam, this trainer's optimizer is SGD"),
    (lambda p, t: rewrite(p, t, drop=["optimizer.0.momentum_buffer"]) and
     rewrite(t, t, lambda m: m.pop("rng")), r"not a valid checkpoint: missing or malformed entry 'rng'"),
    (lambda p, t: rewrite(p, t, drop=["model.2.weight"]), "has parameters"),
])
def test_bad_checkpoints_are_refused_and_change_nothing(tmp_path, checkpoint, make, message):
    target = make(checkpoint, tmp_path / "bad.npz")
    trainer, *_ = setup(3)
    before = {k: v.copy() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        trainer.resume(target)
    for k, v in trainer.model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    assert trainer.epoch == 0 and trainer.optimizer.param_steps == [0] * 6


def test_a_model_file_is_not_a_checkpoint(tmp_path):
    trainer, *_ = setup(0)
    fastnet.save(trainer.model, tmp_path / "m.npz")
    with pytest.raises(ValueError, match="is a fastnet model file .weights only.*not a training checkpoint"):
        trainer.resume(tmp_path / "m.npz")
    with pytest.raises(FileNotFoundError):
        trainer.resume(tmp_path / "missing.npz")


def test_other_model_or_optimizer_kind(checkpoint):
    other, *_ = setup(0, optimizer=Adam)
    with pytest.raises(ValueError, match="was trained with SGD, this trainer's optimizer is Adam"):
        other.resume(checkpoint)
    fastnet.manual_seed(0)
    mlp = MODELS["mlp"](in_shape=(1, 4, 4), num_classes=4)
    t = Trainer(mlp, SGD(mlp.parameters(), lr=0.1), progress=False, log=None)
    with pytest.raises(ValueError, match=r"different model architecture: model.layers: 5 layers "
                                         "in the checkpoint, 4 in the model"):
        t.resume(checkpoint)


def test_fastnet_load_reads_the_model_of_a_checkpoint(checkpoint):
    model = fastnet.load(checkpoint)
    _, info = load_model(checkpoint)
    assert isinstance(model, Sequential) and info["epoch"] == 1 and info["input_shape"] == [1, 4, 4]
    assert info["optimizer"]["type"] == "SGD" and info["schedule"]["type"] == "CosineLR"


# ---- the plot and the models --------------------------------------------------------------------
def test_plot_needs_matplotlib_and_writes_a_png(tmp_path, uninterrupted, monkeypatch):
    pytest.importorskip("matplotlib")
    plot_history(uninterrupted.history, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r'pip install "fastnet\[plot\]"'):
        plot_history(uninterrupted.history, tmp_path / "again.png")
    assert not (tmp_path / "again.png").exists()


@pytest.mark.parametrize("shape, flat", [((1, 28, 28), 64 * 7 * 7), ((1, 8, 8), 64 * 2 * 2), ((3, 9, 10), 64 * 2 * 2)])
def test_vgg_small_adapts_its_head_to_the_input(shape, flat):
    fastnet.manual_seed(0)
    model = vgg_small(shape, num_classes=10)
    convs = [m for m in model if type(m).__name__ == "Conv2D"]
    assert [c.weight.shape[0] for c in convs] == [32, 32, 64, 64]
    assert all(c.activation == "relu" for c in convs) and model[7].activation == "relu"
    assert model[7].weight.shape == (256, flat) and model[8].weight.shape == (10, 256)
    assert model(np.zeros((2, *shape), np.float32)).shape == (2, 10)
    assert MODELS["vgg-small"] is vgg_small
    with pytest.raises(ValueError, match="at least 4x4"):
        vgg_small((1, 3, 3))


def _bn_setup(seed, **trainer_kwargs):
    """A model with BatchNorm (running statistics are buffers, not parameters) and a
    residual block, as a new process would build it."""
    from fastnet.layers import BatchNorm1D, BatchNorm2D, GlobalAvgPool2D, ReLU, Residual

    fastnet.manual_seed(seed)
    model = Sequential(
        Conv2D(1, 3, 3, padding=1, bias=False), BatchNorm2D(3), ReLU(),
        Residual(Sequential(Conv2D(3, 3, 3, padding=1, bias=False), BatchNorm2D(3, momentum=None))),
        ReLU(), GlobalAvgPool2D(), Dense(3, 8), BatchNorm1D(8), ReLU(), Dense(8, 4))
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    trainer_kwargs.setdefault("schedule", CosineLR(EPOCHS))
    trainer = Trainer(model, opt, progress=False, log=None, **trainer_kwargs)
    return trainer, DataLoader(TRAIN, 16, shuffle=True, seed=seed), DataLoader(VAL, 32)


def test_resume_restores_batch_norm_running_statistics_bit_for_bit(tmp_path):
    whole, train_loader, val_loader = _bn_setup(0)
    whole.fit(train_loader, val_loader, epochs=EPOCHS)
    first, train_loader, val_loader = _bn_setup(0, checkpoint_dir=tmp_path)
    first.fit(train_loader, val_loader, epochs=2)
    second, train_loader, val_loader = _bn_setup(99, checkpoint_dir=tmp_path)
    second.fit(train_loader, val_loader, epochs=EPOCHS, resume=tmp_path / "checkpoint.npz")
    a, b = whole.model.state_dict(), second.model.state_dict()
    assert list(a) == list(b) and "1.running_var" in a and "3.block.1.num_batches_tracked" in a
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert a["1.num_batches_tracked"] > 0
    assert without_timing(whole.history) == without_timing(second.history)
    model = fastnet.load(tmp_path / "checkpoint.npz")  # the checkpoint's model keeps its buffers
    np.testing.assert_array_equal(model.state_dict()["6.bias"], b["6.bias"])
    np.testing.assert_array_equal(model.state_dict()["7.running_mean"], b["7.running_mean"])


def _small_classifier(seed=0):
    fastnet.manual_seed(seed)
    return Sequential(Dense(6, 5))


def test_evaluate_with_ignored_targets_and_class_weights_is_the_whole_sets_loss():
    """A loss with ignore_index / weight: evaluate's loss is the whole set's (the batches
    weighted by their targets' total weight, as the loss's "mean" divides by it), its
    accuracy counts only the targets not ignored, and a batch with every target ignored
    counts for nothing (its own loss is NaN)."""
    from fastnet.losses import CrossEntropyLoss
    from fastnet.train import evaluate

    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 6)).astype(np.float32)
    y = rng.integers(0, 5, 16)
    y[[1, 4, 5, 9]] = -100
    y[12:] = -100  # the last batch of 4: every target ignored
    model = _small_classifier()
    for loss_fn in (CrossEntropyLoss(), CrossEntropyLoss(np.array([1.0, 2, 0.5, 0, 3]))):
        whole = loss_fn(model(x), y)
        got = evaluate(model, DataLoader(ArrayDataset(x, y), 4), loss_fn)
        assert got["loss"] == pytest.approx(whole, rel=1e-6)
        kept = y != -100
        assert got["acc"] == ((model(x).argmax(1) == y)[kept]).mean()
    total = evaluate(model, DataLoader(ArrayDataset(x, y), 4), CrossEntropyLoss(reduction="sum"))
    assert total["loss"] == pytest.approx(whole_mean := CrossEntropyLoss()(model(x), y), rel=1e-6)
    assert np.isfinite(whole_mean)


def test_a_training_batch_with_every_target_ignored_is_not_a_non_finite_loss():
    from fastnet.losses import CrossEntropyLoss

    rng = np.random.default_rng(1)
    x = rng.standard_normal((12, 6)).astype(np.float32)
    y = rng.integers(0, 5, 12)
    y[:4] = -100  # the first (unshuffled) batch: nothing to learn from, gradient 0
    model = _small_classifier()
    trainer = Trainer(model, SGD(model.parameters(), lr=0.1), CrossEntropyLoss(), progress=False)
    (record,) = trainer.fit(DataLoader(ArrayDataset(x, y), 4), epochs=1)
    assert np.isfinite(record["train_loss"]) and 0 <= record["train_acc"] <= 1


def test_a_loss_without_one_number_per_batch_is_refused():
    from fastnet.losses import CrossEntropyLoss
    from fastnet.train import evaluate

    model = _small_classifier()
    with pytest.raises(ValueError, match="reduction 'mean' or 'sum'"):
        Trainer(model, SGD(model.parameters(), lr=0.1), CrossEntropyLoss(reduction="none"))
    with pytest.raises(ValueError, match="reduction 'mean' or 'sum'"):
        evaluate(model, [], CrossEntropyLoss(reduction="none"))


@pytest.mark.parametrize("three_phase", [False, True])
def test_one_cycle_with_an_empty_warm_up_phase_is_refused_when_built(three_phase):
    """pct_start * total_steps == 1 gives the first phase no length: a ValueError naming
    the arguments at construction, not a ZeroDivisionError at the first step of a fit."""
    with pytest.raises(ValueError, match="pct_start"):
        OneCycleLR(0.3, 10, pct_start=0.1, three_phase=three_phase)
    assert OneCycleLR(0.3, 10, pct_start=0.15, three_phase=three_phase)(0) == \
        pytest.approx(0.3 / 25)
