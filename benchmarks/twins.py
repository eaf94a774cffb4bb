"""The same maths as fastnet's kernels, written as a NumPy user would write it:
vectorised, im2col through stride tricks, scatter-adds through np.add.at."""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def dense_fwd_bwd(x, w, b, dout):
    y = np.maximum(x @ w.T + b, 0)
    g = dout * (y > 0)
    return y, g @ w, g.T @ x, g.sum(axis=0)


def _windows(x, k, s, p):
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    return sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::s, ::s]  # N C OH OW k k


def conv_fwd_bwd(x, w, b, dout, s, p):
    n, c, h, wd = x.shape
    o, _, k, _ = w.shape
    win = _windows(x, k, s, p)
    oh, ow = win.shape[2], win.shape[3]
    cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * k * k)
    y = (cols @ w.reshape(o, -1).T + b).reshape(n, oh, ow, o).transpose(0, 3, 1, 2)
    g = dout.transpose(0, 2, 3, 1).reshape(-1, o)
    dw = (g.T @ cols).reshape(w.shape)
    db = g.sum(axis=0)
    dcols = (g @ w.reshape(o, -1)).reshape(n, oh, ow, c, k, k)
    dxp = np.zeros((n, c, h + 2 * p, wd + 2 * p), x.dtype)
    for i in range(k):
        for j in range(k):
            dxp[:, :, i:i + s * oh:s, j:j + s * ow:s] += dcols[..., i, j].transpose(0, 3, 1, 2)
    return y, dxp[:, :, p:p + h, p:p + wd], dw, db


def maxpool_fwd_bwd(x, k, dout):
    n, c, h, w = x.shape
    win = x.reshape(n, c, h // k, k, w // k, k).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h // k, w // k, k * k)
    arg = win.argmax(axis=-1)
    y = np.take_along_axis(win, arg[..., None], -1)[..., 0]
    dwin = np.zeros_like(win)
    np.put_along_axis(dwin, arg[..., None], dout[..., None], -1)
    dx = dwin.reshape(n, c, h // k, w // k, k, k).transpose(0, 1, 2, 4, 3, 5).reshape(x.shape)
    return y, dx
