"""fastnet.data: DataLoader batching / shuffling / determinism, the IDX reader, and the
MNIST files (digests, downloads) on small files the tests write. No test touches the
network: the downloader is replaced in every test of this module."""
import gzip
import hashlib
import io
import os
import urllib.error

import numpy as np
import pytest

import fastnet
from fastnet.data import (ArrayDataset, DataLoader, DataUnavailableError, Subset, mnist,
                          read_idx, train_val_split, write_idx)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(url, timeout=None):
        raise AssertionError(f"a test tried to download {url}")

    monkeypatch.setattr(mnist, "_urlopen", refuse)


# ---- datasets and the loader ---------------------------------------------------------------
def toy(n=10):
    x = np.arange(n * 4, dtype=np.float64).reshape(n, 1, 2, 2)
    return ArrayDataset(x, np.arange(n) % 3)


def test_loader_batches_cover_every_sample_once_as_contiguous_float32_and_int64():
    loader = DataLoader(toy(10), batch_size=4, shuffle=True, seed=0)
    got = list(loader)
    assert len(loader) == 3 and [len(y) for _, y in got] == [4, 4, 2]
    for x, y in got:
        assert x.dtype == np.float32 and x.flags.c_contiguous and x.shape[1:] == (1, 2, 2)
        assert y.dtype == np.int64
    firsts = np.concatenate([x[:, 0, 0, 0] for x, _ in got])
    assert sorted(firsts.tolist()) == [4.0 * i for i in range(10)]
    dropped = DataLoader(toy(10), batch_size=4, drop_last=True)
    assert len(dropped) == 2 and [len(y) for _, y in dropped] == [4, 4]
    in_order = np.concatenate([y for _, y in DataLoader(toy(10), batch_size=3)])
    np.testing.assert_array_equal(in_order, np.arange(10) % 3)


def test_loader_indexes_the_dataset_once_per_batch_with_an_array():
    calls = []

    class Spy(ArrayDataset):
        def __getitem__(self, idx):
            calls.append(idx)
            return super().__getitem__(idx)

    list(DataLoader(Spy(np.zeros((10, 3)), np.zeros(10, dtype=np.int64)), batch_size=4, shuffle=True))
    assert len(calls) == 3 and all(isinstance(i, np.ndarray) for i in calls)


def test_shuffling_is_seeded_new_each_epoch_and_resumable_from_state():
    def orders(loader, epochs):
        return [np.concatenate([x[:, 0, 0, 0] for x, _ in loader]).tolist() for _ in range(epochs)]

    a, b = DataLoader(toy(), 3, shuffle=True, seed=7), DataLoader(toy(), 3, shuffle=True, seed=7)
    first = orders(a, 3)
    assert first == orders(b, 3)  # same seed, same orders
    assert first[0] != first[1]   # a new permutation each epoch
    assert orders(DataLoader(toy(), 3, shuffle=True, seed=8), 1)[0] != first[0]
    # The state after epoch 1, restored into a loader seeded differently, replays epochs 2-3.
    c = DataLoader(toy(), 3, shuffle=True, seed=7)
    orders(c, 1)
    d = DataLoader(toy(), 3, shuffle=True, seed=123)
    d.load_state_dict(c.state_dict())
    assert orders(d, 2) == first[1:]


def test_seed_none_follows_fastnet_manual_seed():
    fastnet.manual_seed(3)
    a = [y.tolist() for _, y in DataLoader(toy(), 4, shuffle=True)]
    fastnet.manual_seed(3)
    b = [y.tolist() for _, y in DataLoader(toy(), 4, shuffle=True)]
    assert a == b


@pytest.mark.parametrize("kwargs, error, message", [
    ({"batch_size": 0}, ValueError, "batch_size must be a positive int, got 0"),
    ({"batch_size": 2.5}, ValueError, "batch_size must be a positive int, got 2.5"),
    ({"batch_size": True}, ValueError, "batch_size must be a positive int, got True"),
    ({"shuffle": "yes"}, TypeError, "shuffle must be True or False, got 'yes'"),
    ({"seed": -1}, ValueError, "seed must be a non-negative int or None, got -1"),
    ({"dtype": np.int32}, TypeError, "dtype must be float32 or float64, got int32"),
    ({"batch_size": 11, "drop_last": True}, ValueError, "10 samples give no batch of 11"),
])
def test_loader_arguments_are_checked(kwargs, error, message):
    with pytest.raises(error, match=message):
        DataLoader(toy(10), **{"batch_size": 4, **kwargs})


def test_datasets_check_their_arguments():
    with pytest.raises(ValueError, match="x has 3 samples but y has 2"):
        ArrayDataset(np.zeros((3, 2)), np.zeros(2))
    with pytest.raises(TypeError, match="expected a dataset with __len__ and __getitem__, got int"):
        DataLoader(5)


def test_train_val_split_is_stratified_disjoint_and_seeded():
    y = np.repeat(np.arange(4), 10)
    data = ArrayDataset(np.arange(40.0)[:, None], y)
    train, val = train_val_split(data, 0.2, seed=1)
    assert isinstance(train, Subset) and len(train) == 32 and len(val) == 8
    assert np.bincount(val.y).tolist() == [2, 2, 2, 2]
    assert not set(train.indices) & set(val.indices)
    np.testing.assert_array_equal(train_val_split(data, 0.2, seed=1)[1].indices, val.indices)
    x, yb = next(iter(DataLoader(val, 8)))
    np.testing.assert_array_equal(x[:, 0], val.indices)  # a Subset indexes through
    with pytest.raises(ValueError, match=r"val_fraction must be in \(0, 1\), got 1"):
        train_val_split(data, 1)


# ---- IDX -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_idx_round_trip_raw_and_gz(tmp_path, name, rng):
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / name, images)
    raw = gzip.decompress((tmp_path / name).read_bytes()) if name.endswith(".gz") \
        else (tmp_path / name).read_bytes()
    assert raw[:4] == b"\x00\x00\x08\x03" and int.from_bytes(raw[4:8], "big") == 5
    np.testing.assert_array_equal(read_idx(tmp_path / name, ndim=3), images)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    write_idx(tmp_path / "labels.gz", labels)
    assert gzip.decompress((tmp_path / "labels.gz").read_bytes())[:4] == b"\x00\x00\x08\x01"
    np.testing.assert_array_equal(read_idx(tmp_path / "labels.gz", ndim=1), labels)
    big_endian = np.arange(6, dtype=np.int32).reshape(2, 3) * 70000
    write_idx(tmp_path / "ints", big_endian)
    np.testing.assert_array_equal(read_idx(tmp_path / "ints"), big_endian)


def test_truncated_idx_file_names_the_file_and_the_sizes(tmp_path):
    write_idx(tmp_path / "full", np.zeros((4, 28, 28), dtype=np.uint8))
    data = (tmp_path / "full").read_bytes()
    (tmp_path / "cut").write_bytes(data[:1000])
    with pytest.raises(ValueError, match=r"cut: truncated IDX file: expected 3152 bytes "
                                         r"\(16-byte header \+ 4 x 28 x 28 values of 1 byte\(s\)\), got 1000"):
        read_idx(tmp_path / "cut")
    (tmp_path / "cut.gz").write_bytes(gzip.compress(data[:1000]))  # a whole gzip of a cut file
    with pytest.raises(ValueError, match="cut.gz: truncated IDX file: expected 3152 bytes"):
        read_idx(tmp_path / "cut.gz")
    packed = gzip.compress(data)
    (tmp_path / "cutgz.gz").write_bytes(packed[: len(packed) // 2])  # a cut gzip stream
    with pytest.raises(ValueError, match="cutgz.gz: corrupt or truncated gzip file"):
        read_idx(tmp_path / "cutgz.gz")
    (tmp_path / "header").write_bytes(data[:10])
    with pytest.raises(ValueError, match="header: truncated IDX file: 10 bytes, expected a 16-byte header"):
        read_idx(tmp_path / "header")
    (tmp_path / "long").write_bytes(data + b"\x00")
    with pytest.raises(ValueError, match="IDX file with trailing bytes: expected 3152 bytes"):
        read_idx(tmp_path / "long")


def test_foreign_and_wrong_kind_idx_files(tmp_path):
    (tmp_path / "png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(ValueError, match=r"png: not an IDX file: magic number 0x89504e47"):
        read_idx(tmp_path / "png")
    write_idx(tmp_path / "labels", np.zeros(3, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"expected an IDX file of 3 dimension\(s\).*got 1 \(magic 0x00000801\)"):
        read_idx(tmp_path / "labels", ndim=3)


# ---- MNIST files -------------------------------------------------------------------------------
def write_set(folder, n_train=6, n_test=4, seed=0):
    """Tiny MNIST-shaped files; returns {file name: sha256} for them."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    digests = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        for kind, array in (("images-idx3", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)),
                            ("labels-idx1", (np.arange(n) % 10).astype(np.uint8))):
            name = f"{prefix}-{kind}-ubyte.gz"
            write_idx(folder / name, array)
            digests[name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    return digests


def test_digest_table_is_explicit_and_well_formed():
    for name in ("mnist", "fashion-mnist"):
        assert sorted(mnist.FILES[name]) == sorted(
            f"{p}-{k}-ubyte.gz" for p in ("train", "t10k") for k in ("images-idx3", "labels-idx1"))
        assert all(len(d) == 64 and int(d, 16) >= 0 for d in mnist.FILES[name].values())
    assert mnist.FILES["mnist"]["train-images-idx3-ubyte.gz"] != mnist.FILES["fashion-mnist"]["train-images-idx3-ubyte.gz"]


def test_mnist_loads_verified_files_from_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.setitem(mnist.FILES, "mnist", write_set(tmp_path / "mnist"))
    x, y = fastnet.data.load_mnist("train", data_dir=tmp_path)
    assert x.shape == (6, 1, 28, 28) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert y.dtype == np.int64 and y.tolist() == [0, 1, 2, 3, 4, 5]
    monkeypatch.setenv("FASTNET_DATA", str(tmp_path))  # the same files through the variable
    assert fastnet.data.load_mnist("test")[0].shape == (4, 1, 28, 28)


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("FASTNET_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert mnist.data_dir() == str(tmp_path / ".cache" / "fastnet")
    assert mnist.data_dir(tmp_path / "x") == str(tmp_path / "x")


def test_checksum_mismatch_is_refused_and_the_file_set_aside(tmp_path, monkeypatch):
    digests = write_set(tmp_path / "fashion-mnist")
    digests["train-labels-idx1-ubyte.gz"] = "0" * 64
    monkeypatch.setitem(mnist.FILES, "fashion-mnist", digests)
    bad = tmp_path / "fashion-mnist" / "train-labels-idx1-ubyte.gz"
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte.gz: SHA-256 mismatch: expected 0{64}, got [0-9a-f]{64}; "
                                         r"the file was renamed to .*\.corrupt and not used"):
        fastnet.data.load_fashion_mnist("train", data_dir=tmp_path, download=False)
    assert not bad.exists() and bad.with_name(bad.name + ".corrupt").exists()


def test_offline_gives_a_clear_message_and_leaves_nothing(tmp_path, monkeypatch):
    def offline(url, timeout=None):
        assert timeout == mnist.TIMEOUT_S
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(mnist, "_urlopen", offline)
    with pytest.raises(DataUnavailableError) as e:
        fastnet.data.load_mnist("train", data_dir=tmp_path)
    message = str(e.value)
    assert "could not download train-images-idx3-ubyte.gz for mnist (offline?)" in message
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz" in message
    assert "Temporary failure in name resolution" in message
    assert "place train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz" in message
    assert f"in {tmp_path / 'mnist'}" in message
    assert os.listdir(tmp_path / "mnist") == []  # no partial files
    with pytest.raises(DataUnavailableError, match="is missing and downloading is off"):
        fastnet.data.load_mnist("test", data_dir=tmp_path, download=False)


def test_download_is_verified_before_it_gets_its_name(tmp_path, monkeypatch):
    source = tmp_path / "mirror"
    digests = write_set(source)
    monkeypatch.setitem(mnist.FILES, "mnist", digests)
    served = []

    def serve(url, timeout=None):
        served.append(url)
        name = url.rsplit("/", 1)[1]
        payload = (source / name).read_bytes()
        if "ossci" in url and name.startswith("t10k-images"):
            payload = payload[:-1] + bytes([payload[-1] ^ 0xFF])  # a damaged copy on the first mirror
        return io.BytesIO(payload)

    monkeypatch.setattr(mnist, "_urlopen", serve)
    x, y = fastnet.data.load_mnist("test", data_dir=tmp_path / "cache")
    assert x.shape == (4, 1, 28, 28)
    folder = tmp_path / "cache" / "mnist"
    assert sorted(os.listdir(folder)) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(folder / "t10k-images-idx3-ubyte.gz").st_mode & 0o777 == 0o666 & ~umask
    assert served == [mnist.MIRRORS["mnist"][0] + "t10k-images-idx3-ubyte.gz",  # bad copy dropped
                      mnist.MIRRORS["mnist"][1] + "t10k-images-idx3-ubyte.gz",
                      mnist.MIRRORS["mnist"][0] + "t10k-labels-idx1-ubyte.gz"]
    digests["train-images-idx3-ubyte.gz"] = "f" * 64  # every mirror now serves a "bad" file
    with pytest.raises(DataUnavailableError, match="SHA-256 mismatch: expected f{64}.*download discarded"):
        fastnet.data.load_mnist("train", data_dir=tmp_path / "cache")
    assert "train-images-idx3-ubyte.gz" not in os.listdir(folder)
    assert not [f for f in os.listdir(folder) if f.endswith(".tmp")]


def test_int_features_keep_integer_x_and_refuse_others():
    """int_features=True: integer x comes as int64 (token ids for an Embedding), never as
    float; float or bool x is refused rather than cast; the default still casts."""
    x = np.arange(12, dtype=np.int32).reshape(6, 2)
    y = np.arange(6)
    xb, yb = next(iter(DataLoader(ArrayDataset(x, y), batch_size=4, int_features=True)))
    assert xb.dtype == np.int64 and xb.flags.c_contiguous and yb.dtype == np.int64
    np.testing.assert_array_equal(xb, x[:4])
    assert next(iter(DataLoader(ArrayDataset(x, y), batch_size=4)))[0].dtype == np.float32
    for bad in (x.astype(np.float32), x > 3):
        with pytest.raises(TypeError, match="int_features=True but the dataset gave x"):
            next(iter(DataLoader(ArrayDataset(bad, y), batch_size=4, int_features=True)))
    with pytest.raises(TypeError, match="int_features must be True or False"):
        DataLoader(ArrayDataset(x, y), int_features=1)
