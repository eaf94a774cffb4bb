"""Ready-made models for the training job."""
from .layers import (LSTM, BatchNorm2D, Conv2D, Dense, Flatten, GlobalAvgPool2D, ImageRows,
                     LastHidden, MaxPool2D, ReLU, Residual, Sequential)


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
