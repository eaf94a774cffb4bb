"""Training loops: ``Trainer(model, optimizer).fit(train_loader, val_loader, epochs)``.

One epoch: for each batch, zero_grad, forward, loss, backward, optimizer step; then the
validation loss and accuracy. Around it: a learning-rate schedule (set per epoch, before
every optimizer step, or after validation: ``granularity``), optional gradient clipping
before every step, a tqdm progress bar, early stopping, and checkpoints.

A checkpoint is one ``.npz`` file (fastnet's model format, extended): the model's
architecture and parameters, the optimizer's buffers, step counts and hyper-parameters,
the epoch, the optimizer steps taken, the schedule's configuration and counters, the
history, the best epoch, fastnet's global RNG state, the DataLoaders'
shuffling generators, per-layer state such as Dropout's call counter, and the run's
config. Resuming from it gives bit for bit the run that was not interrupted.
``fastnet.load`` reads the model out of a checkpoint.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import numbers
import os
import time

import numpy as np

from . import _rng
from ._npz import atomic_write
from .device import Device, to_numpy
from .errors import FileFormatError
from .kernels._jit import jit_seconds, on_first_compile
from .losses import CrossEntropyLoss
from .optim import clip_grad_norm_
from .serialization import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, FORMAT, _describe,
                            _model_meta, check_checkpoint_meta, check_version,
                            input_shape_ok, load_with_meta, read_npz, same_layout, write_npz)

__all__ = ["Trainer", "NonFiniteLossError", "StepLR", "CosineLR", "WarmupCosine", "OneCycleLR",
           "ReduceLROnPlateau", "evaluate", "load_model",
           "plot_history", "progress_bar", "bits"]

# Printed (through the Trainer's log) when kernels compile: on a first run, Numba compiles
# every kernel the model uses for this machine's CPU and caches it on disk.
COMPILE_NOTICE = ("compiling fastnet's kernels for this machine (first run only: they are "
                  "cached for the next runs)...")


class NonFiniteLossError(FloatingPointError):
    """Raised by ``Trainer.fit`` at the first training batch whose loss is NaN or inf (or
    when the parameters are no longer finite at the end of an epoch), before the weights
    are updated with that batch's gradients and before any checkpoint is written.

    ``epoch`` and ``step`` (1-based, the batch within the epoch) say where; ``loss`` is the
    value (None when the parameters were found non-finite); ``checkpoint`` is the last
    good checkpoint kept on disk, or None."""

    def __init__(self, message, *, epoch, step, loss, checkpoint):
        super().__init__(message)
        self.epoch, self.step, self.loss, self.checkpoint = epoch, step, loss, checkpoint


# ---- learning-rate schedules: lr of epoch e (0-based) from the optimizer's initial lr ----
class StepLR:
    """lr = base_lr * gamma ** (epoch // step_size), as torch.optim.lr_scheduler.StepLR."""

    granularity = "epoch"

    def __init__(self, step_size, gamma=0.1):
        if isinstance(step_size, bool) or not isinstance(step_size, numbers.Integral) \
                or step_size < 1:
            raise ValueError(f"StepLR: step_size must be a positive int, got {step_size!r}")
        if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or not 0 < gamma <= 1:
            raise ValueError(f"StepLR: gamma must be in (0, 1], got {gamma!r}")
        self.step_size, self.gamma = int(step_size), float(gamma)

    def __call__(self, epoch, base_lr):
        return base_lr * self.gamma ** (epoch // self.step_size)

    def state_dict(self):
        return {"type": "StepLR", "step_size": self.step_size, "gamma": self.gamma}


class CosineLR:
    """Cosine decay from base_lr at epoch 0 towards min_lr at epoch total_epochs
    (PyTorch's CosineAnnealingLR with T_max=total_epochs, stepped once per epoch)."""

    granularity = "epoch"

    def __init__(self, total_epochs, min_lr=0.0):
        if isinstance(total_epochs, bool) or not isinstance(total_epochs, numbers.Integral) \
                or total_epochs < 1:
            raise ValueError(f"CosineLR: total_epochs must be a positive int, got {total_epochs!r}")
        if isinstance(min_lr, bool) or not isinstance(min_lr, numbers.Real) or not min_lr >= 0:
            raise ValueError(f"CosineLR: min_lr must be a non-negative number, got {min_lr!r}")
        self.total_epochs, self.min_lr = int(total_epochs), float(min_lr)

    def __call__(self, epoch, base_lr):
        t = min(epoch, self.total_epochs) / self.total_epochs
        return self.min_lr + (base_lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * t))

    def state_dict(self):
        return {"type": "CosineLR", "total_epochs": self.total_epochs, "min_lr": self.min_lr}


def _positive_int(value, name, owner, lo=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo:
        raise ValueError(f"{owner}: {name} must be an int >= {lo}, got {value!r}")
    return int(value)


def _real(value, name, owner, ok, want):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a number, got {value!r}")
    v = float(value)
    if not (math.isfinite(v) and ok(v)):
        raise ValueError(f"{owner}: {name} must be {want}, got {value!r}")
    return v


# ---- per-step schedules: lr of optimizer step s (0-based, counted over the whole run) -----
# ``granularity = "step"``: the Trainer calls schedule(step, base_lr) before every
# optimizer step (the schedules above have "epoch": once per epoch, before its first step).
class WarmupCosine:
    """Linear warmup, then cosine decay, per optimizer step s (0-based):

    s < warmup_steps:  lr = base_lr * (s + 1) / warmup_steps  (base_lr / warmup_steps on
                       the first step, base_lr on step warmup_steps - 1; no step at lr 0)
    then:              lr = min_lr + (base_lr - min_lr) * (1 + cos(pi * (s - warmup_steps)
                       / (total_steps - warmup_steps))) / 2, min_lr from total_steps on.

    PyTorch's equivalent is SequentialLR([LinearLR(start_factor=1 / warmup_steps,
    total_iters=warmup_steps - 1), CosineAnnealingLR(T_max=total_steps - warmup_steps,
    eta_min=min_lr)], milestones=[warmup_steps]) stepped after every optimizer step
    (tests/data/make_torch_schedules.py); warmup_steps=0 is CosineAnnealingLR per step."""

    granularity = "step"

    def __init__(self, warmup_steps, total_steps, min_lr=0.0):
        owner = "WarmupCosine"
        self.warmup_steps = _positive_int(warmup_steps, "warmup_steps", owner, lo=0)
        self.total_steps = _positive_int(total_steps, "total_steps", owner)
        if self.warmup_steps >= self.total_steps:
            raise ValueError(f"{owner}: warmup_steps ({warmup_steps}) must be below "
                             f"total_steps ({total_steps})")
        self.min_lr = _real(min_lr, "min_lr", owner, lambda v: v >= 0, "a number >= 0")

    def __call__(self, step, base_lr):
        w = self.warmup_steps
        if step < w:
            return base_lr * (step + 1) / w
        t = min(step - w, self.total_steps - w) / (self.total_steps - w)
        return self.min_lr + (base_lr - self.min_lr) * (1 + math.cos(math.pi * t)) / 2

    def state_dict(self):
        return {"type": "WarmupCosine", "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps, "min_lr": self.min_lr}


class OneCycleLR:
    """The 1cycle policy per optimizer step, as torch.optim.lr_scheduler.OneCycleLR's
    lr sequence (stepped after every optimizer step): from max_lr / div_factor up to
    max_lr over the first pct_start of total_steps, then down to max_lr / div_factor /
    final_div_factor (three_phase: back to the initial lr first, then down). The
    optimizer's own lr is not used. anneal_strategy "cos" or "linear". PyTorch also
    cycles the momentum (SGD's momentum, Adam's beta1) inversely by default; fastnet
    does not (cycle_momentum=False in PyTorch terms). Stepping past total_steps raises
    ValueError, as PyTorch does."""

    granularity = "step"

    def __init__(self, max_lr, total_steps, pct_start=0.3, anneal_strategy="cos",
                 div_factor=25.0, final_div_factor=1e4, three_phase=False):
        owner = "OneCycleLR"
        self.max_lr = _real(max_lr, "max_lr", owner, lambda v: v > 0, "a number > 0")
        self.total_steps = _positive_int(total_steps, "total_steps", owner)
        self.pct_start = _real(pct_start, "pct_start", owner, lambda v: 0 <= v <= 1,
                               "in [0, 1]")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"{owner}: anneal_strategy must be 'cos' or 'linear', got "
                             f"{anneal_strategy!r}")
        self.anneal_strategy = anneal_strategy
        self.div_factor = _real(div_factor, "div_factor", owner, lambda v: v > 0, "> 0")
        self.final_div_factor = _real(final_div_factor, "final_div_factor", owner,
                                      lambda v: v > 0, "> 0")
        self.three_phase = bool(three_phase)
        if float(self.pct_start * self.total_steps) - 1 == 0:
            # (PyTorch's first step divides by this phase's length: ZeroDivisionError)
            raise ValueError(f"{owner}: pct_start * total_steps must not be 1 (the warm-up "
                             f"phase would have no length), got pct_start={pct_start!r} and "
                             f"total_steps={total_steps!r}")

    def __call__(self, step, base_lr=None):
        if step > self.total_steps:
            raise ValueError(f"OneCycleLR: tried to step {step} times; the specified number "
                             f"of total steps is {self.total_steps}")
        initial = self.max_lr / self.div_factor
        low = initial / self.final_div_factor
        n, pct = self.total_steps, self.pct_start
        if self.three_phase:
            phases = [(float(pct * n) - 1, initial, self.max_lr),
                      (float(2 * pct * n) - 2, self.max_lr, initial), (n - 1, initial, low)]
        else:
            phases = [(float(pct * n) - 1, initial, self.max_lr), (n - 1, self.max_lr, low)]
        start = 0
        for i, (end, lr0, lr1) in enumerate(phases):
            if step <= end or i == len(phases) - 1:
                t = (step - start) / (end - start)  # PyTorch's arithmetic, step by step
                if self.anneal_strategy == "cos":
                    return lr1 + (lr0 - lr1) / 2.0 * (math.cos(math.pi * t) + 1)
                return (lr1 - lr0) * t + lr0
            start = end

    def state_dict(self):
        return {"type": "OneCycleLR", "max_lr": self.max_lr, "total_steps": self.total_steps,
                "pct_start": self.pct_start, "anneal_strategy": self.anneal_strategy,
                "div_factor": self.div_factor, "final_div_factor": self.final_div_factor,
                "three_phase": self.three_phase}


class ReduceLROnPlateau:
    """Reduce the lr by ``factor`` when a metric has stopped improving, with
    torch.optim.lr_scheduler.ReduceLROnPlateau's decisions step by step (``granularity =
    "plateau"``). ``step(metric, lr)`` takes one epoch's metric and the current lr and
    returns the lr for the next epoch. The Trainer steps it after each epoch's validation
    with its ``monitor`` (val_loss: mode "min"; val_acc: mode "max"); it needs a
    validation loader. Its counters are in ``state_dict()`` (and the Trainer's
    checkpoints)."""

    granularity = "plateau"
    _STATE = ("best", "num_bad_epochs", "cooldown_counter", "last_epoch")

    def __init__(self, mode="min", factor=0.1, patience=10, threshold=1e-4,
                 threshold_mode="rel", cooldown=0, min_lr=0.0, eps=1e-8):
        owner = "ReduceLROnPlateau"
        if mode not in ("min", "max"):
            raise ValueError(f"{owner}: mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"{owner}: threshold_mode must be 'rel' or 'abs', got "
                             f"{threshold_mode!r}")
        self.mode, self.threshold_mode = mode, threshold_mode
        self.factor = _real(factor, "factor", owner, lambda v: 0 <= v < 1, "in [0, 1)")
        self.patience = _positive_int(patience, "patience", owner, lo=0)
        self.threshold = _real(threshold, "threshold", owner, lambda v: v >= 0, ">= 0")
        self.cooldown = _positive_int(cooldown, "cooldown", owner, lo=0)
        self.min_lr = _real(min_lr, "min_lr", owner, lambda v: v >= 0, ">= 0")
        self.eps = _real(eps, "eps", owner, lambda v: v >= 0, ">= 0")
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = self.cooldown_counter = self.last_epoch = 0

    def _is_better(self, a, best):
        if self.mode == "min":
            return a < (best * (1.0 - self.threshold) if self.threshold_mode == "rel"
                        else best - self.threshold)
        return a > (best * (self.threshold + 1.0) if self.threshold_mode == "rel"
                    else best + self.threshold)

    def step(self, metric, lr):
        """One epoch's ``metric``; returns the lr to continue with (``lr`` or reduced)."""
        current = float(metric)
        self.last_epoch += 1
        if self._is_better(current, self.best):
            self.best, self.num_bad_epochs = current, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad epochs in the cooldown do not count
        if self.num_bad_epochs > self.patience:
            new_lr = max(lr * self.factor, self.min_lr)
            if lr - new_lr > self.eps:
                lr = new_lr
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0
        return lr

    def state_dict(self):
        """The configuration and, under "state", the counters (JSON: inf as a string)."""
        best = self.best if math.isfinite(self.best) else repr(self.best)
        return {"type": "ReduceLROnPlateau", "mode": self.mode, "factor": self.factor,
                "patience": self.patience, "threshold": self.threshold,
                "threshold_mode": self.threshold_mode, "cooldown": self.cooldown,
                "min_lr": self.min_lr, "eps": self.eps,
                "state": {"best": best, "num_bad_epochs": self.num_bad_epochs,
                          "cooldown_counter": self.cooldown_counter,
                          "last_epoch": self.last_epoch}}

    def load_state_dict(self, state):
        """Restore the counters of ``state_dict()`` (its configuration is this object's);
        ValueError for a malformed state, before anything changes."""
        s = state.get("state") if isinstance(state, dict) else None
        if not isinstance(s, dict) or set(s) != set(self._STATE):
            raise ValueError(f"ReduceLROnPlateau.load_state_dict: expected a state with "
                             f"{list(self._STATE)}, got {str(state)[:120]}")
        best = s["best"]
        if isinstance(best, str) and best in ("inf", "-inf", "nan"):
            best = float(best)
        if isinstance(best, bool) or not isinstance(best, numbers.Real):
            raise ValueError(f"ReduceLROnPlateau.load_state_dict: best must be a number, got "
                             f"{best!r}")
        counts = [s[k] for k in self._STATE[1:]]
        if not all(isinstance(c, numbers.Integral) and not isinstance(c, bool) and c >= 0
                   for c in counts):
            raise ValueError(f"ReduceLROnPlateau.load_state_dict: the counters must be ints "
                             f">= 0, got {counts}")
        self.best = float(best)
        self.num_bad_epochs, self.cooldown_counter, self.last_epoch = (int(c) for c in counts)


def granularity(schedule):
    """When the Trainer applies ``schedule``: "epoch" (a callable f(epoch, base_lr), the
    default), "step" (f(step, base_lr) before every optimizer step) or "plateau"
    (``step(metric, lr)`` after each validation)."""
    return getattr(schedule, "granularity", "epoch")


def _schedule_config(state):
    """A schedule's state_dict without its counters: what the resume note compares."""
    return {k: v for k, v in state.items() if k != "state"} if isinstance(state, dict) else state


# ---- progress and plots ------------------------------------------------------------------
def progress_bar(total, desc, enabled=True):
    """A tqdm bar (on stderr) when tqdm is installed and wanted, else a silent stand-in."""
    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True,
                        mininterval=0.2)
        except ImportError:
            pass

    class _Quiet:
        def update(self, n=1):
            pass

        def set_postfix_str(self, s, refresh=True):
            pass

        def close(self):
            pass

    return _Quiet()


def write_above(bar, log, line):
    """``log(line)`` with a tqdm bar cleared first and drawn again below the line."""
    write_mode = getattr(bar, "external_write_mode", None)
    with write_mode() if write_mode is not None else contextlib.nullcontext():
        log(line)


_now = time.perf_counter  # (a module attribute: tests replace the clocks)


class Stopwatch:
    """Time since it was made, with and without the time Numba spent meanwhile compiling
    kernels or loading them from its cache (``jit``): a first epoch's samples/s measures
    the training, not the JIT."""

    def __init__(self):
        self._start, self._jit_start = _now(), jit_seconds()

    def elapsed(self):
        return _now() - self._start

    def jit(self):
        return jit_seconds() - self._jit_start

    def working(self):
        """elapsed() - jit(), never below 1 ns."""
        return max(self.elapsed() - self.jit(), 1e-9)


def plot_history(history, path):
    """Write a PNG of the loss and accuracy curves (train and validation) per epoch.

    Needs matplotlib (``pip install "fastnet[plot]"``); raises ImportError without it.
    Uses matplotlib's object API, so the caller's pyplot backend and state are untouched.
    """
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise ImportError('plotting needs matplotlib: pip install "fastnet[plot]"') from None
    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(9, 3.4), dpi=100, layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for ax, key, title in ((ax_loss, "loss", "loss"), (ax_acc, "acc", "accuracy")):
        for split, style in (("train", "-o"), ("val", "-s")):
            values = [r.get(f"{split}_{key}") for r in history]
            if any(v is not None for v in values):
                ax.plot(epochs, [np.nan if v is None else v for v in values], style,
                        markersize=3, label="validation" if split == "val" else split)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs only
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    atomic_write(path, lambda f: fig.savefig(f, format="png"), "plot_history")


# ---- checkpoints ---------------------------------------------------------------------------
def _first_difference(a, b, where="model"):
    """Where two architecture descriptions first differ, for an error message."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{where}.{k}")
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{where}: {len(a)} layers in the checkpoint, {len(b)} in the model"
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return _first_difference(x, y, f"{where}[{i}]")
    return f"{where}: {a!r} in the checkpoint, {b!r} in the model"


def _checkpoint_path(path):
    path = os.fspath(path)
    return os.path.join(path, "checkpoint.npz") if os.path.isdir(path) else path


def load_model(path):
    """(model, info) from a checkpoint or a ``fastnet.save`` file; ``info`` is the
    checkpoint's metadata (config, epoch, input_shape, history, ...), {} for a model file.
    A malformed file raises ``fastnet.FileFormatError`` (see ``fastnet.load``)."""
    model, meta = load_with_meta(path, "fastnet.train.load_model")
    return model, (meta if meta["format"] == CHECKPOINT_FORMAT else {})


def _correct(logits, labels, keep=None):
    # NOTE: logits may live on the GPU: bring them to the host before argmax.
    hits = to_numpy(logits).argmax(axis=1) == np.asarray(labels)
    return int((hits if keep is None else hits & keep).sum())


def _positions(labels):
    """The labelled positions of a batch: N for labels (N,), N * T for a sequence's (N, T)
    (the loss is their mean, and the accuracy counts each of them)."""
    return int(labels.size) if hasattr(labels, "size") else len(labels)


def check_loss(loss_fn, who):
    """A loss the Trainer can sum over batches: a scalar per batch ("mean" or "sum")."""
    if getattr(loss_fn, "reduction", "mean") not in ("mean", "sum"):
        raise ValueError(f"{who}: the loss must return one number per batch (reduction "
                         f"'mean' or 'sum'), got {loss_fn!r}")
    return loss_fn


def _targets(loss_fn, labels):
    """(what the batch's loss is a mean over, the positions the accuracy counts, their mask
    or None) of a batch: the positions, or for a class loss with ``ignore_index`` / ``weight``
    (CrossEntropyLoss, NLLLoss) the total weight of the targets not ignored (the "mean"'s
    divisor, as PyTorch) and those targets. A batch's reported loss times its weight sums
    to the whole set's mean: an ignored position counts for nothing, nor does a batch
    whose every target is ignored (its loss is NaN, its gradient 0)."""
    from .losses import _ClassLoss

    count = _positions(labels)
    if not isinstance(loss_fn, _ClassLoss):
        return count, count, None
    y = np.asarray(labels)
    keep = y != loss_fn.ignore_index
    kept = int(keep.sum())
    if loss_fn.weight is None:
        return kept, kept, (None if kept == count else keep)
    return float(loss_fn.weight.astype(np.float64)[y[keep]].sum()), kept, keep


def _weighted(loss, loss_fn, weight):
    """The batch's share of the summed loss: 0 for a batch with no weight (its "mean" is
    NaN: 0 / 0), the loss itself for a "sum", else loss * weight."""
    if weight == 0:
        return 0.0
    return loss if getattr(loss_fn, "reduction", "mean") == "sum" else loss * weight


def _rank_batches(loader, rank, world):
    """This rank's part of an evaluation over all of ``loader``: a fastnet DataLoader's
    batches by index modulo ``world`` (whole set, unpadded, generator untouched), any
    other iterable's every world-th batch."""
    if hasattr(loader, "_eval_batches"):
        return loader._eval_batches(rank, world)
    return (b for i, b in enumerate(loader) if i % world == rank)


def evaluate(model, loader, loss_fn=None, distributed=None):
    """{"loss": mean loss, "acc": accuracy} of ``model`` over ``loader``, in eval mode
    (the model's mode is restored afterwards).

    Under MPI with several ranks (``distributed`` None: fastnet.distributed decides),
    each rank evaluates every world_size-th batch of the whole set and the sums are
    reduced: every rank returns the metrics of the whole set, each sample counted once.
    It is then a collective: call it on every rank (``distributed=False`` evaluates all
    of the loader on the calling rank alone, e.g. ``if dist.is_main(): ...``). A
    ``DistributedDataParallel`` first gives every rank rank 0's buffers (BatchNorm's
    running statistics), so that every rank evaluates the model rank 0 saves."""
    from . import distributed as dist

    loss_fn = CrossEntropyLoss() if loss_fn is None else loss_fn
    world = dist.world_size() if distributed is None or distributed else 1
    if isinstance(model, dist.DistributedDataParallel):
        if world > 1:
            model.sync_buffers()
        model = model.module
    was_training = model.training
    model.eval()
    check_loss(loss_fn, "evaluate")
    total_loss, total_weight, correct, seen = 0.0, 0.0, 0, 0
    batches = _rank_batches(loader, dist.rank(), world) if world > 1 else loader
    try:
        for xb, yb in batches:
            logits = model(xb)
            weight, count, keep = _targets(loss_fn, yb)
            total_loss += _weighted(float(loss_fn(logits, yb)), loss_fn, weight)
            total_weight += weight
            correct += _correct(logits, yb, keep)
            seen += count
    finally:
        model.train(was_training)
    if world > 1:
        total_loss, total_weight, correct, seen = dist.all_sum(
            [total_loss, total_weight, correct, seen])
    if seen == 0:
        raise ValueError("evaluate: the loader gave no samples, or only targets the loss "
                         "ignores (ignore_index)")
    return {"loss": total_loss / total_weight if total_weight else math.nan,
            "acc": correct / seen}


def bits(loss):
    """A cross-entropy in nats as bits (per character, for a character model): loss / ln 2."""
    return None if loss is None else loss / math.log(2)


class Trainer:
    """Trains ``model`` with ``optimizer`` on classification batches (integer labels).

    loss_fn        default CrossEntropyLoss()
    schedule       None keeps the lr; per epoch (before its first step): StepLR / CosineLR /
                   any f(epoch, base_lr) -> lr; per optimizer step (before each):
                   WarmupCosine / OneCycleLR / any f(step, base_lr) -> lr with
                   ``granularity = "step"`` (step counts every step of the run from 0);
                   after each validation: ReduceLROnPlateau, given the ``monitor`` metric
    clip_grad_norm clip the gradients' total 2-norm to this before every optimizer step
                   (fastnet.optim.clip_grad_norm_); None (default) does not clip
    device         "cpu" or "cuda": the model is moved there; batches stay NumPy
    progress       a tqdm bar per epoch with the running loss and samples/s
    checkpoint_dir write checkpoint.npz after every epoch and best.npz when the monitored
                   validation metric improves
    patience       stop after this many epochs without improvement (needs validation)
    monitor        "val_loss" (lower is better) or "val_acc" (higher is better)
    log            called with one line per epoch (default print; None for silence)
    on_epoch_end   called as on_epoch_end(trainer, record) after each epoch
    config         a JSON-serialisable dict stored in checkpoints (e.g. the CLI's options)
    bits_per_char  also report the losses in bits (loss / ln 2; per character for a
                   character model): ``train_bpc`` / ``val_bpc`` in the history and the
                   epoch line

    Labels may be (N,) or, for a sequence model whose logits are (N, C, T), (N, T): the
    loss and accuracy are then over all N * T positions (samples/s counts sequences).

    Under MPI with several ranks (fastnet.distributed), the model is wrapped in a
    ``DistributedDataParallel`` (unless it is one already): gradients are averaged over
    the ranks, each rank taking its share of every batch from a ``DataLoader(...,
    distributed=True)``. Only rank 0 logs, shows the progress bar and writes checkpoints;
    the training metrics and samples/s are over all ranks, and validation covers the whole
    set once, split between the ranks. Checkpoints hold the model itself (not the
    wrapper) and resume with any number of ranks. Every rank reads the checkpoint it
    resumes from.

    On Ctrl-C, fit writes the state after the last completed epoch to checkpoint.npz, rolls
    the trainer (model, optimizer, RNGs, history) back to it, and re-raises
    KeyboardInterrupt: the partial epoch is discarded, and a resumed run (or another
    ``fit`` call on this trainer) repeats it. Without checkpoint_dir nothing is saved or
    rolled back. (Under MPI, end the job after it instead, as the CLI does with
    ``fastnet.distributed.abort``: a rank blocked in MPI when the signal came may not
    have seen it, and a new ``fit`` would wait for that rank.)

    A NaN or infinite training loss stops the run at once with ``NonFiniteLossError``,
    naming the epoch and step, before the optimizer takes that batch's step; so do
    parameters that are no longer finite when an epoch ends (a step can turn them to NaN
    while its loss was still finite). No checkpoint is written from such a state: the
    checkpoint of the last good epoch stays, and the trainer is rolled back to it as on
    Ctrl-C (``stop_reason`` is "non_finite").
    """

    def __init__(self, model, optimizer, loss_fn=None, *, schedule=None, device="cpu",
                 progress=True, checkpoint_dir=None, patience=None, monitor="val_loss",
                 log=functools.partial(print, flush=True), on_epoch_end=None, config=None,
                 bits_per_char=False, clip_grad_norm=None):
        if monitor not in ("val_loss", "val_acc"):
            raise ValueError(f"Trainer: monitor must be 'val_loss' or 'val_acc', got {monitor!r}")
        if clip_grad_norm is not None:
            clip_grad_norm = _real(clip_grad_norm, "clip_grad_norm", "Trainer",
                                   lambda v: v > 0, "a number > 0 or None")
        if patience is not None and (isinstance(patience, bool)
                                     or not isinstance(patience, numbers.Integral) or patience < 1):
            raise ValueError(f"Trainer: patience must be a positive int or None, got {patience!r}")
        kind = granularity(schedule)
        if kind not in ("epoch", "step", "plateau"):
            raise ValueError(f"Trainer: a schedule's granularity must be 'epoch', 'step' or "
                             f"'plateau', got {kind!r}")
        if kind == "plateau":
            if not callable(getattr(schedule, "step", None)):
                raise TypeError(f"Trainer: a plateau schedule needs step(metric, lr), got "
                                f"{schedule!r}")
            mode = getattr(schedule, "mode", None)
            if mode is not None and mode != ("min" if monitor == "val_loss" else "max"):
                raise ValueError(f"Trainer: the ReduceLROnPlateau has mode {mode!r} and is "
                                 f"stepped with monitor {monitor!r}: use mode "
                                 f"{'min' if monitor == 'val_loss' else 'max'!r}")
        elif schedule is not None and not callable(schedule):
            raise TypeError(f"Trainer: schedule must be callable as schedule({kind}, base_lr), "
                            f"got {schedule!r}")
        from . import distributed as dist

        net = model
        if isinstance(model, dist.DistributedDataParallel):
            model = model.module
        if checkpoint_dir is not None:
            _describe(model)  # a model checkpoints cannot rebuild fails now, not after epoch 1
        self.device = Device(device)  # RuntimeError here when the device is unavailable
        self.world, self.rank = dist.world_size(), dist.rank()
        if net is not model:
            if model.device != self.device:
                raise ValueError(f"Trainer: the DistributedDataParallel's model is on "
                                 f"{model.device}, the trainer's device is {self.device}; "
                                 "move the model before wrapping it")
            self.model = model
        else:
            if self.world > 1 and self.device.type == "cuda":
                dist.select_gpu()
            self.model = model.to(self.device)
            if self.world > 1:
                net = dist.DistributedDataParallel(self.model)
        self.net = net  # what runs forward and backward: the model, or its DDP wrapper
        if self.world > 1 and self.rank != 0:  # one rank speaks for the job
            log, progress = None, False
        self.optimizer = optimizer
        self.loss_fn = check_loss(CrossEntropyLoss() if loss_fn is None else loss_fn, "Trainer")
        self.schedule = schedule
        self.clip_grad_norm = clip_grad_norm
        self.progress = progress
        self.checkpoint_dir = None if checkpoint_dir is None else os.fspath(checkpoint_dir)
        self.patience, self.monitor = patience, monitor
        self.log = log or (lambda line: None)
        self.on_epoch_end = on_epoch_end
        self.config = config
        self.bits_per_char = bool(bits_per_char)
        self.base_lr = float(optimizer.lr)  # what the schedule scales
        self.epoch = 0                      # completed epochs
        self.steps = 0                      # optimizer steps of the completed epochs
        self.history = []                   # one dict per completed epoch
        self.best = None                    # {"epoch", "monitor", "value"} of the best epoch
        self.best_state_dict = None         # its parameters (best epochs of this process only)
        self.bad_epochs = 0                 # epochs since the best one
        self.stop_reason = None             # "completed", "early_stopping", "interrupted"
                                            # or "non_finite"
        self.input_shape = None             # of one sample, recorded for predict
        self._loader_states = None          # from resume(), applied by the next fit()
        self._on_disk = None                # (checkpoint path, epoch) last written / resumed
        self._announced = False             # COMPILE_NOTICE logged
        self._bar = None                    # the progress bar of the epoch running
        self._epoch_jit = 0.0               # the JIT's seconds in the last epoch

    # ---- the loop ------------------------------------------------------------------------
    def fit(self, train_loader, val_loader=None, epochs=1, resume=None):
        """Train until ``epochs`` epochs are complete in all (a resumed run counts the
        epochs it already has) or early stopping; returns the history: one dict per epoch
        with epoch, train_loss, train_acc, val_loss, val_acc, lr, samples_per_s, seconds
        (and ``stopped``, why, on the last one when early stopping ended the run)."""
        if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 1:
            raise ValueError(f"Trainer.fit: epochs must be a positive int, got {epochs!r}")
        if self.patience is not None and val_loader is None:
            raise ValueError("Trainer.fit: early stopping (patience) needs a val_loader")
        if granularity(self.schedule) == "plateau" and val_loader is None:
            raise ValueError("Trainer.fit: a ReduceLROnPlateau schedule needs a val_loader "
                             "(it is stepped with the validation metric)")
        if resume is not None:
            self.resume(resume)
        self._loaders = (train_loader, val_loader)
        if self.world > 1 and not getattr(train_loader, "distributed", False) \
                and self.epoch == 0 and not self.history:
            self.log(f"note: the train loader is not DataLoader(..., distributed=True): "
                     f"unless each of the {self.world} ranks was given its own data, they "
                     "all train on the same batches")
        if self._loader_states is not None:
            for loader, key in ((train_loader, "train"), (val_loader, "val")):
                state = self._loader_states.get(key)
                if state is not None and loader is not None and hasattr(loader, "load_state_dict"):
                    loader.load_state_dict(state)
            self._loader_states = None
        if self.checkpoint_dir is not None:
            os.makedirs(self.checkpoint_dir, exist_ok=True)
        self.stop_reason = None
        # NOTE: the state after the last completed epoch, kept so that Ctrl-C in the middle
        # of an epoch can still save a consistent checkpoint (the model has moved on).
        last = self._state() if self.checkpoint_dir is not None else None
        try:
            while self.epoch < epochs:
                if self.patience is not None and self.bad_epochs >= self.patience:
                    self.stop_reason = "early_stopping"  # also when resuming a stopped run
                    break
                announced = self._announced
                with self._compile_notice():
                    record = self._run_epoch(train_loader, val_loader, epochs)
                self._check_parameters()
                self.epoch += 1
                self.steps += record.pop("_steps")
                self.history.append(record)
                if granularity(self.schedule) == "plateau":  # the lr of the next epoch
                    self.optimizer.lr = float(self.schedule.step(record[self.monitor],
                                                                 self.optimizer.lr))
                improved = self._update_best(record)
                if self.patience is not None and self.bad_epochs >= self.patience \
                        and self.epoch < epochs:
                    record["stopped"] = (f"early stopping: {self.monitor} has not improved for "
                                         f"{self.bad_epochs} epochs (best "
                                         f"{self.best['value']:.4f} at epoch {self.best['epoch']})")
                if self.checkpoint_dir is not None:
                    last = self._state()
                    path = os.path.join(self.checkpoint_dir, "checkpoint.npz")
                    if self.rank == 0:  # (the other ranks hold the same state)
                        write_npz(path, *last, "Trainer")
                        if improved:
                            write_npz(os.path.join(self.checkpoint_dir, "best.npz"), *last,
                                      "Trainer")
                    self._on_disk = (os.path.abspath(path), self.epoch)
                line = self._line(record, epochs)
                if self._announced and not announced:  # this epoch compiled kernels
                    line += f"  (+{self._epoch_jit:.1f} s compiling, not counted)"
                self.log(line)
                if "stopped" in record:
                    self.log(record["stopped"])
                if self.on_epoch_end is not None:
                    self.on_epoch_end(self, record)
        except KeyboardInterrupt:
            self.stop_reason = "interrupted"
            if last is None:
                self.log(f"interrupted in epoch {self.epoch + 1}; no checkpoint_dir, nothing saved")
                raise
            path = os.path.join(self.checkpoint_dir, "checkpoint.npz")
            if self.rank == 0:
                write_npz(path, *last, "Trainer")
            # Roll this trainer back too, so that calling fit again continues exactly.
            self._check_checkpoint(*last, path, "Trainer")()
            self.log(f"interrupted in epoch {self.epoch + 1}: saved the state after epoch "
                     f"{self.epoch} to {path} (the partial epoch is discarded; resuming "
                     "repeats it)")
            raise
        except NonFiniteLossError as e:
            self.stop_reason = "non_finite"
            if last is None:
                raise
            path = os.path.join(self.checkpoint_dir, "checkpoint.npz")
            # NOTE: the file already holds `last` (or, before the first epoch, nothing was
            # written): it is not rewritten, so a poisoned state never reaches the disk.
            self._check_checkpoint(*last, path, "Trainer")()
            # only a file this trainer wrote or resumed from holds `last`: the directory
            # may hold another run's checkpoint.npz
            kept = path if self._on_disk == (os.path.abspath(path), self.epoch) else None
            where = (f"Kept the last good checkpoint, {path} (epoch {self.epoch}), and rolled "
                     "the trainer back to it." if kept else
                     "No epoch of this run had completed, so it wrote no checkpoint; the "
                     "trainer is rolled back to its state before this fit.")
            raise NonFiniteLossError(f"{e} {where}", epoch=e.epoch, step=e.step, loss=e.loss,
                                     checkpoint=kept) from None
        if self.stop_reason is None:
            self.stop_reason = "completed"
        return self.history

    def _run_epoch(self, train_loader, val_loader, epochs):
        kind = granularity(self.schedule)
        if self.schedule is None:
            self.optimizer.lr = self.base_lr
        elif kind == "epoch":
            self.optimizer.lr = float(self.schedule(self.epoch, self.base_lr))
        # (per step: below, before every optimizer step; plateau: the lr fit() left)
        per_step = self.schedule if kind == "step" else None
        clip = self.clip_grad_norm
        model, loss_fn, opt = self.net, self.loss_fn, self.optimizer
        world = self.world
        if world > 1:
            from . import distributed as dist

            # every rank must run the same number of steps: each step is a collective
            batches = len(train_loader) if hasattr(train_loader, "__len__") else None
            if batches is not None:
                most, fewest = dist.all_max(batches), -dist.all_max(-batches)
                if most != fewest:
                    raise ValueError(
                        f"Trainer: the ranks' train loaders give {int(fewest)} to {int(most)} "
                        f"batches per epoch (this rank {batches}); every rank must run the "
                        "same number of steps: DataLoader(..., distributed=True) pads each "
                        "rank's share to the same length")
        model.train()
        self._bar = bar = progress_bar(len(train_loader), f"epoch {self.epoch + 1}/{epochs}",
                                       self.progress)
        total_loss, total_weight, correct, seen, samples = 0.0, 0.0, 0, 0, 0
        watch = Stopwatch()
        jit_seen, unpause = 0.0, getattr(bar, "unpause", lambda: None)
        batches = iter(train_loader)
        step = 0
        try:
            for step, (xb, yb) in enumerate(batches, 1):
                if self.input_shape is None:
                    self.input_shape = [int(d) for d in np.shape(xb)[1:]]
                opt.zero_grad()
                logits = model(xb)
                loss = local_loss = float(loss_fn(logits, yb))  # a host float on any device
                # N, or N * T for a sequence's labels; fewer where the loss ignores targets
                weight, count, keep = _targets(loss_fn, yb)
                counted = weight != 0  # (a batch whose every target is ignored: NaN, grad 0)
                if world > 1:
                    # the batch's loss over all ranks, summed while backward runs: every
                    # rank then takes the same decision below, before the optimizer's step
                    total = dist.all_sum_start([_weighted(loss, loss_fn, weight), weight])
                    model.backward(loss_fn.backward(), input_grad=False)
                    loss_sum, weight_sum = total.wait()
                    counted = weight_sum != 0
                    loss = loss_sum / weight_sum if counted else math.nan
                    if counted and not math.isfinite(loss):
                        model.finish()  # (every rank: no reduction left open)
                if counted and not math.isfinite(loss):
                    raise NonFiniteLossError(
                        f"Trainer: the training loss is {loss} at epoch {self.epoch + 1}, step "
                        f"{step} of {len(train_loader)}; stopped before updating the weights "
                        "with it (look for NaN or inf in the inputs, or lower the learning "
                        "rate).", epoch=self.epoch + 1, step=step, loss=loss, checkpoint=None)
                if world == 1:
                    model.backward(loss_fn.backward(), input_grad=False)
                if clip is not None:
                    clip_grad_norm_(self.model.parameters(), clip)
                if per_step is not None:
                    opt.lr = float(per_step(self.steps + step - 1, self.base_lr))
                opt.step()
                total_loss += _weighted(local_loss, loss_fn, weight)  # (summed over the ranks
                total_weight += weight                                 # at the end)
                correct += _correct(logits, yb, keep)
                seen += count
                samples += len(yb)
                if (jit := watch.jit()) != jit_seen:
                    # the step compiled or loaded kernels: the bar's clock leaves that out too
                    # (tqdm's unpause drops the time since its last redraw)
                    jit_seen = jit
                    unpause()
                rate = world * samples / watch.working()
                bar.set_postfix_str(f"loss {loss:.4f}, {rate:.0f} samples/s", refresh=False)
                bar.update()  # draws the postfix at most every mininterval
        finally:
            bar.close()
            self._bar = None
            # a loader's background threads stop now, also on an error or Ctrl-C (not when
            # the traceback that holds this frame is freed)
            getattr(batches, "close", lambda: None)()
        train_seconds = watch.working()  # without the JIT's seconds
        if world > 1:  # over all ranks; the slowest rank's time
            total_loss, total_weight, correct, seen, samples = dist.all_sum(
                [total_loss, total_weight, correct, seen, samples])
            train_seconds = dist.all_max(train_seconds)
        val = self.evaluate(val_loader) if val_loader is not None else {"loss": None, "acc": None}
        self._epoch_jit = watch.jit()
        record = {"epoch": self.epoch + 1,
                  "train_loss": total_loss / total_weight if total_weight else math.nan,
                  "train_acc": correct / seen if seen else math.nan, "val_loss": val["loss"], "val_acc": val["acc"],
                  "lr": self.optimizer.lr, "samples_per_s": samples / train_seconds,
                  "seconds": watch.elapsed(), "_steps": step}
        if self.bits_per_char:
            record["train_bpc"], record["val_bpc"] = bits(record["train_loss"]), bits(val["loss"])
        if world > 1:
            record["ranks"] = world
            batch = getattr(train_loader, "batch_size", None)
            if batch is not None:
                record["global_batch"] = int(batch) * (world if getattr(
                    train_loader, "distributed", False) else 1)
        return record

    @contextlib.contextmanager
    def _compile_notice(self):
        """Within the block, the first compilation of a kernel logs COMPILE_NOTICE (once per
        trainer), above the progress bar."""
        def announce():
            if not self._announced:
                self._announced = True
                write_above(self._bar, self.log, COMPILE_NOTICE)

        if self._announced:
            yield
        else:
            with on_first_compile(announce):
                yield

    def _check_parameters(self):
        """NonFiniteLossError when a parameter is NaN or inf after an epoch (one pass over
        the weights per epoch): a step whose loss was finite can still poison them."""
        for name, p in self.model.named_parameters():
            if not np.isfinite(to_numpy(p.data)).all():
                raise NonFiniteLossError(
                    f"Trainer: parameter {name!r} is no longer finite at the end of epoch "
                    f"{self.epoch + 1} (the losses were finite; a gradient was not); not "
                    "saving it.", epoch=self.epoch + 1, step=None, loss=None, checkpoint=None)

    def evaluate(self, loader):
        """{"loss": mean loss, "acc": accuracy} over ``loader``, in eval mode."""
        with self._compile_notice():
            return evaluate(self.net, loader, self.loss_fn)

    def _update_best(self, record):
        value = record[self.monitor]
        if value is None:
            return False
        if not math.isfinite(value):
            # NOTE: a NaN / inf validation metric never becomes the best (NaN compares
            # false both ways, and a NaN best would never be beaten); it counts as an
            # epoch without improvement
            self.bad_epochs += 1
            return False
        if self.best is None or (value < self.best["value"] if self.monitor == "val_loss"
                                 else value > self.best["value"]):
            self.best = {"epoch": record["epoch"], "monitor": self.monitor, "value": value}
            self.best_state_dict = self.model.state_dict()
            self.bad_epochs = 0
            return True
        self.bad_epochs += 1
        return False

    @staticmethod
    def _line(r, epochs):
        bpc = "train_bpc" in r  # a character model's run: the losses in bits/char too
        line = (f"epoch {r['epoch']:3d}/{epochs}  loss {r['train_loss']:.4f}  "
                + (f"({r['train_bpc']:.3f} bits/char)  " if bpc else "")
                + f"train acc {100 * r['train_acc']:6.2f}%  ")
        if r["val_loss"] is not None:
            line += (f"val loss {r['val_loss']:.4f}  "
                     + (f"({r['val_bpc']:.3f} bits/char)  " if bpc else "")
                     + f"val acc {100 * r['val_acc']:6.2f}%  ")
        line += f"lr {r['lr']:.3g}  {r['samples_per_s']:8.0f} samples/s"
        if "ranks" in r:
            batch = f"batch {r['global_batch']} over " if "global_batch" in r else ""
            line += f"  ({batch}{r['ranks']} ranks)"
        return line

    # ---- checkpoints -----------------------------------------------------------------------
    def _state(self):
        """(meta, arrays) of a checkpoint of the current state: copies, safe to keep."""
        opt = self.optimizer.state_dict()
        meta = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                **_model_meta(self.model),
                "epoch": self.epoch,
                # None where a file may not hold it (input_shape_ok): predict takes .npy then
                "input_shape": self.input_shape if input_shape_ok(self.input_shape) else None,
                "optimizer": {"type": opt["type"], "hyperparameters": opt["hyperparameters"],
                              "param_steps": opt["param_steps"]},
                "base_lr": self.base_lr,
                "schedule": getattr(self.schedule, "state_dict", lambda: None)(),
                "steps": self.steps, "clip_grad_norm": self.clip_grad_norm,
                "rng": _rng.get_state(),
                "loaders": {key: loader.state_dict() if hasattr(loader, "state_dict") else None
                            for key, loader in zip(("train", "val"), self._loaders)},
                "modules": {name: s for name, m in self.model.named_modules()
                            if (s := m.get_extra_state()) is not None},
                "history": [dict(r) for r in self.history],
                "best": None if self.best is None else dict(self.best),
                "bad_epochs": self.bad_epochs, "config": self.config}
        arrays = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        for i, buffers in enumerate(opt["state"]):
            for name, value in buffers.items():
                arrays[f"optimizer.{i}.{name}"] = value
        return meta, arrays

    def save_checkpoint(self, path):
        """Write the current state (as after the last completed epoch) to ``path`` (on
        rank 0 only, under MPI)."""
        if not hasattr(self, "_loaders"):
            self._loaders = (None, None)
        if self.rank == 0:
            write_npz(path, *self._state(), "Trainer.save_checkpoint")

    def resume(self, path):
        """Restore everything from a checkpoint (a file, or a directory holding
        checkpoint.npz): model, optimizer, epoch, history, best epoch, RNG states (the
        DataLoaders' are applied by the next ``fit``). The model and optimizer must be the
        checkpoint's kind; everything is checked before anything changes, so a bad
        checkpoint raises ``fastnet.FileFormatError`` (a ValueError naming the file) and
        leaves the trainer as it was."""
        path = _checkpoint_path(path)
        who = "Trainer.resume"
        meta, arrays = read_npz(path, who, kind="checkpoint")  # sizes checked: no bomb
        if meta["format"] == FORMAT:
            raise FileFormatError(path, f"{who}: {path} is a fastnet model file (weights only, "
                                        "written by fastnet.save), not a training checkpoint: "
                                        "it has no optimizer state or epoch to resume from")
        check_version(meta, CHECKPOINT_VERSION, path, who)
        check_checkpoint_meta(meta, path, who)  # the entries' types; below, their fit
        try:
            restore = self._check_checkpoint(meta, arrays, path, who)  # changes nothing
            # what restore() passes on unchecked: the layers' states, the hyper-parameters
            modules = dict(self.model.named_modules())
            for name, state in meta["modules"].items():
                if not same_layout(state, modules[name].get_extra_state()):
                    raise FileFormatError(path, f"{who}: {path}: the state of layer {name!r} is "
                                                f"{str(state)[:80]}, expected the layout of "
                                                f"{modules[name].get_extra_state()}")
            mine = {k: getattr(self.optimizer, k) for k in self.optimizer.hyperparameters}
            theirs = meta["optimizer"]["hyperparameters"]
            if not (set(theirs) <= set(mine)
                    and same_layout(theirs, {k: mine[k] for k in theirs})):
                raise FileFormatError(path, f"{who}: {path}: the optimizer's hyper-parameters are "
                                            f"{str(theirs)[:120]}, expected the layout of {mine}")
            # the optimizer's own rules (its constructor's); base_lr is what lr starts at
            for what, values in (("the optimizer's hyper-parameters are",
                                  {k: tuple(v) if isinstance(v, list) else v
                                   for k, v in theirs.items()}),
                                 ("base_lr is", {"lr": meta["base_lr"]})):
                try:
                    self.optimizer.check_hyperparameters(values)
                except (TypeError, ValueError) as e:
                    raise FileFormatError(path, f"{who}: {path}: {what} refused: {e}") from None
        except FileFormatError:
            raise
        except (KeyError, TypeError, IndexError, AttributeError, OverflowError) as e:
            raise FileFormatError(path, f"{who}: {path} is not a valid checkpoint: missing or "
                                        f"malformed entry {e}") from e
        except ValueError as e:  # the checks' own refusals (most name the file already)
            message = str(e)
            if path not in message:
                message = (f"{who}: {path} is not a valid checkpoint: "
                           f"{message.removeprefix(who + ': ')}")
            raise FileFormatError(path, message) from e
        restore()
        self._on_disk = (os.path.abspath(path), self.epoch)
        return self

    def _check_checkpoint(self, meta, arrays, path, who):
        """Validate a checkpoint against this trainer; return a function that applies it."""
        # Compared as JSON stores them (tuples become lists), whether read from a file or not.
        mine, theirs = (json.loads(json.dumps(d))
                        for d in (_describe(self.model, check=False), meta["model"]))
        if theirs != mine:
            raise ValueError(f"{who}: {path} holds a different model architecture: "
                             f"{_first_difference(theirs, mine)}")
        model_state = {k[len("model."):]: v for k, v in arrays.items() if k.startswith("model.")}
        params = dict(self.model._walk_state())  # parameters and buffers
        if set(model_state) != set(params):
            raise ValueError(f"{who}: {path} has parameters {sorted(model_state)}, the model "
                             f"{sorted(params)}")
        for k, p in params.items():
            if model_state[k].shape != p.shape:
                raise ValueError(f"{who}: {path}: {k!r} has shape {model_state[k].shape}, the "
                                 f"model's is {p.shape}")
        opt, optimizer = meta["optimizer"], self.optimizer
        if opt["type"] != type(optimizer).__name__:
            raise ValueError(f"{who}: {path} was trained with {opt['type']}, this trainer's "
                             f"optimizer is {type(optimizer).__name__}")
        n = len(optimizer.params)
        if len(opt["param_steps"]) != n:
            raise ValueError(f"{who}: {path} has optimizer state for {len(opt['param_steps'])} "
                             f"parameters, the optimizer has {n}")
        buffers = [dict() for _ in range(n)]
        for key, value in arrays.items():
            if key.startswith("optimizer."):
                _, i, name = key.split(".", 2)
                i = int(i)
                if not 0 <= i < n or name not in optimizer.buffers \
                        or value.shape != optimizer.params[i].shape:
                    raise ValueError(f"{who}: {path}: optimizer buffer {key!r} {value.shape} "
                                     f"does not fit this {type(optimizer).__name__}")
                buffers[i][name] = value
        modules = dict(self.model.named_modules())
        for name, state in meta["modules"].items():
            if name not in modules or modules[name].get_extra_state() is None:
                raise ValueError(f"{who}: {path} has state for layer {name!r}, which this model "
                                 "does not have")
        _rng.generator_from_state(meta["rng"], who)  # validates
        loaders = meta["loaders"]
        from .data.loader import DataLoader

        for state in loaders.values():
            if state is not None:
                DataLoader.check_state(state, who)  # the generator, the seed and epoch
        schedule = getattr(self.schedule, "state_dict", lambda: None)()
        theirs = meta["schedule"]
        if _schedule_config(theirs) != _schedule_config(schedule):
            self.log(f"note: {path} was trained with the schedule {_schedule_config(theirs)}; "
                     f"continuing with {_schedule_config(schedule)}")
        # a stateful schedule (ReduceLROnPlateau) of the same type takes its counters back
        load_schedule = (isinstance(theirs, dict) and "state" in theirs
                         and theirs.get("type") == type(self.schedule).__name__
                         and hasattr(self.schedule, "load_state_dict"))
        if load_schedule:
            copy.deepcopy(self.schedule).load_state_dict(theirs)  # validates
        clip = meta.get("clip_grad_norm")
        if clip != self.clip_grad_norm:
            self.log(f"note: {path} was trained with clip_grad_norm {clip}; continuing with "
                     f"{self.clip_grad_norm}")
        steps = int(meta["steps"]) if "steps" in meta else max(opt["param_steps"], default=0)
        epoch, history = int(meta["epoch"]), [dict(r) for r in meta["history"]]
        best, bad_epochs, base_lr = meta["best"], int(meta["bad_epochs"]), float(meta["base_lr"])

        def restore():
            self.model.load_state_dict(model_state)
            optimizer.load_state_dict({"type": opt["type"], "hyperparameters": opt["hyperparameters"],
                                       "param_steps": opt["param_steps"], "state": buffers})
            for name, state in meta["modules"].items():
                modules[name].set_extra_state(state)
            _rng.set_state(meta["rng"])
            self.epoch, self.history, self.best, self.bad_epochs = epoch, history, best, bad_epochs
            self.steps = steps
            if load_schedule:
                self.schedule.load_state_dict(theirs)
            self.base_lr, self.input_shape = base_lr, meta.get("input_shape")
            self.best_state_dict = None
            self._loader_states = loaders
        return restore
