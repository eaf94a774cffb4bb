"""``python -m fastnet ...``: the command-line entry point."""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np


def _progress(total, desc, enabled):
    """A tqdm bar when tqdm is installed and wanted, else a silent stand-in."""
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


def accuracy(model, x, y, batch_size=256):
    """Fraction of samples whose arg-max logit is the label (model in eval mode)."""
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        logits = model(x[i:i + batch_size])
        correct += int((logits.argmax(axis=1) == y[i:i + batch_size]).sum())
    model.train(was_training)
    return correct / len(x)


def train(args) -> int:
    import fastnet
    from fastnet.data import batches, load_digits, train_test_split
    from fastnet.losses import CrossEntropyLoss
    from fastnet.models import MODELS
    from fastnet.optim import SGD, Adam

    if args.save and not os.path.isdir(os.path.dirname(os.path.abspath(args.save))):
        print(f"fastnet train: cannot save to {args.save}: its directory does not exist",
              file=sys.stderr)
        return 2
    if args.lr is None:
        args.lr = DEFAULT_LR[args.optimizer]
    fastnet.manual_seed(args.seed)
    try:
        x, y = load_digits()
    except ImportError as e:
        print(f"fastnet train: {e}", file=sys.stderr)
        return 2
    x_train, y_train, x_test, y_test = train_test_split(x, y, test_fraction=0.2, seed=args.seed)
    model = MODELS[args.model](in_shape=x.shape[1:], num_classes=10)
    if args.optimizer == "sgd":
        opt = SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    else:
        opt = Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    loss_fn = CrossEntropyLoss()
    rng = np.random.default_rng(args.seed)
    n_params = sum(p.data.size for p in model.parameters())
    print(f"fastnet {fastnet.__version__}: training {args.model} ({n_params} parameters) on "
          f"the 8x8 digits, {len(x_train)} train / {len(x_test)} test images, "
          f"{args.optimizer} lr={args.lr} (cosine decay), batch {args.batch_size}, {args.epochs} epochs")
    n_batches = -(-len(x_train) // args.batch_size)
    for epoch in range(1, args.epochs + 1):
        # cosine learning-rate decay from lr to 0 over the run
        opt.lr = args.lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / args.epochs))
        model.train()
        bar = _progress(n_batches, f"epoch {epoch}/{args.epochs}", args.progress)
        total_loss, correct, seen = 0.0, 0, 0
        start = time.perf_counter()
        for xb, yb in batches(x_train, y_train, args.batch_size, shuffle=True, rng=rng):
            opt.zero_grad()
            logits = model(xb)
            loss = loss_fn(logits, yb)
            model.backward(loss_fn.backward(), input_grad=False)
            opt.step()
            total_loss += loss * len(xb)
            correct += int((logits.argmax(axis=1) == yb).sum())
            seen += len(xb)
            bar.set_postfix_str(f"loss {loss:.4f}", refresh=False)  # drawn by update()
            bar.update()
        elapsed = time.perf_counter() - start
        bar.close()
        print(f"epoch {epoch:3d}/{args.epochs}  loss {total_loss / seen:.4f}  "
              f"train acc {100 * correct / seen:6.2f}%  {seen / elapsed:9.0f} samples/s",
              flush=True)
    test_acc = accuracy(model, x_test, y_test)
    print(f"test accuracy: {100 * test_acc:.2f}% ({len(x_test)} held-out images)")
    if args.save:
        fastnet.save(model, args.save)
        print(f"saved model to {args.save}")
    return 0


DEFAULT_LR = {"sgd": 0.05, "adam": 5e-3}


def bench(args) -> int:
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


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m fastnet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a model on the embedded handwritten digits")
    t.add_argument("--model", choices=["lenet", "mlp"], default="lenet",
                   help="default: %(default)s")
    t.add_argument("--epochs", type=_int_at_least(1), default=30, help="default: %(default)s")
    t.add_argument("--batch-size", type=_int_at_least(1), default=32, help="default: %(default)s")
    t.add_argument("--lr", type=_float(positive=True), default=None,
                   help="peak learning rate, decayed to 0 by a cosine schedule (default: "
                        f"{DEFAULT_LR['sgd']} for sgd, {DEFAULT_LR['adam']} for adam)")
    t.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd",
                   help="sgd (momentum 0.9) or adam (default: %(default)s)")
    t.add_argument("--weight-decay", type=_float(positive=False), default=5e-4,
                   help="L2 weight decay (default: %(default)s)")
    t.add_argument("--seed", type=_int_at_least(0), default=0, help="default: %(default)s")
    t.add_argument("--save", metavar="PATH", help="write the trained model here (.npz)")
    t.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar")
    t.set_defaults(func=train)
    b = sub.add_parser("bench", help="time fastnet against the same maths in NumPy and PyTorch")
    b.add_argument("--filter", metavar="SUBSTR", help="only the cases whose name contains SUBSTR")
    b.add_argument("--repeat", type=_int_at_least(1), default=10,
                   help="timed runs per case and implementation, median shown (default: %(default)s)")
    b.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    b.add_argument("--quick", action="store_true", help="tiny shapes: a fast look, or a smoke test")
    b.add_argument("--markdown", action="store_true", help="a Markdown table (for benchmarks/RESULTS.md)")
    b.set_defaults(func=bench)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
