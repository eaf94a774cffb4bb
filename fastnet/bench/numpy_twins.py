"""The same maths as fastnet, written as a NumPy user would write it: vectorised
array expressions, im2col through ``sliding_window_view`` and one matmul, pooling
through reshapes, scatters as slice-adds. Float32 in, float32 out. No numba.

Each layer has ``forward(x)`` and ``backward(g, input_grad=True)``; the gradients of
its ``params`` land in ``grads`` (same keys), as a small NumPy training loop keeps them.
"""
import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .cases import MOMENTUM, Bench, conv_dilation, conv_groups, key_prefix


class Layer:
    def __init__(self):
        self.params, self.grads = {}, {}


class _Weighted(Layer):
    """A layer with weights and an optional ReLU on its output, applied in place."""

    def __init__(self, activation):
        super().__init__()
        assert activation in (None, "relu")
        self.relu = activation == "relu"

    def _activate(self, y):
        if self.relu:
            np.maximum(y, 0, out=y)
        self.y = y
        return y

    def _activation_grad(self, g):
        return g * (self.y > 0) if self.relu else g


class Dense(_Weighted):
    def forward(self, x):
        y = x @ self.params["weight"].T
        y += self.params["bias"]
        self.x = x
        return self._activate(y)

    def backward(self, g, input_grad=True):
        g = self._activation_grad(g)
        self.grads = {"weight": g.T @ self.x, "bias": g.sum(axis=0)}
        return g @ self.params["weight"] if input_grad else None


class Conv2D(_Weighted):
    def __init__(self, k, stride, padding, activation):
        super().__init__(activation)
        self.k, self.s, self.p = k, stride, padding

    def forward(self, x):
        k, s, p = self.k, self.s, self.p
        n, c, h, w = x.shape
        xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p))) if p else x
        win = sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::s, ::s]  # N C OH OW k k
        oh, ow = win.shape[2:4]
        # im2col: one row per output pixel, (C, kh, kw) along the row; reshape copies
        self.cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * k * k)
        weight = self.params["weight"]
        y = self.cols @ weight.reshape(len(weight), -1).T
        if "bias" in self.params:  # a conv before a batch norm has none
            y += self.params["bias"]
        self.x_shape = x.shape
        return self._activate(np.ascontiguousarray(y.reshape(n, oh, ow, -1).transpose(0, 3, 1, 2)))

    def backward(self, g, input_grad=True):
        k, s, p = self.k, self.s, self.p
        n, c, h, w = self.x_shape
        weight = self.params["weight"]
        o, oh, ow = g.shape[1:]
        g = self._activation_grad(g)
        g2 = g.transpose(0, 2, 3, 1).reshape(-1, o)
        self.grads = {"weight": (g2.T @ self.cols).reshape(weight.shape)}
        if "bias" in self.params:
            self.grads["bias"] = g2.sum(axis=0)
        if not input_grad:
            return None
        dcols = (g2 @ weight.reshape(o, -1)).reshape(n, oh, ow, c, k, k)
        dxp = np.zeros((n, c, h + 2 * p, w + 2 * p), g.dtype)
        for i in range(k):  # col2im: each window offset adds a strided slice
            for j in range(k):
                dxp[:, :, i:i + s * oh:s, j:j + s * ow:s] += dcols[..., i, j].transpose(0, 3, 1, 2)
        return dxp[:, :, p:p + h, p:p + w]


class DepthwiseConv2D(_Weighted):
    """groups == channels == out channels: a sum of KxK shifted (strided, dilated) slices
    of the padded batch, each scaled by its tap's per-channel weight, vectorised over the
    whole batch (products into one scratch array, no per-tap allocation)."""

    def __init__(self, k, stride, padding, activation, dilation):
        super().__init__(activation)
        self.k, self.s, self.p, self.d = k, stride, padding, dilation

    def _taps(self, a, oh, ow):
        """(i, j, the slice of ``a`` (padded) that tap (i, j) reads)."""
        k, s, d = self.k, self.s, self.d
        for i in range(k):
            for j in range(k):
                yield i, j, a[:, :, d * i:d * i + s * (oh - 1) + 1:s, d * j:d * j + s * (ow - 1) + 1:s]

    def forward(self, x):
        k, s, p, d = self.k, self.s, self.p, self.d
        n, c, h, w = x.shape
        xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p))) if p else x
        oh, ow = (h + 2 * p - d * (k - 1) - 1) // s + 1, (w + 2 * p - d * (k - 1) - 1) // s + 1
        weight = self.params["weight"][:, 0]  # (C, k, k)
        y, tmp = np.empty((n, c, oh, ow), x.dtype), np.empty((n, c, oh, ow), x.dtype)
        for i, j, win in self._taps(xp, oh, ow):
            if i == 0 and j == 0:
                np.multiply(win, weight[None, :, i, j, None, None], out=y)
            else:
                np.multiply(win, weight[None, :, i, j, None, None], out=tmp)
                y += tmp
        if "bias" in self.params:
            y += self.params["bias"][None, :, None, None]
        self.xp, self.x_shape = xp, x.shape
        return self._activate(y)

    def backward(self, g, input_grad=True):
        p = self.p
        n, c, h, w = self.x_shape
        weight = self.params["weight"]
        g = self._activation_grad(g)
        oh, ow = g.shape[2:]
        dw = np.empty_like(weight)
        for i, j, win in self._taps(self.xp, oh, ow):
            dw[:, 0, i, j] = np.einsum("nchw,nchw->c", g, win)
        self.grads = {"weight": dw}
        if "bias" in self.params:
            self.grads["bias"] = g.sum(axis=(0, 2, 3))
        if not input_grad:
            return None
        dxp = np.zeros((n, c, h + 2 * p, w + 2 * p), g.dtype)
        tmp = np.empty_like(g)
        for i, j, win in self._taps(dxp, oh, ow):
            np.multiply(g, weight[None, :, 0, i, j, None, None], out=tmp)
            win += tmp
        return dxp[:, :, p:p + h, p:p + w]


def _conv(s):
    if conv_groups(s) == 1 and conv_dilation(s) == 1:
        return Conv2D(*s[3:7])
    assert conv_groups(s) == s[1] == s[2], "the NumPy twin's grouped conv is the depthwise one"
    return DepthwiseConv2D(*s[3:7], conv_dilation(s))


class _Pool(Layer):
    """Window k, stride k, no padding, H and W multiples of k."""

    def __init__(self, k):
        super().__init__()
        self.k = k

    def _windows(self, x):
        """(N, C, H, W) -> (N, C, H/k, k, W/k, k), a view: the non-overlapping windows."""
        self.x_shape = n, c, h, w = x.shape
        return x.reshape(n, c, h // self.k, self.k, w // self.k, self.k)


class MaxPool2D(_Pool):
    def forward(self, x):
        win = self._windows(x)
        flat = win.transpose(0, 1, 2, 4, 3, 5).reshape(win.shape[:3] + (win.shape[4], -1))
        self.arg = flat.argmax(axis=-1)[..., None]  # the first maximum, as PyTorch
        return np.take_along_axis(flat, self.arg, -1)[..., 0]

    def backward(self, g, input_grad=True):
        k = self.k
        dflat = np.zeros(g.shape + (k * k,), g.dtype)
        np.put_along_axis(dflat, self.arg, g[..., None], -1)
        return dflat.reshape(g.shape + (k, k)).transpose(0, 1, 2, 4, 3, 5).reshape(self.x_shape)


class AvgPool2D(_Pool):
    def forward(self, x):
        return self._windows(x).mean(axis=(3, 5))

    def backward(self, g, input_grad=True):
        k = self.k
        n, c, oh, ow = g.shape
        spread = (g / (k * k))[:, :, :, None, :, None]
        return np.broadcast_to(spread, (n, c, oh, k, ow, k)).reshape(self.x_shape)


class LPPool2D(_Pool):
    """(sum of x^p over the window)^(1/p); a window of zeros gets a zero gradient."""

    def __init__(self, p, k):
        super().__init__(k)
        self.p = p

    def forward(self, x):
        self.x = x
        self.y = (self._windows(x) ** self.p).sum(axis=(3, 5)) ** (1 / self.p)
        return self.y

    def backward(self, g, input_grad=True):
        # d y / d x = (x / y)^(p - 1) within each window
        k, p = self.k, self.p
        n, c, oh, ow = g.shape
        y = np.broadcast_to(self.y[:, :, :, None, :, None], (n, c, oh, k, ow, k))
        gk = np.broadcast_to(g[:, :, :, None, :, None], (n, c, oh, k, ow, k))
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.where(y > 0, gk * (self._windows(self.x) / y) ** (p - 1), 0)
        return d.reshape(self.x_shape).astype(g.dtype, copy=False)


class GlobalAvgPool2D(Layer):
    def forward(self, x):
        self.x_shape = x.shape
        return x.mean(axis=(2, 3))

    def backward(self, g, input_grad=True):
        n, c, h, w = self.x_shape
        return np.broadcast_to((g / (h * w))[:, :, None, None], self.x_shape)


class BatchNorm(Layer):
    """Training-mode batch normalisation over (N, C) or (N, C, H, W), as PyTorch: the
    batch mean and biased variance normalise, the running statistics take the unbiased
    one (momentum 0.1); ``params`` holds weight, bias and the running buffers."""

    eps, momentum = 1e-5, 0.1

    def forward(self, x):
        p = self.params
        self.axes = (0,) if x.ndim == 2 else (0, 2, 3)
        self.bshape = (1, -1) + (1,) * (x.ndim - 2)
        mean = x.mean(axis=self.axes)
        var = x.var(axis=self.axes)
        count = x.size // len(mean)
        self.invstd = (1 / np.sqrt(var + np.float32(self.eps))).astype(x.dtype)
        self.xhat = (x - mean.reshape(self.bshape)) * self.invstd.reshape(self.bshape)
        m = np.float32(self.momentum)
        p["running_mean"] = (1 - m) * p["running_mean"] + m * mean
        p["running_var"] = (1 - m) * p["running_var"] + m * var * np.float32(count / (count - 1))
        p["num_batches_tracked"] = p["num_batches_tracked"] + 1
        return self.xhat * p["weight"].reshape(self.bshape) + p["bias"].reshape(self.bshape)

    def backward(self, g, input_grad=True):
        xhat, b = self.xhat, self.bshape
        dbias = g.sum(axis=self.axes)
        dweight = (g * xhat).sum(axis=self.axes)
        self.grads = {"weight": dweight, "bias": dbias}
        if not input_grad:
            return None
        count = np.float32(g.size // len(dbias))
        k = (self.params["weight"] * self.invstd / count).reshape(b)
        return k * (count * g - dbias.reshape(b) - xhat * dweight.reshape(b))


class LayerNorm(Layer):
    """Layer normalisation over the last axis, as PyTorch (eps 1e-5, biased variance)."""

    eps = 1e-5

    def forward(self, x):
        mean = x.mean(axis=-1, keepdims=True)
        var = x.var(axis=-1, keepdims=True)
        self.rstd = (1 / np.sqrt(var + np.float32(self.eps))).astype(x.dtype)
        self.xhat = (x - mean) * self.rstd
        return self.xhat * self.params["weight"] + self.params["bias"]

    def backward(self, g, input_grad=True):
        xhat = self.xhat
        axes = tuple(range(g.ndim - 1))
        self.grads = {"weight": (g * xhat).sum(axis=axes), "bias": g.sum(axis=axes)}
        if not input_grad:
            return None
        gw = g * self.params["weight"]
        return self.rstd * (gw - gw.mean(axis=-1, keepdims=True)
                            - xhat * (gw * xhat).mean(axis=-1, keepdims=True))


class _Elementwise(Layer):
    def forward(self, x):
        self.y = self.f(x)
        return self.y


class ReLU(_Elementwise):
    def f(self, x):
        return np.maximum(x, 0)

    def backward(self, g, input_grad=True):
        return g * (self.y > 0)


class Sigmoid(_Elementwise):
    def f(self, x):
        return 1 / (1 + np.exp(-x))

    def backward(self, g, input_grad=True):
        return g * self.y * (1 - self.y)


class Hardsigmoid(Layer):
    def forward(self, x):
        self.x = x
        return np.clip(x / 6 + 0.5, 0, 1)

    def backward(self, g, input_grad=True):
        return g * ((self.x > -3) & (self.x < 3)) / 6


class Tanh(_Elementwise):
    f = staticmethod(np.tanh)

    def backward(self, g, input_grad=True):
        return g * (1 - self.y * self.y)


class Softmax(_Elementwise):
    def f(self, x):
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def backward(self, g, input_grad=True):
        y = self.y
        return y * (g - (g * y).sum(axis=-1, keepdims=True))


class Flatten(Layer):
    def forward(self, x):
        self.x_shape = x.shape
        return x.reshape(len(x), -1)

    def backward(self, g, input_grad=True):
        return g.reshape(self.x_shape)


class _Container:
    """Layers of layers: their params and grads under PyTorch's state_dict names."""

    def _children(self):
        """[(name prefix, layer)]"""
        raise NotImplementedError

    def _merged(self, what):
        return {name + k: v for name, layer in self._children()
                for k, v in getattr(layer, what).items()}

    @property
    def params(self):
        return self._merged("params")

    @property
    def grads(self):
        return self._merged("grads")


class Sequential(_Container):
    def __init__(self, layers):
        self.layers = layers

    def _children(self):
        return [(f"{i}.", layer) for i, layer in enumerate(self.layers)]

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, g, input_grad=True):
        # without input_grad, the layers before the first one with weights are not needed
        first = 0 if input_grad else next(i for i, m in enumerate(self.layers) if m.params)
        for i in range(len(self.layers) - 1, first - 1, -1):
            g = self.layers[i].backward(g, input_grad=input_grad or i > first)
        return g


class Residual(_Container):
    """block(x) + shortcut(x), or + x without a shortcut; backward sums the branches'
    input gradients."""

    def __init__(self, block, shortcut):
        self.block, self.shortcut = block, shortcut

    def _children(self):
        shortcut = [] if self.shortcut is None else [("shortcut.", self.shortcut)]
        return [("block.", self.block)] + shortcut

    def forward(self, x):
        return self.block.forward(x) + (x if self.shortcut is None else self.shortcut.forward(x))

    def backward(self, g, input_grad=True):
        dx = self.block.backward(g, input_grad)
        ds = g if self.shortcut is None else self.shortcut.backward(g, input_grad)
        return dx + ds if input_grad else None


_LAYERS = {"dense": lambda s: Dense(s[3]), "conv": _conv,
           "maxpool": lambda s: MaxPool2D(s[1]), "avgpool": lambda s: AvgPool2D(s[1]),
           "global_avgpool": lambda s: GlobalAvgPool2D(),
           "lppool": lambda s: LPPool2D(s[1], s[2]), "hardsigmoid": lambda s: Hardsigmoid(),
           "relu": lambda s: ReLU(), "sigmoid": lambda s: Sigmoid(), "tanh": lambda s: Tanh(),
           "softmax": lambda s: Softmax(), "flatten": lambda s: Flatten(),
           "batchnorm1d": lambda s: BatchNorm(), "batchnorm2d": lambda s: BatchNorm(),
           "layernorm": lambda s: LayerNorm()}


def build(spec, params, outer=""):
    """The layer or Sequential of ``spec``, each layer holding copies of its entries of
    ``params`` (the keys under ``outer``)."""
    layers = []
    for i, s in enumerate(spec):
        at = key_prefix(spec, i, outer)
        if s[0] == "residual":
            block, shortcut = (None if b is None else build(b, params, f"{at}{name}.")
                               for name, b in zip(("block", "shortcut"), s[1:]))
            layers.append(Residual(block, shortcut))
            continue
        layer = _LAYERS[s[0]](s)
        layer.params = {k[len(at):]: v.copy() for k, v in params.items()
                        if k.startswith(at) and "." not in k[len(at):]}
        layers.append(layer)
    return layers[0] if len(layers) == 1 else Sequential(layers)


def cross_entropy_loss(logits, labels):
    """Mean softmax cross-entropy and its gradient with respect to the logits."""
    n = len(logits)
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    rows = np.arange(n)
    grad = np.exp(logp)
    grad[rows, labels] -= 1
    grad /= n
    return -logp[rows, labels].mean(), grad


def cross_entropy_options_loss(logits, labels, weight, label_smoothing):
    """PyTorch's weighted, smoothed cross-entropy (ignore_index -100), mean over the
    non-ignored targets' weights, and its gradient."""
    n, c = logits.shape
    keep = labels != -100
    y = np.where(keep, labels, 0)
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    target = np.full((n, c), label_smoothing / c, logits.dtype)
    target[np.arange(n), y] += 1 - label_smoothing
    a = target * weight * keep[:, None]
    total = weight[y][keep].sum()
    grad = (a.sum(axis=1, keepdims=True) * np.exp(logp) - a) / total
    return -(a * logp).sum() / total, grad


def bce_with_logits_loss(logits, target, pos_weight):
    """Mean binary cross-entropy of logits with pos_weight, stable, and its gradient."""
    lw = 1 + (pos_weight - 1) * target
    e = np.exp(-np.abs(logits))
    loss = (1 - target) * logits + lw * (np.log1p(e) + np.maximum(-logits, 0))
    sig = np.where(logits >= 0, 1 / (1 + e), e / (1 + e))
    return loss.mean(), (lw * sig - pos_weight * target) / logits.size


class SGD:
    """PyTorch's SGD with momentum: v = momentum * v + g; p -= lr * v."""

    def __init__(self, lr, momentum):
        self.lr, self.momentum, self.v = lr, momentum, {}

    def step(self, params, grads):
        for k, g in grads.items():
            v = self.v.setdefault(k, np.zeros_like(g))
            v *= self.momentum
            v += g
            params[k] -= self.lr * v


class Adam:
    """Bias-corrected Adam with PyTorch's defaults."""

    def __init__(self, lr, betas=(0.9, 0.999), eps=1e-8):
        self.lr, self.betas, self.eps, self.t, self.m, self.v = lr, betas, eps, 0, {}, {}

    def step(self, params, grads):
        b1, b2 = self.betas
        self.t += 1
        step_size = self.lr / (1 - b1 ** self.t)
        sqrt_bc2 = math.sqrt(1 - b2 ** self.t)  # a Python float keeps the arrays float32
        for k, g in grads.items():
            m = self.m.setdefault(k, np.zeros_like(g))
            v = self.v.setdefault(k, np.zeros_like(g))
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            params[k] -= step_size * m / (np.sqrt(v) / sqrt_bc2 + self.eps)


# ---- the builders cases.py names ------------------------------------------------------

def layer_forward(spec, params, x):
    net = build(spec, params)
    return Bench(run=lambda: net.forward(x), outputs=lambda y: {"y": y})


def layer_backward(spec, params, x, dout):
    net = build(spec, params)

    def setup():
        net.forward(x)

    return Bench(setup=setup, run=lambda: net.backward(dout),
                 outputs=lambda dx: {"dx": dx, **{"grad." + k: v for k, v in net.grads.items()}})


def _keep_scaled(mask, p):
    """mask / (1 - p) as float32: what inverted dropout multiplies by."""
    return mask * np.float32(1 / (1 - p))


def dropout_forward(x, p, seed, mask):
    """Timed: a mask drawn with NumPy's generator, as a NumPy user writes dropout.
    Checked: fastnet's mask applied the same way."""
    rng = np.random.default_rng(seed)

    def run():
        return x * _keep_scaled(rng.random(x.shape, dtype=np.float32) >= p, p)

    return Bench(run=run, check=lambda: x * _keep_scaled(mask, p), outputs=lambda y: {"y": y})


def dropout_backward(x, p, seed, mask, dout):
    """The forward (untimed) keeps the scaled mask; backward multiplies by it."""
    rng = np.random.default_rng(seed)
    saved = {}

    def setup():
        saved["m"] = _keep_scaled(rng.random(x.shape, dtype=np.float32) >= p, p)
        saved["y"] = x * saved["m"]

    return Bench(setup=setup, run=lambda: dout * saved["m"],
                 check=lambda: dout * _keep_scaled(mask, p), outputs=lambda dx: {"dx": dx})


def cross_entropy(logits, labels):
    return Bench(run=lambda: cross_entropy_loss(logits, labels),
                 outputs=lambda r: {"loss": r[0], "dlogits": r[1]})


def cross_entropy_options(logits, labels, weight, label_smoothing):
    return Bench(run=lambda: cross_entropy_options_loss(logits, labels, weight, label_smoothing),
                 outputs=lambda r: {"loss": r[0], "dlogits": r[1]})


def bce_with_logits(logits, target, pos_weight):
    return Bench(run=lambda: bce_with_logits_loss(logits, target, pos_weight),
                 outputs=lambda r: {"loss": r[0], "dlogits": r[1]})


def _optimizer_step(opt, params, grads):
    params = {k: v.copy() for k, v in params.items()}
    return Bench(run=lambda: opt.step(params, grads),
                 outputs=lambda _: {"data." + k: v for k, v in params.items()})


def sgd_momentum_step(params, grads, lr):
    return _optimizer_step(SGD(lr, MOMENTUM), params, grads)


def adam_step(params, grads, lr):
    return _optimizer_step(Adam(lr), params, grads)


def clip_grad_norm(grads, max_norm):
    """torch.nn.utils.clip_grad_norm_'s steps in NumPy: per-gradient norms, their norm, the
    coefficient in float32, the gradients scaled in place."""
    grads = {k: v.copy() for k, v in grads.items()}

    def run():
        norms = np.array([np.sqrt(np.dot(g.ravel(), g.ravel())) for g in grads.values()])
        total = np.sqrt(np.dot(norms, norms))
        coef = min(np.float32(max_norm) / (total + np.float32(1e-6)), np.float32(1))
        for g in grads.values():
            g *= coef
        return total

    return Bench(run=run, outputs=lambda total: {"total": np.array(total),
                                                 **{"grad." + k: v for k, v in grads.items()}})


def train_step(spec, params, x, labels, lr):
    model, opt = build(spec, params), SGD(lr, MOMENTUM)

    def step():
        loss, dlogits = cross_entropy_loss(model.forward(x), labels)
        model.backward(dlogits, input_grad=False)
        opt.step(model.params, model.grads)
        return loss

    def outputs(loss):  # the parameters, not a batch norm's running statistics
        grads, params = model.grads, model.params
        return {"loss": loss, **{"grad." + k: v for k, v in grads.items()},
                **{"data." + k: params[k] for k in grads}}

    return Bench(run=step, outputs=outputs)


def inference(spec, params, x):
    """The forward as a NumPy user serves a model: the same code (no modes: the specs
    of the inference cases have no layer that eval mode changes)."""
    net = build(spec, params)
    return Bench(run=lambda: net.forward(x), outputs=lambda y: {"y": y})


# ---- LSTM -----------------------------------------------------------------------------

class LSTM:
    """One layer, batch first, gates i, f, g, o: the input projection of all timesteps as
    one matmul, then a loop over time; backward through time with the weight gradients
    as matmuls over all timesteps."""

    def __init__(self, params):
        self.params = params
        self.grads = {}

    def forward(self, x):
        p = self.params
        n, t, f = x.shape
        h = p["weight_hh_l0"].shape[1]
        pre = (x.reshape(n * t, f) @ p["weight_ih_l0"].T).reshape(n, t, 4 * h)
        pre += p["bias_ih_l0"] + p["bias_hh_l0"]
        hs = np.zeros((n, t + 1, h), x.dtype)  # hs[:, 0] = h0 = 0
        cs = np.zeros((n, t + 1, h), x.dtype)
        gates = np.empty((n, t, 4 * h), x.dtype)
        for s in range(t):
            a = pre[:, s] + hs[:, s] @ p["weight_hh_l0"].T
            ifo = 1 / (1 + np.exp(-a[:, np.r_[0:2 * h, 3 * h:4 * h]]))
            g = np.tanh(a[:, 2 * h:3 * h])
            i, fg, o = ifo[:, :h], ifo[:, h:2 * h], ifo[:, 2 * h:]
            cs[:, s + 1] = fg * cs[:, s] + i * g
            hs[:, s + 1] = o * np.tanh(cs[:, s + 1])
            gates[:, s] = np.concatenate([i, fg, g, o], axis=1)
        self.x, self.hs, self.cs, self.gates = x, hs, cs, gates
        return hs[:, 1:], hs[:, -1][None], cs[:, -1][None]

    def backward(self, dout):
        p, x, hs, cs, gates = self.params, self.x, self.hs, self.cs, self.gates
        n, t, f = x.shape
        h = hs.shape[2]
        da = np.empty_like(gates)
        dh = np.zeros((n, h), x.dtype)
        dc = np.zeros((n, h), x.dtype)
        for s in range(t - 1, -1, -1):
            i, fg, g, o = (gates[:, s, k * h:(k + 1) * h] for k in range(4))
            tc = np.tanh(cs[:, s + 1])
            dh = dh + dout[:, s]
            dc = dc + dh * o * (1 - tc * tc)
            da[:, s] = np.concatenate([dc * g * i * (1 - i), dc * cs[:, s] * fg * (1 - fg),
                                       dc * i * (1 - g * g), dh * tc * o * (1 - o)], axis=1)
            dc = dc * fg
            dh = da[:, s] @ p["weight_hh_l0"]
        da2 = da.reshape(n * t, 4 * h)
        db = da2.sum(axis=0)
        self.grads = {"weight_ih_l0": da2.T @ x.reshape(n * t, f),
                      "weight_hh_l0": da2.T @ hs[:, :-1].reshape(n * t, h),
                      "bias_ih_l0": db, "bias_hh_l0": db.copy()}
        return (da2 @ p["weight_ih_l0"]).reshape(n, t, f)


def embedding_forward(weight, indices):
    return Bench(run=lambda: weight[indices], outputs=lambda y: {"y": y})


def embedding_backward(weight, indices, dout):
    """np.add.at: NumPy's unbuffered scatter-add, as a NumPy user sums repeated rows."""
    d = weight.shape[1]

    def run():
        dw = np.zeros_like(weight)
        np.add.at(dw, indices.reshape(-1), dout.reshape(-1, d))
        return dw

    return Bench(run=run, outputs=lambda dw: {"grad.weight": dw})


def lstm_forward(params, x):
    net = LSTM(params)
    return Bench(run=lambda: net.forward(x),
                 outputs=lambda r: {"y": r[0], "h_n": r[1], "c_n": r[2]})


def lstm_backward(params, x, dout):
    net = LSTM(params)

    def setup():
        net.forward(x)

    return Bench(setup=setup, run=lambda: net.backward(dout),
                 outputs=lambda dx: {"dx": dx, **{"grad." + k: v for k, v in net.grads.items()}})


# ---- GRU ------------------------------------------------------------------------------

def _sigmoid(a):
    return 1 / (1 + np.exp(-a))


class _GRUDirection:
    """One direction of a GRU layer over x (N, T, F) in time order, gates r, z, n: the
    input projection of all timesteps as one matmul, then a loop over time; backward
    through time with the weight gradients as matmuls over all timesteps."""

    def __init__(self, w_ih, w_hh, b_ih, b_hh):
        self.w_ih, self.w_hh, self.b_ih, self.b_hh = w_ih, w_hh, b_ih, b_hh

    def forward(self, x):
        n, t, f = x.shape
        h = self.w_hh.shape[1]
        gx = (x.reshape(n * t, f) @ self.w_ih.T + self.b_ih).reshape(n, t, 3 * h)
        hs = np.zeros((n, t + 1, h), x.dtype)  # hs[:, 0] = h0 = 0
        r, z, nn_, ghn = (np.empty((n, t, h), x.dtype) for _ in range(4))
        for s in range(t):
            gh = hs[:, s] @ self.w_hh.T + self.b_hh
            r[:, s] = _sigmoid(gx[:, s, :h] + gh[:, :h])
            z[:, s] = _sigmoid(gx[:, s, h:2 * h] + gh[:, h:2 * h])
            ghn[:, s] = gh[:, 2 * h:]
            nn_[:, s] = np.tanh(gx[:, s, 2 * h:] + r[:, s] * ghn[:, s])
            hs[:, s + 1] = (1 - z[:, s]) * nn_[:, s] + z[:, s] * hs[:, s]
        self.x, self.hs, self.saved = x, hs, (r, z, nn_, ghn)
        return hs[:, 1:], hs[:, -1]

    def backward(self, dout):
        x, hs, (r, z, nn_, ghn) = self.x, self.hs, self.saved
        n, t, f = x.shape
        h = hs.shape[2]
        dgx = np.empty((n, t, 3 * h), x.dtype)
        dgh = np.empty((n, t, 3 * h), x.dtype)
        dh = np.zeros((n, h), x.dtype)
        for s in range(t - 1, -1, -1):
            dh = dh + dout[:, s]
            rs, zs, ns = r[:, s], z[:, s], nn_[:, s]
            dan = dh * (1 - zs) * (1 - ns * ns)
            dar = dan * ghn[:, s] * rs * (1 - rs)
            daz = dh * (hs[:, s] - ns) * zs * (1 - zs)
            dgx[:, s] = np.concatenate([dar, daz, dan], axis=1)
            dgh[:, s] = np.concatenate([dar, daz, dan * rs], axis=1)
            dh = dh * zs + dgh[:, s] @ self.w_hh
        gx2, gh2 = dgx.reshape(n * t, 3 * h), dgh.reshape(n * t, 3 * h)
        self.grads = {"weight_ih": gx2.T @ x.reshape(n * t, f),
                      "weight_hh": gh2.T @ hs[:, :-1].reshape(n * t, h),
                      "bias_ih": gx2.sum(axis=0), "bias_hh": gh2.sum(axis=0)}
        return (gx2 @ self.w_ih).reshape(n, t, f)


class BidirectionalGRU:
    """A bidirectional GRU layer, batch first: the reverse direction runs on the
    time-reversed input, its outputs reversed back after the forward direction's."""

    def __init__(self, params):
        self.dirs = [_GRUDirection(*(params[f"{k}_l0{sfx}"]
                                     for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")))
                     for sfx in ("", "_reverse")]

    def forward(self, x):
        yf, hf = self.dirs[0].forward(x)
        yr, hr = self.dirs[1].forward(x[:, ::-1])
        return np.concatenate([yf, yr[:, ::-1]], axis=2), np.stack([hf, hr])

    def backward(self, dout):
        h = dout.shape[2] // 2
        dx = self.dirs[0].backward(dout[..., :h])
        dx += self.dirs[1].backward(dout[:, ::-1, h:])[:, ::-1]
        self.grads = {f"{k}_l0{sfx}": g for d, sfx in zip(self.dirs, ("", "_reverse"))
                      for k, g in d.grads.items()}
        return dx


def gru_forward(params, x):
    net = BidirectionalGRU(params)
    return Bench(run=lambda: net.forward(x), outputs=lambda r: {"y": r[0], "h_n": r[1]})


def gru_backward(params, x, dout):
    net = BidirectionalGRU(params)

    def setup():
        net.forward(x)

    return Bench(setup=setup, run=lambda: net.backward(dout),
                 outputs=lambda dx: {"dx": dx, **{"grad." + k: v for k, v in net.grads.items()}})


# ---- the character model's training step ----------------------------------------------

def char_lstm_step(params, x, labels, lr):
    """Embedding rows, the LSTM twin per layer, the head at every position, cross-entropy
    averaged over all positions, np.add.at into the embedding's gradient, Adam."""
    params = {k: v.copy() for k, v in params.items()}
    layers = sum(k.startswith("lstm.weight_hh_l") for k in params)
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    nets = [LSTM({f"{nm}_l0": params[f"lstm.{nm}_l{k}"] for nm in names}) for k in range(layers)]
    opt = Adam(lr)
    n, t = x.shape
    table, w, b = params["embedding.weight"], params["head.weight"], params["head.bias"]
    grads = {}

    def step():
        hidden = table[x]
        for net in nets:
            hidden = net.forward(hidden)[0]
        h = hidden.shape[2]
        rows = hidden.reshape(n * t, h)
        loss, dlogits = cross_entropy_loss(rows @ w.T + b, labels.reshape(-1))
        grads["head.weight"] = dlogits.T @ rows
        grads["head.bias"] = dlogits.sum(axis=0)
        d = (dlogits @ w).reshape(n, t, h)
        for k in range(layers - 1, -1, -1):
            d = nets[k].backward(d)
            for nm in names:
                grads[f"lstm.{nm}_l{k}"] = nets[k].grads[f"{nm}_l0"]
        g = np.zeros_like(table)
        np.add.at(g, x.reshape(-1), d.reshape(n * t, -1))
        grads["embedding.weight"] = g
        opt.step(params, grads)
        return loss

    return Bench(run=step, outputs=lambda loss: {
        "loss": loss, **{"grad." + k: v for k, v in grads.items()},
        **{"data." + k: params[k] for k in grads}})
