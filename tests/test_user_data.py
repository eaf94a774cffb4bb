"""A user's own data: fastnet.data.files.load_files and ``python -m fastnet train --data PATH``
on tiny IDX directories and .npz files written here. The user's files are only read."""
import gzip
import os

import numpy as np
import pytest

from fastnet.cli import main
from fastnet.data import write_idx
from fastnet.data.files import load_files
from fastnet.errors import FileFormatError

NAMES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
         "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}


def arrays(n_train=40, n_test=12, classes=3, size=6, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        y = (np.arange(n) % classes).astype(np.uint8)
        x = rng.integers(0, 30, (n, size, size)).astype(np.uint8)
        x[np.arange(n), y + 1, 1:size - 1] = 255  # a learnable stroke per class
        out[f"x_{split}"], out[f"y_{split}"] = x, y
    return out


def idx_dir(folder, data, gz=("y_train", "x_test")):
    folder.mkdir(exist_ok=True)
    for key, name in NAMES.items():
        write_idx(folder / (name + (".gz" if key in gz else "")), data[key])
    return folder


def state(folder):
    """Every file below ``folder``: its bytes and modification time."""
    return {os.path.relpath(os.path.join(root, f), folder):
            ((p := os.path.join(root, f)) and open(p, "rb").read(), os.stat(p).st_mtime_ns)
            for root, _, files in os.walk(folder) for f in files}


def test_idx_directory_and_npz_give_the_same_data(tmp_path):
    data = arrays()
    a = load_files(idx_dir(tmp_path / "idx", data))
    np.savez(tmp_path / "d.npz", **data, extra=np.zeros(3))
    b = load_files(tmp_path / "d.npz")
    assert a["kind"] == "IDX files" and b["kind"] == ".npz"
    for key in NAMES:
        np.testing.assert_array_equal(a[key], b[key])
    assert a["x_train"].shape == (40, 1, 6, 6) and a["x_train"].dtype == np.float32
    np.testing.assert_array_equal(a["x_train"][:, 0], data["x_train"] / np.float32(255))
    assert a["y_test"].dtype == np.int64 and a["num_classes"] == 3 and a["in_shape"] == (1, 6, 6)


def test_channels_floats_and_class_counts_come_from_the_data(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((10, 3, 4, 5))  # float64, taken as it is (as float32)
    y = np.array([0, 4, 1, 4, 2, 0, 1, 2, 4, 0], dtype=np.int32)  # class 3 never appears
    np.savez(tmp_path / "c.npz", x_train=x, y_train=y, x_test=x[:4], y_test=y[:4])
    d = load_files(tmp_path / "c.npz")
    assert d["in_shape"] == (3, 4, 5) and d["num_classes"] == 5
    np.testing.assert_array_equal(d["x_train"], x.astype(np.float32))


def npz(tmp_path, **changes):
    data = {**arrays(), **changes}
    np.savez(tmp_path / "bad.npz", **{k: v for k, v in data.items() if v is not None})
    return tmp_path / "bad.npz"


@pytest.mark.parametrize("changes, message", [
    ({"x_test": None}, r"has no x_test: a data .npz holds x_train, y_train, x_test and y_test"),
    ({"y_train": np.zeros(40, np.float32)}, r"y_train holds float32; expected integer class labels"),
    ({"y_train": -np.ones(40, np.int64)}, r"y_train holds the label -1; labels must be >= 0"),
    ({"y_test": np.full(12, 7, np.uint8)}, r"y_test holds the label 7, out of the training "
                                           r"labels' range \[0, 3\)"),
    ({"y_test": np.zeros(11, np.uint8)}, r"holds 12 images \(x_test\) but .* 11 labels \(y_test\)"),
    ({"x_train": np.zeros((40, 36), np.uint8)}, r"x_train has shape \(40, 36\); expected images"),
    ({"x_train": np.zeros((40, 6, 6), np.int32)}, r"x_train holds int32; expected uint8 pixels"),
    ({"x_train": np.array(["a"] * 40)}, r"entry x_train holds <U1, expected real numbers"),
    ({"x_train": np.full((40, 6, 6), np.nan)}, r"x_train holds NaN or infinite values"),
    ({"x_test": np.zeros((12, 5, 6), np.uint8)}, r"the test images are \(1, 5, 6\), the training "
                                                 r"images \(1, 6, 6\)"),
    ({"x_train": np.zeros((0, 6, 6), np.uint8), "y_train": np.zeros(0, np.uint8)},
     r"x_train holds no images"),
])
def test_bad_npz_files_are_named_and_refused(tmp_path, changes, message):
    path = npz(tmp_path, **changes)
    with pytest.raises(FileFormatError, match=message) as e:
        load_files(path)
    assert str(path) in str(e.value)


def test_bad_idx_files_are_named_and_refused(tmp_path):
    folder = idx_dir(tmp_path / "d", arrays())
    labels = folder / "t10k-labels-idx1-ubyte"
    os.rename(labels, tmp_path / "aside")  # missing
    with pytest.raises(FileFormatError, match=r"t10k-labels-idx1-ubyte \(or t10k-labels-idx1-"
                                              r"ubyte.gz\) is missing"):
        load_files(folder)
    labels.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x0c" + bytes(5))  # truncated
    with pytest.raises(FileFormatError, match=r"t10k-labels-idx1-ubyte: truncated IDX file"):
        load_files(folder)
    labels.write_bytes(b"GIF89a" + bytes(20))  # wrong magic
    with pytest.raises(FileFormatError, match=r"t10k-labels-idx1-ubyte: not an IDX file"):
        load_files(folder)
    write_idx(labels, np.zeros((12, 2), np.uint8))  # wrong dims
    with pytest.raises(FileFormatError, match=r"expected an IDX file of 1 dimension"):
        load_files(folder)
    with gzip.open(folder / "t10k-images-idx3-ubyte.gz", "wb") as f:  # fewer images than told
        f.write(b"\x00\x00\x08\x03" + b"".join(d.to_bytes(4, "big") for d in (12, 6, 6)) + bytes(9))
    write_idx(labels, np.zeros(12, np.uint8))
    with pytest.raises(FileFormatError, match=r"t10k-images-idx3-ubyte.gz: truncated IDX file"):
        load_files(folder)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(FileFormatError, match="is neither a directory of IDX files nor an .npz"):
        load_files(tmp_path / "notes.txt")


QUICK = ["--model", "mlp", "--optimizer", "adam", "--epochs", "2", "--batch-size", "8",
         "--no-progress", "--val-fraction", "0"]


def test_cli_trains_and_evaluates_on_user_files_and_leaves_them_as_they_were(tmp_path, capsys):
    folder = idx_dir(tmp_path / "mine", arrays())
    before = state(folder)
    out = tmp_path / "run"
    assert main(["train", "--data", str(folder), *QUICK, "--augment", "crop", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"on {folder} (IDX files, 3 classes), 40 train / 12 test images" in text
    assert main(["evaluate", "--checkpoint", str(out)]) == 0  # the checkpoint's --data
    assert f"{folder} test split, 12 images" in capsys.readouterr().out
    np.savez(tmp_path / "mine.npz", **arrays(classes=4))
    assert main(["train", "--data", str(tmp_path / "mine.npz"), *QUICK, "--workers", "0"]) == 0
    assert "(.npz, 4 classes)" in capsys.readouterr().out
    # bad files: a clear error, exit 2, and still nothing changed, renamed or added
    write_idx(folder / "t10k-labels-idx1-ubyte", np.full(12, 9, np.uint8))
    bad = state(folder)
    assert main(["train", "--data", str(folder), *QUICK]) == 2
    assert "t10k-labels-idx1-ubyte: y_test holds the label 9" in capsys.readouterr().err
    assert state(folder) == bad
    del bad["t10k-labels-idx1-ubyte"], before["t10k-labels-idx1-ubyte"]
    assert bad == before


def test_cli_data_path_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--data", str(tmp_path / "none")])
    assert "'" + str(tmp_path / "none") + "' is neither" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path), "--data-dir", str(tmp_path)]) == 2
    assert "--data-dir is where mnist / fashion-mnist are kept" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path), *QUICK]) == 2
    assert "train-images-idx3-ubyte (or train-images-idx3-ubyte.gz) is missing" in \
        capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_cli_refuses_to_write_a_model_over_the_users_data(tmp_path, capsys):
    """--save or --out naming the data (arguments swapped) is refused before training: the
    model file replaced the user's .npz (or an IDX file) without a word."""
    np.savez(tmp_path / "mine.npz", **arrays())
    folder = idx_dir(tmp_path / "idx", arrays())
    before = state(tmp_path)
    for args in (["--data", str(tmp_path / "mine.npz"), "--save", str(tmp_path / "mine.npz")],
                 ["--data", str(folder), "--save", str(folder / "t10k-images-idx3-ubyte.gz")],
                 ["--data", str(tmp_path / "best.npz"), "--out", str(tmp_path)]):
        if args[1].endswith("best.npz"):
            os.link(tmp_path / "mine.npz", tmp_path / "best.npz")
            before = state(tmp_path)
        assert main(["train", *args, *QUICK]) == 2
        assert "your data (--data): choose another path" in capsys.readouterr().err
        assert state(tmp_path) == before
