"""Ready-made models for the training job."""
import numbers

import numpy as np

from .device import to_numpy
from .layers import (LSTM, BatchNorm2D, Conv2D, Dense, Embedding, Flatten, GlobalAvgPool2D,
                     ImageRows, LastHidden, MaxPool2D, ReLU, Residual, Sequential)
from .layers.module import Module, check_grad


def mlp(in_shape=(1, 8, 8), num_classes=10, hidden=(128, 64)):
    """Flatten -> Dense+ReLU for each hidden width -> Dense(num_classes)."""
    size = 1
    for d in in_shape:
        size *= d
    layers = [Flatten()]
    for h in hidden:
        layers.append(Dense(size, h, activation="relu"))
        size = h
    layers.append(Dense(size, num_classes))
    return Sequential(*layers)


def lenet(in_shape=(1, 8, 8), num_classes=10):
    """LeNet-5: conv(6) relu pool, conv(16) relu pool, dense 120-84-classes.

    On 28x28 input this is the classic network (5x5 convolutions, the first padded by 2,
    400 features into the dense head). Smaller images (the 8x8 digits) get 3x3
    convolutions padded by 1, so both pools still have something to pool.
    """
    c, h, w = in_shape
    if min(h, w) >= 28:
        k, p2 = 5, 0
    else:
        k, p2 = 3, 1
    p1 = k // 2
    h, w = h // 2, w // 2
    h, w = (h + 2 * p2 - k + 1) // 2, (w + 2 * p2 - k + 1) // 2
    return Sequential(
        Conv2D(c, 6, k, padding=p1), ReLU(), MaxPool2D(2),
        Conv2D(6, 16, k, padding=p2), ReLU(), MaxPool2D(2),
        Flatten(),
        Dense(16 * h * w, 120, activation="relu"),
        Dense(120, 84, activation="relu"),
        Dense(84, num_classes),
    )


def vgg_small(in_shape=(1, 28, 28), num_classes=10):
    """A small VGG: two blocks of two 3x3 convolutions (32 then 64 channels, padding 1,
    ReLU fused) each followed by a 2x2 max pool, then dense 256 (ReLU) and num_classes.
    The dense head's input size follows from ``in_shape`` (1x28x28: 64*7*7, 1x8x8: 64*2*2).
    """
    c, h, w = in_shape
    if min(h, w) < 4:
        raise ValueError(f"vgg_small: images must be at least 4x4 (two 2x2 pools), got {h}x{w}")
    h, w = h // 2 // 2, w // 2 // 2
    return Sequential(
        Conv2D(c, 32, 3, padding=1, activation="relu"),
        Conv2D(32, 32, 3, padding=1, activation="relu"),
        MaxPool2D(2),
        Conv2D(32, 64, 3, padding=1, activation="relu"),
        Conv2D(64, 64, 3, padding=1, activation="relu"),
        MaxPool2D(2),
        Flatten(),
        Dense(64 * h * w, 256, activation="relu"),
        Dense(256, num_classes),
    )


lenet5 = lenet  # the name the model zoo uses (LeNet-5)


def _basic_block(cin, cout, stride):
    """conv3x3-BN-ReLU-conv3x3-BN plus the input, or a 1x1 conv + BN projection of it when
    the shape changes; the ReLU after the sum follows the block."""
    block = Sequential(
        Conv2D(cin, cout, 3, stride=stride, padding=1, bias=False), BatchNorm2D(cout), ReLU(),
        Conv2D(cout, cout, 3, padding=1, bias=False), BatchNorm2D(cout),
    )
    shortcut = None
    if stride != 1 or cin != cout:
        shortcut = Sequential(Conv2D(cin, cout, 1, stride=stride, bias=False), BatchNorm2D(cout))
    return Residual(block, shortcut)


def resnet_small(in_shape=(3, 32, 32), num_classes=10):
    """A CIFAR-style ResNet (He et al. 2016, section 4.2) with one basic block per stage:
    conv3x3(16)-BN-ReLU stem, stages of 16, 32 (stride 2) and 64 (stride 2) channels,
    global average pooling, Dense(num_classes). 8 conv layers; any input of at least 1x1
    works (1x8x8 digits end the stages at 2x2, 3x32x32 images at 8x8)."""
    c = in_shape[0]
    return Sequential(
        Conv2D(c, 16, 3, padding=1, bias=False), BatchNorm2D(16), ReLU(),
        _basic_block(16, 16, 1), ReLU(),
        _basic_block(16, 32, 2), ReLU(),
        _basic_block(32, 64, 2), ReLU(),
        GlobalAvgPool2D(),
        Dense(64, num_classes),
    )


# The one registry of named models (the CLI's --model choices): name -> f(in_shape, num_classes).
MODELS = {"mlp": mlp, "lenet": lenet, "lenet5": lenet5, "vgg-small": vgg_small,
          "resnet-small": resnet_small}


def lstm(in_shape=(1, 8, 8), num_classes=10, hidden=64):
    """A sequence classifier: single-channel images (1, H, W) read row by row (H
    timesteps of W features) by an LSTM, its last hidden state into Dense(num_classes).
    It learns slowly at the convolutional nets' SGD step, hence its own default learning
    rates (``MODEL_LR``, used by the CLI)."""
    c, h, w = in_shape
    if c != 1:
        raise ValueError(f"lstm: reads single-channel images row by row, got {c} channels")
    return Sequential(ImageRows(), LSTM(w, hidden), LastHidden(), Dense(hidden, num_classes))


MODELS["lstm"] = lstm
# Models whose default learning rates differ from the CLI's: name -> {optimizer: lr}.
MODEL_LR = {"lstm": {"sgd": 0.5, "adam": 0.01}}


class CharLSTM(Module):
    """A character-level language model: Embedding(len(vocab), embedding_dim) -> LSTM
    (num_layers, batch_first, dropout between the layers) -> Dense(hidden_size,
    len(vocab)) at every position.

    ``vocab`` is the string of the characters it reads and writes (id i is ``vocab[i]``):
    part of the model's description, so ``fastnet.save``, checkpoints and ``generate`` keep
    the mapping the model was trained with. ``model(x)`` takes ids x (N, T) (any integer
    dtype) and returns the logits of the next character in CrossEntropyLoss's sequence
    layout, (N, len(vocab), T), so that ``Trainer`` (its loss, and its accuracy: argmax
    over axis 1) takes it as it is. state_dict keys: ``embedding.weight``, ``lstm.*``
    (PyTorch's names), ``head.weight``, ``head.bias``."""

    def __init__(self, vocab, embedding_dim=64, hidden_size=256, num_layers=2, dropout=0.0,
                 dtype="float32"):
        if not isinstance(vocab, str) or not vocab:
            raise TypeError(f"CharLSTM: vocab must be a non-empty string of characters, got "
                            f"{vocab!r:.60}")
        if len(set(vocab)) != len(vocab):
            raise ValueError("CharLSTM: the characters of vocab must be distinct")
        self.vocab = vocab
        self.embedding = Embedding(len(vocab), embedding_dim, dtype=dtype)
        self.lstm = LSTM(embedding_dim, hidden_size, num_layers=num_layers, dropout=dropout,
                         batch_first=True, dtype=dtype)
        self.head = Dense(hidden_size, len(vocab), dtype=dtype)

    def config(self):
        return {"vocab": self.vocab, "embedding_dim": self.embedding.embedding_dim,
                "hidden_size": self.lstm.hidden_size, "num_layers": self.lstm.num_layers,
                "dropout": self.lstm.dropout}

    def __repr__(self):
        return (f"CharLSTM({len(self.vocab)} characters, embedding_dim="
                f"{self.embedding.embedding_dim}, hidden_size={self.lstm.hidden_size}, "
                f"num_layers={self.lstm.num_layers}, dropout={self.lstm.dropout})")

    def _ids(self, x):
        if getattr(x, "ndim", None) != 2 or 0 in x.shape:
            raise ValueError(f"{self!r}: expected character ids of shape (N, T), got "
                             f"{getattr(x, 'shape', type(x).__name__)}")
        return x

    def _logits(self, out):
        """(N, T, H) LSTM outputs -> (N, T, V) logits."""
        n, t, h = out.shape
        return self.head(out.reshape(n * t, h)).reshape(n, t, len(self.vocab))

    def forward(self, x, hx=None):
        x = self._ids(x)
        out, _ = self.lstm(self.embedding(x), hx)
        logits = self._logits(out)
        if self.training:
            self._saved = (out.shape, logits.dtype)
        # (N, V, T), CrossEntropyLoss's layout: on the CPU a view of the (N, T, V) rows
        # (no copy; CrossEntropyLoss takes the rows as they are, and its gradient comes back
        # as the same kind of view)
        return self.device.last_axes_view(logits)

    def backward(self, grad_out, input_grad=True):
        (n, t, h), dtype = self._saved_for_backward()
        v = len(self.vocab)
        rows = self.device.unswapped(grad_out)
        if rows is not None and rows.shape == (n, t, v) and rows.dtype == dtype:
            g = rows.reshape(n * t, v)  # a view of (N, T, V) rows: CrossEntropyLoss's
        else:
            grad_out = check_grad(self, grad_out, (n, v, t), dtype)
            g = self.device.swap_last_axes(grad_out).reshape(n * t, v)
        dh = self.head.backward(g)
        de = self.lstm.backward(dh.reshape(n, t, h))
        self.embedding.backward(de)
        return None  # ids have no gradient

    def step(self, x, hx=None):
        """Eval-mode forward that also returns the LSTM's state: (logits (N, T, V), (h_n,
        c_n)) for ids x (N, T) continuing from the state ``hx`` (None: zeros)."""
        out, state = self.lstm(self.embedding(self._ids(x)), hx)
        return self._logits(out), state

    def generate(self, prompt, length, temperature=1.0, seed=None):
        """``length`` characters sampled after ``prompt`` (a non-empty string of the
        vocabulary's characters), one at a time from softmax(logits / temperature), with
        ``numpy.random.default_rng(seed)``: the same text for the same seed. Runs in eval
        mode (the model's mode is restored)."""
        if not isinstance(prompt, str) or not prompt:
            raise ValueError("CharLSTM.generate: the prompt must be a non-empty string")
        unknown = sorted(set(prompt) - set(self.vocab))
        if unknown:
            raise ValueError(f"CharLSTM.generate: the prompt has characters the model does "
                             f"not know: {', '.join(repr(c) for c in unknown)}")
        if isinstance(length, bool) or not isinstance(length, numbers.Integral) or length < 0:
            raise ValueError(f"CharLSTM.generate: length must be an int >= 0, got {length!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) \
                or not (0 < temperature < float("inf")):
            raise ValueError(f"CharLSTM.generate: temperature must be a positive finite "
                             f"number, got {temperature!r}")
        rng = np.random.default_rng(seed)
        index = {c: i for i, c in enumerate(self.vocab)}
        was_training = self.training
        self.eval()
        out = []
        try:
            x = np.array([[index[c] for c in prompt]], dtype=np.int64)
            state = None
            for _ in range(int(length)):
                logits, state = self.step(x, state)
                z = to_numpy(logits[0, -1]).astype(np.float64) / float(temperature)
                p = np.exp(z - z.max())
                p /= p.sum()
                k = int(rng.choice(len(p), p=p))
                out.append(self.vocab[k])
                x = np.array([[k]], dtype=np.int64)
        finally:
            self.train(was_training)
        return "".join(out)


def char_lstm(vocab, embedding_dim=64, hidden_size=256, num_layers=2, dropout=0.0):
    """``CharLSTM``: the character-level language model of ``--model char-lstm``."""
    return CharLSTM(vocab, embedding_dim, hidden_size, num_layers, dropout)


# Models that read text (``--data text``): name -> f(vocab); the CLI builds them from the
# data's vocabulary instead of an image shape.
TEXT_MODELS = {"char-lstm": char_lstm}
MODELS["char-lstm"] = char_lstm
MODEL_LR["char-lstm"] = {"sgd": 1.0, "adam": 3e-3}
