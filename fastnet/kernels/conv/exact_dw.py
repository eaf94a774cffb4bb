"""dw of a convolution from the valid products only: the weight gradient for inputs that
hold NaN or inf.

The fast dw paths (implicit_gemm_dw.py, direct.py) sum over a layout with junk columns:
they multiply input values that no output reads by a zero gradient. For finite inputs
that adds exact zeros; an inf or NaN input there gives NaN, in dw entries whose exact
value (PyTorch's) is finite or +-inf. conv2d_backward therefore checks the fast dw (a
pass over O*C*KH*KW values, not over x) and, when it is not finite, recomputes it here:
a plain loop over the products that exist, in a fixed order. Slow, but taken only when
the result is NaN or inf anyway.
"""
import numpy as np
from numba import njit, prange

from .._jit import compute_kernel
from ..activations import through_activation


@njit(cache=True, nogil=True)
def all_finite(a):
    """Whether every value of the C-contiguous float array ``a`` is finite."""
    flat = a.reshape(-1)
    for i in range(flat.size):
        v = flat[i]
        if not (v - v == 0):  # NaN - NaN and inf - inf are NaN
            return False
    return True


@compute_kernel
def _dw(dw, dout, x, out, code, sh, sw, ph, pw):
    o_, c_, kh_, kw_ = dw.shape
    n_, _, oh_, ow_ = dout.shape
    h_, w_ = x.shape[2], x.shape[3]
    for oc in prange(o_ * c_):
        o, c = oc // c_, oc % c_
        for i in range(kh_):
            for j in range(kw_):
                s = dw.dtype.type(0)
                for n in range(n_):
                    for r in range(oh_):
                        y = r * sh + i - ph
                        if y < 0 or y >= h_:
                            continue
                        for t in range(ow_):
                            xc = t * sw + j - pw
                            if xc < 0 or xc >= w_:
                                continue
                            g = dout[n, o, r, t]
                            if code != 0:
                                g = through_activation(g, out[n, o, r, t], code)
                            s += g * x[n, c, y, xc]
                dw[o, c, i, j] = s


def weight_grad(dw, dout, x, out, stride, padding, code):
    """dw (O, C, KH, KW) of conv2d_forward from the valid products only; ``out`` is the
    forward output (read for the activation's derivative; any array when code is 0)."""
    _dw(dw, dout, np.ascontiguousarray(x), out, code, stride[0], stride[1], padding[0],
        padding[1])
