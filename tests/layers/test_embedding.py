"""Embedding against torch.nn.Embedding (forward, weight gradient, padding_idx, init),
on every device (PyTorch's side stored in tests/data/torch_embedding_ce.npz by
tests/data/make_torch_embedding_ce.py); index validation; in a Sequential trained through
the Trainer with a DataLoader of integer features; save / load."""
import pathlib

import numpy as np
import pytest

import fastnet
from fastnet.data import ArrayDataset, DataLoader
from fastnet.device import device_of, to_numpy
from fastnet.layers import LSTM, Dense, Embedding, Flatten, LastHidden, Sequential
from fastnet.losses import CrossEntropyLoss
from fastnet.optim import SGD
from tests import reference as ref


REF = np.load(pathlib.Path(__file__).parents[1] / "data" / "torch_embedding_ce.npz")


def _key(*parts):
    return "/".join(str(p).replace(" ", "") for p in parts)


@pytest.mark.parametrize("shape", [(2, 5), (7,), (1, 1), (2, 3, 4), ()], ids=str)
@pytest.mark.parametrize("padding_idx", [None, 3, -1])
def test_matches_pytorch(dtype, device, to_dev, shape, padding_idx):
    """Forward bitwise PyTorch's, the weight gradient PyTorch's (repeated indices), the
    padding row's gradient 0; backward returns None."""
    tag = _key("emb", shape, padding_idx, np.dtype(dtype).name)
    weight, idx, dout = (REF[_key(tag, k)] for k in ("weight", "idx", "dout"))
    layer = Embedding(10, 4, padding_idx=padding_idx).to(dtype)
    layer.load_state_dict({"weight": weight})
    layer.to(device)
    arg = to_dev(idx) if shape else idx  # (to_dev makes 0-d arrays 1-d)
    y = layer(arg)
    assert device_of(y) == device and y.shape == shape + (4,) and y.dtype == dtype
    np.testing.assert_array_equal(to_numpy(y), REF[_key(tag, "y")])
    assert layer.backward(to_dev(dout)) is None
    np.testing.assert_allclose(to_numpy(layer.weight.grad), REF[_key(tag, "dweight")],
                               rtol=1e-6 if dtype == np.float32 else 1e-13, atol=1e-6)
    np.testing.assert_allclose(to_numpy(layer.weight.grad),
                               ref.embedding_backward(dout, idx, 10, layer.padding_idx),
                               rtol=1e-5, atol=1e-5)
    if padding_idx is not None:
        assert not to_numpy(layer.weight.grad)[layer.padding_idx].any()


@pytest.mark.parametrize("index_dtype", [np.int8, np.uint8, np.int32, np.uint32, np.int64,
                                         np.uint64])
def test_any_integer_dtype(rng, device, to_dev, index_dtype):
    layer = Embedding(6, 3).to(device)
    idx = rng.integers(0, 6, (3, 4)).astype(index_dtype)
    np.testing.assert_array_equal(to_numpy(layer(to_dev(idx))),
                                  to_numpy(layer.weight.data)[idx.astype(np.int64)])


def test_gradients_accumulate_and_are_deterministic(rng, device, to_dev):
    """Two backwards accumulate; the same batch gives the same bits every time."""
    layer = Embedding(5, 8).to(device)
    idx = rng.integers(0, 5, (64, 9))
    dout = rng.standard_normal((64, 9, 8)).astype(np.float32)
    grads = []
    for _ in range(3):
        layer.zero_grad()
        layer(to_dev(idx))
        layer.backward(to_dev(dout))
        grads.append(to_numpy(layer.weight.grad).copy())
    assert all(np.array_equal(g, grads[0]) for g in grads)
    layer(to_dev(idx))
    layer.backward(to_dev(dout))
    np.testing.assert_allclose(to_numpy(layer.weight.grad), 2 * grads[0], rtol=1e-6)


def test_init_is_pytorchs(device):
    """N(0, 1) entries (mean ~0, std ~1 over 20000 draws), the padding row zeros;
    a PyTorch state dict loads unchanged (key "weight")."""
    fastnet.manual_seed(0)
    layer = Embedding(1000, 20, padding_idx=-3)
    assert layer.padding_idx == 997 and list(layer.state_dict()) == ["weight"]
    w = layer.weight.data
    assert w.shape == (1000, 20) and w.dtype == np.float32 and not w[997].any()
    assert abs(w.mean()) < 0.05 and abs(w.std() - 1) < 0.05
    theirs = Embedding(100, 20, padding_idx=-3)  # a torch.nn.Embedding's state dict
    theirs.load_state_dict({"weight": REF["emb-init/weight"]})
    theirs.to(device)
    idx = np.array([[0, 97, 99]])
    np.testing.assert_array_equal(to_numpy(theirs(idx)), REF["emb-init/y"])


@pytest.mark.parametrize("bad, exc, match", [
    (np.array([[0, 10]]), ValueError, "index 10 is out of range for 10 embeddings"),
    (np.array([-1, 2]), ValueError, "index -1 is out of range"),
    (np.array([2**63 + 5], np.uint64), ValueError, "out of range"),
    (np.array([1.0, 2.0]), TypeError, "indices must be an integer array"),
    (np.array([True, False]), TypeError, "indices must be an integer array"),
    ([1, 2], TypeError, "expected a numpy.ndarray"),
])
def test_bad_indices_are_refused_before_any_kernel(device, to_dev, monkeypatch, bad, exc,
                                                   match):
    layer = Embedding(10, 3).to(device)
    import fastnet.layers.embedding as mod

    def no_kernel(*a):
        raise AssertionError("a kernel ran")
    monkeypatch.setattr(mod, "_kernel", no_kernel)
    arg = to_dev(bad) if isinstance(bad, np.ndarray) else bad
    with pytest.raises(exc, match=r"Embedding\(num_embeddings=10.*" + match):
        layer(arg)


def test_constructor_arguments():
    with pytest.raises(ValueError, match="padding_idx must be within num_embeddings"):
        Embedding(4, 2, padding_idx=4)
    with pytest.raises(ValueError, match="padding_idx must be within num_embeddings"):
        Embedding(4, 2, padding_idx=-5)
    with pytest.raises(TypeError, match="padding_idx must be an int"):
        Embedding(4, 2, padding_idx=1.0)
    with pytest.raises(ValueError, match="num_embeddings must be a positive int"):
        Embedding(0, 2)
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        Embedding(3, 2, dtype=np.int64)
    assert Embedding(4, 2, padding_idx=-4).padding_idx == 0


def test_backward_checks_the_gradient(device, to_dev):
    layer = Embedding(4, 2).to(device)
    layer(to_dev(np.array([1, 2, 3])))
    with pytest.raises(ValueError, match=r"expected a gradient of shape \(3, 2\)"):
        layer.backward(to_dev(np.ones((3, 3), np.float32)))


def test_empty_indices(device, to_dev):
    """No indices: an empty output, a zero gradient (as PyTorch)."""
    layer = Embedding(4, 2).to(device)
    y = layer(to_dev(np.zeros((0, 3), np.int64)))
    assert y.shape == (0, 3, 2)
    layer.backward(to_dev(np.zeros((0, 3, 2), np.float32)))
    assert not to_numpy(layer.weight.grad).any()


def _token_task(rng, n=64, t=6, vocab=12):
    """Label: whether token 0 occurs in the sequence."""
    x = rng.integers(0, vocab, (n, t))
    x[: n // 2, rng.integers(0, t)] = 0
    y = (x == 0).any(axis=1).astype(np.int64)
    return x, y


def test_sequential_trains_with_integer_features(rng, tmp_path):
    """Embedding first in a model: a DataLoader with int_features=True gives x as int64
    (not float32), the Trainer's backward skips the input gradient, the loss falls; the
    model saves and loads (the same outputs). Without int_features the float32 batch is
    refused by the Embedding, naming the option."""
    fastnet.manual_seed(5)
    x, y = _token_task(rng)
    model = Sequential(Embedding(12, 5, padding_idx=11), Flatten(), Dense(30, 2))
    xf, _ = next(iter(DataLoader(ArrayDataset(x, y), batch_size=16)))
    assert xf.dtype == np.float32
    with pytest.raises(TypeError, match="int_features=True"):
        model(xf)
    loader = DataLoader(ArrayDataset(x, y), batch_size=16, shuffle=True, seed=0,
                        int_features=True)
    xb, yb = next(iter(loader))
    assert xb.dtype == np.int64 and yb.dtype == np.int64
    trainer = fastnet.train.Trainer(model, SGD(model.parameters(), lr=0.3), CrossEntropyLoss(),
                                    progress=False, log=None)
    first = trainer.evaluate(loader)["loss"]
    trainer.fit(loader, epochs=15)
    assert trainer.evaluate(loader)["loss"] < 0.5 * first
    assert not model[0].weight.data[11].any()  # never updated
    fastnet.save(model, tmp_path / "m.npz")
    back = fastnet.load(tmp_path / "m.npz")
    model.eval(), back.eval()
    np.testing.assert_array_equal(back(x[:5]), model(x[:5]))
    np.testing.assert_array_equal(back(x[:5]), model(x[:5]))  # (the second call: planned)


@pytest.mark.cuda
def test_cuda_training_epoch_matches_cpu(rng):
    """One Trainer epoch (two batches) of Embedding -> Flatten -> Dense on CUDA ends with
    the CPU's parameters."""
    x, y = _token_task(rng, n=32)
    params = []
    for device in ("cpu", "cuda"):
        fastnet.manual_seed(7)
        model = Sequential(Embedding(12, 5, padding_idx=0), Flatten(), Dense(30, 2))
        loader = DataLoader(ArrayDataset(x, y), batch_size=16, shuffle=True, seed=1,
                            int_features=True)
        fastnet.train.Trainer(model, SGD(model.parameters(), lr=0.3), CrossEntropyLoss(),
                              device=device, progress=False, log=None).fit(loader, epochs=1)
        params.append({k: to_numpy(v) for k, v in model.state_dict().items()})
    for k in params[0]:
        np.testing.assert_allclose(params[1][k], params[0][k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert not params[1]["0.weight"][0].any()


def test_embedding_into_lstm(rng, device, to_dev):
    """Embedding -> LSTM -> LastHidden -> Dense: backward through the whole model gives the
    embedding a gradient and returns None (no input gradient)."""
    fastnet.manual_seed(6)
    model = Sequential(Embedding(7, 3), LSTM(3, 4), LastHidden(), Dense(4, 2)).to(device)
    idx = rng.integers(0, 7, (3, 5))
    out = model(to_dev(idx))
    loss = CrossEntropyLoss()
    loss(out, np.array([0, 1, 1]))
    assert model.backward(loss.backward()) is None
    assert np.abs(to_numpy(model[0].weight.grad)).sum() > 0
