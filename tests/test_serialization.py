"""state_dict round trips and fastnet.save / fastnet.load."""
import os

import numpy as np
import pytest

import fastnet
from fastnet.layers import Conv2D, Dense, Dropout, Flatten, LeakyReLU, MaxPool2D, Module, ReLU, Sequential
from fastnet.models import lenet, mlp


def make_model():
    fastnet.manual_seed(0)
    return Sequential(Conv2D(1, 4, 3, stride=(1, 2), padding=1), LeakyReLU(0.2),
                      MaxPool2D(2, padding=1), Flatten(), Dropout(0.3),
                      Dense(4 * 5 * 3, 6, activation="tanh"), Dense(6, 3, bias=False))


def test_state_dict_round_trip_between_models(rng):
    a = make_model()
    fastnet.manual_seed(99)
    b = Sequential(*[type(m)(**m.config()) for m in a])  # same architecture, other weights
    x = rng.standard_normal((2, 1, 8, 7)).astype(np.float32)
    assert not np.allclose(a.eval()(x), b.eval()(x))
    sd = a.state_dict()
    assert list(sd) == ["0.weight", "0.bias", "5.weight", "5.bias", "6.weight"]
    b.load_state_dict(sd)
    np.testing.assert_array_equal(a(x), b(x))
    sd["0.weight"][...] = 0  # a copy: the model is not changed through it
    assert np.abs(a[0].weight.data).sum() > 0


def test_pytorch_style_state_dict_loads_unchanged(rng):
    """A PyTorch state dict of the same architecture (keys "0.weight", (out, in) layouts,
    float32 arrays, here built by hand with a different dtype) loads as is."""
    model = Sequential(Flatten(), Dense(6, 4), ReLU(), Dense(4, 2))
    torch_like = {"1.weight": rng.standard_normal((4, 6)), "1.bias": rng.standard_normal(4),
                  "3.weight": rng.standard_normal((2, 4)), "3.bias": rng.standard_normal(2)}
    model.load_state_dict(torch_like)
    assert model[1].weight.data.dtype == np.float32
    np.testing.assert_allclose(model[3].bias.data, torch_like["3.bias"].astype(np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_save_load_round_trip(tmp_path, rng, dtype):
    model = make_model().to(dtype).eval()
    x = rng.standard_normal((3, 1, 8, 7)).astype(dtype)
    path = tmp_path / "model.npz"
    fastnet.save(model, path)
    loaded = fastnet.load(path).eval()
    assert repr(loaded) == repr(model)
    np.testing.assert_array_equal(loaded(x), model(x))
    assert loaded(x).dtype == dtype
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]  # no temp file left behind


def test_model_zoo_round_trips(tmp_path):
    for m in (mlp(), lenet(), lenet(in_shape=(1, 28, 28))):
        fastnet.save(m, tmp_path / "m.npz")
        back = fastnet.load(tmp_path / "m.npz")
        for (k1, v1), (k2, v2) in zip(m.state_dict().items(), back.state_dict().items()):
            assert k1 == k2
            np.testing.assert_array_equal(v1, v2)


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    fastnet.save(make_model(), path)
    good = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        fastnet.save(make_model(), path)
    assert path.read_bytes() == good
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]


def test_custom_modules_are_refused_before_writing(tmp_path):
    class Mine(Module):
        pass

    with pytest.raises(TypeError, match="cannot describe a Mine"):
        fastnet.save(Sequential(Dense(2, 2), Mine()), tmp_path / "x.npz")
    assert not (tmp_path / "x.npz").exists()
    with pytest.raises(TypeError, match="expected a fastnet Module"):
        fastnet.save({"w": np.zeros(2)}, tmp_path / "x.npz")


def test_truncated_foreign_and_garbage_files_give_clear_errors(tmp_path):
    path = tmp_path / "model.npz"
    fastnet.save(make_model(), path)
    data = path.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"not a readable fastnet model file \(truncated or corrupt\)"):
        fastnet.load(tmp_path / "trunc.npz")
    np.savez(tmp_path / "foreign.npz", weight=np.zeros(3))
    with pytest.raises(ValueError, match="is an .npz file but not a fastnet model"):
        fastnet.load(tmp_path / "foreign.npz")
    (tmp_path / "junk.npz").write_bytes(b"hello, not a zip file at all")
    with pytest.raises(ValueError, match="not a readable fastnet model file"):
        fastnet.load(tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError):
        fastnet.load(tmp_path / "missing.npz")


def test_other_format_version_is_refused(tmp_path):
    import json
    np.savez(tmp_path / "v9.npz", __fastnet__=np.array(json.dumps(
        {"format": "fastnet-model", "version": 9, "model": {"type": "Dense"}})))
    with pytest.raises(ValueError, match="format version 9; this fastnet reads version 1"):
        fastnet.load(tmp_path / "v9.npz")
