"""Register-blocked GEMM micro-kernels for the CPU convolutions, written in LLVM IR.

LLVM does not turn a Numba loop nest into a register-blocked GEMM: the accumulators of
an MR x NR output tile have to live in vector registers across the whole reduction, and
only explicit vector code gets that. Each micro-kernel here is a Numba intrinsic that
emits such a loop with ``<W x float>`` values (W lanes: one AVX-512 register, or one AVX2
register on machines without AVX-512; LLVM lowers it to whatever the CPU has):

    for s in range(S):                        # the reduction
        b[v] = load W contiguous values       # v < NV
        for i in range(MR):
            a = broadcast one value
            acc[i][v] = fma(a, b[v], acc[i][v])

with MR * NV accumulators (24 with AVX-512, 12 with AVX2: they, the NV loads and the
broadcast fill the register file without spilling). The tile is read from and written
back to ``tile`` (MR rows of NV * W values), so a caller can zero it, or accumulate
across calls. Two addressing schemes:

* ``table`` (conv forward and dx, an implicit GEMM): step s reads b from
  ``b[bbase + tab[s] + v*W ...]`` (tab: the offset of input tap s in the padded input)
  and a_i = ``a[abase + s*astep + i]`` (packed weights, row s).
* ``shift`` (conv dw): step s reads b from ``b[bbase + s*bstep + v*W ...]`` (a
  channels-last gradient row) and a_i = ``a[abase + aofs[i] + s]`` (input tap i's run).

Callers guarantee every address is inside its array (the conv kernels allocate slack
after their buffers for the last, partial tile). Loads are unaligned (align 4/8).
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.core.codegen import get_host_cpu_features
from numba.extending import intrinsic


def _target_features():
    """The CPU features Numba compiles for: NUMBA_CPU_FEATURES if set, else the host's
    (as numba.core.codegen does). Numba keys its on-disk cache on them too, so code
    cached for one vector width is never loaded for the other."""
    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else get_host_cpu_features()
    return set(features.split(","))


# bytes per vector register: 64 with AVX-512, else 32 (AVX2; older CPUs split it)
VEC_BYTES = 64 if "+avx512f" in _target_features() else 32
# accumulator registers per tile (MR * NV)
ACCUMULATORS = 24 if VEC_BYTES == 64 else 12
# dw tile: NV vectors of output channels x MR taps, NV chosen per layer (1 .. DW_MAX_NV)
DW_MAX_NV = 4 if VEC_BYTES == 64 else 2


def lanes(itemsize):
    """Values per vector register for an element size in bytes."""
    return VEC_BYTES // itemsize


_I64 = ir.IntType(64)


def _float_type(dtype):
    if dtype == types.float32:
        return ir.FloatType()
    if dtype == types.float64:
        return ir.DoubleType()
    raise TypeError(f"micro-kernels take float32 or float64 arrays, not {dtype}")


class _Tile:
    """What the tile emitters share: vectors of the tile's dtype (W lanes, or W/2 with
    ``half``), loads aligned as the elements, llvm.fma, and ``count`` accumulators that
    start from the tile's vectors (allocas in the entry block: promoted to registers) and
    go back to it with ``finish()``."""

    def __init__(self, context, builder, tile_t, tile, count, half=False):
        self.b = builder
        self.tile = context.make_array(tile_t)(context, builder, tile)
        self.w = lanes(tile_t.dtype.bitwidth // 8) // (2 if half else 1)
        self.vty = ir.VectorType(_float_type(tile_t.dtype), self.w)
        self.align = tile_t.dtype.bitwidth // 8
        self._fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(self.vty, [self.vty] * 3),
            f"llvm.fma.v{self.w}f{tile_t.dtype.bitwidth}")
        self.accs = []
        for j in range(count):
            slot = cgutils.alloca_once(builder, self.vty)
            builder.store(self.load(self._at(j)), slot)
            self.accs.append(slot)

    def _at(self, j):
        return self.b.gep(self.tile.data, [_const(j * self.w)])

    def load(self, ptr):
        return self.b.load(self.b.bitcast(ptr, self.vty.as_pointer()), align=self.align)

    def fma(self, a, b, j):
        """accumulator j += a * b"""
        self.b.store(self.b.call(self._fma, [a, b, self.b.load(self.accs[j])]), self.accs[j])

    def finish(self):
        for j, slot in enumerate(self.accs):
            self.b.store(self.b.load(slot), self.b.bitcast(self._at(j), self.vty.as_pointer()),
                         align=self.align)


def _const(v):
    return ir.Constant(_I64, v)


def _emit(context, builder, sig, args, mr, nv, mode, half=False):
    tile = _Tile(context, builder, sig.args[0], args[0], mr * nv, half)
    a_a = context.make_array(sig.args[1])(context, builder, args[1])
    b_a = context.make_array(sig.args[2])(context, builder, args[2])
    w, vty = tile.w, tile.vty
    i32 = ir.IntType(32)
    undef = ir.Constant(vty, ir.Undefined)
    splat_mask = ir.Constant(ir.VectorType(i32, w), [0] * w)

    if mode == "table":
        tab_a = context.make_array(sig.args[3])(context, builder, args[3])
        abase, astep, bbase = args[4], args[5], args[6]
        steps = builder.extract_value(tab_a.shape, 0)
    else:
        aofs_a = context.make_array(sig.args[3])(context, builder, args[3])
        abase, bbase, bstep, steps = args[4], args[5], args[6], args[7]
        # a_i's run starts at a[abase + aofs[i]]
        a_rows = [builder.gep(a_a.data, [builder.add(
            abase, builder.load(builder.gep(aofs_a.data, [_const(i)])))]) for i in range(mr)]

    with cgutils.for_range(builder, steps) as loop:
        s = loop.index
        if mode == "table":
            off = builder.load(builder.gep(tab_a.data, [s]))
            bp = builder.gep(b_a.data, [builder.add(bbase, off)])
            ap = builder.gep(a_a.data, [builder.add(abase, builder.mul(s, astep))])
            a_ptrs = [builder.gep(ap, [_const(i)]) for i in range(mr)]
        else:
            bp = builder.gep(b_a.data, [builder.add(bbase, builder.mul(s, bstep))])
            a_ptrs = [builder.gep(a_rows[i], [s]) for i in range(mr)]
        bv = [tile.load(builder.gep(bp, [_const(v * w)])) for v in range(nv)]
        for i in range(mr):
            a = builder.load(a_ptrs[i])
            av = builder.shuffle_vector(builder.insert_element(undef, a, ir.Constant(i32, 0)),
                                        undef, splat_mask)
            for v in range(nv):
                tile.fma(av, bv[v], i * nv + v)
    tile.finish()
    return context.get_dummy_value()


def _check(tile, a, b):
    for arr in (tile, a, b):
        if not isinstance(arr, types.Array) or arr.dtype not in (types.float32, types.float64):
            raise TypeError(f"micro-kernel arrays must be float arrays, not {arr}")
    if not (tile.dtype == a.dtype == b.dtype):
        raise TypeError("micro-kernel arrays must share one dtype")


def make_table_tile(mr, nv):
    """tile (mr*nv*W,) += the ``table`` product (see the module docstring); arguments
    (tile, a, b, tab, abase, astep, bbase), S = len(tab)."""
    @intrinsic
    def table_tile(typingctx, tile, a, b, tab, abase, astep, bbase):
        _check(tile, a, b)
        sig = types.void(tile, a, b, tab, types.intp, types.intp, types.intp)
        return sig, lambda c, bld, s, args: _emit(c, bld, s, args, mr, nv, "table")
    return table_tile


def make_shift_tile(mr, nv, half=False):
    """tile (mr*nv*W,) += the ``shift`` product (see the module docstring); arguments
    (tile, a, b, aofs, abase, bbase, bstep, steps). ``half``: vectors of W/2 lanes (for
    dw of layers with at most W/2 output channels, which would waste most of a full
    vector)."""
    @intrinsic
    def shift_tile(typingctx, tile, a, b, aofs, abase, bbase, bstep, steps):
        _check(tile, a, b)
        sig = types.void(tile, a, b, aofs, types.intp, types.intp, types.intp, types.intp)
        return sig, lambda c, bld, s, args: _emit(c, bld, s, args, mr, nv, "shift", half)
    return shift_tile


# forward / dx tiles by index ti: MR = FWD_TILE_MRS[ti] rows (output channels), NV =
# ACCUMULATORS // MR vectors of positions. A conv takes the tile that is cheapest for its
# channel count (conv.py, _mk_tile_index): on 6 output channels (LeNet's first layer), or
# dx of a 6- or 3-channel input, the tall tile would leave a quarter or more of its rows
# unused.
FWD_TILE_MRS = (8, 6, 4, 2, 1) if VEC_BYTES == 64 else (4, 3, 2, 1)
# relative time per computed row of each tile (the short ones load more per FMA): measured
# on the LeNet-5 and strided benchmark layers with AVX-512; the AVX2 ones by analogy
FWD_TILE_COST = (1.0, 1.1, 1.22, 2.35, 3.4) if VEC_BYTES == 64 else (1.0, 1.1, 2.0, 3.0)
# the tallest forward tile's rows (the others are narrower in rows, wider in positions)
FWD_MR = FWD_TILE_MRS[0]
_fwd_tiles = [make_table_tile(mr, ACCUMULATORS // mr) for mr in FWD_TILE_MRS]
_fwd_tiles += _fwd_tiles[-1:] * (5 - len(_fwd_tiles))  # the spares are never called
fwd_tile_0, fwd_tile_1, fwd_tile_2, fwd_tile_3, fwd_tile_4 = _fwd_tiles
# dw tiles by NV (vectors of output channels); MR = ACCUMULATORS // NV taps; NV = 0: one
# half-width vector
dw_tile_0 = make_shift_tile(ACCUMULATORS, 1, half=True)
dw_tile_1 = make_shift_tile(ACCUMULATORS // 1, 1)
dw_tile_2 = make_shift_tile(ACCUMULATORS // 2, 2)
if DW_MAX_NV >= 3:
    dw_tile_3 = make_shift_tile(ACCUMULATORS // 3, 3)
    dw_tile_4 = make_shift_tile(ACCUMULATORS // 4, 4)
else:  # never called: the dw kernel caps NV at DW_MAX_NV
    dw_tile_3 = dw_tile_4 = dw_tile_2
# dw tail tiles, for the last taps of a layer with one output-channel vector (NV 0 or 1,
# whose full tile takes ACCUMULATORS taps): the smallest of these that covers what is
# left. LeNet's first layer has 25 taps, its second 150 and the strided 3->16 layer 27:
# padded to whole 24-tap tiles they computed 48, 168 and 48.
DW_TAIL_MRS = (12, 6, 3, 1) if VEC_BYTES == 64 else (6, 3, 2, 1)
dw_tail_h0, dw_tail_h1, dw_tail_h2, dw_tail_h3 = [make_shift_tile(m, 1, half=True) for m in DW_TAIL_MRS]
dw_tail_0, dw_tail_1, dw_tail_2, dw_tail_3 = [make_shift_tile(m, 1) for m in DW_TAIL_MRS]
# dw of a layer with few output channels as dot products over positions (``dot`` tiles,
# below): MO output channels (the layer's, rounded up to one of these) x DOT_MT[MO] taps;
# AVX-512 only (with 16 registers AVX2 would fit too few accumulators)
DOT_MOS = (1, 2, 4, 6, 8)
DOT_MT = {1: 24, 2: 12, 4: 6, 6: 4, 8: 2}


def _emit_dot(context, builder, sig, args, mo, mt):
    tile = _Tile(context, builder, sig.args[0], args[0], mo * mt)
    g_a, x_a, aofs_a = [context.make_array(t)(context, builder, a)
                        for t, a in zip(sig.args[1:4], args[1:4])]
    gbase, gstep, xbase, steps = args[4:]
    g_rows = [builder.gep(g_a.data, [builder.add(gbase, builder.mul(gstep, _const(i)))])
              for i in range(mo)]
    x_rows = [builder.gep(x_a.data, [builder.add(
        xbase, builder.load(builder.gep(aofs_a.data, [_const(t)])))]) for t in range(mt)]
    with cgutils.for_range(builder, steps) as loop:
        q = builder.mul(loop.index, _const(tile.w))
        gv = [tile.load(builder.gep(g_rows[i], [q])) for i in range(mo)]
        for t in range(mt):  # one x vector live at a time: mo*mt + mo + 1 registers
            xv = tile.load(builder.gep(x_rows[t], [q]))
            for i in range(mo):
                tile.fma(gv[i], xv, i * mt + t)
    tile.finish()
    return context.get_dummy_value()


def make_dot_tile(mo, mt):
    """tile (mo*mt*W,) += per lane, over steps s: g[gbase + i*gstep + s*W + lane] *
    x[xbase + aofs[t] + s*W + lane] for row i < mo, tap t < mt (tile row i*mt + t; the
    caller sums the lanes); arguments (tile, g, x, aofs, gbase, gstep, xbase, steps)."""
    @intrinsic
    def dot_tile(typingctx, tile, g, x, aofs, gbase, gstep, xbase, steps):
        _check(tile, g, x)
        sig = types.void(tile, g, x, aofs, types.intp, types.intp, types.intp, types.intp)
        return sig, lambda c, bld, s, args: _emit_dot(c, bld, s, args, mo, mt)
    return dot_tile


dot_tile_1, dot_tile_2, dot_tile_4, dot_tile_6, dot_tile_8 = [
    make_dot_tile(mo, DOT_MT[mo]) for mo in DOT_MOS]
# the recurrent layers' row-block GEMM (rows of the state times a packed weight matrix):
# the shift tile with ROWS_MR rows and ROWS_NC_VECTORS vectors of columns
ROWS_NC_VECTORS = 3 if VEC_BYTES == 64 else 2
ROWS_MR = ACCUMULATORS // ROWS_NC_VECTORS
rows_tile = make_shift_tile(ROWS_MR, ROWS_NC_VECTORS)
