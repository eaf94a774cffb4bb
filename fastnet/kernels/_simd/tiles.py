"""Register-blocked GEMM micro-kernels (the CPU convolutions, fastnet's GEMM in
kernels/gemm.py, the recurrent layers' row-block GEMM), written in LLVM IR.

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
* ``strided`` (kernels/gemm.py's a.T @ b): step s reads b from ``b[bbase + s*bstep +
  v*W ...]`` and a_i = ``a[abase + s*astep + i]`` (a packed block of A: MR values per
  step).

A third kind, ``dot`` (conv dw of layers with few output channels), runs its vectors over
positions instead and leaves per-lane sums for the caller to add up.

Callers guarantee every address is inside its array (the conv kernels allocate slack
after their buffers for the last, partial tile). Loads are unaligned (align 4/8).
"""
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ._ir import ACCUMULATORS, VEC_BYTES, check_arrays, const, float_type, lanes

# dw tile: NV vectors of output channels x MR taps, NV chosen per layer (1 .. DW_MAX_NV)
DW_MAX_NV = 4 if VEC_BYTES == 64 else 2


class _Tile:
    """What the tile emitters share: vectors of the tile's dtype (W lanes, or W/2 with
    ``half``), loads aligned as the elements, llvm.fma, and ``count`` accumulators that
    start from the tile's vectors (allocas in the entry block: promoted to registers) and
    go back to it with ``finish()``."""

    def __init__(self, context, builder, tile_t, tile, count, half=False):
        self.b = builder
        self.tile = context.make_array(tile_t)(context, builder, tile)
        self.w = lanes(tile_t.dtype.bitwidth // 8) // (2 if half else 1)
        self.vty = ir.VectorType(float_type(tile_t.dtype), self.w)
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
        return self.b.gep(self.tile.data, [const(j * self.w)])

    def load(self, ptr):
        return self.b.load(self.b.bitcast(ptr, self.vty.as_pointer()), align=self.align)

    def fma(self, a, b, j):
        """accumulator j += a * b"""
        self.b.store(self.b.call(self._fma, [a, b, self.b.load(self.accs[j])]), self.accs[j])

    def finish(self):
        for j, slot in enumerate(self.accs):
            self.b.store(self.b.load(slot), self.b.bitcast(self._at(j), self.vty.as_pointer()),
                         align=self.align)


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
    elif mode == "strided":
        abase, astep, bbase, bstep, steps = args[3:8]
    else:
        aofs_a = context.make_array(sig.args[3])(context, builder, args[3])
        abase, bbase, bstep, steps = args[4], args[5], args[6], args[7]
        # a_i's run starts at a[abase + aofs[i]]
        a_rows = [builder.gep(a_a.data, [builder.add(
            abase, builder.load(builder.gep(aofs_a.data, [const(i)])))]) for i in range(mr)]

    with cgutils.for_range(builder, steps) as loop:
        s = loop.index
        if mode == "table":
            off = builder.load(builder.gep(tab_a.data, [s]))
            bp = builder.gep(b_a.data, [builder.add(bbase, off)])
            ap = builder.gep(a_a.data, [builder.add(abase, builder.mul(s, astep))])
            a_ptrs = [builder.gep(ap, [const(i)]) for i in range(mr)]
        elif mode == "strided":
            bp = builder.gep(b_a.data, [builder.add(bbase, builder.mul(s, bstep))])
            ap = builder.gep(a_a.data, [builder.add(abase, builder.mul(s, astep))])
            a_ptrs = [builder.gep(ap, [const(i)]) for i in range(mr)]
        else:
            bp = builder.gep(b_a.data, [builder.add(bbase, builder.mul(s, bstep))])
            a_ptrs = [builder.gep(a_rows[i], [s]) for i in range(mr)]
        bv = [tile.load(builder.gep(bp, [const(v * w)])) for v in range(nv)]
        for i in range(mr):
            a = builder.load(a_ptrs[i])
            av = builder.shuffle_vector(builder.insert_element(undef, a, ir.Constant(i32, 0)),
                                        undef, splat_mask)
            for v in range(nv):
                tile.fma(av, bv[v], i * nv + v)
    tile.finish()
    return context.get_dummy_value()


def make_table_tile(mr, nv):
    """tile (mr*nv*W,) += the ``table`` product (see the module docstring); arguments
    (tile, a, b, tab, abase, astep, bbase), S = len(tab)."""
    @intrinsic
    def table_tile(typingctx, tile, a, b, tab, abase, astep, bbase):
        check_arrays("a micro-kernel tile", (tile, a, b))
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
        check_arrays("a micro-kernel tile", (tile, a, b))
        sig = types.void(tile, a, b, aofs, types.intp, types.intp, types.intp, types.intp)
        return sig, lambda c, bld, s, args: _emit(c, bld, s, args, mr, nv, "shift", half)
    return shift_tile


def make_strided_tile(mr, nv):
    """tile (mr*nv*W,) += the ``strided`` product (see the module docstring); arguments
    (tile, a, b, abase, astep, bbase, bstep, steps)."""
    @intrinsic
    def strided_tile(typingctx, tile, a, b, abase, astep, bbase, bstep, steps):
        check_arrays("a micro-kernel tile", (tile, a, b))
        sig = types.void(tile, a, b, types.intp, types.intp, types.intp, types.intp,
                         types.intp)
        return sig, lambda c, bld, s, args: _emit(c, bld, s, args, mr, nv, "strided")
    return strided_tile


# ---- the tiles of the convolutions and the recurrent layers --------------------------
# Forward / dx tiles by index: MR = FWD_TILE_MRS[index] rows (output channels), NV =
# ACCUMULATORS // MR vectors of positions. A conv takes the tile that is cheapest for its
# channel count (conv/implicit_gemm.py, tile_index): on 6 output channels (LeNet's first
# layer), or dx of a 6- or 3-channel input, the tall tile would leave a quarter or more
# of its rows unused.
FWD_TILE_MRS = (8, 6, 4, 2, 1) if VEC_BYTES == 64 else (4, 3, 2, 1)
# relative time per computed row of each tile (the short ones load more per FMA): measured
# on the LeNet-5 and strided benchmark layers with AVX-512; the AVX2 ones by analogy
FWD_TILE_COST = (1.0, 1.1, 1.22, 2.35, 3.4) if VEC_BYTES == 64 else (1.0, 1.1, 2.0, 3.0)
FWD_TILES = tuple(make_table_tile(mr, ACCUMULATORS // mr) for mr in FWD_TILE_MRS)
# dw tiles by NV, the vectors of output channels (1 .. DW_MAX_NV); MR = ACCUMULATORS // NV
# taps. NV = 0: one half-width vector (layers with at most W/2 output channels).
DW_TILES = (make_shift_tile(ACCUMULATORS, 1, half=True),) + tuple(
    make_shift_tile(ACCUMULATORS // nv, nv) for nv in range(1, DW_MAX_NV + 1))
# dw tail tiles, for the last taps of a layer with one output-channel vector (NV 0 or 1,
# whose full tile takes ACCUMULATORS taps): the smallest of these that covers what is
# left. LeNet's first layer has 25 taps, its second 150 and the strided 3->16 layer 27:
# padded to whole 24-tap tiles they computed 48, 168 and 48.
DW_TAIL_MRS = (12, 6, 3, 1) if VEC_BYTES == 64 else (6, 3, 2, 1)
DW_TAILS = {half: tuple(make_shift_tile(m, 1, half=half) for m in DW_TAIL_MRS)
            for half in (False, True)}
# dw of a layer with few output channels as dot products over positions (``dot`` tiles):
# MO output channels (the layer's, rounded up to one of these) x DOT_MT[MO] taps;
# AVX-512 only (with 16 registers AVX2 would fit too few accumulators)
DOT_MOS = (1, 2, 4, 6, 8)
DOT_MT = {1: 24, 2: 12, 4: 6, 6: 4, 8: 2}


def _emit_dot(context, builder, sig, args, mo, mt):
    tile = _Tile(context, builder, sig.args[0], args[0], mo * mt)
    g_a, x_a, aofs_a = [context.make_array(t)(context, builder, a)
                        for t, a in zip(sig.args[1:4], args[1:4])]
    gbase, gstep, xbase, steps = args[4:]
    g_rows = [builder.gep(g_a.data, [builder.add(gbase, builder.mul(gstep, const(i)))])
              for i in range(mo)]
    x_rows = [builder.gep(x_a.data, [builder.add(
        xbase, builder.load(builder.gep(aofs_a.data, [const(t)])))]) for t in range(mt)]
    with cgutils.for_range(builder, steps) as loop:
        q = builder.mul(loop.index, const(tile.w))
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
        check_arrays("a micro-kernel tile", (tile, g, x))
        sig = types.void(tile, g, x, aofs, types.intp, types.intp, types.intp, types.intp)
        return sig, lambda c, bld, s, args: _emit_dot(c, bld, s, args, mo, mt)
    return dot_tile


DOT_TILES = {mo: make_dot_tile(mo, DOT_MT[mo]) for mo in DOT_MOS}
# the recurrent layers' row-block GEMM (rows of the state times a packed weight matrix) and
# kernels/gemm.py: the shift tile with ROWS_MR rows and ROWS_NC_VECTORS vectors of columns
ROWS_NC_VECTORS = 3 if VEC_BYTES == 64 else 2
ROWS_MR = ACCUMULATORS // ROWS_NC_VECTORS
rows_tile = make_shift_tile(ROWS_MR, ROWS_NC_VECTORS)
# the same shape over a packed block of A (kernels/gemm.py's a.T @ b)
packed_rows_tile = make_strided_tile(ROWS_MR, ROWS_NC_VECTORS)
# the recurrent layers' other row-block tile: one vector of columns more, fewer rows (64
# float32 columns with AVX-512: a hidden size or gate width that is a multiple of 64 fits
# it without padding)
WIDE_NC_VECTORS = ROWS_NC_VECTORS + 1
WIDE_MR = ACCUMULATORS // WIDE_NC_VECTORS
wide_rows_tile = make_shift_tile(WIDE_MR, WIDE_NC_VECTORS)


# ---- choosing a tile by a compile-time constant ----------------------------------------
# The kernel families of conv/ close over their tile's index (fastnet/kernels/_jit.py,
# KernelFamily); Numba types such a constant as a literal, and these overloads put in the
# one tile it names: no switch over tiles in the compiled code, and no tile compiled that
# the member never calls.

def _literal(name, value):
    if not isinstance(value, types.IntegerLiteral):
        return None  # Numba retries with the literal value
    return value.literal_value


def fwd_tile(index, tile, a, b, tab, abase, astep, bbase):
    """FWD_TILES[index](tile, a, b, tab, abase, astep, bbase); ``index`` a constant."""


def dw_tile(vectors, tile, a, b, aofs, abase, bbase, bstep, steps):
    """DW_TILES[vectors](tile, a, b, aofs, ...); ``vectors`` a constant."""


def dw_tail_tile(vectors, taps, tile, a, b, aofs, abase, bbase, bstep, steps):
    """The last ``taps`` (< ACCUMULATORS) taps of a one-vector dw tile (``vectors`` 0 or
    1, a constant) on the smallest tail tile that covers them; its rows past ``taps``
    repeat the last tap: computed, never read."""


def dot_tile(mo, tile, g, x, aofs, gbase, gstep, xbase, steps):
    """DOT_TILES[mo](tile, g, x, aofs, ...); ``mo`` a constant."""


@overload(fwd_tile, inline="always")
def _fwd_tile(index, tile, a, b, tab, abase, astep, bbase):
    i = _literal("fwd_tile", index)
    if i is None:
        return None
    run = FWD_TILES[i]
    return lambda index, tile, a, b, tab, abase, astep, bbase: run(
        tile, a, b, tab, abase, astep, bbase)


@overload(dw_tile, inline="always")
def _dw_tile(vectors, tile, a, b, aofs, abase, bbase, bstep, steps):
    nv = _literal("dw_tile", vectors)
    if nv is None:
        return None
    run = DW_TILES[nv]
    return lambda vectors, tile, a, b, aofs, abase, bbase, bstep, steps: run(
        tile, a, b, aofs, abase, bbase, bstep, steps)


@overload(dw_tail_tile, inline="always")
def _dw_tail_tile(vectors, taps, tile, a, b, aofs, abase, bbase, bstep, steps):
    nv = _literal("dw_tail_tile", vectors)
    if nv is None:
        return None
    t0, t1, t2, t3 = DW_TAILS[nv == 0]
    full = DW_TILES[nv]
    m0, m1, m2, m3 = DW_TAIL_MRS

    def impl(vectors, taps, tile, a, b, aofs, abase, bbase, bstep, steps):
        if taps <= m3:
            t3(tile, a, b, aofs, abase, bbase, bstep, steps)
        elif taps <= m2:
            t2(tile, a, b, aofs, abase, bbase, bstep, steps)
        elif taps <= m1:
            t1(tile, a, b, aofs, abase, bbase, bstep, steps)
        elif taps <= m0:
            t0(tile, a, b, aofs, abase, bbase, bstep, steps)
        else:
            full(tile, a, b, aofs, abase, bbase, bstep, steps)
    return impl


@overload(dot_tile, inline="always")
def _dot_tile(mo, tile, g, x, aofs, gbase, gstep, xbase, steps):
    m = _literal("dot_tile", mo)
    if m is None:
        return None
    run = DOT_TILES[m]
    return lambda mo, tile, g, x, aofs, gbase, gstep, xbase, steps: run(
        tile, g, x, aofs, gbase, gstep, xbase, steps)


# ---- plain-Numba twins: the test references of the tiles (tests/kernels/_simd/) --------
# The same sums as the vector code, one multiply-add at a time; ``rows`` and ``cols`` are
# the tile's MR and NV * W (W / 2 for a half-width tile).

@njit(cache=True)
def table_tile_reference(tile, a, b, tab, abase, astep, bbase, rows, cols):
    """make_table_tile(rows, cols // W): tile[i*cols + c] += a[abase + s*astep + i] *
    b[bbase + tab[s] + c] over the steps s."""
    for s in range(tab.size):
        for i in range(rows):
            av = a[abase + s * astep + i]
            for c in range(cols):
                tile[i * cols + c] += av * b[bbase + tab[s] + c]


@njit(cache=True)
def shift_tile_reference(tile, a, b, aofs, abase, bbase, bstep, steps, rows, cols):
    """make_shift_tile(rows, ...): tile[i*cols + c] += a[abase + aofs[i] + s] *
    b[bbase + s*bstep + c] over the steps s."""
    for s in range(steps):
        for i in range(rows):
            av = a[abase + aofs[i] + s]
            for c in range(cols):
                tile[i * cols + c] += av * b[bbase + s * bstep + c]


@njit(cache=True)
def dot_tile_reference(tile, g, x, aofs, gbase, gstep, xbase, steps, mo, mt, w):
    """make_dot_tile(mo, mt): per lane, tile[(i*mt + t)*w + lane] += g[gbase + i*gstep +
    s*w + lane] * x[xbase + aofs[t] + s*w + lane] over the steps s."""
    for s in range(steps):
        for i in range(mo):
            for t in range(mt):
                for lane in range(w):
                    tile[(i * mt + t) * w + lane] += (g[gbase + i * gstep + s * w + lane]
                                                      * x[xbase + aofs[t] + s * w + lane])
