"""The float32 signatures under which test_ptx.py compiles every raw CUDA kernel to PTX:
``SIGNATURES[family]()`` -> [(kernel, signature)]. Kept here, beside the test, so that
the kernel modules hold no test hooks; the test checks that every top-level kernel of a
family is listed."""
import numpy as np
from numba import boolean, float32, int32, int64, types, uint8, uint64

F1, F2, F3, F4 = float32[::1], float32[:, ::1], float32[:, :, ::1], float32[:, :, :, ::1]
I1 = int64[::1]
NONE = types.none


def _module(family):
    import importlib

    return importlib.import_module(f"fastnet.kernels.cuda.{family}")


def gemm():
    """Every transpose pair with and without bias on the small tile, and the medium and
    large tiles as dense forward uses them (the tiles differ only in their constants; the
    large one takes ~10 s to build)."""
    m = _module("gemm")

    def sig(bias):
        return (F1, F2, F2, bias) + (int64,) * 3 + (boolean,) + (int64,) * 5

    out = [(m.kernel_for(np.float32, ta, tb, "small")[0], sig(bias))
           for ta in (False, True) for tb in (False, True) for bias in (F1, NONE)]
    out += [(m.kernel_for(np.float32, False, True, config)[0], sig(F1))
            for config in ("medium", "large")]
    return out


def dense():
    m = _module("dense")
    return [(m._activation_grad_colsum_kernel, (F2, db, F2, F2, int64, boolean))
            for db in (F1, NONE)]


def conv():
    m = _module("conv")
    ints = (int64,) * 8
    return [
        (m._im2col_kernel, (F2, F4) + ints),
        (m._col2im_kernel, (F4, F2) + ints),
        (m._nchw_to_gemm_kernel, (F2, F3, F3, int64)),
        (m._row_sum_kernel, (F1, F2)),
        (m._grouped_forward_kernel, (F4, F4, F4, F1, boolean) + (int64,) * 8),
        (m._grouped_dx_kernel, (F4, F2, F4) + (int64,) * 9),
        (m._grouped_dw_kernel, (F4, F2, F4) + (int64,) * 9),
    ]


def pool():
    m = _module("pool")
    i1, geometry = int32[::1], (int64,) * 10  # h, w, oh, ow, kh, kw, sh, sw, ph, pw
    return [
        (m._max_pool2d_forward_kernel, (F1, i1, F1) + geometry),
        (m._max_pool2d_backward_kernel, (F1, F1, i1) + geometry),
        (m._avg_pool2d_forward_kernel, (F1, F1) + geometry + (float32,)),
        (m._avg_pool2d_backward_kernel, (F1, F1) + geometry + (float32,)),
        (m._global_avg_pool2d_forward_kernel, (F1, F1, int64, float32)),
        (m._global_avg_pool2d_backward_kernel, (F1, F1, int64, float32)),
        (m._lp_pool2d_forward_kernel,
         (F1, F1) + geometry[:8] + (float32, int64, float32, int64)),  # p, its code, 1/p, its code
        (m._lp_pool2d_backward_kernel,
         (F1, F1, F1) + geometry[:8] + (float32, int64) * 2 + (float32, float32, int64)),
    ]


def activations():
    m = _module("activations")
    return [
        (m._activation_forward_kernel, (F1, F1, int64, float32)),
        (m._activation_backward_kernel, (F1, F1, F1, int64, float32)),
        (m._leaky_relu_forward_kernel, (F1, F1, float32)),
        (m._leaky_relu_backward_kernel, (F1, F1, F1, float32)),
        (m._hardsigmoid_forward_kernel, (F1, F1, float32, float32, float32)),
        (m._hardsigmoid_backward_kernel, (F1, F1, F1, float32, float32, float32)),
        (m._softmax_forward_kernel, (F2, F2, int64)),
        (m._softmax_backward_kernel, (F2, F2, F2, int64)),
        (m._log_softmax_forward_kernel, (F2, F2, int64)),
        (m._log_softmax_backward_kernel, (F2, F2, F2, int64)),
    ]


def losses():
    m = _module("losses")
    label_types = (int64[::1], int32[::1], uint8[::1])
    return ([(m._softmax_cross_entropy_kernel, (grad, F1, F2, labels, int64, float32))
             for grad in (F2, NONE) for labels in label_types]
            + [(m._cross_entropy_mean_kernel, (F1, F1, labels, int64)) for labels in label_types]
            + [(m._mse_kernel, (F1, F1, F1, F1, float32)),
               (m._mse_kernel, (NONE, F1, F1, F1, float32)),
               (m._mean_kernel, (F1, F1, float32))]
            # the losses with PyTorch's arguments, twice each (PTX builds cost ~1 s per
            # signature and architecture): the backward (grad from dout) with weights, and
            # the "none" forward (out) without
            + [(m._cross_entropy_setup_kernel, (F1, I1, F1, int64, int64))]
            + [(m._cross_entropy_kernel, (out, grad, F1, F2, I1, w, int64, float32, boolean,
                                          boolean, F1, dout, int64))
               for out, grad, dout, w in ((NONE, F2, F1, F1), (F1, NONE, NONE, NONE))]
            + [(m._cross_entropy_total_kernel, (F1, F1, boolean))]
            + [(m._bce_with_logits_kernel, (out, grad, F1, F1, F1, w, w, float32, dout))
               for out, grad, dout, w in ((NONE, F1, F1, F1), (F1, NONE, NONE, NONE))]
            + [(m._pointwise_kernel, (out, grad, F1, F1, F1, int64, float32, float32, dout))
               for out, grad, dout in ((NONE, F1, F1), (F1, NONE, NONE))])


def dropout():
    m = _module("dropout")
    u1 = uint8[::1]
    return [
        (m._dropout_forward_kernel, (F1, u1, F1, uint64, float32, uint64)),
        (m._dropout_backward_kernel, (F1, F1, u1, float32)),
    ]


def optim():
    m = _module("optim")
    return ([(m._sgd_step_kernel, (F1, velocity, F1, float32, float32, float32, boolean))
             for velocity in (F1, NONE)]
            + [(m._adam_step_kernel, (F1, F1, F1, F1) + (float32,) * 9 + (boolean,)),
               (m._norm_partial_kernel, (F1, F1, float32, int64)),
               (m._norm_finish_kernel, (F1, F1, float32, int64)),
               (m._scale_kernel, (F1, float32)), (m._clamp_kernel, (F1, float32, float32))])


def elementwise():
    m = _module("elementwise")
    return [(m._accumulate_kernel, (F1, F1)), (m._add_kernel, (F1, F1, F1)),
            (m._divide_kernel, (F1, F1, float32)), (m._swap_axes12_kernel, (F3, F3))]


def norm():
    m = _module("norm")
    return [
        (m._count_batch_kernel, (I1,)),
        (m._batch_stats_kernel, (F1, F1, F1, F1, I1, F3, boolean, boolean, float32, float32)),
        (m._normalise_kernel, (F3, F3, F1, F1, F1, F1, boolean)),
        (m._batch_norm_sums_kernel, (F2, F1, F1, F3, F3, F1, F1, boolean)),
        (m._batch_norm_dx_kernel, (F3, F3, F3, F1, F1, F1, F2, boolean)),
        (m._layer_norm_forward_kernel,
         (F2, F1, F1, F2, F1, F1, boolean, boolean, float32, int64)),
        (m._layer_norm_dx_kernel, (F2, F2, F2, F1, boolean, F1, F1, int64)),
        (m._layer_norm_partials_kernel, (F2, F2, F2, F2, F1, F1, int64)),
        (m._layer_norm_sum_partials_kernel, (F1, F1, F2, F2, boolean, boolean)),
    ]


def recurrent():
    m = _module("recurrent")
    i = int64
    out = [(m._state_kernel, (F2, a, b)) for a in (F2, NONE) for b in (F2, NONE)]
    out += [(m._shift_kernel, (F3, F3, h0)) for h0 in (F2, NONE)]
    out.append((m._column_sums_kernel, (F1, F2)))
    for b in (F1, NONE):
        out.append((m._rnn_step_kernel, (F3, F2, F2, b, b, i, i, float32)))
        out.append((m._lstm_step_kernel, (F3, F2, F2, F3, F3, F2, b, b, i, float32)))
        out.append((m._gru_step_kernel, (F3, F2, F3, F3, F2, b, b, i, float32)))
    for dout in (F3, NONE):
        out.append((m._rnn_step_backward_kernel, (F3, F2, F2, dout, F3, i, i, float32)))
    for h0, dout in ((F2, F3), (NONE, NONE)):
        out.append((m._lstm_step_backward_kernel, (F3, F2, F2, F2, dout, F3, F3, h0, i, float32)))
        out.append((m._gru_step_backward_kernel, (F3, F3, F2, F2, F2, dout, F3, F3, F3, h0, i,
                                                  float32)))
    out.append((m._sequence_copy_kernel, (F1, F1) + (i,) * 9))
    return out


def embedding():
    """Indices of int64 (what the layer passes) and int32; padding_idx int64."""
    m = _module("embedding")
    out = []
    for idx in (I1, int32[::1]):
        out.append((m._embedding_forward_kernel, (F2, idx, F2)))
    out.append((m._embedding_backward_kernel, (F2, F2, I1, I1, int64)))
    return out


SIGNATURES = {f.__name__: f for f in (gemm, dense, conv, pool, activations, losses, dropout,
                                      optim, elementwise, norm, recurrent, embedding)}
