"""The character-level language model: fastnet/data/text.py, fastnet.models.CharLSTM, its
training, files and sampling, and ``python -m fastnet train --data text`` / ``generate``."""
import json
import math
import re

import numpy as np
import pytest

import fastnet
from fastnet import cli
from fastnet.cli import main
from fastnet.data import (CharVocab, DataLoader, TextWindows, load_char_data, load_text,
                          split_text)
from fastnet.errors import FileFormatError
from fastnet.losses import CrossEntropyLoss
from fastnet.models import MODELS, TEXT_MODELS, CharLSTM
from fastnet.optim import Adam
from fastnet.serialization import _describe, check_state_shapes, expected_state
from fastnet.train import Trainer, bits, load_model

SMALL_TEXT = load_text()[:12000]


# ---- data ------------------------------------------------------------------------------------
def test_text_is_the_documentation_in_sorted_key_order():
    from pydoc_data.topics import topics

    text = load_text()
    assert len(text) > 300_000 and text == load_text()
    first = sorted(topics)[0]
    assert text.startswith(topics[first])
    assert "def" in text and "class" in text


def test_vocabulary_is_every_character_sorted_and_round_trips():
    text = load_text()
    vocab = CharVocab.from_text(text)
    assert vocab.chars == "".join(sorted(set(text)))
    ids = vocab.encode(text)
    assert ids.dtype == np.int64 and ids.min() == 0 and ids.max() == len(vocab) - 1
    assert vocab.decode(ids[:500]) == text[:500]
    # an unsorted vocabulary maps by position too
    assert CharVocab("cab").encode("abcab").tolist() == [1, 2, 0, 1, 2]
    with pytest.raises(ValueError, match=r"not in the vocabulary: '\\t', 'é'"):
        vocab.encode("tab\there é")
    with pytest.raises(ValueError, match="distinct"):
        CharVocab("aa")


def test_split_is_by_position_and_covers_the_text():
    ids = np.arange(1000)
    train, val, test = split_text(ids, 0.05, 0.05)
    assert (len(train), len(val), len(test)) == (900, 50, 50)
    np.testing.assert_array_equal(np.concatenate([train, val, test]), ids)
    assert len(split_text(ids, 0.0, 0.1)[1]) == 0
    with pytest.raises(ValueError, match="below 1"):
        split_text(ids, 0.5, 0.5)
    data = load_char_data(100)
    assert sum(data["chars"]) == len(load_text())
    assert data["chars"][1] == data["chars"][2] == round(0.05 * len(load_text()))


def test_windows_are_inputs_and_next_characters():
    ids = np.arange(23)
    w = TextWindows(ids, 5)
    assert len(w) == 4  # starts 0, 5, 10, 15 (each needs 6 characters)
    x, y = w[np.array([0, 3])]
    assert x.tolist() == [[0, 1, 2, 3, 4], [15, 16, 17, 18, 19]]
    np.testing.assert_array_equal(y, x + 1)
    assert x.dtype == y.dtype == np.int64
    assert len(TextWindows(ids, 5, stride=1)) == 18
    with pytest.raises(ValueError, match="no window"):
        TextWindows(np.arange(5), 5)
    with pytest.raises(TypeError, match="integer"):
        TextWindows(np.zeros(10), 3)


def test_loader_batches_are_int64_and_deterministic_for_a_seed():
    data = load_char_data(20, text=SMALL_TEXT)

    def epoch(seed):
        loader = DataLoader(data["train"], 8, shuffle=True, seed=seed, int_features=True)
        return [(x.copy(), y.copy()) for x, y in loader]

    a, b, c = epoch(3), epoch(3), epoch(4)
    assert a[0][0].dtype == np.int64 and a[0][0].shape == (8, 20)
    assert all(np.array_equal(x1, x2) and np.array_equal(y1, y2)
               for (x1, y1), (x2, y2) in zip(a, b))
    assert not np.array_equal(a[0][0], c[0][0])
    every = np.sort(np.concatenate([x[:, 0] for x, _ in a]))  # each window once per epoch
    starts = data["train"][np.arange(len(data["train"]))][0][:, 0]
    np.testing.assert_array_equal(every, np.sort(starts))


# ---- the model -------------------------------------------------------------------------------
def small_model(vocab="abcdefgh", dropout=0.0, dtype="float32"):
    fastnet.manual_seed(0)
    return CharLSTM(vocab, embedding_dim=6, hidden_size=10, num_layers=2, dropout=dropout,
                    dtype=dtype)


def test_forward_backward_shapes_and_gradients():
    model = small_model(dtype="float64")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 8, (3, 7)), rng.integers(0, 8, (3, 7))
    loss_fn = CrossEntropyLoss()
    logits = model(x)
    assert logits.shape == (3, 8, 7)
    loss = loss_fn(logits, y)
    assert model.backward(loss_fn.backward()) is None
    grads = {k: p.grad.copy() for k, p in model.named_parameters()}
    assert set(grads) == set(model.state_dict())
    assert all(g.shape == p.shape for (k, p), g in zip(model.named_parameters(), grads.values()))
    # finite differences through every part: the head, the second layer, the embedding
    for name, index in (("head.bias", (2,)), ("head.weight", (1, 3)),
                        ("lstm.weight_hh_l1", (5, 4)), ("embedding.weight", (int(x[0, 0]), 1))):
        p = dict(model.named_parameters())[name]
        old = p.data[index]
        values = []
        for h in (1e-6, -1e-6):
            p.data[index] = old + h
            values.append(loss_fn(model(x), y))
        p.data[index] = old
        assert abs((values[0] - values[1]) / 2e-6 - grads[name][index]) < 1e-6, name
    assert math.isfinite(loss)
    # the logits view (N, T, V) rows without a copy; a C-contiguous gradient of the same
    # values gives the same gradients as CrossEntropyLoss's view
    assert logits.transpose(0, 2, 1).flags.c_contiguous
    for p in model.parameters():
        p.grad = None
    loss_fn(model(x), y)  # (the parameters as they were for grads)
    model.backward(np.ascontiguousarray(loss_fn.backward()))
    for k, p in model.named_parameters():
        np.testing.assert_array_equal(p.grad, grads[k])
    with pytest.raises(ValueError, match=r"\(N, T\)"):
        model(x[0])
    with pytest.raises(ValueError, match="out of range"):
        model(x + 8)


@pytest.mark.cuda
def test_cuda_matches_the_cpu():
    """The model on CUDA (the logits a C-contiguous device array, swapped on the device)
    gives the CPU's loss and gradients."""
    from fastnet.device import to_numpy

    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 8, (2, 5)), rng.integers(0, 8, (2, 5))
    got = []
    for device in ("cpu", "cuda"):
        model = small_model().to(device)
        loss_fn = CrossEntropyLoss()
        loss = float(loss_fn(model(x), y))
        model.backward(loss_fn.backward())
        got.append((loss, {k: to_numpy(p.grad) for k, p in model.named_parameters()}))
    (lc, gc), (lg, gg) = got
    assert lg == pytest.approx(lc, rel=1e-5)
    for k in gc:
        np.testing.assert_allclose(gg[k], gc[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_registered_as_char_lstm_with_the_defaults():
    model = MODELS["char-lstm"]("abc")
    assert MODELS["char-lstm"] is TEXT_MODELS["char-lstm"]
    assert (model.embedding.embedding_dim, model.lstm.hidden_size, model.lstm.num_layers) == \
        (64, 256, 2)


def test_a_tiny_training_run_lowers_the_loss():
    data = load_char_data(16, text=SMALL_TEXT)
    fastnet.manual_seed(0)
    model = CharLSTM(data["vocab"].chars, embedding_dim=8, hidden_size=32)
    trainer = Trainer(model, Adam(model.parameters(), lr=0.01), progress=False, log=None,
                      bits_per_char=True)
    history = trainer.fit(DataLoader(data["train"], 16, shuffle=True, seed=0, int_features=True),
                          DataLoader(data["val"], 32, int_features=True), epochs=4)
    assert history[-1]["val_loss"] < history[0]["val_loss"] < math.log(len(data["vocab"]))
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    for r in history:
        assert 0 <= r["train_acc"] <= 1 and 0 <= r["val_acc"] <= 1  # over the positions
        assert r["train_bpc"] == pytest.approx(r["train_loss"] / math.log(2))
        assert r["val_bpc"] == pytest.approx(r["val_loss"] / math.log(2))
    assert bits(math.log(2)) == pytest.approx(1.0) and bits(None) is None


def test_save_load_keeps_the_vocabulary_and_refuses_bad_files(tmp_path):
    model = small_model("xyz\n é")
    path = tmp_path / "m.npz"
    fastnet.save(model, path)
    back = fastnet.load(path)
    assert isinstance(back, CharLSTM) and back.vocab == "xyz\n é"
    x = np.array([[0, 1, 2, 3, 4, 5]])
    np.testing.assert_array_equal(back.eval()(x), model.eval()(x))
    described = json.loads(json.dumps({"model": _describe(model)}))
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert expected_state(described, "m", "t") == shapes
    # a description whose vocabulary does not fit the arrays, or repeats a character
    for vocab in ("xyz\n éq", "xxz\n é", ""):
        bad = json.loads(json.dumps(described))
        bad["model"]["config"]["vocab"] = vocab
        with pytest.raises(FileFormatError):
            check_state_shapes(expected_state(bad, "m", "t"), shapes, "m", "t")


def test_checkpoint_resume_is_the_uninterrupted_run(tmp_path):
    data = load_char_data(12, text=SMALL_TEXT[:4000])

    def run(epochs, out, resume=None):
        model = small_model(data["vocab"].chars, dropout=0.3)
        trainer = Trainer(model, Adam(model.parameters(), lr=0.01), progress=False, log=None,
                          checkpoint_dir=out, bits_per_char=True)
        trainer.fit(DataLoader(data["train"], 16, shuffle=True, seed=1, int_features=True),
                    DataLoader(data["val"], 16, int_features=True), epochs=epochs, resume=resume)
        return model, trainer

    straight, _ = run(2, tmp_path / "a")
    run(1, tmp_path / "b")
    resumed, trainer = run(2, tmp_path / "b", resume=tmp_path / "b")
    assert trainer.epoch == 2 and len(trainer.history) == 2
    for (k, v), (_, w) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        np.testing.assert_array_equal(v, w, err_msg=k)
    loaded, info = load_model(tmp_path / "b" / "checkpoint.npz")
    assert isinstance(loaded, CharLSTM) and loaded.vocab == data["vocab"].chars
    assert info["epoch"] == 2


def test_generate_is_seeded_and_checks_its_arguments():
    model = small_model()
    a = model.generate("abc", 40, 0.7, seed=5)
    assert len(a) == 40 and set(a) <= set("abcdefgh")
    assert a == model.generate("abc", 40, 0.7, seed=5)
    assert a != model.generate("abc", 40, 0.7, seed=6)
    assert model.generate("a", 0, 1.0, seed=0) == ""
    assert model.training  # the mode is restored
    with pytest.raises(ValueError, match="'Q', 'z'"):
        model.generate("abQz", 5)
    with pytest.raises(ValueError, match="temperature"):
        model.generate("ab", 5, temperature=0)
    with pytest.raises(ValueError, match="length"):
        model.generate("ab", -1)


# ---- the CLI ---------------------------------------------------------------------------------
@pytest.fixture
def small_cli(monkeypatch):
    """The CLI's text job on 12,000 characters with a small CharLSTM: seconds, not minutes."""
    monkeypatch.setattr(cli, "_load_text", lambda seq_len, val_fraction: load_char_data(
        seq_len, val_fraction, cli.TEXT_TEST_FRACTION, text=SMALL_TEXT))
    monkeypatch.setitem(TEXT_MODELS, "char-lstm",
                        lambda vocab: CharLSTM(vocab, embedding_dim=8, hidden_size=24))


def test_cli_text_takes_clip_grad_norm_warmup_and_onecycle(small_cli, tmp_path, capsys):
    """The character models' path shares the image path's schedule and clipping set-up."""
    args = ["train", "--model", "char-lstm", "--data", "text", "--seq-len", "32",
            "--batch-size", "64", "--epochs", "1", "--no-progress", "--clip-grad-norm", "1"]
    assert main(args + ["--warmup", "3", "--out", str(tmp_path)]) == 0
    assert "(cosine schedule, 3 warmup steps, gradient norm clipped to 1)" in \
        capsys.readouterr().out
    config = json.loads((tmp_path / "metrics.json").read_text())["config"]
    assert config["warmup"] == 3 and config["clip_grad_norm"] == 1.0 and config["seq_len"] == 32
    assert main(args + ["--schedule", "onecycle", "--warmup", "3"]) == 2
    assert "warms up by itself" in capsys.readouterr().err


def test_cli_trains_reports_bits_per_char_resumes_and_generates(small_cli, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--model", "char-lstm", "--data", "text", "--seq-len", "32",
            "--batch-size", "32", "--lr", "0.01", "--no-progress", "--out", str(out)]
    assert main(args + ["--epochs", "1"]) == 0
    text = capsys.readouterr().out
    assert "adam lr=0.01" in text and "windows of 32" in text
    line = re.search(r"epoch +1/1 +loss ([\d.]+) +\(([\d.]+) bits/char\) +train acc +[\d.]+% +"
                     r"val loss ([\d.]+) +\(([\d.]+) bits/char\)", text)
    assert line, text
    assert float(line.group(2)) == pytest.approx(float(line.group(1)) / math.log(2), abs=2e-3)
    assert float(line.group(4)) == pytest.approx(float(line.group(3)) / math.log(2), abs=2e-3)
    metrics = json.loads((out / "metrics.json").read_text())
    test = metrics["test"]
    assert test["bpc"] == pytest.approx(test["loss"] / math.log(2))
    assert f"test: {test['bpc']:.3f} bits/char" in text
    assert metrics["history"][0]["val_bpc"] == pytest.approx(
        metrics["history"][0]["val_loss"] / math.log(2))
    assert metrics["config"]["seq_len"] == 32 and metrics["config"]["optimizer"] == "adam"

    assert main(args + ["--epochs", "2", "--resume", str(out)]) == 0
    text = capsys.readouterr().out
    assert "resumed from" in text and re.search(r"epoch +2/2 .*bits/char", text)

    gen = ["generate", "--checkpoint", str(out), "--prompt", "The ", "--length", "50"]
    assert main(gen + ["--seed", "3", "--temperature", "0.5"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("The ") and len(first) == len("The ") + 50 + 1
    assert main(gen + ["--seed", "3", "--temperature", "0.5"]) == 0
    assert capsys.readouterr().out == first
    assert main(["generate", "--checkpoint", str(out), "--prompt", "ok", "--length", "0"]) == 0
    assert capsys.readouterr().out == "ok\n"

    assert main(["generate", "--checkpoint", str(out), "--prompt", "tü\t"]) == 2
    err = capsys.readouterr().err
    assert "2 character(s) the model does not know: '\\t', 'ü'" in err
    for bad in (["--temperature", "0"], ["--temperature", "-1"], ["--length", "-1"]):
        with pytest.raises(SystemExit) as e:
            main(["generate", "--checkpoint", str(out)] + bad)
        assert e.value.code == 2
    capsys.readouterr()

    assert main(["evaluate", "--checkpoint", str(out)]) == 0
    assert re.search(r"text test split, \d+ characters: [\d.]+ bits/char",
                     capsys.readouterr().out)


def test_cli_refuses_mismatched_models_and_data(tmp_path, capsys):
    assert main(["train", "--model", "lenet", "--data", "text", "--no-progress"]) == 2
    assert "--data text needs a character model" in capsys.readouterr().err
    assert main(["train", "--model", "char-lstm", "--no-progress"]) == 2
    assert "reads text: use --data text" in capsys.readouterr().err
    assert main(["train", "--seq-len", "10", "--no-progress"]) == 2
    assert "--seq-len is for --data text" in capsys.readouterr().err
    model = fastnet.models.mlp()
    fastnet.save(model, tmp_path / "mlp.npz")
    assert main(["generate", "--checkpoint", str(tmp_path / "mlp.npz")]) == 2
    assert "not a character model" in capsys.readouterr().err
