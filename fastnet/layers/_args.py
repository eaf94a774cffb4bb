"""Argument checks shared by the layer constructors (NumPy scalars welcome)."""
import numbers


def is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def positive_int(value, name, owner):
    if not is_int(value):
        raise TypeError(f"{owner}: {name} must be a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")
    return int(value)


def real(value, name, owner, lo=None, hi=None):
    """A real number (int, float, NumPy scalar) within [lo, hi] -> float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a number, got {value!r}")
    v = float(value)
    if v != v or abs(v) == float("inf") or (lo is not None and v < lo) or (hi is not None and v > hi):
        where = "a finite number" if lo is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{owner}: {name} must be {where}, got {value!r}")
    return v


def pair(value, name, owner, minimum):
    """An int or a pair of ints -> (h, w), each >= minimum."""
    v = (value, value) if is_int(value) else value
    if not isinstance(v, (tuple, list)) or len(v) != 2 or not all(is_int(e) for e in v):
        raise TypeError(
            f"{owner}: {name} must be an int or a pair of ints >= {minimum}, got {value!r}"
        )
    if any(e < minimum for e in v):
        raise ValueError(
            f"{owner}: {name} must be an int or a pair of ints >= {minimum}, got {value!r}"
        )
    return (int(v[0]), int(v[1]))


def window_size(size, kernel, stride, padding, dilation=1):
    """PyTorch's output size along one axis: (size + 2p - d*(k-1) - 1) // s + 1."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def check_spatial(layer, x, kernel_size, stride, padding, dilation=(1, 1)):
    """Output (OH, OW) of a (dilated) sliding window over x (N, C, H, W); ValueError if
    empty."""
    h, w = x.shape[2], x.shape[3]
    oh = window_size(h, kernel_size[0], stride[0], padding[0], dilation[0])
    ow = window_size(w, kernel_size[1], stride[1], padding[1], dilation[1])
    if oh < 1 or ow < 1:
        dilated = (f" dilated by {dilation[0]}x{dilation[1]}" if tuple(dilation) != (1, 1)
                   else "")
        raise ValueError(
            f"{layer!r}: input of {h}x{w} is smaller than the {kernel_size[0]}x{kernel_size[1]} "
            f"window{dilated} with padding {padding[0]}x{padding[1]}; got input shape "
            f"{tuple(x.shape)}"
        )
    return oh, ow


def check_activation(activation, owner):
    """A fused-epilogue activation name (None, "relu", "sigmoid", "tanh")."""
    from ..kernels.activations import ACTIVATIONS

    if activation not in ACTIVATIONS:
        raise ValueError(f"{owner}: activation must be one of "
                         f"{sorted(a for a in ACTIVATIONS if a)} or None, got {activation!r}")
    return activation
