"""Ready-made models for the training job."""
from .layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sequential


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


MODELS = {"mlp": mlp, "lenet": lenet}
