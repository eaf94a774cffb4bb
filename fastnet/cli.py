"""``python -m fastnet ...``: the command-line entry point."""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import sys

import numpy as np


DATA_SETS = ("digits", "mnist", "fashion-mnist", "text")
DEFAULT_LR = {"sgd": 0.05, "adam": 5e-3}
# train's defaults, for the image models and for the character models (--data text)
IMAGE_DEFAULTS = {"epochs": 30, "batch_size": 32, "optimizer": "sgd", "weight_decay": 5e-4,
                  "val_fraction": 0.1}
# NOTE: sized for a 2-core CPU: 66 steps of 64 windows of 100 characters per epoch (every
# training character once), ~0.26 s a step on an idle 2-core machine
TEXT_DEFAULTS = {"epochs": 12, "batch_size": 64, "optimizer": "adam", "weight_decay": 0.0,
                 "val_fraction": 0.05}
TEXT_TEST_FRACTION = 0.05  # the text's last 5% tests
INTERRUPTED = 130  # the shell's code for a process stopped by SIGINT
PLATEAU_PATIENCE = 2  # --schedule plateau: x0.1 after 3 epochs without a better --monitor


def _fail(command, message) -> int:
    from .distributed import _WORLD as world  # (what init() found, if it ran)

    where = f" (rank {world.rank} of {world.size})" if world.size > 1 else ""
    sys.stderr.write(f"fastnet {command}{where}: {message}\n")  # one write: ranks' lines stay whole
    sys.stderr.flush()
    return 2


def _user_data(path):
    """A user's data (fastnet.data.files.load_files), read once per process and file
    version: train asks for both splits."""
    from .data.files import load_files

    st = os.stat(path)
    key = (os.path.abspath(path), st.st_mtime_ns, st.st_size)
    if _USER_DATA.get("key") != key:
        _USER_DATA.clear()
        _USER_DATA.update(key=key, data=load_files(path))
    return _USER_DATA["data"]


_USER_DATA = {}


def _load_data(name, data_dir, seed, split):
    """(x, y) of ``split`` ("train" or "test") of a data set, or of the user's data at
    the path ``name``. The digits have no official test set: it is the stratified 20% held
    out by ``seed``, as it always was."""
    from .data import load_digits, mnist, train_test_split

    if name not in DATA_SETS:
        data = _user_data(name)
        return data[f"x_{split}"], data[f"y_{split}"]
    if name == "digits":
        x, y = load_digits()
        x_train, y_train, x_test, y_test = train_test_split(x, y, test_fraction=0.2, seed=seed)
        return (x_train, y_train) if split == "train" else (x_test, y_test)
    return mnist.load(name, split, data_dir)


def _data_error(e):
    """A message for the errors loading data can raise, or None for anything else."""
    from .data import DataUnavailableError

    if isinstance(e, (ImportError, DataUnavailableError, ValueError)):
        return str(e)
    if isinstance(e, OSError):
        return f"cannot read the data: {e}"
    return None


def _write_json(path, obj):
    """Atomically, like the checkpoints: a reader never sees half a file."""
    from ._npz import atomic_write

    text = json.dumps(obj, indent=1) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()), "fastnet train")


def _device(command, name):
    import fastnet

    try:
        fastnet.Device(name)
    except (RuntimeError, ValueError) as e:
        return _fail(command, str(e))
    return None


def _save_target_problem(path):
    """Why a model file cannot be written at ``path`` (checked before training), or None."""
    if os.path.isdir(path):
        return "it is a directory (give a file name, e.g. model.npz)"
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        return "its directory does not exist"
    if not os.access(parent, os.W_OK | os.X_OK):
        return "its directory is not writable"
    if os.path.exists(path) and not os.access(path, os.W_OK):
        return "the file exists and is not writable"
    return None


def _write_outputs(trainer, model, out, save, write_metrics) -> int:
    """After a training run, on rank 0: metrics.json and curves.png in ``out`` (next to the
    checkpoints the Trainer wrote), and the model file ``save``."""
    import fastnet
    from .train import plot_history

    if out is not None:
        write_metrics(trainer)
        written = ["checkpoint.npz", "best.npz", "metrics.json"]
        try:
            plot_history(trainer.history, os.path.join(out, "curves.png"))
            written.append("curves.png")
        except ImportError:
            print('note: matplotlib is not installed, so no curves.png '
                  '(pip install "fastnet[plot]")')
        print(f"wrote {', '.join(f for f in written if os.path.exists(os.path.join(out, f)))} "
              f"to {out}")
    if save:
        fastnet.save(model, save)
        print(f"saved model to {save}")
    return 0


def _schedule_words(args):
    """The schedule and clipping in the training run's first line."""
    words = f"{args.schedule} schedule"
    if args.warmup:
        words += f", {args.warmup} warmup steps"
    if args.clip_grad_norm is not None:
        words += f", gradient norm clipped to {args.clip_grad_norm:g}"
    return words


def _schedule_problem(args):
    """Why --schedule / --warmup / --clip-grad-norm cannot go together (checked before
    anything is loaded), or None."""
    if args.warmup and args.schedule not in ("cosine", "constant"):
        return (f"--warmup is for --schedule cosine or constant (--schedule {args.schedule}"
                + (" warms up by itself, over its first 30% of the steps)"
                   if args.schedule == "onecycle" else ")"))
    if args.schedule == "plateau" and args.val_fraction == 0:
        return "--schedule plateau needs validation data: use --val-fraction > 0"
    return None


def _schedule(args, steps_per_epoch):
    """The Trainer's schedule for --schedule and --warmup, or an error message (str)."""
    from .train import CosineLR, OneCycleLR, ReduceLROnPlateau, StepLR, WarmupCosine

    total = args.epochs * steps_per_epoch
    if args.warmup:
        if args.warmup >= total:
            return (f"--warmup {args.warmup} must be below the run's {total} optimizer steps "
                    f"({args.epochs} epochs of {steps_per_epoch})")
        # constant: the cosine from lr to lr
        return WarmupCosine(args.warmup, total,
                            min_lr=args.lr if args.schedule == "constant" else 0.0)
    return {"cosine": lambda: CosineLR(args.epochs),
            "step": lambda: StepLR(max(1, args.epochs // 3), 0.1),
            "onecycle": lambda: OneCycleLR(args.lr, total),
            "plateau": lambda: ReduceLROnPlateau("min" if args.monitor == "val_loss" else "max",
                                                 patience=PLATEAU_PATIENCE),
            "constant": lambda: None}[args.schedule]()


def _fit(args, out, resume, model, train_loader, val_loader, config, header, test,
         bits_per_char=False) -> int:
    """What train's image and text paths share: the optimizer, the schedule, the config
    recorded in checkpoints and metrics.json, the Trainer, resuming, the run and its
    errors, the test (``test(trainer)`` -> metrics, printed) and the files."""
    from . import distributed as dist
    from .optim import SGD, Adam
    from .train import NonFiniteLossError, Trainer

    fail = functools.partial(_fail, "train")
    if args.optimizer == "sgd":
        opt = SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    else:
        opt = Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    schedule = _schedule(args, len(train_loader))
    if isinstance(schedule, str):
        return fail(schedule)
    config = {**{k: getattr(args, k) for k in (
        "model", "data", "epochs", "batch_size", "lr", "optimizer", "weight_decay", "schedule",
        "warmup", "clip_grad_norm", "val_fraction", "patience", "monitor", "seed", "device",
        "augment", "workers")},
        **config}
    test_metrics = None

    def write_metrics(trainer, record=None):
        if out is not None and dist.is_main():
            _write_json(os.path.join(out, "metrics.json"), {
                "config": config, "history": trainer.history, "best": trainer.best,
                "stop_reason": trainer.stop_reason, "test": test_metrics})

    trainer = Trainer(model, opt, schedule=schedule, device=args.device, progress=args.progress,
                      checkpoint_dir=out, patience=args.patience, monitor=args.monitor,
                      on_epoch_end=write_metrics, config=config, bits_per_char=bits_per_char,
                      clip_grad_norm=args.clip_grad_norm)
    if resume is not None:
        try:
            trainer.resume(resume)
        except (ValueError, OSError) as e:
            return fail(f"{e} (nothing was written; resume with the options of the run that "
                        "wrote the checkpoint)")
    print(header, flush=True)
    if resume is not None:
        print(f"resumed from {resume} after epoch {trainer.epoch}", flush=True)
    try:
        # NumPy's overflow warnings from a diverging run would bury the one-line message
        with np.errstate(over="ignore", invalid="ignore"):
            trainer.fit(train_loader, val_loader, epochs=args.epochs)
    except KeyboardInterrupt:
        write_metrics(trainer)
        where = f"; continue with --resume {out}" if out is not None else ""
        if dist.is_main():  # (every rank got it: one says so)
            print(f"fastnet train: interrupted{where}", file=sys.stderr)
        return INTERRUPTED
    except NonFiniteLossError as e:
        write_metrics(trainer)
        if dist.is_main():  # (the loss is summed over the ranks: all of them stop here)
            print(f"fastnet train: {e}", file=sys.stderr)
        return 1
    test_metrics = test(trainer)
    if not dist.is_main():  # rank 0 writes the files
        return 0
    return _write_outputs(trainer, model, out, args.save, write_metrics)


def train(args) -> int:
    import fastnet
    from .data import ArrayDataset, DataLoader, train_val_split
    from .models import MODELS
    from . import distributed as dist
    from .train import _checkpoint_path

    fail = functools.partial(_fail, "train")
    from .models import TEXT_MODELS

    text = args.data == "text"
    if text != (args.model in TEXT_MODELS):
        if text:
            return fail(f"--data text needs a character model (--model "
                        f"{' / '.join(TEXT_MODELS)}), not {args.model}")
        return fail(f"--model {args.model} reads text: use --data text")
    for key, value in (TEXT_DEFAULTS if text else IMAGE_DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not text and args.seq_len is not None:
        return fail("--seq-len is for --data text")
    if text and args.seq_len is None:
        args.seq_len = 100
    if (code := _device("train", args.device)) is not None:
        return code
    if (message := _user_data_problem(args)) is not None:
        return fail(message)
    if text and args.augment != "none":
        return fail("--augment is for images, not --data text")
    if args.save and (message := _save_target_problem(args.save)):
        return fail(f"cannot save to {args.save}: {message}")
    resume = None
    if args.resume:
        resume = _checkpoint_path(args.resume)
        if not os.path.isfile(resume):
            return fail(f"--resume {args.resume}: no checkpoint there (expected a checkpoint "
                        ".npz file or a directory holding checkpoint.npz)")
    out = args.out or (os.path.dirname(os.path.abspath(resume)) if resume else None)
    if out is not None:
        if os.path.exists(out) and not os.path.isdir(out):
            return fail(f"--out {out} is a file, expected a directory")
        try:  # made now, so that a bad path fails before training, not after it
            os.makedirs(out, exist_ok=True)
        except OSError as e:
            return fail(f"cannot create --out {out}: {e.strerror or e}")
        if not os.access(out, os.W_OK | os.X_OK):
            return fail(f"cannot write to --out {out}")
        if resume is None and os.path.exists(os.path.join(out, "checkpoint.npz")):
            return fail(f"{out} already holds checkpoint.npz from an earlier run: continue it "
                        f"with --resume {out}, or choose another --out")
    if args.patience is not None and args.val_fraction == 0:
        return fail("--patience needs validation data: use --val-fraction > 0")
    if (message := _schedule_problem(args)) is not None:
        return fail(message)
    if args.lr is None:
        from .models import MODEL_LR

        args.lr = MODEL_LR.get(args.model, DEFAULT_LR)[args.optimizer]

    fastnet.manual_seed(args.seed)
    if text:
        return _train_text(args, out, resume)
    world = dist.world_size()
    if world > 1 and not dist.is_main():
        dist.barrier()  # rank 0 downloads what is missing first: one download, no race
    try:
        x_train, y_train = _load_data(args.data, args.data_dir, args.seed, "train")
        x_test, y_test = _load_data(args.data, args.data_dir, args.seed, "test")
    except Exception as e:
        if (message := _data_error(e)) is None:
            raise
        return fail(message)
    if world > 1 and dist.is_main():
        dist.barrier()
    train_set = ArrayDataset(x_train, y_train)
    val_set = None
    if args.val_fraction > 0:
        try:
            train_set, val_set = train_val_split(train_set, args.val_fraction, seed=args.seed)
        except ValueError as e:  # too few images for the fraction asked
            return fail(f"--val-fraction {args.val_fraction}: {e}")
    # under MPI: each rank takes its share of every epoch, batch_size samples a step
    train_loader = DataLoader(train_set, args.batch_size, shuffle=True, seed=args.seed,
                              distributed=world > 1, num_workers=args.workers,
                              transform=_augmentation(args.augment, x_train.shape[1:]))
    # NOTE: validation and test take the training batch size (they took 256): then they run
    # the builds training compiled; 256 digits crossed the size from which the convolutions
    # run their parallel build, which a first run compiled for evaluation alone (3.3 s of 14).
    val_loader = DataLoader(val_set, args.batch_size) if val_set is not None else None
    in_shape = tuple(int(d) for d in x_train.shape[1:])
    num_classes = 10 if args.data in DATA_SETS else int(y_train.max()) + 1
    model = MODELS[args.model](in_shape=in_shape, num_classes=num_classes)
    n_params = sum(p.data.size for p in model.parameters())
    batch = (f"batch {args.batch_size}" if world == 1 else
             f"batch {args.batch_size} per rank x {world} ranks = {args.batch_size * world}")
    sizes = f"{len(train_set)} train / " + (f"{len(val_set)} validation / " if val_set is not None else "")
    header = (f"fastnet {fastnet.__version__}: training {args.model} ({n_params} parameters) on "
              f"{_description(args.data, num_classes)}, {sizes}{len(x_test)} test images, {args.optimizer} "
              f"lr={args.lr} ({_schedule_words(args)}), {batch}, {args.epochs} "
              f"epochs, on {args.device}")

    def test(trainer):
        metrics = trainer.evaluate(DataLoader(ArrayDataset(x_test, y_test), args.batch_size))
        print(f"test accuracy: {100 * metrics['acc']:.2f}% ({len(x_test)} held-out images), "
              f"test loss {metrics['loss']:.4f}")
        return metrics

    return _fit(args, out, resume, model, train_loader, val_loader, {"in_shape": list(in_shape)},
                header, test)


DESCRIPTIONS = {"digits": "the 8x8 digits", "mnist": "MNIST", "fashion-mnist": "Fashion-MNIST",
                "text": "Python's documentation (pydoc_data)"}


def _description(data, num_classes):
    if data in DESCRIPTIONS:
        return DESCRIPTIONS[data]
    return f"{data} ({_user_data(data)['kind']}, {num_classes} classes)"


def _user_data_problem(args):
    """Why --data PATH cannot go with the other options, or None. A path becomes absolute
    (the checkpoint's config records it for evaluate)."""
    if args.data in DATA_SETS:
        return None
    if args.data_dir is not None:
        return (f"--data-dir is where mnist / fashion-mnist are kept; --data {args.data} "
                "names the data itself")
    args.data = os.path.abspath(args.data)
    # NOTE: the user's files are only read: --save or --out naming one of them (a swapped
    # pair of arguments) would replace the data with a model file
    targets = [("--save", args.save)] if getattr(args, "save", None) else []
    if getattr(args, "out", None):
        targets += [("--out", os.path.join(args.out, name)) for name in OUTPUT_FILES]
    for flag, target in targets:
        for data_file in _data_files(args.data):
            if _same_file(target, data_file):
                return (f"{flag} {args.save if flag == '--save' else args.out} would write over "
                        f"{data_file}, your data (--data): choose another path")
    return None


# what train writes into --out (the Trainer's checkpoints, then _write_outputs')
OUTPUT_FILES = ("checkpoint.npz", "best.npz", "metrics.json", "curves.png")


def _data_files(path):
    """The user's files of ``--data PATH``: the .npz, or the directory's IDX files."""
    if not os.path.isdir(path):
        return [path]
    from .data.files import IDX_FILES

    return [os.path.join(path, name + gz) for name in IDX_FILES.values() for gz in ("", ".gz")]


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


# --augment: the transforms of the training batches (fastnet.data.transforms)
AUGMENTATIONS = ("none", "crop", "crop-flip")


def _augmentation(name, in_shape):
    """--augment's transform for images of ``in_shape`` (C, H, W), or None: a random crop
    of the image's own size from the image padded by 2 pixels (1 for images under 16
    pixels, the 8x8 digits), and with crop-flip a horizontal flip of half the images (not
    for digits: a mirrored digit is another shape)."""
    from .data import Compose, RandomCrop, RandomHorizontalFlip

    if name == "none":
        return None
    _, h, w = in_shape
    crop = RandomCrop((h, w), padding=2 if min(h, w) >= 16 else 1)
    return crop if name == "crop" else Compose([crop, RandomHorizontalFlip(0.5)])


def _load_text(seq_len, val_fraction):
    from .data import load_char_data

    return load_char_data(seq_len, val_fraction, TEXT_TEST_FRACTION)


def _train_text(args, out, resume) -> int:
    """train for a character model on --data text: windows of --seq-len characters, the
    losses also in bits per character."""
    import fastnet
    from .data import DataLoader
    from .models import TEXT_MODELS
    from . import distributed as dist
    from .train import bits

    fail = functools.partial(_fail, "train")
    world = dist.world_size()
    try:
        data = _load_text(args.seq_len, args.val_fraction)
    except (ImportError, ValueError) as e:
        return fail(f"cannot build the text data set: {e}")
    vocab, train_set, val_set, test_set = data["vocab"], data["train"], data["val"], data["test"]
    train_loader = DataLoader(train_set, args.batch_size, shuffle=True, seed=args.seed,
                              distributed=world > 1, int_features=True,
                              num_workers=args.workers)
    val_loader = (DataLoader(val_set, args.batch_size, int_features=True)
                  if val_set is not None else None)
    model = TEXT_MODELS[args.model](vocab.chars)
    n_params = sum(p.data.size for p in model.parameters())
    chars = data["chars"]
    batch = (f"batch {args.batch_size}" if world == 1 else
             f"batch {args.batch_size} per rank x {world} ranks = {args.batch_size * world}")
    header = (f"fastnet {fastnet.__version__}: training {args.model} ({n_params} parameters) on "
              f"{DESCRIPTIONS['text']}, {len(vocab)} characters in the vocabulary, "
              f"{chars[0]} train / {chars[1]} validation / {chars[2]} test characters, windows of "
              f"{args.seq_len} ({len(train_set)} per epoch), {args.optimizer} lr={args.lr} "
              f"({_schedule_words(args)}), {batch}, {args.epochs} epochs, on {args.device}")

    def test(trainer):
        metrics = trainer.evaluate(DataLoader(test_set, args.batch_size, int_features=True))
        metrics["bpc"] = bits(metrics["loss"])
        print(f"test: {metrics['bpc']:.3f} bits/char (loss {metrics['loss']:.4f}), "
              f"next-character accuracy {100 * metrics['acc']:.2f}% ({len(test_set)} held-out "
              f"windows of {args.seq_len} characters)")
        return metrics

    return _fit(args, out, resume, model, train_loader, val_loader, {"seq_len": args.seq_len},
                header, test, bits_per_char=True)


def generate(args) -> int:
    """Sample text from a character model (a checkpoint or a fastnet.save file)."""
    from .models import CharLSTM

    opened = _open_model("generate", args.checkpoint, "cpu")
    if isinstance(opened, int):
        return opened
    model, _ = opened
    if not isinstance(model, CharLSTM):
        return _fail("generate", f"{args.checkpoint}: not a character model (it holds a "
                                 f"{type(model).__name__}); train one with --model char-lstm "
                                 "--data text")
    prompt = args.prompt
    if not prompt:
        return _fail("generate", "--prompt must hold at least one character")
    unknown = sorted(set(prompt) - set(model.vocab))
    if unknown:
        return _fail("generate", f"--prompt has {len(unknown)} character(s) the model does not "
                                 f"know: {', '.join(repr(c) for c in unknown)} (its vocabulary: "
                                 f"{model.vocab!r})")
    text = model.generate(prompt, args.length, args.temperature, args.seed)
    sys.stdout.write(prompt + text + "\n")
    return 0


def _open_model(command, path, device):
    """(model in eval mode on device, checkpoint info) or an exit code."""
    from .serialization import input_shape_ok  # config's in_shape: bounded as input_shape
    from .train import load_model

    if (code := _device(command, device)) is not None:
        return code
    if not os.path.exists(path):
        return _fail(command, f"--checkpoint {path}: no such file")
    if os.path.isdir(path):  # a --out directory, as --resume takes
        if not os.path.isfile(os.path.join(path, "checkpoint.npz")):
            return _fail(command, f"--checkpoint {path}: no checkpoint there (expected a .npz "
                                  "file, or a directory holding checkpoint.npz)")
        path = os.path.join(path, "checkpoint.npz")
    try:
        model, info = load_model(path)
    except (ValueError, OSError) as e:
        return _fail(command, str(e))
    config = info.get("config") or {}
    if not (config.get("seed") is None or (isinstance(config["seed"], int)
                                          and not isinstance(config["seed"], bool))) \
            or not isinstance(config.get("data", ""), str) \
            or not (config.get("in_shape") is None or input_shape_ok(config["in_shape"])):
        return _fail(command, f"{path}: the checkpoint's config is malformed (seed "
                              f"{config.get('seed')!r:.40}, data {config.get('data')!r:.40}, "
                              f"in_shape {config.get('in_shape')!r:.40})")
    return model.to(device).eval(), info


def evaluate(args) -> int:
    from .data import ArrayDataset, DataLoader
    from .train import evaluate as run_evaluation

    opened = _open_model("evaluate", args.checkpoint, args.device)
    if isinstance(opened, int):
        return opened
    model, info = opened
    config = info.get("config") or {}
    from .models import CharLSTM

    if isinstance(model, CharLSTM) or args.data == "text":
        return _evaluate_text(args, model, config)
    data = args.data or config.get("data", "digits")
    seed = args.seed if args.seed is not None else config.get("seed", 0)
    try:
        x, y = _load_data(data, args.data_dir, seed, "test")
    except Exception as e:
        if (message := _data_error(e)) is None:
            raise
        return _fail("evaluate", message)
    try:
        metrics = run_evaluation(model, DataLoader(ArrayDataset(x, y), args.batch_size))
    except (ValueError, TypeError) as e:
        return _fail("evaluate", f"the model does not take the {data} images "
                                 f"{tuple(x.shape[1:])}: {e}")
    print(f"{args.checkpoint}: {data} test split, {len(x)} images: test loss "
          f"{metrics['loss']:.4f}  test accuracy: {100 * metrics['acc']:.2f}%")
    return 0


def _evaluate_text(args, model, config) -> int:
    """evaluate for a character model: the loss in bits/char on the text's test part."""
    from .data import DataLoader
    from .models import CharLSTM
    from .train import bits, evaluate as run_evaluation

    if not isinstance(model, CharLSTM):
        return _fail("evaluate", f"{args.checkpoint}: --data text needs a character model, "
                                 f"this file holds a {type(model).__name__}")
    if args.data not in (None, "text"):
        return _fail("evaluate", f"{args.checkpoint} holds a character model: it reads --data "
                                 f"text, not {args.data}")
    seq_len = config.get("seq_len", 100)
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or not 1 <= seq_len <= 1 << 20:
        return _fail("evaluate", f"{args.checkpoint}: the checkpoint's seq_len is malformed: "
                                 f"{seq_len!r:.40}")
    data = _load_text(seq_len, TEXT_DEFAULTS["val_fraction"])
    if data["vocab"].chars != model.vocab:
        return _fail("evaluate", f"{args.checkpoint}: the model's vocabulary "
                                 f"({len(model.vocab)} characters) is not this Python's "
                                 f"documentation text's ({len(data['vocab'])}): it was trained "
                                 "on another version's text")
    metrics = run_evaluation(model, DataLoader(data["test"], args.batch_size, int_features=True))
    print(f"{args.checkpoint}: text test split, {data['chars'][2]} characters: "
          f"{bits(metrics['loss']):.3f} bits/char (test loss {metrics['loss']:.4f})  "
          f"next-character accuracy: {100 * metrics['acc']:.2f}%")
    return 0


IMAGE_NOTE = ("a grayscale image is prepared as MNIST's digits were: inverted when its "
              "background is light, cropped to the ink, scaled so that its longer side "
              "takes 20/28 of the model's input (the whole 8x8 for the digits) and centred "
              "by its centre of mass (--no-preprocess: resized whole); RGB images are "
              "resized to the model's input; pixels are scaled to [0, 1]; .npy arrays are "
              "taken as they are")


def _read_input(path, in_shape, dtype=np.float32, box=None):
    """(N, *in_shape) samples of ``dtype`` (the model's) from a .npy file or an image, or
    raise ValueError. ``box``: prepare a grayscale image as MNIST's digits (the digit's
    share of the canvas, fastnet.data.preprocess.mnist_style); None resizes it whole."""
    a = _read_samples(path, in_shape, box)
    with np.errstate(over="ignore", invalid="ignore"):  # refused below, in one line
        x = np.ascontiguousarray(a, dtype=dtype)
    if not np.isfinite(x).all():  # after the cast: 1e300 is finite, float32(1e300) is not
        raise ValueError(f"{path}: the array holds NaN or infinite values"
                         + (f" (as {np.dtype(dtype)})" if np.isfinite(a).all() else ""))
    return x


def _read_samples(path, in_shape, box=None):
    """(N, *in_shape) samples from a .npy file or an image, or raise ValueError."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    if path.lower().endswith(".npy"):
        from ._npz import read_npy

        try:
            a = read_npy(path)  # never a pickle; FileFormatError when malformed
        except OSError as e:
            raise ValueError(f"{path}: not a readable .npy file: {e}") from None
        if a.dtype.kind not in "uif" or a.dtype == np.bool_:
            raise ValueError(f"{path}: expected a numeric array, got dtype {a.dtype}")
        if a.dtype == np.uint8:  # raw pixels, as in an image file
            a = a / 255.0
        if in_shape is None:  # a model file: no recorded shape, the model checks it
            return a[None] if a.ndim == 3 else a
        in_shape = tuple(in_shape)
        if a.shape == in_shape or (in_shape[0] == 1 and a.shape == in_shape[1:]):
            a = a.reshape((1, *in_shape))
        elif a.shape[1:] == in_shape or (in_shape[0] == 1 and a.shape[1:] == in_shape[1:]):
            a = a.reshape((len(a), *in_shape))
        else:
            c, h, w = in_shape
            single = f"({h}, {w}), " if c == 1 else ""
            raise ValueError(f"{path}: the model takes arrays of shape {in_shape}, {single}or "
                             f"(N, {c}, {h}, {w}); got {a.shape}")
        return a
    try:
        from PIL import Image
    except ImportError:
        raise ValueError(f'{path}: reading images needs Pillow: pip install "fastnet[images]" '
                         "(or pass a .npy array)") from None
    if in_shape is None:
        raise ValueError(f"{path}: this model file does not record its input size; use a "
                         "checkpoint written by fastnet train, or pass a .npy array")
    c, h, w = in_shape
    if c not in (1, 3):
        raise ValueError(f"{path}: the model takes {c} channels; images give 1 or 3")
    prepare = box is not None and c == 1
    try:
        with Image.open(path) as img:
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                # a drawing on a transparent canvas: on white paper, as it is shown
                img = Image.alpha_composite(Image.new("RGBA", img.size, "white"),
                                            img.convert("RGBA"))
            img = img.convert("L" if c == 1 else "RGB")
            if not prepare:
                img = img.resize((w, h), Image.LANCZOS)
            a = np.asarray(img, dtype=np.float32) / 255.0
    except Image.DecompressionBombError as e:  # Pillow's pixel limit (MAX_IMAGE_PIXELS)
        raise ValueError(f"{path}: the image is too large to read safely: {e}") from None
    except OSError as e:
        raise ValueError(f"{path}: not a readable image: {e}") from None
    if prepare:  # MNIST's steps: crop to the ink, scale into the box, centre by mass
        from .data.preprocess import mnist_style

        try:
            return mnist_style(a, (h, w), box)[None, None]
        except ValueError as e:
            raise ValueError(f"{path}: {str(e).removeprefix('mnist_style: ')}") from None
    if c == 1:
        # NOTE: the training digits are light strokes on a dark ground; a scan or drawing
        # is usually dark on light, so a mostly light image is inverted.
        if a.mean() > 0.5:
            a = 1.0 - a
        a = a[None]
    else:
        a = a.transpose(2, 0, 1)
    return a[None]


def predict(args) -> int:
    from .data.mnist import CLASS_NAMES
    from .device import to_numpy

    opened = _open_model("predict", args.checkpoint, args.device)
    if isinstance(opened, int):
        return opened
    model, info = opened
    from .models import CharLSTM

    if isinstance(model, CharLSTM):
        return _fail("predict", f"{args.checkpoint} holds a character model: sample from it "
                                "with python -m fastnet generate")
    config = info.get("config") or {}
    names = CLASS_NAMES.get(config.get("data"))
    in_shape = info.get("input_shape") or config.get("in_shape")
    dtype = next((p.dtype for p in model.parameters()), np.dtype(np.float32))
    box = None
    if args.preprocess:  # the 8x8 digits fill their box; MNIST's take 20 of 28 pixels
        from .data.preprocess import MNIST_BOX

        box = 1.0 if config.get("data") == "digits" else MNIST_BOX
    try:  # every input is read and checked before any prediction is printed
        inputs = [(path, _read_input(path, in_shape, dtype, box)) for path in args.files]
    except ValueError as e:
        return _fail("predict", str(e))
    for path, x in inputs:
        try:
            logits = to_numpy(model(x)).astype(np.float64)
        except (ValueError, TypeError) as e:
            return _fail("predict", f"{path}: the model does not take this input: {e}")
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        for i, (k, prob) in enumerate(zip(p.argmax(axis=1), p.max(axis=1))):
            label = f"{path}[{i}]" if len(x) > 1 else path
            name = f" ({names[k]})" if names and names[k] != str(k) else ""
            print(f"{label}: class {k}{name}, probability {prob:.3f}")
    return 0


def bench(args) -> int:
    if args.import_orders:
        from .bench import orders  # see fastnet/bench/orders.py

        return orders.run(quick=args.quick, rounds=args.rounds, markdown=args.markdown,
                          filter=args.filter, no_torch=args.no_torch)
    from .bench.runner import run  # see fastnet/bench/

    return run(args)


def _int_at_least(lo):
    def parse(s):
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be an integer >= {lo}, got {s}")
        return v
    return parse


def _float(positive):
    def parse(s):
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
        if not math.isfinite(v) or v < 0 or (positive and v == 0):
            raise argparse.ArgumentTypeError(
                f"must be a {'positive' if positive else 'non-negative'} finite number, got {s}")
        return v
    return parse


def _fraction(s):
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {s}")
    return v


def _data_arg(s):
    if s in DATA_SETS or os.path.exists(s):
        return s
    raise argparse.ArgumentTypeError(
        f"expected one of {', '.join(DATA_SETS)}, or the path of a directory of IDX files or "
        f"of an .npz file; {s!r} is neither (no such file or directory)")


def _data_options(parser, default):
    parser.add_argument("--data", type=_data_arg, default=default,
                        metavar="{" + ",".join(DATA_SETS) + "} or PATH",
                        help="digits: the embedded 8x8 digits; mnist / fashion-mnist: read "
                             "from --data-dir, downloaded when missing; text: Python's own "
                             "documentation, for --model char-lstm; PATH: your own images, a "
                             "directory holding the four IDX files of MNIST's layout "
                             "(train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                             "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each raw or .gz) "
                             "or an .npz file with x_train, y_train, x_test, y_test; only "
                             "read, never checksummed or changed (default: "
                             + (default or "the checkpoint's") + ")")
    parser.add_argument("--data-dir", metavar="DIR", default=None,
                        help="where the MNIST / Fashion-MNIST files are kept (default: "
                             "$FASTNET_DATA, else ~/.cache/fastnet)")


def build_parser():
    from .models import MODELS  # the one registry of model names

    from . import __version__

    parser = argparse.ArgumentParser(prog="python -m fastnet", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fastnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a model (default: LeNet on the embedded digits)",
                       description="Train a model. With --out DIR, writes DIR/checkpoint.npz "
                       "(after every epoch), DIR/best.npz (best validation epoch), "
                       "DIR/metrics.json and DIR/curves.png (needs matplotlib). Ctrl-C saves "
                       "the last completed epoch; --resume DIR continues from it.")
    t.add_argument("--model", choices=list(MODELS), default="lenet", help="default: %(default)s")
    _data_options(t, default="digits")
    t.add_argument("--epochs", type=_int_at_least(1), default=None,
                   help="total epochs, counting those of a resumed run (default: "
                        f"{IMAGE_DEFAULTS['epochs']}; --data text: {TEXT_DEFAULTS['epochs']})")
    t.add_argument("--batch-size", type=_int_at_least(1), default=None,
                   help=f"default: {IMAGE_DEFAULTS['batch_size']}; --data text: "
                        f"{TEXT_DEFAULTS['batch_size']}")
    t.add_argument("--lr", type=_float(positive=True), default=None,
                   help="initial learning rate (default: "
                        f"{DEFAULT_LR['sgd']} for sgd, {DEFAULT_LR['adam']} for adam; "
                        "lstm: 0.5 and 0.01; char-lstm: 1.0 and 0.003)")
    t.add_argument("--optimizer", choices=["sgd", "adam"], default=None,
                   help="sgd (momentum 0.9) or adam (default: sgd; --data text: adam)")
    t.add_argument("--schedule", choices=["cosine", "step", "constant", "onecycle", "plateau"],
                   default="cosine",
                   help="learning rate: cosine decay to 0 over --epochs (per epoch; per step "
                        "with --warmup), step (x0.1 every third of the epochs), constant, "
                        "onecycle (per step: up from lr/25 to --lr over the first 30%% of the "
                        "steps, then down to lr/25e4; PyTorch's OneCycleLR without momentum "
                        "cycling) or plateau (x0.1 after "
                        f"{PLATEAU_PATIENCE + 1} epochs without a better --monitor value; needs "
                        "validation data) (default: %(default)s)")
    t.add_argument("--warmup", type=_int_at_least(0), default=0, metavar="STEPS",
                   help="with --schedule cosine or constant: raise the lr linearly over the "
                        "first STEPS optimizer steps (batches), lr*k/STEPS on step k, then "
                        "decay it per step (cosine) or keep it (constant) (default: 0, no "
                        "warmup)")
    t.add_argument("--clip-grad-norm", type=_float(positive=True), default=None, metavar="MAX",
                   help="before every optimizer step, scale the gradients so that their "
                        "total 2-norm is at most MAX (PyTorch's clip_grad_norm_) (default: "
                        "off)")
    t.add_argument("--weight-decay", type=_float(positive=False), default=None,
                   help="L2 weight decay (default: 0.0005; --data text: 0)")
    t.add_argument("--val-fraction", type=_fraction, default=None,
                   help="share of the training images held out for validation each epoch, "
                        "0 for none (default: 0.1; --data text: the 5%% of the text before "
                        "the last 5%%, which tests)")
    t.add_argument("--seq-len", type=_int_at_least(1), default=None,
                   help="--data text: characters per training window (default: 100)")
    t.add_argument("--patience", type=_int_at_least(1), default=None,
                   help="stop early after this many epochs without a better --monitor value")
    t.add_argument("--monitor", choices=["val_loss", "val_acc"], default="val_loss",
                   help="validation metric for early stopping and best.npz (default: %(default)s)")
    t.add_argument("--seed", type=_int_at_least(0), default=0, help="default: %(default)s")
    t.add_argument("--augment", choices=AUGMENTATIONS, default="none",
                   help="random transforms of the training images, seeded by --seed: crop (a "
                        "random crop of the image's size from it padded by 2 pixels, 1 for "
                        "images under 16 pixels such as the digits), crop-flip (also a "
                        "horizontal flip of half the images: not for digits) (default: "
                        "%(default)s)")
    t.add_argument("--workers", type=_int_at_least(0), default=1,
                   help="background threads preparing the next training batches (gather, "
                        "augmentation) while a step runs; 0 prepares them between steps "
                        "(default: %(default)s)")
    t.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="default: %(default)s")
    t.add_argument("--out", metavar="DIR", help="write checkpoints, metrics.json and curves.png here")
    t.add_argument("--resume", metavar="PATH",
                   help="continue from a checkpoint (a file, or a --out directory); give the "
                        "options of the original run")
    t.add_argument("--save", metavar="PATH",
                   help="also write the final model here as a plain model file (fastnet.save)")
    t.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar")
    t.set_defaults(func=train)
    e = sub.add_parser("evaluate", help="loss and accuracy of a checkpoint on a test split")
    e.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="checkpoint.npz / best.npz (or a fastnet.save model file)")
    _data_options(e, default=None)
    e.add_argument("--seed", type=_int_at_least(0), default=None,
                   help="the digits' held-out split (default: the checkpoint's --seed)")
    e.add_argument("--batch-size", type=_int_at_least(1), default=256, help="default: %(default)s")
    e.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="default: %(default)s")
    e.set_defaults(func=evaluate)
    p = sub.add_parser("predict", help="classify images (PNG, JPEG, ...) or .npy arrays",
                       description="Print the class and its probability for each input: an "
                       f".npy array (one sample or a batch) or an image file; {IMAGE_NOTE} "
                       "(reading images needs Pillow).")
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="checkpoint.npz / best.npz written by fastnet train")
    p.add_argument("files", nargs="+", metavar="FILE", help=".npy or image files")
    p.add_argument("--no-preprocess", dest="preprocess", action="store_false",
                   help="resize a grayscale image whole to the model's input (a mostly light "
                        "image inverted) instead of MNIST's crop, scale and centring")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="default: %(default)s")
    p.set_defaults(func=predict)
    g = sub.add_parser("generate", help="sample text from a character model (--model char-lstm)",
                       description="Print the prompt followed by --length characters sampled "
                       "one at a time from a character model trained with --data text.")
    g.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="checkpoint.npz / best.npz (or a --out directory, or a fastnet.save file)")
    g.add_argument("--prompt", default="The ", help="the text to continue (default: %(default)r)")
    g.add_argument("--length", type=_int_at_least(0), default=200,
                   help="characters to generate (default: %(default)s)")
    g.add_argument("--temperature", type=_float(positive=True), default=0.8,
                   help="softmax temperature, > 0: lower is more conservative (default: "
                        "%(default)s)")
    g.add_argument("--seed", type=_int_at_least(0), default=None,
                   help="the sampling seed: the same text for the same seed (default: random)")
    g.set_defaults(func=generate)
    b = sub.add_parser("bench", help="time fastnet against the same maths in NumPy and PyTorch")
    b.add_argument("--filter", metavar="SUBSTR", help="only the cases whose name contains SUBSTR")
    b.add_argument("--repeat", type=_int_at_least(1), default=10,
                   help="timed runs per case and implementation, median shown (default: %(default)s)")
    b.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    b.add_argument("--quick", action="store_true", help="tiny shapes: a fast look, or a smoke test")
    b.add_argument("--markdown", action="store_true", help="a Markdown table (for benchmarks/RESULTS.md)")
    b.add_argument("--import-orders", action="store_true",
                   help="the training steps and inference cases in three processes that import "
                        "NumPy, fastnet or PyTorch first, side by side")
    b.add_argument("--rounds", type=_int_at_least(1), default=5,
                   help="with --import-orders: rounds over the processes (default: %(default)s; "
                        "--repeat does not apply there: each round times about 0.3 s per case)")
    b.set_defaults(func=bench)
    return parser


def _compile_notice(command):
    """evaluate and predict say on stderr when kernels compile (train's Trainer says it
    above its progress bar; bench times compiled kernels only)."""
    if command not in ("evaluate", "predict"):
        return contextlib.nullcontext()
    from .kernels._jit import on_first_compile
    from .train import COMPILE_NOTICE

    return on_first_compile(lambda: print(COMPILE_NOTICE, file=sys.stderr, flush=True))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from . import distributed as dist

    try:
        world = dist.world_size()  # joins the MPI job when an MPI launcher started us
    except dist.MPIUnavailableError as e:
        return _fail(args.command, str(e).removeprefix("fastnet: "))
    if world == 1:
        return _run(args)
    # Under MPI: rank 0 speaks (the others' stdout goes nowhere; their errors still show),
    # and a rank that fails ends the job, so that no rank waits for it forever.
    quiet = open(os.devnull, "w") if dist.rank() != 0 else None
    try:
        with contextlib.redirect_stdout(quiet) if quiet else contextlib.nullcontext():
            code = _run(args)
    finally:
        if quiet:
            quiet.close()
    if code:
        # after Ctrl-C the other ranks give rank 0 time to save and say so before the abort
        interrupted = code == INTERRUPTED and not dist.is_main()
        dist.abort(code, grace_s=3.0 if interrupted else dist.ABORT_GRACE_S)
    return code


def _run(args) -> int:
    from .errors import FileFormatError

    try:
        with _compile_notice(args.command):
            return args.func(args)
    except FileFormatError as e:  # each command reports its own; none may become a traceback
        return _fail(args.command, str(e))
    except KeyboardInterrupt:  # outside training (which handles its own): no traceback
        print(f"fastnet {args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except MemoryError as e:  # e.g. a model too large for this machine: one line too
        return _fail(args.command, f"out of memory: {e or 'MemoryError'}")
