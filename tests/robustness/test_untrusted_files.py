"""Untrusted files (issue 19, item 3): fastnet.load, Trainer.resume, train.load_model, the
CLI's evaluate / predict / --resume and read_idx refuse whatever is malformed with one
error class, FileFormatError (a ValueError naming the file), before allocating more than
a few MB beyond the file's data; a killed save leaves no temporary file for good.

Every malicious file is built here, in tmp_path, at test time. Memory is measured with
tracemalloc, which sees NumPy's array allocations and zlib's buffers.
"""
import contextlib
import gzip
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import tracemalloc
import zipfile

import numpy as np
import pytest

import fastnet
from fastnet import FileFormatError, layers as L
from fastnet._npz import _host
from fastnet.cli import main
from fastnet.data import read_idx, write_idx
from fastnet.optim import SGD
from fastnet.models import CharLSTM
from fastnet.serialization import _REGISTRY, _describe, expected_state
from fastnet.train import Trainer, load_model

MB = 1 << 20
BUDGET = 4 * MB  # "a few MB": what reading a malicious few-KB (or few-hundred-KB) file may cost
META = "__fastnet__"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ---- building files ---------------------------------------------------------------------------
def npy(array):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(array), allow_pickle=True)
    return buf.getvalue()


def npy_header(shape, dtype):
    """A .npy header alone: it promises shape x dtype, and no data follows."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                               "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue()


def meta_bytes(meta):
    return npy(np.array(json.dumps(meta) if not isinstance(meta, str) else meta))


def write_zip(path, members, deflated=()):
    """An .npz of ``members`` ({name: .npy bytes, or an iterable of byte chunks})."""
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            info = zipfile.ZipInfo(name + ".npy")
            info.compress_type = zipfile.ZIP_DEFLATED if name in deflated else zipfile.ZIP_STORED
            with z.open(info, "w") as f:
                for chunk in ([data] if isinstance(data, bytes) else data):
                    f.write(chunk)
    return path


def zeros(n):
    """n zero bytes, in chunks (compresses to about n / 1000)."""
    block = bytes(MB)
    while n > 0:
        yield block[:min(n, MB)]
        n -= MB


def set_declared_size(path, name, size):
    """Patch the uncompressed size a zip declares for ``name`` (local and central headers)."""
    data = bytearray(path.read_bytes())
    name = name.encode()
    for sig, name_at, size_at in ((b"PK\x03\x04", 30, 22), (b"PK\x01\x02", 46, 24)):
        at = data.find(sig)
        while at >= 0 and data[at + name_at: at + name_at + len(name)] != name:
            at = data.find(sig, at + 1)
        data[at + size_at: at + size_at + 4] = size.to_bytes(4, "little")
    path.write_bytes(bytes(data))


def dense(i, o, bias=True):
    return {"type": "Dense", "config": {"in_features": i, "out_features": o, "bias": bias,
                                        "activation": None}}


def model_file(path, desc, arrays=None, meta=None, deflated=()):
    meta = {"format": "fastnet-model", "version": 1, "model": desc, "dtype": "float32", **(meta or {})}
    return write_zip(path, {META: meta_bytes(meta), **{k: npy(v) if isinstance(v, np.ndarray) else v
                                                       for k, v in (arrays or {}).items()}},
                     deflated)


@contextlib.contextmanager
def peak_allocation():
    """{"peak": bytes} allocated at most at once inside the block (tracemalloc)."""
    result = {}
    tracemalloc.start()
    try:
        yield result
    finally:
        result["peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def refused(path, match=None):
    """pytest.raises(FileFormatError) whose message is one line naming ``path``."""
    return _Refused(path, match)


class _Refused:
    def __init__(self, path, match):
        self.path, self.raises = os.fspath(path), pytest.raises(FileFormatError, match=match)

    def __enter__(self):
        self.info = self.raises.__enter__()
        return self.info

    def __exit__(self, *exc):
        suppressed = self.raises.__exit__(*exc)
        message = str(self.info.value)
        assert self.path in message and "\n" not in message, message
        assert self.info.value.path == self.path
        return suppressed


# ---- the error class --------------------------------------------------------------------------
def test_the_error_class_is_a_value_error_naming_the_file():
    e = FileFormatError("/x/m.npz", "bad\nthing")
    assert isinstance(e, ValueError) and e.path == "/x/m.npz" and str(e) == "/x/m.npz: bad thing"
    again = pickle.loads(pickle.dumps(e))
    assert type(again) is FileFormatError and str(again) == str(e) and again.path == e.path
    assert fastnet.FileFormatError is FileFormatError and "FileFormatError" in fastnet.__all__


# ---- (a) a description that implies huge parameters ------------------------------------------
def test_huge_dense_description_is_refused_before_anything_is_allocated(tmp_path):
    """A 1 KB file whose description says Dense(4096, 4096): building it would allocate
    ~200 MB (float64 init + float32); the implied shapes are compared with the arrays'
    headers first."""
    path = model_file(tmp_path / "huge.npz", {"type": "Sequential", "layers": [dense(4096, 4096)]},
                      {"0.weight": np.zeros((2, 2), np.float32), "0.bias": np.zeros(2, np.float32)})
    assert path.stat().st_size < 2048
    with peak_allocation() as mem, refused(path, r"'0.weight' has shape \(2, 2\), the model it "
                                                 r"describes needs \(4096, 4096\)"):
        fastnet.load(path)
    assert mem["peak"] < BUDGET
    path = model_file(tmp_path / "none.npz", dense(100_000, 100_000))  # was a MemoryError
    with peak_allocation() as mem, refused(path, r"no array for 'weight', 'bias'"):
        fastnet.load(path)
    assert mem["peak"] < BUDGET


def test_arrays_whose_headers_promise_more_than_the_file_holds(tmp_path):
    """The headers agree with the huge description, but the data is not there: a member's
    declared size must match its header, and all sizes together the file's size."""
    desc = dense(4096, 4096, bias=False)
    path = model_file(tmp_path / "header_only.npz", desc, {"weight": npy_header((4096, 4096), "<f4")})
    with peak_allocation() as mem, refused(path, r"entry 'weight.npy' declares \d+ bytes, but its "
                                                 r"header \(float32 \(4096, 4096\)\) needs 67108992"):
        fastnet.load(path)
    assert mem["peak"] < BUDGET
    # a deflated member whose zip header lies about its size to match the .npy header
    path = model_file(tmp_path / "lying.npz", desc, {"weight": npy_header((4096, 4096), "<f4")},
                      deflated={"weight"})
    set_declared_size(path, "weight.npy", 128 + 4096 * 4096 * 4)
    with peak_allocation() as mem, refused(path, r"declares 671\d+ bytes of arrays in a file of "
                                                 r"\d+ bytes"):
        fastnet.load(path)
    assert mem["peak"] < BUDGET


# ---- (b) a zip bomb --------------------------------------------------------------------------
def test_zip_bomb_member_is_refused_before_decompressing(tmp_path):
    """A ~70 KB .npz whose deflated member honestly holds 64 MB of zeros (np.load inflated
    it all): refused from its declared size, nothing inflated."""
    header = npy_header((4096, 4096), "<f4")
    path = model_file(tmp_path / "bomb.npz", dense(4096, 4096, bias=False),
                      {"weight": [header, *zeros(4096 * 4096 * 4)]}, deflated={"weight"})
    assert path.stat().st_size < 200_000
    with peak_allocation() as mem, refused(path, "refusing to expand it more than 64-fold"):
        fastnet.load(path)
    assert mem["peak"] < BUDGET
    trainer = small_trainer()
    with peak_allocation() as mem, refused(path):
        trainer.resume(path)
    assert mem["peak"] < BUDGET


def test_member_that_inflates_past_its_declared_size_stops_there(tmp_path):
    """A member that declares 10 floats but inflates to 32 MB: read up to its declared
    size, then refused (CRC); never inflated further."""
    header = npy_header((10,), "<f4")
    path = model_file(tmp_path / "stuffed.npz", {"type": "Sequential", "layers": []},
                      {"x": [header, *zeros(32 * MB)]}, deflated={"x"})
    set_declared_size(path, "x.npy", len(header) + 40)
    with peak_allocation() as mem, refused(path):
        fastnet.load(path)  # the description holds no arrays: "x" is refused before it is read
    assert mem["peak"] < BUDGET
    with peak_allocation() as mem, refused(path, "truncated or corrupt"):
        fastnet.serialization.read_npz(path, "test")
    assert mem["peak"] < BUDGET


# ---- (c) IDX files ---------------------------------------------------------------------------
def idx_header(shape, code=0x08):
    return bytes([0, 0, code, len(shape)]) + b"".join(d.to_bytes(4, "big") for d in shape)


def test_gzip_idx_bomb_is_decompressed_no_further_than_its_header_promises(tmp_path):
    """A gzip whose header promises 10 bytes, followed by 64 MB of zeros (read_idx
    gunzipped all of it before looking at the header)."""
    path = tmp_path / "bomb-idx1-ubyte.gz"
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(idx_header((10,)) + bytes(10))
        for chunk in zeros(64 * MB):
            f.write(chunk)
    assert path.stat().st_size < 200_000
    with peak_allocation() as mem, refused(path, "IDX file with trailing bytes: expected 18 bytes"):
        read_idx(path, ndim=1)
    assert mem["peak"] < BUDGET


def test_idx_header_promising_more_than_the_file_can_hold(tmp_path):
    gz = tmp_path / "huge.gz"
    gz.write_bytes(gzip.compress(idx_header((60000, 1024, 1024))))  # 63 GB from ~50 bytes
    with peak_allocation() as mem, refused(gz, r"more than a gzip file of \d+ bytes can hold "
                                               r"\(at most 1032:1\)"):
        read_idx(gz)
    assert mem["peak"] < BUDGET
    raw = tmp_path / "huge"
    raw.write_bytes(idx_header((60000, 1024, 1024)) + bytes(100))
    with peak_allocation() as mem, refused(raw, "truncated IDX file: expected 62914560016 bytes"):
        read_idx(raw)
    assert mem["peak"] < BUDGET


def test_user_data_files_promising_huge_arrays_cost_nothing(tmp_path):
    """train --data PATH (fastnet.data.files): an .npz zip bomb, a header-only .npz and a
    gzip IDX header promising 63 GB are refused from their sizes, the files untouched."""
    from fastnet.data.files import load_files

    small = {"y_train": npy(np.zeros(4, np.uint8)), "x_test": npy(np.zeros((4, 2, 2), np.uint8)),
             "y_test": npy(np.zeros(4, np.uint8))}
    bomb = write_zip(tmp_path / "bomb.npz", {
        "x_train": [npy_header((4096, 64, 256), "|u1"), *zeros(64 * MB)], **small},
        deflated={"x_train"})
    header_only = write_zip(tmp_path / "header.npz",
                            {"x_train": npy_header((60000, 1024, 1024), "|u1"), **small})
    folder = tmp_path / "idx"
    folder.mkdir()
    for name, shape in (("train-images-idx3-ubyte.gz", (60000, 1024, 1024)),
                        ("train-labels-idx1-ubyte.gz", (60000,)),
                        ("t10k-images-idx3-ubyte.gz", (4, 2, 2)),
                        ("t10k-labels-idx1-ubyte.gz", (4,))):
        (folder / name).write_bytes(gzip.compress(idx_header(shape)))
    cases = [(bomb, "refusing to expand it more than 64-fold"),
             (header_only, r"entry 'x_train.npy' declares \d+ bytes, but its header"),
             (folder, "more than a gzip file of")]
    for path, match in cases:
        before = sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size)
                        for p in tmp_path.rglob("*"))
        target = folder / "train-images-idx3-ubyte.gz" if path == folder else path
        with peak_allocation() as mem, refused(target, match):
            load_files(path)
        assert mem["peak"] < BUDGET
        assert sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size)
                      for p in tmp_path.rglob("*")) == before


def test_idx_readers_still_read_what_they_wrote(tmp_path):
    for name in ("a", "a.gz"):
        x = np.arange(2 * 3 * 5, dtype=np.int32).reshape(2, 3, 5) - 7
        write_idx(tmp_path / name, x)
        got = read_idx(tmp_path / name, ndim=3)
        np.testing.assert_array_equal(got, x)
        assert got.dtype == np.int32 and got.dtype.isnative


# ---- (d) descriptions: nesting, wrong types --------------------------------------------------
@pytest.mark.parametrize("desc, match", [
    ("Dense", "expected a layer description"),                               # was AttributeError
    ({"type": "Sequential", "layers": [5]}, r"model.layers\[0\]: expected a layer description"),
    ({"type": "Residual", "config": {}, "modules": []}, "model.modules: expected a dict"),
    ({"type": "Dense", "config": [1, 2]}, "expected a dict of arguments"),
    ({"type": "Dense", "config": {"in_features": 2, "out_features": {"a": 1}}},
     "model.config.out_features: expected a number"),
    ({"type": "Dense", "config": {"in_features": "2", "out_features": 2}},
     "model.config.in_features: expected a positive int, got '2'"),
    ({"type": "Dense", "config": {"in_features": 2, "out_features": 2, "evil": 1}},
     "Dense takes no argument 'evil'"),
    ({"type": "Dense", "config": {"in_features": 2}}, "Dense needs the argument 'out_features'"),
    ({"type": "Pickle", "config": {}}, "unknown layer type 'Pickle'"),
    ({"type": ["Dense"]}, r"unknown layer type \['Dense'\]"),
    ({"type": "Module", "config": {}}, "unknown layer type 'Module'"),
    ({"type": "Sequential", "layers": [], "extra": 1}, "unexpected key 'extra'"),
    ({"type": "LayerNorm", "config": {"normalized_shape": [3, 0]}},
     "normalized_shape: expected a positive int or a list"),
    ({"type": "LayerNorm", "config": {"normalized_shape": 4, "bias": 1}},
     "bias: expected true or false"),
    ({"type": "Conv2D", "config": {"in_channels": 1, "out_channels": 1, "kernel_size": [3, 3, 3]}},
     "kernel_size: expected an int or a pair"),
])
def test_malformed_descriptions(tmp_path, desc, match):
    path = model_file(tmp_path / "bad.npz", desc)
    with refused(path, match):
        fastnet.load(path)


@pytest.mark.parametrize("depth", [30, 90_000, 100_000])
def test_deeply_nested_descriptions(tmp_path, depth):
    """100000 levels made json.loads raise RecursionError (now more lists than a
    description may hold: refused before parsing; 90000 still reach json.loads); 30
    Sequentials inside each other are more layers deep than any model."""
    desc = dense(2, 2)
    for _ in range(depth):
        desc = {"type": "Sequential", "layers": [desc]}
    text = json.dumps({"format": "fastnet-model", "version": 1, "dtype": "float32", "model": desc}) \
        if depth < 1000 else '{"format": "fastnet-model", "version": 1, "model": ' + "[" * depth + "]" * depth + "}"
    path = write_zip(tmp_path / "deep.npz", {META: meta_bytes(text)})
    with refused(path, "layers nested more than 24 deep" if depth < 1000 else "nested too deeply"
                 if depth < 100_000 else "100001 lists and dicts, more than the 100000"):
        fastnet.load(path)


@pytest.mark.parametrize("meta, match", [
    ([1, 2], "is not a fastnet model file"),
    ({"format": "fastnet-model", "version": [1]}, r"has format version \[1\]"),
    ({"format": "fastnet-model", "version": 1, "model": dense(2, 2), "dtype": "object"},
     "dtype: expected 'float32' or 'float64'"),
    ({"format": "fastnet-model", "version": 1, "model": dense(2, 2), "dtype": {"a": 1}},
     "dtype: expected 'float32' or 'float64'"),
    ({"format": "fastnet-model", "version": 1}, "model: missing"),
])
def test_malformed_metadata(tmp_path, meta, match):
    path = write_zip(tmp_path / "bad.npz", {META: meta_bytes(meta)})
    with refused(path, match):
        fastnet.load(path)


def test_metadata_entry_that_is_not_a_json_string(tmp_path):
    for entry in (np.zeros(3), np.array(5), np.array(["a", "b"])):
        path = write_zip(tmp_path / "bad.npz", {META: npy(entry)})
        with refused(path, "expected a JSON string"):
            fastnet.load(path)
    path = write_zip(tmp_path / "bad.npz", {META: meta_bytes("{not json")})
    with refused(path, "corrupt __fastnet__ JSON"):
        fastnet.load(path)


# ---- foreign, truncated, corrupt files -------------------------------------------------------
def test_a_npy_file_passed_to_load(tmp_path):
    np.save(tmp_path / "w.npy", np.zeros((3, 3), np.float32))
    with refused(tmp_path / "w.npy", r"is a .npy array, not a fastnet model file"):
        fastnet.load(tmp_path / "w.npy")  # was a TypeError (no context manager)
    with refused(tmp_path / "w.npy", "not a fastnet checkpoint file"):
        small_trainer().resume(tmp_path / "w.npy")


def test_every_truncation_and_byte_flip_is_refused_cleanly(tmp_path):
    """Cut at many points, or one byte flipped at many places: FileFormatError every time
    (or, for a flip inside a weight that the CRC does not cover, a model)."""
    fastnet.manual_seed(0)
    good = tmp_path / "good.npz"
    fastnet.save(L.Sequential(L.Dense(3, 2), L.ReLU(), L.BatchNorm1D(2)), good)
    data = good.read_bytes()
    bad = tmp_path / "bad.npz"
    for cut in range(0, len(data), 17):
        bad.write_bytes(data[:cut])
        with refused(bad):
            fastnet.load(bad)
    for at in range(0, len(data), 11):
        flipped = bytearray(data)
        flipped[at] ^= 0xFF
        bad.write_bytes(bytes(flipped))
        try:
            fastnet.load(bad)
        except FileFormatError as e:
            assert str(bad) in str(e) and "\n" not in str(e)


@pytest.mark.parametrize("edit, match", [
    (lambda a: a.update(weight=np.zeros((3, 2), np.float32)),
     r"'weight' has shape \(3, 2\), the model it describes needs \(2, 3\)"),
    (lambda a: a.pop("bias"), "no array for 'bias'"),
    (lambda a: a.update(extra=np.zeros(1, np.float32)), "unexpected arrays 'extra'"),
    (lambda a: a.update(bias=np.array(["a", "b"])), r"'bias' holds <U1, expected real numbers"),
    (lambda a: a.update(bias=np.zeros(2, np.complex64)), "'bias' holds complex64"),
])
def test_wrong_missing_and_extra_arrays(tmp_path, edit, match):
    arrays = {"weight": np.zeros((2, 3), np.float32), "bias": np.zeros(2, np.float32)}
    edit(arrays)
    path = model_file(tmp_path / "bad.npz", dense(3, 2), arrays)
    with refused(path, match):
        fastnet.load(path)


def test_pickles_never_run(tmp_path):
    marker = tmp_path / "pickle-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    obj = np.empty(2, dtype=object)
    obj[:] = [Payload(), Payload()]
    path = model_file(tmp_path / "pickle.npz", dense(1, 2), {"weight": obj, "bias": np.zeros(2, np.float32)})
    with refused(path, r"objects or records"):
        fastnet.load(path)
    np.save(tmp_path / "pickle.npy", obj, allow_pickle=True)
    with refused(tmp_path / "pickle.npy"):
        fastnet.load(tmp_path / "pickle.npy")
    assert not marker.exists()


def test_valid_files_of_every_layer_still_load(tmp_path):
    """expected_state knows every layer's parameters: what it computes from a description
    is what building the layer allocates (a new layer with parameters needs a row)."""
    fastnet.manual_seed(1)
    models = [
        L.Sequential(L.Conv2D(1, 2, (3, 2), padding=1, bias=False), L.BatchNorm2D(2), L.ReLU(),
                     L.MaxPool2D(2), L.AvgPool2D(1), L.LPPool2D(2, 1), L.Hardsigmoid(),
                     L.Residual(L.Sequential(L.Conv2D(2, 2, 3, padding=1), L.BatchNorm2D(2, affine=False)),
                                L.Sequential(L.Conv2D(2, 2, 1))),
                     L.Residual(L.Tanh()), L.GlobalAvgPool2D(), L.Flatten(), L.Dense(2, 6),
                     L.BatchNorm1D(6, track_running_stats=False), L.Sigmoid(), L.LeakyReLU(0.1),
                     L.Softmax(), L.LogSoftmax(), L.Dropout(0.2)),
        L.Sequential(L.ImageRows(), L.RNN(4, 3, nonlinearity="relu"), L.LastHidden()),
        L.Sequential(L.LSTM(4, 3, bias=False), L.LastHidden(), L.Dense(3, 2, bias=False)),
        L.GRU(4, 3).to(np.float64),
        L.Sequential(L.Embedding(9, 4, padding_idx=-1), L.LSTM(4, 3), L.LastHidden()),
        CharLSTM("ab\n", embedding_dim=3, hidden_size=4, num_layers=3, dropout=0.1),
        L.Sequential(L.LayerNorm((2, 3)), L.Flatten(), L.LayerNorm(6, bias=False),
                     L.LayerNorm(6, elementwise_affine=False)),
    ]
    seen = set()
    for i, model in enumerate(models):
        seen |= {type(m).__name__ for m in model.modules()}
        state = model.state_dict()
        described = json.loads(json.dumps({"model": _describe(model)}))  # as a file holds it
        assert expected_state(described, "m", "test") == {k: v.shape for k, v in state.items()}
        fastnet.save(model, tmp_path / f"{i}.npz")
        back = fastnet.load(tmp_path / f"{i}.npz")
        for (k, v), (k2, v2) in zip(state.items(), back.state_dict().items()):
            assert k == k2 and v.dtype == v2.dtype
            np.testing.assert_array_equal(v, v2)
    assert seen == set(_REGISTRY)


# ---- checkpoints: Trainer.resume and load_model ----------------------------------------------
def small_trainer():
    fastnet.manual_seed(0)
    model = L.Sequential(L.Flatten(), L.Dense(16, 8), L.ReLU(), L.Dropout(0.1), L.Dense(8, 4))
    return Trainer(model, SGD(model.parameters(), lr=0.1, momentum=0.9), progress=False, log=None)


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "good.npz"
    small_trainer().save_checkpoint(path)
    return path


def edited(checkpoint, target, edit):
    with np.load(checkpoint) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays.pop(META)))
    edit(meta)
    np.savez(target, **{META: np.array(json.dumps(meta))}, **arrays)
    return target


def deep(n):
    v = 0
    for _ in range(n):
        v = [v]
    return v


DEEP_CONFIG = "config nested 90000 deep"  # json.dumps cannot write it: written by hand


@pytest.mark.parametrize("edit, match, load_model_too", [
    (lambda m: m.update(epoch=float("inf")), "'epoch' must be an int >= 0, got inf", True),  # OverflowError
    (lambda m: m.update(epoch="x"), "'epoch' must be an int", True),
    (lambda m: m.update(bad_epochs=-1), "'bad_epochs' must be an int >= 0", True),
    (lambda m: m.update(steps=-1), "'steps' must be an int >= 0", True),
    (lambda m: m.update(steps=1.5), "'steps' must be an int >= 0", True),
    (lambda m: m.update(clip_grad_norm=-1), "'clip_grad_norm' must be null or a number > 0", True),
    (lambda m: m.update(history=["ab"]), "'history' must be a list of dicts", True),
    (lambda m: m.update(best={"epoch": 1}), "'best' must be null or", True),
    (lambda m: m.update(input_shape=[1, "8"]), "'input_shape' must be null or a list", True),
    (lambda m: m["optimizer"].update(param_steps=[1.5] * 4), "'optimizer' must be", True),
    (lambda m: m["optimizer"]["hyperparameters"].update(lr="fast"), "'optimizer' must be", True),
    (lambda m: m.update(loaders={"train": 5}), "'loaders' must be", True),
    (lambda m: m.update(config=deep(200)), "nested more than 64 levels deep", True),
    (DEEP_CONFIG, "nested too deeply", True),  # RecursionError
    # what only resume uses (load_model reads the model and the metadata, not these)
    (lambda m: m["optimizer"]["hyperparameters"].update(nesterov=0.5),
     "the optimizer's hyper-parameters are", False),
    (lambda m: m["rng"]["state"].update(state=10 ** 50), "is not a valid checkpoint", False),  # OverflowError
    (lambda m: m.update(rng={"bit_generator": "Generator"}), "not a NumPy bit-generator state", False),
    (lambda m: m["modules"]["3"].update(seed="x"), "the state of layer '3' is", False),  # half-restored
    # the review of issue 19: input_shape sizes what predict allocates (B: RNG states, C:
    # what resume accepted and a later step or plot crashed on)
    (lambda m: m.update(input_shape=[1, 20000, 20000]), "'input_shape' must be null or a list", True),
    (lambda m: m.update(input_shape=[1, 1, 1, 8]), "'input_shape' must be null or a list", True),
    (lambda m: m.update(input_shape=[70000]), "'input_shape' must be null or a list", True),
    (lambda m: m.update(history=[{}]), r"'history' must be a list of dicts \{epoch", True),  # plot: KeyError
    (lambda m: m.update(history=[{"epoch": 1, "train_loss": "low"}]), "'history' must be", True),
    (lambda m: m.update(history=[{"epoch": 0}]), "'history' must be", True),
    (lambda m: m.update(history=[{"epoch": 1, "stopped": 3}]), "'history' must be", True),
    (lambda m: m.update(rng={"bit_generator": "BitGenerator", "state": {}}),  # NotImplementedError
     "not a NumPy bit-generator state", False),
    (lambda m: m["loaders"].update(train={"generator": {"bit_generator": "BitGenerator"}}),
     "not a NumPy bit-generator state", False),
    (lambda m: m["rng"].update(has_uint32=5), r"invalid PCG64 state: .*has_uint32", False),
    (lambda m: m["rng"]["state"].update(state=1.5), r"invalid PCG64 state", False),
    (lambda m: m["rng"]["state"].update(state=-1), r"invalid PCG64 state", False),  # OverflowError
    (lambda m: m.update(rng={"bit_generator": "MT19937", "state": {"key": [0] * 624, "pos": 10 ** 6}}),
     r"invalid MT19937 state: .*pos", False),  # NumPy took it; the next draw crashed Python
    (lambda m: m.update(rng={"bit_generator": "MT19937", "state": {"key": [0] * 10, "pos": 0}}),
     r"invalid MT19937 state", False),  # IndexError
    (lambda m: m["optimizer"]["hyperparameters"].update(lr=-0.1), r"lr must be in \[0.0", False),
    (lambda m: m["optimizer"]["hyperparameters"].update(momentum=-1), "momentum must be in", False),
    (lambda m: m["optimizer"]["hyperparameters"].update(momentum=0, nesterov=True),
     "nesterov momentum needs momentum > 0", False),
    (lambda m: m.update(base_lr=-0.1), r"base_lr is refused: SGD: lr must be in", False),
])
def test_malformed_checkpoints_are_refused_and_change_nothing(tmp_path, checkpoint, edit, match,
                                                              load_model_too):
    target = tmp_path / "bad.npz"
    if edit is DEEP_CONFIG:
        with np.load(checkpoint) as f:
            arrays = {k: f[k] for k in f.files}
        text = str(arrays.pop(META))[:-1] + ', "config": ' + "[" * 90_000 + "]" * 90_000 + "}"
        np.savez(target, **{META: np.array(text)}, **arrays)
    else:
        edited(checkpoint, target, edit)
    trainer = small_trainer()
    trainer.model[3].calls = 5
    before = {k: v.copy() for k, v in trainer.model.state_dict().items()}
    with refused(target, match):
        trainer.resume(target)
    for k, v in trainer.model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    assert trainer.epoch == 0 and trainer.optimizer.lr == 0.1 and trainer.model[3].calls == 5
    assert trainer.history == [] and trainer.best is None
    if load_model_too:
        with refused(target, match):
            load_model(target)


def test_checkpoint_with_a_huge_model_description(tmp_path, checkpoint):
    target = edited(checkpoint, tmp_path / "bad.npz",
                    lambda m: m["model"]["layers"][1]["config"].update(in_features=50_000, out_features=50_000))
    with peak_allocation() as mem, refused(target, r"'1.weight' has shape \(8, 16\), the model it "
                                                   r"describes needs \(50000, 50000\)"):
        load_model(target)
    assert mem["peak"] < BUDGET
    with refused(target, "holds a different model architecture"):
        small_trainer().resume(target)


def test_good_checkpoints_still_resume(checkpoint):
    trainer = small_trainer()
    assert trainer.resume(checkpoint) is trainer
    model, info = load_model(checkpoint)
    assert info["epoch"] == 0 and isinstance(model, L.Sequential)


# ---- the CLI: one line, exit code 2 ----------------------------------------------------------
def one_line_error(capsys, command):
    err = capsys.readouterr().err
    assert err.startswith(f"fastnet {command}: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_cli_evaluate_and_predict_refuse_malformed_checkpoints(tmp_path, checkpoint, capsys):
    bomb = tmp_path / "bomb.npz"
    model_file(bomb, dense(4096, 4096, bias=False),
               {"weight": [npy_header((4096, 4096), "<f4"), *zeros(4096 * 4096 * 4)]}, deflated={"weight"})
    nested = edited(checkpoint, tmp_path / "nested.npz", lambda m: m.update(config=deep(500)))
    typed = edited(checkpoint, tmp_path / "typed.npz", lambda m: m.update(config=[1]))  # was AttributeError
    np.save(tmp_path / "x.npy", np.zeros((1, 16), np.float32))
    for path in (bomb, nested, typed, tmp_path / "x.npy"):
        assert main(["evaluate", "--checkpoint", str(path)]) == 2
        assert str(path) in one_line_error(capsys, "evaluate")
        assert main(["predict", "--checkpoint", str(path), str(tmp_path / "x.npy")]) == 2
        assert str(path) in one_line_error(capsys, "predict")
    seedy = edited(checkpoint, tmp_path / "seed.npz", lambda m: m.update(config={"seed": "x"}))
    assert main(["evaluate", "--checkpoint", str(seedy)]) == 2  # was a TypeError from NumPy
    assert "the checkpoint's config is malformed" in one_line_error(capsys, "evaluate")


def test_cli_predict_refuses_npy_input_with_a_lying_header(tmp_path, capsys):
    fastnet.manual_seed(0)
    fastnet.save(L.Sequential(L.Flatten(), L.Dense(16, 2)), tmp_path / "m.npz")
    lying = tmp_path / "lying.npy"
    lying.write_bytes(npy_header((1_000_000, 1_000_000), "<f4") + bytes(64))  # np.load: MemoryError
    with peak_allocation() as mem:
        assert main(["predict", "--checkpoint", str(tmp_path / "m.npz"), str(lying)]) == 2
    assert mem["peak"] < BUDGET
    assert "lying.npy is truncated: its header (float32 (1000000, 1000000)) needs" in one_line_error(capsys, "predict")
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY\x01\x00\xff\xff")
    assert main(["predict", "--checkpoint", str(tmp_path / "m.npz"), str(tmp_path / "junk.npy")]) == 2
    assert "junk.npy: not a readable .npy file" in one_line_error(capsys, "predict")


def cli_run_with_edited_checkpoint(tmp_path, edit):
    """A run directory whose checkpoint.npz is the CLI's MLP's, its metadata changed by
    ``edit`` (and no other file)."""
    from fastnet.models import MODELS

    out = tmp_path / "run"
    out.mkdir()
    fastnet.manual_seed(0)
    model = MODELS["mlp"](in_shape=(1, 8, 8), num_classes=10)
    Trainer(model, SGD(model.parameters(), lr=0.1), progress=False, log=None).save_checkpoint(out / "good.npz")
    edited(out / "good.npz", out / "checkpoint.npz", edit)
    os.unlink(out / "good.npz")
    return out


def test_cli_resume_refuses_a_malformed_checkpoint(tmp_path, capsys):
    """train --resume with a checkpoint whose epoch is Infinity (an OverflowError traceback)."""
    out = cli_run_with_edited_checkpoint(tmp_path, lambda m: m.update(epoch=float("inf")))
    before = sorted(os.listdir(out))
    assert main(["train", "--model", "mlp", "--optimizer", "sgd", "--epochs", "1", "--no-progress",
                 "--resume", str(out)]) == 2
    err = one_line_error(capsys, "train")
    assert "'epoch' must be an int >= 0" in err and "nothing was written" in err
    assert sorted(os.listdir(out)) == before


# ---- (e) temporary files of an interrupted save -----------------------------------------------
KILLED_SAVE = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    import fastnet
    from fastnet.layers import Dense

    def savez_then_killed(f, *args, **kwargs):
        f.write(b"half a model")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    np.savez = savez_then_killed
    fastnet.save(Dense(2, 2), sys.argv[1])
""")


def test_a_save_killed_mid_write_leaves_nothing_after_the_next_save(tmp_path):
    fastnet.save(L.Dense(3, 3), tmp_path / "m.npz")
    good = (tmp_path / "m.npz").read_bytes()
    r = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(tmp_path / "m.npz")], cwd=REPO,
                       capture_output=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr.decode()
    assert (tmp_path / "m.npz").read_bytes() == good  # the old file is intact
    left = [n for n in os.listdir(tmp_path) if n != "m.npz"]
    assert len(left) == 1 and left[0].startswith(".fastnet-") and left[0].endswith(".tmp")
    fastnet.save(L.Dense(2, 2), tmp_path / "other.npz")  # any save to the directory sweeps it
    assert sorted(os.listdir(tmp_path)) == ["m.npz", "other.npz"]


def test_only_temporary_files_of_dead_writers_on_this_host_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    names = {"dead": f".fastnet-{_host()}-{dead.pid}-0123abcd.tmp",
             "alive": f".fastnet-{_host()}-{os.getpid()}-0123abcd.tmp",  # a save in progress
             "other host": f".fastnet-elsewhere-{dead.pid}-0123abcd.tmp",
             "not ours": ".fastnet-notes.tmp"}
    for name in names.values():
        (tmp_path / name).write_bytes(b"x")
    fastnet.save(L.Dense(2, 2), tmp_path / "m.npz")
    assert set(os.listdir(tmp_path)) == {"m.npz", names["alive"], names["other host"], names["not ours"]}


def test_plots_and_downloads_use_the_swept_temporary_names(tmp_path, monkeypatch):
    """Every temporary file fastnet writes has the swept name: a plot's (matplotlib) and a
    download's too, so an interrupted one is removed by the next write."""
    pytest.importorskip("matplotlib")
    from fastnet.data import mnist
    from fastnet.train import plot_history

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".fastnet-{_host()}-{dead.pid}-0123abcd.tmp"
    stale.write_bytes(b"x")
    plot_history([{"epoch": 1, "train_loss": 1.0, "train_acc": 0.5}], tmp_path / "c.png")
    assert sorted(os.listdir(tmp_path)) == ["c.png"]

    seen = []

    class Response(io.BytesIO):
        def __enter__(self):
            seen.extend(os.listdir(tmp_path))
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(mnist, "_urlopen", lambda url, timeout: Response(b"data"))
    path = mnist._download("http://example.invalid/x.gz", str(tmp_path / "x.gz"))
    assert os.path.basename(path).startswith(f".fastnet-{_host()}-{os.getpid()}-")
    assert any(n.startswith(f".fastnet-{_host()}-{os.getpid()}-") for n in seen)
    os.unlink(path)


# ---- the review of issue 19 ---------------------------------------------------------------
def adam_checkpoint(path):
    fastnet.manual_seed(0)
    model = L.Sequential(L.Flatten(), L.Dense(16, 4))
    Trainer(model, fastnet.optim.Adam(model.parameters()), progress=False, log=None).save_checkpoint(path)
    return path


@pytest.mark.parametrize("hyper, match", [
    ({"betas": [1.0, 1.0]}, r"betas\[0\] must be in \[0.0, 1.0\)"),  # ZeroDivisionError at the first step
    ({"eps": 0}, r"eps must be in \(0.0"),
    ({"weight_decay": -1}, "weight_decay must be in"),
])
def test_resume_checks_hyper_parameters_with_the_optimizers_rules(tmp_path, hyper, match):
    good = adam_checkpoint(tmp_path / "good.npz")
    bad = edited(good, tmp_path / "bad.npz", lambda m: m["optimizer"]["hyperparameters"].update(hyper))
    fastnet.manual_seed(0)
    model = L.Sequential(L.Flatten(), L.Dense(16, 4))
    trainer = Trainer(model, fastnet.optim.Adam(model.parameters(), lr=0.01), progress=False, log=None)
    with refused(bad, match):
        trainer.resume(bad)
    assert trainer.optimizer.lr == 0.01 and trainer.optimizer.betas == (0.9, 0.999)
    assert trainer.resume(good).optimizer.lr == 1e-3
    # lr 0 is what a schedule can reach (CosineLR's min_lr): a checkpoint may hold it
    zero = edited(good, tmp_path / "zero.npz", lambda m: m["optimizer"]["hyperparameters"].update(lr=0.0))
    assert trainer.resume(zero).optimizer.lr == 0.0


def test_cli_resume_refuses_a_base_bit_generator(tmp_path, capsys):
    """{"bit_generator": "BitGenerator"} made NumPy raise NotImplementedError (a traceback)."""
    out = cli_run_with_edited_checkpoint(
        tmp_path, lambda m: m.update(rng={"bit_generator": "BitGenerator", "state": {}}))
    assert main(["train", "--model", "mlp", "--epochs", "1", "--no-progress", "--resume", str(out)]) == 2
    assert "not a NumPy bit-generator state" in one_line_error(capsys, "train")


def test_a_loader_refuses_a_malformed_generator_state():
    from fastnet.data import ArrayDataset, DataLoader

    loader = DataLoader(ArrayDataset(np.zeros((4, 2)), np.zeros(4, int)), 2, shuffle=True, seed=1)
    state = loader.state_dict()
    for bad in ({"bit_generator": "BitGenerator"}, {**state["generator"], "uinteger": -1},
                {"bit_generator": "Philox", "state": {"counter": [0] * 4, "key": [0, 0]},
                 "buffer": [0] * 4, "buffer_pos": 9, "has_uint32": 0, "uinteger": 0}):
        with pytest.raises(ValueError, match="DataLoader: (not a NumPy|invalid)"):
            loader.load_state_dict({"generator": bad})
    loader.load_state_dict(state)  # and a good one still loads
    for name in ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64"):
        g = getattr(np.random, name)(7)
        as_json = json.loads(json.dumps(g.state, default=lambda a: a.tolist()))
        loader.load_state_dict({"generator": as_json})
        assert loader.generator.random() == np.random.Generator(getattr(np.random, name)(7)).random()


def conv(padding, kernel=3):
    return {"type": "Conv2D", "config": {"in_channels": 1, "out_channels": 1, "kernel_size": kernel,
                                         "padding": padding, "bias": False}}


def test_a_conv_padded_past_its_kernel_is_refused(tmp_path, capsys):
    """Padding is in no array, yet it sizes the outputs: [20000, 20000] made evaluate fail
    with a NumPy _ArrayMemoryError traceback (terabytes asked)."""
    weight = {"weight": np.zeros((1, 1, 3, 3), np.float32)}
    path = model_file(tmp_path / "padded.npz", conv([20000, 20000]), weight)
    with peak_allocation() as mem, refused(path, r"model.config.padding: padding \[20000, 20000\] is "
                                                 r"larger than the kernel size \[3, 3\]"):
        fastnet.load(path)
    assert mem["peak"] < BUDGET
    assert main(["evaluate", "--checkpoint", str(path)]) == 2
    assert "is larger than the kernel size" in one_line_error(capsys, "evaluate")
    with refused(model_file(tmp_path / "p2.npz", conv([0, 4]), weight), "padding"):
        fastnet.load(tmp_path / "p2.npz")
    with refused(model_file(tmp_path / "p3.npz", conv(-1), weight), "padding: expected an int or a pair of ints >= 0"):
        fastnet.load(tmp_path / "p3.npz")
    assert fastnet.load(model_file(tmp_path / "ok.npz", conv([3, 1]), weight)).padding == (3, 1)
    # the layer takes any padding (as PyTorch's); saving it is refused, so save and load agree
    layer = L.Conv2D(1, 1, 3, padding=(1, 4))
    with pytest.raises(ValueError, match=r"fastnet.save: cannot write this model: model.layers\[1\]"
                                         r".config.padding: padding \[1, 4\] is larger"):
        fastnet.save(L.Sequential(L.ReLU(), layer), tmp_path / "saved.npz")
    with pytest.raises(ValueError, match="cannot write this model"):
        Trainer(L.Sequential(layer), SGD(layer.parameters(), lr=0.1), checkpoint_dir=tmp_path / "c",
                progress=False, log=None)
    with pytest.raises(ValueError, match="cannot write this model"):
        Trainer(L.Sequential(layer), SGD(layer.parameters(), lr=0.1), progress=False,
                log=None).save_checkpoint(tmp_path / "c.npz")
    assert not (tmp_path / "saved.npz").exists() and not (tmp_path / "c.npz").exists()


def test_cli_predict_refuses_a_huge_input_shape(tmp_path, checkpoint, capsys):
    """input_shape [1, 20000, 20000] made predict resize an image to it (22.8 GB RSS); so
    would the same shape as the config's in_shape."""
    np.save(tmp_path / "x.npy", np.zeros((1, 16), np.float32))
    for key, edit in (("input_shape", lambda m: m.update(input_shape=[1, 20000, 20000])),
                      ("in_shape", lambda m: m.update(config={"in_shape": [1, 20000, 20000]}))):
        bad = edited(checkpoint, tmp_path / f"{key}.npz", edit)
        with peak_allocation() as mem:
            assert main(["predict", "--checkpoint", str(bad), str(tmp_path / "x.npy")]) == 2
        assert mem["peak"] < BUDGET
        assert key in one_line_error(capsys, "predict")


def test_a_checkpoint_records_no_input_shape_it_could_not_read_back(tmp_path):
    trainer = small_trainer()
    trainer.input_shape = [1, 5000, 5000]  # 25M elements: more than a checkpoint may record
    trainer.save_checkpoint(tmp_path / "c.npz")
    assert load_model(tmp_path / "c.npz")[1]["input_shape"] is None
    trainer.input_shape = [1, 4096, 4096]
    trainer.save_checkpoint(tmp_path / "c.npz")
    assert load_model(tmp_path / "c.npz")[1]["input_shape"] == [1, 4096, 4096]


def test_cli_evaluate_and_predict_report_running_out_of_memory_in_one_line(tmp_path, checkpoint,
                                                                          monkeypatch, capsys):
    import fastnet.cli
    import fastnet.train

    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 1.00 TiB for an array")

    monkeypatch.setattr(fastnet.train, "evaluate", no_memory)
    assert main(["evaluate", "--checkpoint", str(checkpoint)]) == 2
    assert "out of memory: Unable to allocate 1.00 TiB" in one_line_error(capsys, "evaluate")
    monkeypatch.setattr(fastnet.cli, "_read_input", no_memory)
    assert main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "x.npy")]) == 2
    assert "out of memory" in one_line_error(capsys, "predict")


def json_bomb(path, n, deflated):
    """A model file whose description is [{}, {}, ...] (n dicts): within the 64-fold limit
    thanks to a stored entry of random bytes when the description is deflated."""
    text = "[" + "{}," * (n - 1) + "{}]"
    members = {META: meta_bytes(text)}
    if deflated:
        members["filler"] = npy(np.random.default_rng(0).integers(0, 256, 600_000, np.uint8))
    return write_zip(path, members, {META} if deflated else ())


def test_the_json_description_is_bounded_before_it_is_parsed(tmp_path):
    """A 1.15 MB file whose deflated description is [{},{},...] cost +815 MB in json.loads."""
    big = json_bomb(tmp_path / "big.npz", 2_000_000, deflated=True)  # 24 MB of description
    assert big.stat().st_size < 1_000_000
    with peak_allocation() as mem, refused(big, r"__fastnet__ entry holds \d+ bytes, more than the "
                                                r"4194304 a description may have"):
        fastnet.load(big)
    assert mem["peak"] < BUDGET
    many = json_bomb(tmp_path / "many.npz", 150_000, deflated=False)  # 1.8 MB, 150000 dicts
    with peak_allocation() as mem, refused(many, "150001 lists and dicts, more than the 100000"):
        fastnet.load(many)
    assert mem["peak"] < BUDGET
    with pytest.raises(ValueError, match="fastnet reads at most 4194304 bytes and 100000"):
        fastnet.serialization.write_npz(tmp_path / "w.npz", {"x": [{}] * 100_001}, {}, "test")
    assert not (tmp_path / "w.npz").exists()


def test_npy_and_idx_files_numpy_cannot_hold_are_file_format_errors(tmp_path, capsys):
    """More than 64 dimensions, or a zero beside dimensions whose product overflows:
    NumPy's own ValueError, without the file's name, came through."""
    huge = 2 ** 32 - 1
    for name, shape in (("dims.npy", (1,) * 100), ("zero.npy", (0, huge, huge))):
        buf = io.BytesIO()
        np.lib.format.write_array_header_2_0(buf, {"descr": "<f4", "fortran_order": False,
                                                   "shape": shape})
        (tmp_path / name).write_bytes(buf.getvalue() + bytes(4 * (0 not in shape)))
        with refused(tmp_path / name, "NumPy cannot hold an array of shape"):
            fastnet._npz.read_npy(tmp_path / name)
        model_file(tmp_path / "m.npz", {"type": "Sequential", "layers": []},
                   {"x": (tmp_path / name).read_bytes()})
        with refused(tmp_path / "m.npz", "NumPy cannot hold an array of shape"):
            fastnet.load(tmp_path / "m.npz")
    fastnet.save(L.Sequential(L.Flatten(), L.Dense(16, 2)), tmp_path / "model.npz")
    assert main(["predict", "--checkpoint", str(tmp_path / "model.npz"), str(tmp_path / "zero.npy")]) == 2
    assert "NumPy cannot hold" in one_line_error(capsys, "predict")
    for name, shape in (("dims", (1,) * 255), ("zero", (0, huge, huge))):
        (tmp_path / name).write_bytes(idx_header(shape) + bytes(0 not in shape))
        with refused(tmp_path / name, "NumPy cannot hold an array of shape"):
            read_idx(tmp_path / name)


def test_cli_predict_checks_finiteness_in_the_models_dtype(tmp_path, capsys):
    """1e300 is finite, float32(1e300) is not: predict printed "class 0, probability nan"."""
    np.save(tmp_path / "a.npy", np.full((1, 16), 1e300))
    fastnet.manual_seed(0)
    model = L.Sequential(L.Flatten(), L.Dense(16, 2))
    fastnet.save(model, tmp_path / "m32.npz")
    assert main(["predict", "--checkpoint", str(tmp_path / "m32.npz"), str(tmp_path / "a.npy")]) == 2
    captured = capsys.readouterr()
    assert "a.npy: the array holds NaN or infinite values (as float32)" in captured.err
    assert captured.err.count("\n") == 1 and "class" not in captured.out
    fastnet.save(model.to(np.float64), tmp_path / "m64.npz")  # a float64 model takes it
    assert main(["predict", "--checkpoint", str(tmp_path / "m64.npz"), str(tmp_path / "a.npy")]) == 0
    assert "class" in capsys.readouterr().out
