"""One case list per kernel family, shared by the CPU tests (``tests/kernels/test_<family>.py``)
and the CUDA tests (``tests/kernels/cuda/test_<family>.py``).

Cases in ``LARGE[<list name>]`` are sized for the CPU kernels' parallel and vector paths; the CUDA
tests run them on a GPU but not in Numba's CUDA simulator, which runs every GPU thread as
a Python thread (about 0.2 ms each): ``cases_for(cases, "cuda")`` leaves them out there.
Everything else runs on both devices, CUDA's several-block sizes included.
"""
from fastnet.cuda import simulator


def cases_for(cases, device):
    """The ids of a case dict (or the items of a shape list) that run on ``device``: in
    the simulator, those not in the list's LARGE set."""
    large = _LARGE_BY_LIST.get(id(cases), ()) if device == "cuda" and simulator() else ()
    return [c for c in cases if c not in large]


# ---- pool: (x shape, kernel, stride, padding), padding <= kernel / 2 as PyTorch requires
POOL_CASES = {
    "2x2-s2": ((2, 3, 8, 8), (2, 2), (2, 2), (0, 0)),
    # 2x2/stride 2/no padding has its own CPU kernels: odd sizes leave a row and a column out
    "2x2-s2-odd": ((3, 2, 7, 9), (2, 2), (2, 2), (0, 0)),
    "2x2-s2-odd-batch1": ((1, 2, 5, 7), (2, 2), (2, 2), (0, 0)),
    "2x2-s2-parallel": ((4, 8, 34, 33), (2, 2), (2, 2), (0, 0)),
    # rows of 21 and 1 outputs: full vector steps plus a masked last one, a masked one only
    "2x2-s2-long-rows": ((2, 3, 6, 43), (2, 2), (2, 2), (0, 0)),
    "2x2-s2-one-column": ((2, 3, 5, 3), (2, 2), (2, 2), (0, 0)),
    "3x3-s2-p1-odd": ((2, 3, 7, 9), (3, 3), (2, 2), (1, 1)),  # overlapping windows
    # several blocks of CUDA threads both ways: 288 outputs, 1056 inputs
    "3x3-s2-p1-blocks": ((2, 4, 12, 11), (3, 3), (2, 2), (1, 1)),
    "nonsquare-3x2-s1x2-p1x1": ((1, 2, 5, 6), (3, 2), (1, 2), (1, 1)),
    "overlap-s1-p1x0": ((2, 2, 5, 5), (3, 3), (1, 1), (1, 0)),
    "1x1": ((2, 2, 3, 4), (1, 1), (1, 1), (0, 0)),
    "1x1-s2x3": ((2, 2, 5, 4), (1, 1), (2, 3), (0, 0)),
    "kernel-is-input": ((3, 2, 4, 5), (4, 5), (1, 1), (0, 0)),
    "kernel-is-input-padded": ((3, 2, 4, 5), (4, 5), (2, 3), (2, 2)),
    "stride-over-kernel": ((2, 2, 11, 10), (2, 2), (3, 4), (1, 0)),
    "large-batch9-c5": ((9, 5, 17, 15), (3, 2), (2, 1), (1, 1)),
}
# LP pooling: (x shape, kernel, stride, norm_type), no padding; a norm_type that is not a
# whole number takes |x| in the tests (a negative base has no real power)
LP_POOL_CASES = {
    "p2-2x2-s2": ((2, 3, 8, 8), (2, 2), (2, 2), 2),
    "p3-3x2-s2x3-odd": ((3, 2, 7, 9), (3, 2), (2, 3), 3),        # odd p: negative sums -> NaN
    "p1-2x3-s1x2-batch1": ((1, 2, 5, 7), (2, 3), (1, 2), 1),
    "p1.5-overlap-s1": ((2, 2, 5, 6), (3, 3), (1, 1), 1.5),
    "p0.5-2x2-s1": ((2, 1, 4, 5), (2, 2), (1, 1), 0.5),
    "p2-kernel-is-input": ((3, 2, 4, 5), (4, 5), (1, 1), 2),
    "p4-stride-over-kernel": ((2, 2, 11, 10), (2, 2), (3, 4), 4),
    "p2-1x1": ((2, 2, 3, 4), (1, 1), (1, 1), 2),
    # several blocks of CUDA threads: 300 outputs, 1200 inputs
    "p2-3x3-s2-blocks": ((2, 6, 10, 10), (3, 3), (2, 2), 2),
    "p2-large-batch9-c5": ((9, 5, 17, 15), (3, 2), (2, 1), 2),
}
# ---- conv with dilation and groups: (x shape, w shape (O, C/groups, KH, KW), stride,
# padding, dilation, groups); w's first axis a multiple of groups
GROUPED_CONV_CASES = {
    "depthwise-3x3-p1": ((2, 4, 7, 6), (4, 1, 3, 3), (1, 1), (1, 1), (1, 1), 4),
    "depthwise-x2-s2": ((2, 3, 8, 7), (6, 1, 3, 3), (2, 2), (1, 1), (1, 1), 3),
    "groups2-dilation2": ((2, 4, 9, 8), (6, 2, 3, 2), (1, 1), (2, 1), (2, 2), 2),
    "dilation2x3-s2x1": ((1, 3, 10, 11), (4, 3, 3, 3), (2, 1), (2, 3), (2, 3), 1),
    "depthwise-dilation3x1-s1x2": ((3, 2, 9, 5), (2, 1, 2, 3), (1, 2), (0, 2), (3, 1), 2),
    "groups3-1x1-batch1": ((1, 6, 4, 5), (3, 2, 1, 1), (1, 1), (0, 0), (1, 1), 3),
    "padding-past-span": ((2, 2, 3, 4), (2, 1, 2, 2), (1, 1), (3, 2), (2, 1), 2),
    "depthwise-parallel": ((9, 8, 13, 17), (8, 1, 3, 3), (1, 1), (1, 1), (1, 1), 8),
}
# global average pooling (N, C, H, W) -> (N, C)
GLOBAL_POOL_SHAPES = {"small": (2, 3, 4, 5), "1x1": (1, 1, 1, 1), "column": (3, 2, 7, 1),
                      "blocks": (2, 3, 5, 7), "parallel": (9, 40, 11, 13)}

# ---- conv: (x shape, w shape, stride, padding)
CONV_CASES = {
    "3x3-s1-p1": ((2, 3, 7, 6), (4, 3, 3, 3), (1, 1), (1, 1)),
    "3x3-s1-p1-odd": ((2, 3, 6, 5), (4, 3, 3, 3), (1, 1), (1, 1)),
    "nonsquare-s2x3-p1x0": ((2, 3, 9, 8), (5, 3, 3, 2), (2, 3), (1, 0)),
    "5x3-s2x1-p2x0": ((3, 2, 9, 6), (5, 2, 5, 3), (2, 1), (2, 0)),
    "1x1-s2x1": ((3, 4, 5, 7), (2, 4, 1, 1), (2, 1), (0, 0)),
    "1x1-batch1": ((1, 4, 3, 3), (2, 4, 1, 1), (1, 1), (0, 0)),
    "kernel-is-input": ((2, 2, 4, 5), (3, 2, 4, 5), (1, 1), (0, 0)),
    "kernel-is-input-padded-s2": ((1, 3, 3, 3), (2, 3, 3, 3), (2, 2), (1, 1)),
    "batch1-single-channel": ((1, 1, 5, 5), (1, 1, 2, 2), (1, 1), (0, 1)),
    "stride-over-kernel": ((2, 2, 10, 11), (3, 2, 2, 3), (3, 4), (0, 1)),
    "stride-over-kernel-c1": ((2, 1, 9, 8), (3, 1, 2, 2), (3, 3), (1, 0)),
    "padding-over-half-kernel": ((2, 2, 3, 4), (2, 2, 2, 2), (1, 2), (2, 3)),
    "large-batch9-c5": ((9, 5, 17, 15), (7, 5, 3, 4), (2, 1), (1, 2)),
    "batch11-s1-p1x2": ((11, 2, 6, 5), (6, 2, 3, 4), (1, 1), (1, 2)),  # > DW_GROUP images
    # > 64 output channels (several dw channel blocks), taps not a whole number of tiles,
    # padding KH-1
    "wide-o70-s1-p2x1": ((3, 9, 6, 7), (70, 9, 3, 2), (1, 1), (2, 1)),
    # stride 1 with padding past KW-1
    "s1-padding-over-kernel": ((2, 3, 4, 4), (2, 3, 2, 2), (1, 1), (2, 1)),
    # stride 2 with > 64 output channels and a 3-channel input (the short dx tile)
    "wide-o70-s2-p1": ((3, 3, 9, 10), (70, 3, 3, 3), (2, 2), (1, 1)),
    # 1x1 stride 2 (a ResNet shortcut): three of the four input phases get no tap
    "1x1-s2-shortcut": ((2, 5, 7, 8), (9, 5, 1, 1), (2, 2), (0, 0)),
}

# ---- activations
# odd 1-D, batch-1 4-D, more than one block of CUDA threads, the CPU's parallel size
ACTIVATION_SHAPES = [(7,), (1, 3, 5, 2), (3, 101), (2049, 13)]
# softmax rows (N, C): rows of one element, one row, a row per CUDA thread over 2 blocks,
# C over 1000 (a full block of CUDA threads per row), the CPU's parallel size
SOFTMAX_SHAPES = [(5, 3), (1, 7), (4, 1), (300, 3), (1, 1030), (130, 257)]

# ---- dense: (N, IN, OUT): odd sizes, batch 1, several GEMM and column-sum blocks
DENSE_SHAPES = [(7, 13, 5), (1, 3, 1), (20, 5, 35), (130, 257, 300)]

# ---- dropout: odd 1-D, batch-1 4-D, several blocks, the CPU's parallel size
DROPOUT_SHAPES = [(7,), (1, 3, 5, 2), (3, 101), (129, 65)]

# ---- embedding: (M indices, V rows, D features): one index, one feature, more rows than
# indices, many repeats of few rows, several CUDA blocks, the CPU's parallel size
EMBEDDING_CASES = {
    "m1-v1-d1": (1, 1, 1),
    "m7-v3-d5": (7, 3, 5),
    "m5-v20-d3": (5, 20, 3),
    "m40-v2-d9": (40, 2, 9),
    "blocks-m33-v11-d7": (33, 11, 7),
    "parallel-m3000-v97-d33": (3000, 97, 33),
}

# ---- losses
# cross entropy (N, C): one class, one row, several blocks of rows, the CPU's row paths
CE_SHAPES = [(5, 3), (1, 7), (4, 1), (300, 4), (6, 40), (130, 10), (33, 16), (17, 17),
             (40, 100)]
# mse: one element, odd sizes, several CUDA blocks (several partial sums), the CPU's
# vector tails
MSE_SHAPES = [(1,), (7,), (3, 4, 5), (2, 301), (4097,), (3, 4099)]
# the losses with PyTorch's arguments: one row, several row blocks (16 rows each); for the
# elementwise ones one element and several 4096-element blocks
CE_GENERAL_SHAPES = [(1, 4), (5, 3), (40, 7)]
BCE_SHAPES = [(1, 1), (5, 3), (40, 2)]
POINTWISE_SHAPES = [(1,), (3, 5), (2, 4099)]

# ---- norm: batch norm over (N, C, L)
NORM_SHAPES = {
    "n2-c3-l5": (2, 3, 5),
    "features-n7-c4": (7, 4, 1),     # (N, C) input
    "features-n5-c3": (5, 3, 1),
    "one-row-l9": (1, 2, 9),         # batch 1, still 9 values per channel
    "l37": (3, 2, 37),
    "odd-n5-c7-l13": (5, 7, 13),
    "parallel-n8-c33-l130": (8, 33, 130),
}

# layer norm: (M rows, D normalised values): one value per row, one row, odd sizes, rows
# that span several simulator strides and row blocks of the weight sums (32 rows), and
# one sized for the CPU's parallel build
LAYER_NORM_SHAPES = {
    "m3-d5": (3, 5),
    "d1": (4, 1),
    "one-row-d9": (1, 9),
    "two-row-blocks-m33-d6": (33, 6),
    "odd-m37-d70": (37, 70),
    "parallel-m130-d513": (130, 513),
}

# ---- optim and elementwise: parameter shapes (one CUDA block; several blocks; the CPU's
# parallel size)
OPTIM_SHAPES = [(7,), (3, 4, 5), (2, 151), (10007,)]
ELEMENTWISE_SHAPES = OPTIM_SHAPES
SGD_CONFIGS = {
    "plain": dict(momentum=0.0, weight_decay=0.0, nesterov=False),
    "wd": dict(momentum=0.0, weight_decay=0.01, nesterov=False),
    "momentum": dict(momentum=0.9, weight_decay=0.0, nesterov=False),
    "momentum-wd": dict(momentum=0.9, weight_decay=0.05, nesterov=False),
    "nesterov": dict(momentum=0.8, weight_decay=0.0, nesterov=True),
    "nesterov-wd": dict(momentum=0.9, weight_decay=0.01, nesterov=True),
}
NORM_TYPES = [2.0, 1.0, float("inf"), 3.0]  # vector_norm's reductions: squares, |x|, max, |x|^p
ADAM_CONFIGS = {
    "adam": dict(weight_decay=0.0, decoupled=False),
    "adam-l2": dict(weight_decay=0.1, decoupled=False),
    "adamw": dict(weight_decay=0.1, decoupled=True),
    "adamw-no-wd": dict(weight_decay=0.0, decoupled=True),
}

# ---- recurrent: cell name -> (kernel family prefix, gates, rnn nonlinearity)
CELLS = {"rnn_tanh": ("rnn", 1, "tanh"), "rnn_relu": ("rnn", 1, "relu"),
         "lstm": ("lstm", 4, None), "gru": ("gru", 3, None)}
# (N, T, F, H): odd sizes; batch 1 and sequence length 1; several 64-column bias blocks;
# more than two blocks of batch rows for the LSTM's row-block recurrence (the last one
# partial) and gate / hidden columns that are not a whole number of its tiles
RECURRENT_SHAPES = [(3, 4, 3, 5), (1, 1, 3, 5), (5, 3, 7, 20), (19, 3, 6, 13)]
# sequence_copy: (N, T, CO, CX, out_col, x_col, width, reverse, out_time_first, x_time_first):
# a whole reversed copy, a concatenation's half, a split's half out of time-first, a
# transpose, batch 1 / one step, and one large enough for the parallel build
SEQUENCE_COPY_CASES = [(3, 4, 5, 5, 0, 0, 5, True, False, False),
                       (2, 5, 6, 3, 3, 0, 3, False, False, False),
                       (4, 3, 2, 7, 0, 4, 2, True, False, True),
                       (3, 2, 4, 4, 0, 0, 4, False, True, False),
                       (1, 1, 3, 2, 1, 0, 2, True, True, True),
                       (70, 40, 64, 128, 0, 64, 64, True, True, False)]

# sized for the CPU's parallel / vector paths: GPU only among the CUDA tests, per case list
# (an id may stand in two lists: "large-batch9-c5" is both a pool and a conv case)
LARGE = {
    "POOL_CASES": {"2x2-s2-parallel", "large-batch9-c5"},
    "GLOBAL_POOL_SHAPES": {"parallel"},
    "LP_POOL_CASES": {"p2-large-batch9-c5"},
    "CONV_CASES": {"large-batch9-c5", "batch11-s1-p1x2", "wide-o70-s1-p2x1", "wide-o70-s2-p1"},
    "GROUPED_CONV_CASES": {"depthwise-parallel", "dilation2x3-s2x1"},
    "ACTIVATION_SHAPES": {(2049, 13)},
    "SOFTMAX_SHAPES": {(130, 257)},
    "DENSE_SHAPES": {(130, 257, 300)},
    "DROPOUT_SHAPES": {(129, 65)},
    "EMBEDDING_CASES": {"parallel-m3000-v97-d33"},
    "MSE_SHAPES": {(4097,), (3, 4099)},
    "NORM_SHAPES": {"parallel-n8-c33-l130"},
    "LAYER_NORM_SHAPES": {"odd-m37-d70", "parallel-m130-d513"},
    "OPTIM_SHAPES": {(10007,)},
    "ELEMENTWISE_SHAPES": {(10007,)},
    "SEQUENCE_COPY_CASES": {(70, 40, 64, 128, 0, 64, 64, True, True, False)},
}
_LARGE_BY_LIST = {id(globals()[name]): ids for name, ids in LARGE.items()}
for _name, _ids in LARGE.items():  # a renamed case must not silently run everywhere
    assert _ids <= set(globals()[_name]), (_name, _ids - set(globals()[_name]))
