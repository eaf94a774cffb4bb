"""The main job, ``python -m fastnet train``, end to end on the embedded digits."""
import re
import subprocess
import sys

import numpy as np
import pytest

import fastnet
from fastnet.cli import main
from fastnet.data import batches, load_digits, train_test_split


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


def test_python_dash_m_with_progress_bar():
    """As a user runs it: a subprocess, with the tqdm progress bar on."""
    r = subprocess.run([sys.executable, "-m", "fastnet", "train", "--epochs", "2", "--model", "mlp"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "epoch   2/2" in r.stdout and "test accuracy" in r.stdout
    assert "batch" in r.stderr  # tqdm's bar went to stderr


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
        runs.append(re.sub(r" +\d+ samples/s", "", out))  # all but the timing
    assert runs[0] == runs[1]
