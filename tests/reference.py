"""Plain-NumPy reference of every fastnet kernel, for the tests.

Written differently from the kernels on purpose: direct loops, np.einsum, np.pad and
strided slicing, explicit Jacobians; no im2col, no Numba, no import of fastnet.
Every function returns new arrays. Arithmetic is done in float64 and the results are
cast back to the dtype of the first floating-point input only when returned.
``kernel_size``, ``stride`` and ``padding`` are ints or (h, w) pairs.
"""
import math

import numpy as np


def _f64(a):
    return np.asarray(a, dtype=np.float64)


def _pair(v):
    if np.isscalar(v):
        return int(v), int(v)
    h, w = v
    return int(h), int(w)


def conv_output_size(size, kernel, stride, padding):
    """PyTorch's floor convention."""
    return (size + 2 * padding - kernel) // stride + 1


# --------------------------------------------------------------------------------------
# activations: x (...) elementwise; softmax / log_softmax over the last axis of (N, C)

def _sigmoid64(x):
    # 0.5 * (1 + tanh(x / 2)) is exactly the logistic function and never overflows.
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _act64(v, activation):
    if activation is None:
        return v
    if activation == "relu":
        return np.where(v <= 0, 0.0, v)  # PyTorch's: a NaN stays NaN
    if activation == "sigmoid":
        return _sigmoid64(v)
    if activation == "tanh":
        return np.tanh(v)
    raise ValueError(activation)


def _act_backward64(g, y, activation):
    """g carried back through the activation: PyTorch's threshold_backward for ReLU (a
    select: 0 where y <= 0 whatever g is, g where y > 0 or NaN), g * act' otherwise."""
    if activation == "relu":
        return np.where(y <= 0, 0.0, g)
    return g * _act_grad64(y, activation)


def _act_grad64(y, activation):
    """d act / d v as a function of the output y."""
    if activation is None:
        return np.ones_like(y)
    if activation == "relu":
        return np.where(y <= 0, 0.0, 1.0)  # PyTorch's threshold_backward: NaN passes
    if activation == "sigmoid":
        return y * (1.0 - y)
    if activation == "tanh":
        return 1.0 - y * y
    raise ValueError(activation)


def relu_forward(x):
    return _act64(_f64(x), "relu").astype(x.dtype)


def relu_backward(dout, out):
    return _act_backward64(_f64(dout), _f64(out), "relu").astype(dout.dtype)


def leaky_relu_forward(x, negative_slope):
    x64 = _f64(x)
    return np.where(x64 > 0, x64, negative_slope * x64).astype(x.dtype)


def leaky_relu_backward(dout, x, negative_slope):
    slope = np.where(_f64(x) > 0, 1.0, negative_slope)
    return (_f64(dout) * slope).astype(dout.dtype)


def hardsigmoid_forward(x):
    """np.clip of the line (x + 3) / 6 to [0, 1] (NaN stays NaN)."""
    return np.clip((_f64(x) + 3.0) / 6.0, 0.0, 1.0).astype(x.dtype)


def hardsigmoid_backward(dout, x):
    """1/6 on the open interval (-3, 3), 0 elsewhere and for NaN; as PyTorch, the factor is
    float32's 1/6 in every dtype."""
    x64 = _f64(x)
    inside = (np.abs(x64) < 3.0) & ~np.isnan(x64)
    return np.where(inside, _f64(dout) * float(np.float32(1) / np.float32(6)), 0.0).astype(dout.dtype)


def sigmoid_forward(x):
    return _sigmoid64(_f64(x)).astype(x.dtype)


def sigmoid_backward(dout, out):
    return (_f64(dout) * _act_grad64(_f64(out), "sigmoid")).astype(dout.dtype)


def tanh_forward(x):
    return np.tanh(_f64(x)).astype(x.dtype)


def tanh_backward(dout, out):
    return (_f64(dout) * _act_grad64(_f64(out), "tanh")).astype(dout.dtype)


def _log_softmax64(x):
    # logaddexp.reduce is a stable log-sum-exp that does not subtract the max explicitly.
    return x - np.logaddexp.reduce(x, axis=-1, keepdims=True)


def log_softmax_forward(x):
    return _log_softmax64(_f64(x)).astype(x.dtype)


def softmax_forward(x):
    return np.exp(_log_softmax64(_f64(x))).astype(x.dtype)


def softmax_backward(dout, out):
    """Through the explicit Jacobian J[n, i, j] = s_i (delta_ij - s_j): dx = J^T dout."""
    s = _f64(out)
    eye = np.eye(s.shape[1])
    jac = np.einsum("ni,ij->nij", s, eye) - np.einsum("ni,nj->nij", s, s)
    return np.einsum("nij,ni->nj", jac, _f64(dout)).astype(dout.dtype)


def log_softmax_backward(dout, out):
    """Through the explicit Jacobian J[n, i, j] = delta_ij - softmax_j: dx = J^T dout."""
    s = np.exp(_f64(out))
    eye = np.eye(s.shape[1])
    jac = eye[None, :, :] - s[:, None, :]
    return np.einsum("nij,ni->nj", jac, _f64(dout)).astype(dout.dtype)


# --------------------------------------------------------------------------------------
# dense: x (N, IN), w (OUT, IN), b (OUT,) | None -> y (N, OUT) = act(x @ w.T + b)

def dense_forward(x, w, b, activation=None):
    v = np.einsum("ni,oi->no", _f64(x), _f64(w))
    if b is not None:
        v = v + _f64(b)[None, :]
    return _act64(v, activation).astype(x.dtype)


def dense_backward(dout, x, w, y, activation=None):
    """-> (dx, dw, db)"""
    g = _act_backward64(_f64(dout), _f64(y), activation)
    dx = np.einsum("no,oi->ni", g, _f64(w))
    dw = np.einsum("no,ni->oi", g, _f64(x))
    db = g.sum(axis=0)
    t = dout.dtype
    return dx.astype(t), dw.astype(t), db.astype(t)


# --------------------------------------------------------------------------------------
# conv2d, NCHW: x (N, C, H, W), w (O, C, KH, KW), b (O,) | None -> y (N, O, OH, OW)

def _window(a, i, j, oh, ow, sh, sw):
    """a[..., i + sh*r, j + sw*q] for r < oh, q < ow: the input seen by kernel offset (i, j)."""
    return a[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]


def conv2d_forward(x, w, b, stride, padding, activation=None, dilation=1, groups=1):
    """act(sum over kernel offsets (i, j) of einsum(x_shifted, w[:, :, i, j]) + b), group by
    group (w (O, C/groups, KH, KW)); offset (i, j) reads the input (i*DH, j*DW) away."""
    (sh, sw), (ph, pw), (dh, dw_) = _pair(stride), _pair(padding), _pair(dilation)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    oh = conv_output_size(h, dh * (kh - 1) + 1, sh, ph)
    ow = conv_output_size(wd, dw_ * (kw - 1) + 1, sw, pw)
    xp = np.pad(_f64(x), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    w64 = _f64(w)
    y = np.zeros((n, o, oh, ow))
    og = o // groups
    for g in range(groups):
        xg, wg = xp[:, g * cg:(g + 1) * cg], w64[g * og:(g + 1) * og]
        for i in range(kh):
            for j in range(kw):
                y[:, g * og:(g + 1) * og] += np.einsum(
                    "nchw,oc->nohw", _window(xg, i * dh, j * dw_, oh, ow, sh, sw), wg[:, :, i, j])
    if b is not None:
        y += _f64(b)[None, :, None, None]
    return _act64(y, activation).astype(x.dtype)


def conv2d_backward(dout, x, w, stride, padding, y=None, activation=None, dilation=1, groups=1):
    """-> (dx, dw, db); ``y`` is the forward output (needed with an activation)"""
    (sh, sw), (ph, pw), (dh, dw_) = _pair(stride), _pair(padding), _pair(dilation)
    _, _, h, wd = x.shape
    o, cg, kh, kw = w.shape
    _, _, oh, ow = dout.shape
    xp = np.pad(_f64(x), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    g, w64 = _f64(dout), _f64(w)
    if activation is not None:
        g = _act_backward64(g, _f64(y), activation)
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w64)
    og = o // groups
    for q in range(groups):
        gq, wq = g[:, q * og:(q + 1) * og], w64[q * og:(q + 1) * og]
        xq, dxq = xp[:, q * cg:(q + 1) * cg], dxp[:, q * cg:(q + 1) * cg]
        for i in range(kh):
            for j in range(kw):
                dw[q * og:(q + 1) * og, :, i, j] = np.einsum(
                    "nohw,nchw->oc", gq, _window(xq, i * dh, j * dw_, oh, ow, sh, sw))
                _window(dxq, i * dh, j * dw_, oh, ow, sh, sw)[...] += np.einsum(
                    "nohw,oc->nchw", gq, wq[:, :, i, j])
    dx = dxp[:, :, ph:ph + h, pw:pw + wd]
    db = g.sum(axis=(0, 2, 3))
    t = dout.dtype
    return dx.astype(t), dw.astype(t), db.astype(t)


def im2col(x, kernel_size, stride, padding):
    """x (N, C, H, W) -> cols (C*KH*KW, N*OH*OW), row (c*KH + i)*KW + j, column
    (n*OH + oh)*OW + ow; built element by element."""
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel_size), _pair(stride), _pair(padding)
    n_, c_, h, w = x.shape
    oh_, ow_ = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    cols = np.zeros((c_ * kh * kw, n_ * oh_ * ow_))
    for c in range(c_):
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                for n in range(n_):
                    for oh in range(oh_):
                        for ow in range(ow_):
                            ih, iw = oh * sh - ph + i, ow * sw - pw + j
                            if 0 <= ih < h and 0 <= iw < w:
                                cols[row, (n * oh_ + oh) * ow_ + ow] = x[n, c, ih, iw]
    return cols.astype(x.dtype)


def col2im(cols, x_shape, kernel_size, stride, padding):
    """cols (C*KH*KW, N*OH*OW) -> dx (N, C, H, W), the adjoint of im2col, element by element."""
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel_size), _pair(stride), _pair(padding)
    n_, c_, h, w = x_shape
    oh_, ow_ = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    dx = np.zeros(x_shape)
    for c in range(c_):
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                for n in range(n_):
                    for oh in range(oh_):
                        for ow in range(ow_):
                            ih, iw = oh * sh - ph + i, ow * sw - pw + j
                            if 0 <= ih < h and 0 <= iw < w:
                                dx[n, c, ih, iw] += float(cols[row, (n * oh_ + oh) * ow_ + ow])
    return dx.astype(cols.dtype)


# --------------------------------------------------------------------------------------
# pooling, NCHW

def max_pool2d_forward(x, kernel_size, stride, padding):
    """-> (out (N, C, OH, OW), argmax int64 flat ih*W + iw). PyTorch semantics: padding is
    -inf (never selected), ties go to the first element in row-major window order."""
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel_size), _pair(stride), _pair(padding)
    n, c, h, w = x.shape
    oh_, ow_ = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    x64 = _f64(x)
    out = np.empty((n, c, oh_, ow_))
    argmax = np.empty((n, c, oh_, ow_), dtype=np.int64)
    for oh in range(oh_):
        for ow in range(ow_):
            # in-image positions of the window, in row-major order
            pos = [(ih, iw)
                   for ih in range(oh * sh - ph, oh * sh - ph + kh)
                   for iw in range(ow * sw - pw, ow * sw - pw + kw)
                   if 0 <= ih < h and 0 <= iw < w]
            vals = np.stack([x64[:, :, ih, iw] for ih, iw in pos], axis=-1)  # (N, C, K)
            k = np.argmax(vals, axis=-1)  # first occurrence of the maximum
            flat = np.array([ih * w + iw for ih, iw in pos])
            out[:, :, oh, ow] = np.take_along_axis(vals, k[..., None], axis=-1)[..., 0]
            argmax[:, :, oh, ow] = flat[k]
    return out.astype(x.dtype), argmax


def max_pool2d_backward(dout, argmax, x_shape):
    """dout routed to the argmax positions, summed where windows share one."""
    n, c, h, w = x_shape
    dx = np.zeros((n, c, h * w))
    g = _f64(dout).reshape(n, c, -1)
    a = np.asarray(argmax, dtype=np.int64).reshape(n, c, -1)
    for ni in range(n):
        for ci in range(c):
            np.add.at(dx[ni, ci], a[ni, ci], g[ni, ci])
    return dx.reshape(x_shape).astype(dout.dtype)


def avg_pool2d_forward(x, kernel_size, stride, padding):
    """count_include_pad=True: zero padding, divide by KH*KW everywhere."""
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel_size), _pair(stride), _pair(padding)
    n, c, h, w = x.shape
    oh_, ow_ = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    xp = np.pad(_f64(x), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    s = np.zeros((n, c, oh_, ow_))
    for i in range(kh):
        for j in range(kw):
            s += _window(xp, i, j, oh_, ow_, sh, sw)
    return (s / (kh * kw)).astype(x.dtype)


def lp_pool2d_forward(x, norm_type, kernel_size, stride):
    """(sum of x^p over each window)^(1/p), no padding; NaN where the sum is negative
    (but p = 1), as PyTorch."""
    (kh, kw), (sh, sw) = _pair(kernel_size), _pair(stride)
    n, c, h, w = x.shape
    oh_, ow_ = conv_output_size(h, kh, sh, 0), conv_output_size(w, kw, sw, 0)
    xp = np.power(_f64(x), float(norm_type))
    s = np.zeros((n, c, oh_, ow_))
    for i in range(kh):
        for j in range(kw):
            s += _window(xp, i, j, oh_, ow_, sh, sw)
    with np.errstate(invalid="ignore"):
        out = s if norm_type == 1 else np.power(s, 1.0 / norm_type)
    return out.astype(x.dtype)


def lp_pool2d_backward(dout, x, norm_type, kernel_size, stride):
    """d out / d x_i = S^(1/p - 1) * x_i^(p - 1), S the window's sum of x^p, summed over the
    windows that hold x_i; a window with S = 0 passes nothing (PyTorch's relu select)."""
    (kh, kw), (sh, sw) = _pair(kernel_size), _pair(stride)
    p = float(norm_type)
    x64 = _f64(x)
    _, _, oh_, ow_ = dout.shape
    s = np.zeros(dout.shape)
    for i in range(kh):
        for j in range(kw):
            s += _window(np.power(x64, p), i, j, oh_, ow_, sh, sw)
    with np.errstate(divide="ignore", invalid="ignore"):
        coef = np.where(s == 0, 0.0, _f64(dout) * np.power(s, 1.0 / p - 1.0))
    acc = np.zeros(x64.shape)
    for i in range(kh):
        for j in range(kw):
            _window(acc, i, j, oh_, ow_, sh, sw)[...] += coef
    with np.errstate(divide="ignore", invalid="ignore"):
        return (acc * np.power(x64, p - 1.0)).astype(dout.dtype)


def avg_pool2d_backward(dout, x_shape, kernel_size, stride, padding):
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel_size), _pair(stride), _pair(padding)
    n, c, h, w = x_shape
    _, _, oh_, ow_ = dout.shape
    dxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw))
    g = _f64(dout) / (kh * kw)
    for i in range(kh):
        for j in range(kw):
            _window(dxp, i, j, oh_, ow_, sh, sw)[...] += g
    return dxp[:, :, ph:ph + h, pw:pw + w].astype(dout.dtype)


# --------------------------------------------------------------------------------------
# losses, mean reduction: -> (loss as a Python float, gradient w.r.t. the input)

def softmax_cross_entropy(logits, labels):
    """loss = mean(-log_softmax(logits)[label]); dlogits = (softmax - onehot) / N"""
    z = _f64(logits)
    n, c = z.shape
    labels = np.asarray(labels, dtype=np.int64)
    logp = _log_softmax64(z)
    loss = -logp[np.arange(n), labels].mean()
    onehot = np.eye(c)[labels]
    grad = (np.exp(logp) - onehot) / n
    return float(loss), grad.astype(logits.dtype)


def mse(pred, target):
    """loss = mean((pred - target)^2); dpred = 2 (pred - target) / size"""
    d = _f64(pred) - _f64(target)
    return float(np.mean(d * d)), (2.0 * d / d.size).astype(pred.dtype)


def cross_entropy(logits, labels, weight=None, ignore_index=-100, label_smoothing=0.0,
                  log_probs=False, reduction="mean"):
    """PyTorch's weighted, smoothed cross entropy / NLL as a target distribution:
    a_i = w * ((1 - eps) onehot(y_i) + eps / C) (0 for an ignored row), out_i =
    -sum_c a_ic logp_ic, d out_i / d z_i = sum(a_i) softmax(z_i) - a_i (NLL: -a_i).
    -> (loss: a float ("mean": sum(out) / sum of w[y_i]; "sum") or out (N,) ("none"),
    d loss / d logits (for "none": of sum(out)))"""
    z = _f64(logits)
    n, c = z.shape
    labels = np.asarray(labels, dtype=np.int64)
    w = np.ones(c) if weight is None else _f64(weight)
    keep = labels != ignore_index
    y = np.where(keep, labels, 0)
    onehot = np.eye(c)[y]
    a = w[None, :] * ((1 - label_smoothing) * onehot + label_smoothing / c) * keep[:, None]
    logp = z if log_probs else _log_softmax64(z)
    out = -(a * np.where(a != 0, logp, 0)).sum(axis=1)
    grad = -a if log_probs else a.sum(axis=1, keepdims=True) * np.exp(logp) - a
    if reduction == "none":
        return out.astype(logits.dtype), grad.astype(logits.dtype)
    if reduction == "mean":
        total = (w[y] * keep).sum()
        with np.errstate(divide="ignore", invalid="ignore"):
            grad = np.where(keep[:, None], grad / total, 0.0)  # all ignored: 0, not NaN
            return float(out.sum() / total), grad.astype(logits.dtype)
    return float(out.sum()), grad.astype(logits.dtype)


def bce_with_logits(x, target, weight=None, pos_weight=None, reduction="mean"):
    """loss = w ((1 - y) x + lw log(1 + exp(-x))) with lw = 1 + (pos_weight - 1) y, via
    logaddexp; d / dx = w ((1 - y) - lw / (1 + exp(x)))."""
    x, y = _f64(x), _f64(target)
    w = 1.0 if weight is None else _f64(weight)
    lw = 1.0 if pos_weight is None else 1 + (_f64(pos_weight) - 1) * y
    out = w * ((1 - y) * x + lw * np.logaddexp(0, -x))
    with np.errstate(over="ignore"):
        grad = w * ((1 - y) - lw / (1 + np.exp(x)))
    return _reduced(out, grad, reduction, x.size, target.dtype)


def pointwise_loss(pred, target, loss, beta=1.0, reduction="mean"):
    """l1 / mse / smooth_l1 (beta) / huber (delta = beta) of d = pred - target, with
    PyTorch's gradients at the kinks (sign(0) = 0; d = +-beta on the quadratic side)."""
    d = _f64(pred) - _f64(target)
    z = np.abs(d)
    quad = z < beta
    if loss == "l1":
        out, grad = z, np.sign(d)
    elif loss == "mse":
        out, grad = d * d, 2 * d
    elif loss == "smooth_l1":
        out = np.where(quad, 0.5 * d * d / beta, z - 0.5 * beta)
        grad = np.clip(d / beta, -1, 1)
    else:
        out = np.where(quad, 0.5 * d * d, beta * (z - 0.5 * beta))
        grad = np.clip(d, -beta, beta)
    return _reduced(out, grad, reduction, d.size, pred.dtype)


def _reduced(out, grad, reduction, size, dtype):
    if reduction == "none":
        return out.astype(dtype), grad.astype(dtype)
    if reduction == "mean":
        return float(out.sum() / size), (grad / size).astype(dtype)
    return float(out.sum()), grad.astype(dtype)


# --------------------------------------------------------------------------------------
# dropout (inverted)

def dropout_mask(shape, p, seed):
    """The documented mask: element i (flat) is kept when the top 24 bits of
    SplitMix64's finaliser of seed + i * 0x9E3779B97F4A7C15 are >= p * 2^24."""
    size = int(np.prod(shape))
    with np.errstate(over="ignore"):
        z = np.uint64(seed % (1 << 64)) + np.arange(size, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    bits = z >> np.uint64(40)
    return (bits.astype(np.float64) >= p * float(1 << 24)).astype(np.uint8).reshape(shape)


def dropout_forward(x, mask, p):
    """x * mask / (1 - p); x * 0 for p == 1 (NaN and inf stay NaN, as in PyTorch)"""
    if p >= 1:
        return (_f64(x) * 0.0).astype(x.dtype)
    return (_f64(x) * (_f64(mask) != 0) / (1.0 - p)).astype(x.dtype)


def dropout_backward(dout, mask, p):
    return dropout_forward(dout, mask, p)


# --------------------------------------------------------------------------------------
# optimizers, torch.optim semantics, one step: -> new arrays

def sgd_step(param, velocity, grad, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
    """torch.optim.SGD with dampening 0. ``velocity`` is None before the first step
    (PyTorch then sets buf = g). -> (param, velocity) (velocity None when momentum == 0)"""
    p, g = _f64(param), _f64(grad)
    g = g + weight_decay * p
    buf = None
    if momentum != 0:
        buf = g.copy() if velocity is None else momentum * _f64(velocity) + g
        g = g + momentum * buf if nesterov else buf
    p = p - lr * g
    t = param.dtype
    return p.astype(t), (None if buf is None else buf.astype(t))


def adam_step(param, m, v, grad, lr, beta1, beta2, eps, weight_decay, step, decoupled):
    """torch.optim.Adam (L2 decay added to the gradient) or AdamW (decoupled=True:
    p *= 1 - lr*wd). ``step`` is 1-based. -> (param, m, v)"""
    p, g = _f64(param), _f64(grad)
    if decoupled:
        p = p * (1.0 - lr * weight_decay)
    else:
        g = g + weight_decay * p
    m = beta1 * _f64(m) + (1.0 - beta1) * g
    v = beta2 * _f64(v) + (1.0 - beta2) * g * g
    bc1 = 1.0 - beta1 ** step
    bc2 = 1.0 - beta2 ** step
    p = p - (lr / bc1) * m / (np.sqrt(v) / np.sqrt(bc2) + eps)
    t = param.dtype
    return p.astype(t), m.astype(t), v.astype(t)


def vector_norm(x, norm_type):
    """||x||_p in float64, from the sorted magnitudes (fsum): p > 0, or inf (max |x|,
    NaN if any)"""
    a = np.sort(np.abs(_f64(x)).ravel())
    if np.isnan(a).any():
        return np.nan
    if norm_type == np.inf:
        return a.max()
    return math.fsum(a ** norm_type) ** (1.0 / norm_type)


def clamp(x, lo, hi):
    """x clamped to [lo, hi], NaN kept"""
    return np.where(np.isnan(x), x, np.minimum(np.maximum(x, x.dtype.type(lo)),
                                                x.dtype.type(hi))).astype(x.dtype)


def accumulate(out, x):
    """out + x (gradient accumulation)"""
    return (_f64(out) + _f64(x)).astype(out.dtype)


# --------------------------------------------------------------------------------------
# batch normalisation over x (N, C, L), per channel; global average pooling; add

def _per_channel(a):
    """(N, C, L) -> (C, N*L): each channel's values as one row."""
    a = _f64(a)
    return a.transpose(1, 0, 2).reshape(a.shape[1], -1)


def batch_norm_forward(x, weight, bias, running_mean, running_var, num_batches_tracked,
                       training, momentum, eps):
    """torch.nn.functional.batch_norm on (N, C, L), written from the definition (np.var,
    the unbiased variance as np.var(ddof=1)). -> (out, mean, invstd, running_mean,
    running_var, num_batches_tracked); the running values are None when not given, and
    unchanged copies when not training."""
    rows = _per_channel(x)
    c = rows.shape[0]
    new_rm = None if running_mean is None else _f64(running_mean).copy()
    new_rv = None if running_var is None else _f64(running_var).copy()
    nbt = None if num_batches_tracked is None else int(num_batches_tracked)
    if training:
        mean = rows.mean(axis=1)
        var = rows.var(axis=1)
        if new_rm is not None:
            if nbt is not None:
                nbt += 1
            m = 1.0 / nbt if momentum is None else momentum
            new_rm = (1 - m) * new_rm + m * mean
            new_rv = (1 - m) * new_rv + m * rows.var(axis=1, ddof=1)
    else:
        mean, var = _f64(running_mean), _f64(running_var)
    invstd = 1.0 / np.sqrt(var + eps)
    w = np.ones(c) if weight is None else _f64(weight)
    b = np.zeros(c) if bias is None else _f64(bias)
    out = (_f64(x) - mean[None, :, None]) * invstd[None, :, None] * w[None, :, None] \
        + b[None, :, None]
    t = np.asarray(x).dtype
    cast = (lambda a: None if a is None else a.astype(t))
    return (out.astype(t), mean.astype(t), invstd.astype(t), cast(new_rm), cast(new_rv),
            None if nbt is None else np.array(nbt, np.int64))


def batch_norm_backward(dout, x, weight, eps):
    """Gradients of batch_norm in training mode (batch statistics), through the explicit
    per-channel Jacobian of y = xhat * w + b: -> (dx, dweight, dbias)."""
    d, xs = _per_channel(dout), _per_channel(x)
    c, m = xs.shape
    w = np.ones(c) if weight is None else _f64(weight)
    dx_rows = np.empty_like(xs)
    dweight, dbias = np.empty(c), np.empty(c)
    eye = np.eye(m)
    for k in range(c):
        v = xs[k]
        mu = v.mean()
        s = 1.0 / np.sqrt(((v - mu) ** 2).mean() + eps)
        xhat = (v - mu) * s
        # d xhat_i / d x_j = s * (delta_ij - 1/m - xhat_i * xhat_j / m)
        jac = s * (eye - 1.0 / m - np.outer(xhat, xhat) / m)
        dx_rows[k] = w[k] * (d[k] @ jac)
        dweight[k] = np.sum(d[k] * xhat)
        dbias[k] = np.sum(d[k])
    n, _, length = np.shape(x)
    dx = dx_rows.reshape(c, n, length).transpose(1, 0, 2)
    t = np.asarray(x).dtype
    return dx.astype(t), dweight.astype(t), dbias.astype(t)


# layer normalisation over the rows of x (M, D)

def layer_norm_forward(x, weight, bias, eps):
    """torch.nn.functional.layer_norm over the last axis of (M, D), from the definition in
    float64 (np.var, the biased variance) -> (out, mean, rstd)."""
    v = _f64(x)
    mean = v.mean(axis=1)
    rstd = 1.0 / np.sqrt(v.var(axis=1) + eps)
    out = (v - mean[:, None]) * rstd[:, None]
    if weight is not None:
        out = out * _f64(weight)
    if bias is not None:
        out = out + _f64(bias)
    t = np.asarray(x).dtype
    return out.astype(t), mean.astype(t), rstd.astype(t)


def layer_norm_backward(dout, x, weight, eps):
    """Gradients of layer_norm through each row's explicit Jacobian of xhat:
    -> (dx, dweight, dbias)."""
    d, v = _f64(dout), _f64(x)
    m, n = v.shape
    w = np.ones(n) if weight is None else _f64(weight)
    eye = np.eye(n)
    dx = np.empty_like(v)
    xhats = np.empty_like(v)
    for r in range(m):
        mu = v[r].mean()
        s = 1.0 / np.sqrt(((v[r] - mu) ** 2).mean() + eps)
        xhat = (v[r] - mu) * s
        xhats[r] = xhat
        jac = s * (eye - 1.0 / n - np.outer(xhat, xhat) / n)  # d xhat_i / d x_j
        dx[r] = (d[r] * w) @ jac
    t = np.asarray(x).dtype
    return dx.astype(t), np.einsum("rj,rj->j", d, xhats).astype(t), d.sum(axis=0).astype(t)


def global_avg_pool2d_forward(x):
    """(N, C, H, W) -> (N, C) means over H, W"""
    return _f64(x).mean(axis=(2, 3)).astype(np.asarray(x).dtype)


def global_avg_pool2d_backward(dout, x_shape):
    """dout (N, C) spread evenly over each H*W plane -> dx (N, C, H, W)"""
    h, w = x_shape[2], x_shape[3]
    dx = np.broadcast_to(_f64(dout)[:, :, None, None] / (h * w), x_shape)
    return dx.astype(np.asarray(dout).dtype)


def add(a, b):
    """a + b"""
    return (_f64(a) + _f64(b)).astype(np.asarray(a).dtype)


# recurrent, single layer, batch first: x (N, T, F), h0 / c0 (N, H) | None,
# w_ih (G*H, F), w_hh (G*H, H), b_ih / b_hh (G*H,) | None; PyTorch's equations, one
# timestep at a time with each gate's weights sliced out; backward accumulates the
# weight gradients timestep by timestep (outer products), unlike the kernels' GEMMs.

def _rec_args(x, h0, w_ih, w_hh, b_ih, b_hh, g):
    n, _, _ = x.shape
    hs = w_hh.shape[1]
    h = np.zeros((n, hs)) if h0 is None else _f64(h0)
    bi = np.zeros(g * hs) if b_ih is None else _f64(b_ih)
    bh = np.zeros(g * hs) if b_hh is None else _f64(b_hh)
    wi = [_f64(w_ih)[k * hs:(k + 1) * hs] for k in range(g)]
    wh = [_f64(w_hh)[k * hs:(k + 1) * hs] for k in range(g)]
    bi = [bi[k * hs:(k + 1) * hs] for k in range(g)]
    bh = [bh[k * hs:(k + 1) * hs] for k in range(g)]
    return _f64(x), h, wi, wh, bi, bh


def _rec_grads(x, dx, dh0, dwi, dwh, dbi, dbh, b_ih, b_hh, h0):
    t = x.dtype
    return (dx.astype(t), None if h0 is None else dh0.astype(t),
            np.concatenate(dwi).astype(t), np.concatenate(dwh).astype(t),
            None if b_ih is None else np.concatenate(dbi).astype(t),
            None if b_hh is None else np.concatenate(dbh).astype(t))


def rnn_forward(x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity="tanh"):
    """-> (out (N, T, H), h_n (N, H))"""
    xs, h, wi, wh, bi, bh = _rec_args(x, h0, w_ih, w_hh, b_ih, b_hh, 1)
    outs = []
    for s in range(xs.shape[1]):
        pre = xs[:, s] @ wi[0].T + bi[0] + h @ wh[0].T + bh[0]
        h = np.tanh(pre) if nonlinearity == "tanh" else np.maximum(pre, 0.0)
        outs.append(h)
    out = np.stack(outs, axis=1)
    return out.astype(x.dtype), h.astype(x.dtype)


def rnn_backward(dout, dh_n, x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity="tanh"):
    """-> (dx, dh0 | None, dw_ih, dw_hh, db_ih | None, db_hh | None)"""
    xs, h0v, wi, wh, _, _ = _rec_args(x, h0, w_ih, w_hh, b_ih, b_hh, 1)
    out = _f64(rnn_forward(xs, h0, w_ih.astype(np.float64), w_hh.astype(np.float64),
                           None if b_ih is None else _f64(b_ih),
                           None if b_hh is None else _f64(b_hh), nonlinearity)[0])
    n, steps, _ = xs.shape
    dh = np.zeros_like(h0v) if dh_n is None else _f64(dh_n).copy()
    dx = np.zeros_like(xs)
    dwi, dwh = [np.zeros_like(wi[0])], [np.zeros_like(wh[0])]
    dbi, dbh = [np.zeros(wi[0].shape[0])], [np.zeros(wi[0].shape[0])]
    for s in reversed(range(steps)):
        h = out[:, s]
        hp = h0v if s == 0 else out[:, s - 1]
        dh = dh + _f64(dout)[:, s]
        da = _act_backward64(dh, h, nonlinearity)
        dx[:, s] = da @ wi[0]
        dwi[0] += np.einsum("nh,nf->hf", da, xs[:, s])
        dwh[0] += np.einsum("nh,nk->hk", da, hp)
        dbi[0] += da.sum(0)
        dbh[0] += da.sum(0)
        dh = da @ wh[0]
    return _rec_grads(x, dx, dh, dwi, dwh, dbi, dbh, b_ih, b_hh, h0)


def _lstm_cells(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    xs, h, wi, wh, bi, bh = _rec_args(x, h0, w_ih, w_hh, b_ih, b_hh, 4)
    c = np.zeros_like(h) if c0 is None else _f64(c0)
    steps = []
    for s in range(xs.shape[1]):
        a = [xs[:, s] @ wi[k].T + bi[k] + h @ wh[k].T + bh[k] for k in range(4)]
        i, f, g, o = _sigmoid64(a[0]), _sigmoid64(a[1]), np.tanh(a[2]), _sigmoid64(a[3])
        c_prev, h_prev = c, h
        c = f * c_prev + i * g
        h = o * np.tanh(c)
        steps.append(dict(i=i, f=f, g=g, o=o, c=c, c_prev=c_prev, h=h, h_prev=h_prev))
    return xs, wi, wh, steps


def lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    """-> (out (N, T, H), h_n (N, H), c_n (N, H))"""
    _, _, _, steps = _lstm_cells(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    out = np.stack([st["h"] for st in steps], axis=1)
    t = x.dtype
    return out.astype(t), steps[-1]["h"].astype(t), steps[-1]["c"].astype(t)


def lstm_backward(dout, dh_n, dc_n, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    """-> (dx, dh0 | None, dc0 | None, dw_ih, dw_hh, db_ih | None, db_hh | None)"""
    xs, wi, wh, steps = _lstm_cells(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    n, hs = steps[0]["h"].shape
    dh = np.zeros((n, hs)) if dh_n is None else _f64(dh_n).copy()
    dc = np.zeros((n, hs)) if dc_n is None else _f64(dc_n).copy()
    dx = np.zeros_like(xs)
    dwi = [np.zeros_like(w) for w in wi]
    dwh = [np.zeros_like(w) for w in wh]
    dbi = [np.zeros(hs) for _ in range(4)]
    dbh = [np.zeros(hs) for _ in range(4)]
    for s in reversed(range(len(steps))):
        st = steps[s]
        dh = dh + _f64(dout)[:, s]
        tc = np.tanh(st["c"])
        dc = dc + dh * st["o"] * (1.0 - tc ** 2)
        da = [dc * st["g"] * st["i"] * (1.0 - st["i"]),
              dc * st["c_prev"] * st["f"] * (1.0 - st["f"]),
              dc * st["i"] * (1.0 - st["g"] ** 2),
              dh * tc * st["o"] * (1.0 - st["o"])]
        dh = np.zeros((n, hs))
        for k in range(4):
            dx[:, s] += da[k] @ wi[k]
            dh += da[k] @ wh[k]
            dwi[k] += np.einsum("nh,nf->hf", da[k], xs[:, s])
            dwh[k] += np.einsum("nh,nk->hk", da[k], st["h_prev"])
            dbi[k] += da[k].sum(0)
            dbh[k] += da[k].sum(0)
        dc = dc * st["f"]
    dx, dh0, dwi, dwh, dbi, dbh = _rec_grads(x, dx, dh, dwi, dwh, dbi, dbh, b_ih, b_hh, h0)
    return dx, dh0, None if c0 is None else dc.astype(x.dtype), dwi, dwh, dbi, dbh


def _gru_cells(x, h0, w_ih, w_hh, b_ih, b_hh):
    xs, h, wi, wh, bi, bh = _rec_args(x, h0, w_ih, w_hh, b_ih, b_hh, 3)
    steps = []
    for s in range(xs.shape[1]):
        r = _sigmoid64(xs[:, s] @ wi[0].T + bi[0] + h @ wh[0].T + bh[0])
        z = _sigmoid64(xs[:, s] @ wi[1].T + bi[1] + h @ wh[1].T + bh[1])
        hn = h @ wh[2].T + bh[2]
        nn = np.tanh(xs[:, s] @ wi[2].T + bi[2] + r * hn)
        h_prev = h
        h = (1.0 - z) * nn + z * h_prev
        steps.append(dict(r=r, z=z, n=nn, hn=hn, h=h, h_prev=h_prev))
    return xs, wi, wh, steps


def gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh):
    """-> (out (N, T, H), h_n (N, H))"""
    _, _, _, steps = _gru_cells(x, h0, w_ih, w_hh, b_ih, b_hh)
    out = np.stack([st["h"] for st in steps], axis=1)
    return out.astype(x.dtype), steps[-1]["h"].astype(x.dtype)


def gru_backward(dout, dh_n, x, h0, w_ih, w_hh, b_ih, b_hh):
    """-> (dx, dh0 | None, dw_ih, dw_hh, db_ih | None, db_hh | None)"""
    xs, wi, wh, steps = _gru_cells(x, h0, w_ih, w_hh, b_ih, b_hh)
    n, hs = steps[0]["h"].shape
    dh = np.zeros((n, hs)) if dh_n is None else _f64(dh_n).copy()
    dx = np.zeros_like(xs)
    dwi = [np.zeros_like(w) for w in wi]
    dwh = [np.zeros_like(w) for w in wh]
    dbi = [np.zeros(hs) for _ in range(3)]
    dbh = [np.zeros(hs) for _ in range(3)]
    for s in reversed(range(len(steps))):
        st = steps[s]
        dh = dh + _f64(dout)[:, s]
        dn = dh * (1.0 - st["z"]) * (1.0 - st["n"] ** 2)   # d pre-activation of n
        dz = dh * (st["h_prev"] - st["n"]) * st["z"] * (1.0 - st["z"])
        dr = dn * st["hn"] * st["r"] * (1.0 - st["r"])
        d_in = [dr, dz, dn]               # input side
        d_hid = [dr, dz, dn * st["r"]]    # hidden side: r scales W_hn h + b_hn
        dh = dh * st["z"]
        for k in range(3):
            dx[:, s] += d_in[k] @ wi[k]
            dh += d_hid[k] @ wh[k]
            dwi[k] += np.einsum("nh,nf->hf", d_in[k], xs[:, s])
            dwh[k] += np.einsum("nh,nk->hk", d_hid[k], st["h_prev"])
            dbi[k] += d_in[k].sum(0)
            dbh[k] += d_hid[k].sum(0)
    return _rec_grads(x, dx, dh, dwi, dwh, dbi, dbh, b_ih, b_hh, h0)


def embedding_forward(indices, weight):
    """-> weight[indices] (any index shape), through a one-hot matrix product in float64."""
    w = _f64(weight)
    flat = np.asarray(indices).reshape(-1).astype(np.int64)
    onehot = (flat[:, None] == np.arange(w.shape[0])[None, :]).astype(np.float64)
    return (onehot @ w).reshape(np.shape(indices) + (w.shape[1],))


def embedding_backward(dout, indices, num_embeddings, padding_idx=None):
    """-> dweight (V, D): the transposed one-hot matrix times dout, in float64; the
    padding row 0."""
    flat = np.asarray(indices).reshape(-1).astype(np.int64)
    g = _f64(dout).reshape(flat.size, -1)
    onehot = (flat[:, None] == np.arange(num_embeddings)[None, :]).astype(np.float64)
    dw = onehot.T @ g
    if padding_idx is not None:
        dw[padding_idx] = 0.0
    return dw


def sequence_copy(out, x, out_col, x_col, width, reverse, out_time_first, x_time_first):
    """-> a copy of out (left as it was outside the window) with x's window written in:
    both brought to (N, T, C) by a transpose, time flipped with [::-1]"""
    res = np.array(out, copy=True)
    view = res.swapaxes(0, 1) if out_time_first else res
    src = x.swapaxes(0, 1) if x_time_first else x
    if reverse:
        src = src[:, ::-1]
    view[:, :, out_col:out_col + width] = src[:, :, x_col:x_col + width]
    return res
