"""The main job, ``python -m fastnet train``, end to end on the embedded digits."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import fastnet
from fastnet.cli import main
from fastnet.data import batches, load_digits, train_test_split
from fastnet.train import COMPILE_NOTICE


def test_digits_are_the_real_embedded_data():
    x, y = load_digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == np.float32
    assert 0 <= x.min() and x.max() == 1
    assert np.bincount(y).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_split_is_stratified_disjoint_and_seeded():
    x, y = load_digits()
    xtr, ytr, xte, yte = train_test_split(x, y, 0.2, seed=3)
    assert len(ytr) + len(yte) == len(y)
    assert all(abs((yte == c).sum() - 0.2 * (y == c).sum()) <= 1 for c in range(10))
    again = train_test_split(x, y, 0.2, seed=3)
    np.testing.assert_array_equal(again[3], yte)


def test_batches_cover_every_sample_once():
    x = np.arange(10.0)[:, None]
    y = np.arange(10)
    got = [yb for _, yb in batches(x, y, 4, rng=np.random.default_rng(0))]
    assert [len(b) for b in got] == [4, 4, 2]
    assert sorted(np.concatenate(got).tolist()) == list(range(10))
    assert [len(b) for _, b in batches(x, y, 4, shuffle=False, drop_last=True)] == [4, 4]
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        next(batches(x, y, 0))


def test_default_training_reaches_95_percent(capsys):
    """The README's main job with its defaults: LeNet, 30 epochs."""
    assert main(["train", "--no-progress"]) == 0
    out = capsys.readouterr().out
    epochs = re.findall(r"epoch +(\d+)/30 +loss ([\d.]+) +train acc +([\d.]+)% +val loss ([\d.]+) "
                        r"+val acc +([\d.]+)% +lr [\d.e-]+ +(\d+) samples/s", out)
    assert len(epochs) == 30
    assert float(epochs[-1][1]) < float(epochs[0][1])
    assert float(epochs[-1][4]) >= 90.0  # validation accuracy, 143 held-out training images
    acc = float(re.search(r"test accuracy: ([\d.]+)%", out).group(1))
    assert acc >= 95.0, out


def test_mlp_adam_and_save(tmp_path, capsys):
    path = tmp_path / "mlp.npz"
    assert main(["train", "--model", "mlp", "--optimizer", "adam", "--lr", "0.003",
                 "--epochs", "3", "--batch-size", "64", "--seed", "1", "--no-progress",
                 "--save", str(path)]) == 0
    out = capsys.readouterr().out
    assert "saved model to" in out
    model = fastnet.load(path).eval()
    x, y = load_digits()
    assert (model(x).argmax(axis=1) == y).mean() > 0.8


def test_bad_options_exit_with_usage(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--epochs", "0"])
    assert e.value.code == 2
    assert "must be an integer >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--model", "resnet"])


def test_python_dash_m_with_progress_bar(tmp_path):
    """As a user runs it: a subprocess, with the tqdm progress bar on; first with an empty
    Numba cache (a fresh install: the user is told that kernels compile, and the first
    epoch's samples/s leaves the compilation out), then with the cache that run left."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))
    runs = [subprocess.run([sys.executable, "-m", "fastnet", "train", "--epochs", "2",
                            "--model", "mlp"], capture_output=True, text=True, timeout=300,
                           env=env) for _ in ("cold", "warm")]
    for r in runs:
        assert r.returncode == 0, r.stderr
        assert "epoch   2/2" in r.stdout and "test accuracy" in r.stdout
        assert "batch" in r.stderr  # tqdm's bar went to stderr
    cold, warm = (r.stdout.splitlines() for r in runs)
    assert cold[1] == COMPILE_NOTICE  # under the header, before the first epoch's line
    assert re.search(r"epoch   1/2 .* samples/s  \(\+[\d.]+ s compiling, not counted\)$", cold[2])
    assert cold[3].startswith("epoch   2/2") and cold[3].endswith(" samples/s")
    assert "compiling" not in runs[1].stdout
    assert warm[1].startswith("epoch   1/2") and warm[1].endswith(" samples/s")


def test_missing_data_package_gives_install_hint(monkeypatch, capsys):
    import fastnet.data as data

    monkeypatch.setattr(data, "_digits_file", lambda: None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import fails
    assert main(["train", "--epochs", "1", "--no-progress"]) == 2
    assert 'pip install "fastnet[train]"' in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--lr", "inf"], "must be a positive finite number, got inf"),
    (["--lr", "0"], "must be a positive finite number, got 0"),
    (["--weight-decay", "-1"], "must be a non-negative finite number, got -1"),
    (["--seed", "-1"], "must be an integer >= 0, got -1"),
    (["--batch-size", "x"], "expected an integer, got 'x'"),
])
def test_bad_numbers_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", *argv])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_unwritable_save_path_is_refused_before_training(tmp_path, capsys):
    assert main(["train", "--save", str(tmp_path / "missing" / "m.npz"), "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert "its directory does not exist" in captured.err
    assert "epoch" not in captured.out


@pytest.mark.parametrize("target", ["dir", "file-as-parent"])
def test_save_and_out_targets_are_checked_before_training(tmp_path, capsys, target):
    """--save on an existing directory (it trained the whole run, then failed with a
    traceback) and --out below a file (a traceback) fail at once with a message."""
    (tmp_path / "afile").write_text("x")
    if target == "dir":
        argv, want = ["--save", str(tmp_path)], "it is a directory"
    else:
        argv, want = ["--out", str(tmp_path / "afile" / "sub")], "cannot create --out"
    assert main(["train", *argv, "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert want in captured.err and "Traceback" not in captured.err
    assert "epoch" not in captured.out
    if target == "file-as-parent":
        assert main(["train", "--save", str(tmp_path / "afile" / "m.npz"), "--no-progress"]) == 2
        assert "its directory does not exist" in capsys.readouterr().err


def test_adam_uses_its_own_default_learning_rate(capsys):
    assert main(["train", "--optimizer", "adam", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "adam lr=0.005" in out
    assert float(re.search(r"test accuracy: ([\d.]+)%", out).group(1)) >= 95.0


def test_training_is_deterministic_for_a_seed(capsys):
    runs = []
    for _ in range(2):
        assert main(["train", "--epochs", "3", "--seed", "5", "--no-progress"]) == 0
        out = capsys.readouterr().out
        # all but the timing, and the JIT's notes when the first run compiled
        out = out.replace(COMPILE_NOTICE + "\n", "")
        runs.append(re.sub(r" +\d+ samples/s(  \(\+[\d.]+ s compiling, not counted\))?", "", out))
    assert runs[0] == runs[1]


# ---- the training workflow: --out, resume, Ctrl-C, evaluate, predict, other data ---------------
import json  # noqa: E402
import signal  # noqa: E402
import urllib.error  # noqa: E402

from fastnet.data import mnist, write_idx  # noqa: E402

QUICK = ["--model", "mlp", "--optimizer", "adam", "--epochs", "2", "--batch-size", "32", "--no-progress"]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(url, timeout=None):
        raise AssertionError(f"a test tried to download {url}")

    monkeypatch.setattr(mnist, "_urlopen", refuse)


def timeless(history):
    return [{k: v for k, v in r.items() if k not in ("samples_per_s", "seconds")} for r in history]


def snapshot(folder):
    return {f: (folder / f).read_bytes() for f in sorted(os.listdir(folder))}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One quick run with --out, shared by the evaluate / predict tests."""
    out = tmp_path_factory.mktemp("run")
    assert main(["train", *QUICK, "--out", str(out)]) == 0
    return out


def test_train_out_writes_checkpoints_metrics_and_curves(run, capsys):
    files = set(os.listdir(run))
    assert {"checkpoint.npz", "best.npz", "metrics.json"} <= files
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["config"]["model"] == "mlp" and metrics["config"]["in_shape"] == [1, 8, 8]
    assert [r["epoch"] for r in metrics["history"]] == [1, 2]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "samples_per_s"} <= set(metrics["history"][0])
    assert metrics["stop_reason"] == "completed" and metrics["test"]["acc"] > 0.8
    assert metrics["best"]["monitor"] == "val_loss"
    try:
        import matplotlib  # noqa: F401
        assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    except ImportError:
        assert "curves.png" not in files
    model, info = fastnet.train.load_model(run / "checkpoint.npz")
    assert info["epoch"] == 2 and info["input_shape"] == [1, 8, 8]


def test_missing_matplotlib_skips_the_plot_with_a_note(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert main(["train", *QUICK, "--epochs", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert 'note: matplotlib is not installed, so no curves.png (pip install "fastnet[plot]")' in out
    assert sorted(os.listdir(tmp_path)) == ["best.npz", "checkpoint.npz", "metrics.json"]


def test_evaluate_matches_the_training_runs_test_accuracy(run, capsys):
    test_acc = json.loads((run / "metrics.json").read_text())["test"]["acc"]
    assert main(["evaluate", "--checkpoint", str(run / "checkpoint.npz")]) == 0
    out = capsys.readouterr().out
    assert "digits test split, 359 images" in out
    assert f"test accuracy: {100 * test_acc:.2f}%" in out
    assert main(["evaluate", "--checkpoint", str(run / "best.npz")]) == 0


def test_evaluate_and_predict_say_when_kernels_compile(run, tmp_path, monkeypatch, capsys):
    """On stderr, so that stdout stays their results (a stand-in reports a compile at once)."""
    import contextlib

    from fastnet.kernels import _jit

    @contextlib.contextmanager
    def compiles_at_once(callback):
        callback()
        yield

    monkeypatch.setattr(_jit, "on_first_compile", compiles_at_once)
    np.save(tmp_path / "one.npy", load_digits()[0][0])
    for argv in (["evaluate", "--checkpoint", str(run)],
                 ["predict", "--checkpoint", str(run), str(tmp_path / "one.npy")]):
        assert main(argv) == 0
        captured = capsys.readouterr()
        assert captured.err == COMPILE_NOTICE + "\n" and "compiling" not in captured.out


def test_predict_on_npy_and_images(run, tmp_path, capsys):
    from fastnet.data import load_digits

    x, y = load_digits()
    np.save(tmp_path / "one.npy", x[0])           # (1, 8, 8)
    np.save(tmp_path / "plain.npy", x[1, 0])      # (8, 8)
    np.save(tmp_path / "batch.npy", x[:3])        # (3, 1, 8, 8)
    files = [str(tmp_path / f) for f in ("one.npy", "plain.npy", "batch.npy")]
    assert main(["predict", "--checkpoint", str(run / "checkpoint.npz"), *files]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5
    got = [re.fullmatch(r".+: class (\d), probability (0\.\d{3}|1\.000)", line) for line in lines]
    assert all(got), lines
    assert lines[2].startswith(str(tmp_path / "batch.npy") + "[0]: class ")
    assert sum(int(m.group(1)) == t for m, t in zip(got, [y[0], y[1], *y[:3]])) >= 4
    pil = pytest.importorskip("PIL.Image")
    # A dark-on-light drawing of digit 0, larger than 8x8: resized and inverted.
    big = np.kron(x[0, 0], np.ones((4, 4)))
    pil.fromarray(((1 - big) * 255).astype(np.uint8)).save(tmp_path / "zero.png")
    assert main(["predict", "--checkpoint", str(run / "checkpoint.npz"), str(tmp_path / "zero.png")]) == 0
    assert re.fullmatch(r".+zero.png: class \d, probability [\d.]+\n", capsys.readouterr().out)


def test_predict_errors_exit_2(run, tmp_path, monkeypatch, capsys):
    ckpt = str(run / "checkpoint.npz")
    assert main(["predict", "--checkpoint", ckpt, str(tmp_path / "none.npy")]) == 2
    assert "none.npy: no such file" in capsys.readouterr().err
    np.save(tmp_path / "wrong.npy", np.zeros((2, 28, 28), np.float32))
    assert main(["predict", "--checkpoint", ckpt, str(tmp_path / "wrong.npy")]) == 2
    assert ("the model takes arrays of shape (1, 8, 8), (8, 8), or (N, 1, 8, 8); got (2, 28, 28)"
            in capsys.readouterr().err)
    (tmp_path / "x.png").write_bytes(b"not really")
    monkeypatch.setitem(sys.modules, "PIL", None)
    assert main(["predict", "--checkpoint", ckpt, str(tmp_path / "x.png")]) == 2
    assert 'reading images needs Pillow: pip install "fastnet[images]"' in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(tmp_path / "nope.npz"), str(tmp_path / "wrong.npy")]) == 2
    assert f"--checkpoint {tmp_path / 'nope.npz'}: no such file" in capsys.readouterr().err


def test_predict_refuses_non_finite_input_and_oversized_images(run, tmp_path, monkeypatch, capsys):
    """An array with NaN or inf is refused (it printed a class with a probability and
    exited 0); so is an image over Pillow's pixel limit (a DecompressionBombError
    traceback), before anything is printed."""
    PIL = pytest.importorskip("PIL.Image")
    ckpt = str(run / "checkpoint.npz")
    for bad in (np.nan, np.inf):
        x = np.zeros((2, 1, 8, 8), np.float32)
        x[1, 0, 3, 3] = bad
        np.save(tmp_path / "bad.npy", x)
        assert main(["predict", "--checkpoint", ckpt, str(tmp_path / "bad.npy")]) == 2
        captured = capsys.readouterr()
        assert "bad.npy: the array holds NaN or infinite values" in captured.err
        assert "class" not in captured.out
    PIL.new("L", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(PIL, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels > 2 x the limit
    assert main(["predict", "--checkpoint", ckpt, str(tmp_path / "big.png")]) == 2
    assert "big.png: the image is too large to read safely" in capsys.readouterr().err


def test_missing_checkpoint_is_named(tmp_path, capsys):
    """evaluate / predict with a missing checkpoint, or a directory without one: a message
    that names it, not a raw Errno."""
    for command in (["evaluate"], ["predict", str(tmp_path / "x.npy")]):
        assert main([*command, "--checkpoint", str(tmp_path / "gone.npz")]) == 2
        assert f"--checkpoint {tmp_path / 'gone.npz'}: no such file" in capsys.readouterr().err
        assert main([*command, "--checkpoint", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert f"--checkpoint {tmp_path}: no checkpoint there" in err and "Errno" not in err


def test_evaluate_takes_a_run_directory(run, capsys):
    """--checkpoint DIR reads DIR/checkpoint.npz, as --resume DIR does."""
    assert main(["evaluate", "--checkpoint", str(run)]) == 0
    assert "test accuracy" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"fastnet {fastnet.__version__}"


def test_ctrl_c_saves_exits_130_and_resume_matches_the_uninterrupted_run(tmp_path, monkeypatch, capsys):
    args = ["train", "--model", "mlp", "--epochs", "3", "--batch-size", "64", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    calls = {"n": 0}
    real_step = fastnet.optim.SGD.step

    def step(self):
        calls["n"] += 1
        if calls["n"] == 25:  # in epoch 2 (21 batches an epoch)
            raise KeyboardInterrupt
        real_step(self)

    monkeypatch.setattr(fastnet.optim.SGD, "step", step)
    cut = tmp_path / "cut"
    assert main([*args, "--out", str(cut)]) == 130
    captured = capsys.readouterr()
    assert "interrupted in epoch 2: saved the state after epoch 1" in captured.out
    assert f"interrupted; continue with --resume {cut}" in captured.err
    assert "Traceback" not in captured.err
    assert [r["epoch"] for r in json.loads((cut / "metrics.json").read_text())["history"]] == [1]
    monkeypatch.setattr(fastnet.optim.SGD, "step", real_step)
    assert main([*args, "--resume", str(cut)]) == 0
    assert "resumed from" in capsys.readouterr().out
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    resumed = json.loads((cut / "metrics.json").read_text())
    assert timeless(resumed["history"]) == timeless(whole["history"])
    assert resumed["test"] == whole["test"]
    a, b = fastnet.load(tmp_path / "whole" / "checkpoint.npz"), fastnet.load(cut / "checkpoint.npz")
    for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items()):
        np.testing.assert_array_equal(v, w, err_msg=k)


def test_bad_or_incompatible_checkpoints_exit_2_and_overwrite_nothing(run, tmp_path, capsys):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(run, folder)
    before = snapshot(folder)
    assert main(["train", *QUICK, "--model", "lenet", "--resume", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "holds a different model architecture" in err and "nothing was written" in err
    data = (folder / "checkpoint.npz").read_bytes()
    (folder / "checkpoint.npz").write_bytes(data[: len(data) // 2])
    before = snapshot(folder)
    assert main(["train", *QUICK, "--resume", str(folder)]) == 2
    assert "not a readable fastnet checkpoint file (truncated or corrupt)" in capsys.readouterr().err
    assert snapshot(folder) == before
    assert main(["train", *QUICK, "--out", str(run)]) == 2  # a fresh run over an old one
    assert "already holds checkpoint.npz from an earlier run: continue it with --resume" in capsys.readouterr().err
    assert main(["train", *QUICK, "--resume", str(tmp_path / "missing")]) == 2
    assert "no checkpoint there" in capsys.readouterr().err


def test_resume_a_cnn_and_extend_the_run(tmp_path, capsys):
    """LeNet's config holds tuples (kernel sizes), which a checkpoint stores as lists."""
    args = ["train", "--epochs", "1", "--batch-size", "64", "--no-progress", "--schedule", "constant"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    assert main([*args[:1], "--epochs", "2", *args[3:], "--resume", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "epoch   2/2" in out and "epoch   1/2" not in out
    history = json.loads((tmp_path / "metrics.json").read_text())["history"]
    assert [r["epoch"] for r in history] == [1, 2]


def test_cuda_unavailable_is_a_clean_error(monkeypatch, capsys):
    monkeypatch.setattr(fastnet.cuda, "unavailable_reason", lambda: "no GPU in this test")
    assert main(["train", "--device", "cuda", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastnet train: device 'cuda' is not available") and "Traceback" not in err


def test_too_small_a_validation_share_is_a_clean_error(monkeypatch, capsys):
    import fastnet.data

    x, y = fastnet.data.load_digits()
    monkeypatch.setattr(fastnet.data, "load_digits", lambda dtype=np.float32: (x[:40], y[:40]))
    assert main(["train", "--val-fraction", "0.1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--val-fraction 0.1" in err and "Traceback" not in err


def test_vgg_small_trains_on_the_digits(capsys):
    assert main(["train", "--model", "vgg-small", "--epochs", "1", "--optimizer", "adam", "--lr",
                 "0.001", "--no-progress", "--val-fraction", "0"]) == 0
    out = capsys.readouterr().out
    assert "training vgg-small (133354 parameters)" in out and "1438 train / 359 test" in out
    assert float(re.search(r"test accuracy: ([\d.]+)%", out).group(1)) > 40  # 68% here, 1 epoch


def test_mnist_from_idx_files_in_the_data_dir(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    folder = tmp_path / "mnist"
    folder.mkdir()
    digests = {}
    for prefix, n in (("train", 60), ("t10k", 20)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
        images[np.arange(n), 2 * labels + 3, 5:20] = 255  # a learnable stroke per class
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{prefix}-{kind}-ubyte.gz"
            write_idx(folder / name, array)
            digests[name] = __import__("hashlib").sha256((folder / name).read_bytes()).hexdigest()
    monkeypatch.setitem(mnist.FILES, "mnist", digests)
    monkeypatch.setenv("FASTNET_DATA", str(tmp_path))
    out = tmp_path / "run"
    assert main(["train", "--data", "mnist", "--model", "lenet", "--epochs", "2", "--batch-size", "16",
                 "--optimizer", "adam", "--no-progress", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "on MNIST, 50 train / 10 validation / 20 test images" in text
    assert main(["evaluate", "--checkpoint", str(out / "best.npz")]) == 0
    assert "mnist test split, 20 images" in capsys.readouterr().out
    assert main(["evaluate", "--checkpoint", str(out / "best.npz"), "--data", "digits"]) == 2
    assert "the model does not take the digits images (1, 8, 8)" in capsys.readouterr().err


def test_offline_mnist_is_a_clean_error(tmp_path, monkeypatch, capsys):
    def offline(url, timeout=None):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(mnist, "_urlopen", offline)
    assert main(["train", "--data", "fashion-mnist", "--data-dir", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "could not download train-images-idx3-ubyte.gz for fashion-mnist (offline?)" in err
    assert f"in {tmp_path / 'fashion-mnist'}" in err and "Traceback" not in err


def test_ctrl_c_outside_training_exits_130(monkeypatch, capsys):
    import fastnet.data as data

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "load_digits", interrupted)
    assert main(["train", "--no-progress"]) == 130
    assert capsys.readouterr().err == "fastnet train: interrupted\n"


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_sigint_to_a_real_process(tmp_path):
    """As a user presses Ctrl-C: SIGINT after the first epoch line, exit 130, no traceback."""
    # (SIGINT's default disposition in the child, which Python turns into KeyboardInterrupt,
    # also where the tests run with it ignored: a shell's background job)
    proc = subprocess.Popen([sys.executable, "-m", "fastnet", "train",  # LeNet: tuples in its config
                             "--epochs", "100000", "--no-progress", "--out", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    try:
        for line in proc.stdout:
            if line.startswith("epoch   2/"):
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted; continue with --resume" in err
    assert "saved the state after epoch" in out
    assert fastnet.train.load_model(tmp_path / "checkpoint.npz")[1]["epoch"] >= 2


@pytest.mark.cuda
def test_cli_trains_on_cuda(tmp_path, monkeypatch, capsys):
    """`python -m fastnet train --device cuda` end to end, on a slice of the embedded
    digits and a narrow MLP (whole-size runs are for a GPU: the simulator runs every
    GPU thread as a Python thread)."""
    import fastnet.data
    import fastnet.models
    from fastnet import cli

    x, y = fastnet.data.load_digits()
    monkeypatch.setattr(fastnet.data, "load_digits", lambda dtype=np.float32: (x[:40], y[:40]))
    monkeypatch.setitem(fastnet.models.MODELS, "mlp",
                        lambda **kw: fastnet.models.mlp(hidden=(8,), **kw))
    code = cli.main(["train", "--device", "cuda", "--model", "mlp", "--epochs", "2",
                     "--batch-size", "16", "--val-fraction", "0.3", "--no-progress",
                     "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "test accuracy" in out and (tmp_path / "run" / "checkpoint.npz").exists()
    model = fastnet.load(tmp_path / "run" / "checkpoint.npz")
    assert all(isinstance(p.data, np.ndarray) for p in model.parameters())


def test_clip_grad_norm_and_warmup_are_recorded_and_resume_notes_a_change(tmp_path, capsys):
    """--clip-grad-norm and --warmup: in the first line, metrics.json's config and the
    checkpoint (Trainer state and config); a resume with other values says so and goes on
    with them. The lr rises linearly over the warmup steps (23 steps of 64 per epoch)."""
    from fastnet.serialization import read_npz

    args = ["train", "--model", "mlp", "--batch-size", "64", "--no-progress",
            "--out", str(tmp_path)]
    assert main([*args, "--epochs", "1", "--warmup", "10", "--clip-grad-norm", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "(cosine schedule, 10 warmup steps, gradient norm clipped to 0.5)" in out
    config = json.loads((tmp_path / "metrics.json").read_text())["config"]
    assert config["warmup"] == 10 and config["clip_grad_norm"] == 0.5
    meta, _ = read_npz(tmp_path / "checkpoint.npz", "test", kind="checkpoint")
    assert meta["clip_grad_norm"] == 0.5 and meta["steps"] == 21
    assert meta["schedule"] == {"type": "WarmupCosine", "warmup_steps": 10, "total_steps": 21,
                                "min_lr": 0.0}
    assert main([*args, "--epochs", "2", "--warmup", "10", "--resume", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "was trained with the schedule {'type': 'WarmupCosine'" in out  # 42 steps now
    assert "was trained with clip_grad_norm 0.5; continuing with None" in out
    assert "epoch   2/2" in out


@pytest.mark.parametrize("schedule", ["onecycle", "plateau"])
def test_onecycle_and_plateau_schedules(tmp_path, capsys, schedule):
    assert main(["train", "--model", "mlp", "--epochs", "1", "--batch-size", "128",
                 "--no-progress", "--schedule", schedule, "--out", str(tmp_path)]) == 0
    assert f"({schedule} schedule)" in capsys.readouterr().out
    meta, _ = fastnet.serialization.read_npz(tmp_path / "checkpoint.npz", "test", "checkpoint")
    assert meta["schedule"]["type"] == {"onecycle": "OneCycleLR",
                                        "plateau": "ReduceLROnPlateau"}[schedule]


@pytest.mark.parametrize("argv, message", [
    (["--warmup", "5", "--schedule", "step"], "--warmup is for --schedule cosine or constant"),
    (["--warmup", "5", "--schedule", "onecycle"], "warms up by itself"),
    (["--schedule", "plateau", "--val-fraction", "0"], "--schedule plateau needs validation"),
    (["--warmup", "500"], "--warmup 500 must be below the run's 21 optimizer steps"),
])
def test_schedule_options_that_do_not_fit_exit_2(argv, message, capsys):
    assert main(["train", "--model", "mlp", "--epochs", "1", "--batch-size", "64",
                 "--no-progress", *argv]) == 2
    assert message in capsys.readouterr().err


def test_clip_grad_norm_must_be_positive(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--clip-grad-norm", "0"])
    assert e.value.code == 2 and "must be a positive finite number" in capsys.readouterr().err
