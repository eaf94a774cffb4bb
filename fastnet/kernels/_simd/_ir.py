"""What every hand-written LLVM IR emitter of fastnet shares: the vector width Numba
compiles for, LLVM types and constants, splats and shuffles, masked loads and stores."""
from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.core.codegen import get_host_cpu_features

I1, I32, I64 = ir.IntType(1), ir.IntType(32), ir.IntType(64)


def _target_features():
    """The CPU features Numba compiles for: NUMBA_CPU_FEATURES if set, else the host's
    (as numba.core.codegen does). Numba keys its on-disk cache on them too, so code
    cached for one vector width is never loaded for the other."""
    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else get_host_cpu_features()
    return set(features.split(","))


# bytes per vector register: 64 with AVX-512, else 32 (AVX2; older CPUs split it)
VEC_BYTES = 64 if "+avx512f" in _target_features() else 32
# accumulator registers of a register-blocked tile (tiles.py): with the loads and the
# broadcast they fill the register file (32 registers with AVX-512, 16 with AVX2)
ACCUMULATORS = 24 if VEC_BYTES == 64 else 12


def lanes(itemsize):
    """Values per vector register for an element size in bytes."""
    return VEC_BYTES // itemsize


def float_type(dtype):
    """The LLVM type of a Numba float32 / float64."""
    if dtype == types.float32:
        return ir.FloatType()
    if dtype == types.float64:
        return ir.DoubleType()
    raise TypeError(f"vector code takes float32 or float64 arrays, not {dtype}")


def const(v):
    """An i64 constant."""
    return ir.Constant(I64, v)


def splat(builder, value, n):
    """<n x T> with every lane ``value``."""
    vty = ir.VectorType(value.type, n)
    undef = ir.Constant(vty, ir.Undefined)
    return builder.shuffle_vector(builder.insert_element(undef, value, ir.Constant(I32, 0)),
                                  undef, ir.Constant(ir.VectorType(I32, n), [0] * n))


def shuffle_mask(values):
    return ir.Constant(ir.VectorType(I32, len(values)), list(values))


def suffix(vty):
    """An intrinsic's type suffix: v16f32, v8f64, v8i32 ..."""
    return f"v{vty.count}" + {"float": "f32", "double": "f64", "i32": "i32"}[str(vty.element)]


def declare(builder, name, vty, nargs):
    """The LLVM intrinsic ``name`` on vectors of type vty (llvm.fma.v16f32 ...)."""
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty] * nargs),
                                          f"{name}.{suffix(vty)}")


def _masked(builder, op, vty):
    """llvm.masked.load / llvm.masked.store for vectors of float, double or i32."""
    mask = ir.VectorType(I1, vty.count)
    if op == "load":
        fnty = ir.FunctionType(vty, [vty.as_pointer(), I32, mask, vty])
    else:
        fnty = ir.FunctionType(ir.VoidType(), [vty, vty.as_pointer(), I32, mask])
    return cgutils.get_or_insert_function(builder.module, fnty,
                                          f"llvm.masked.{op}.{suffix(vty)}.p0")


def check_arrays(name, floats, ints=()):
    """A TypeError unless ``floats`` are arrays of one float dtype and ``ints`` int32
    arrays (typing time: the message reaches whoever calls the kernel wrongly)."""
    if not (all(isinstance(a, types.Array) for a in floats + ints)
            and floats[0].dtype in (types.float32, types.float64)
            and all(a.dtype == floats[0].dtype for a in floats)
            and all(a.dtype == types.int32 for a in ints)):
        raise TypeError(f"{name} takes float arrays of one dtype"
                        f"{' and int32 argmax' if ints else ''}, not {floats + ints}")


class Rows:
    """The emitter of row-wise vector code (pooling.py, softmax.py): the arrays' data
    pointers, vectors of their float dtype, masks of the lanes still to do, and masked
    loads and stores (AVX-512 has them in hardware; AVX2 uses vmaskmov), so that the last
    step of a short row needs no scalar remainder loop."""

    def __init__(self, context, builder, signature, args, narrays):
        self.b = builder
        self.arrays = [context.make_array(t)(context, builder, a)
                       for t, a in zip(signature.args[:narrays], args[:narrays])]
        self.data = [a.data for a in self.arrays]
        dtype = signature.args[0].dtype
        self.bits = dtype.bitwidth
        self.lanes = lanes(self.bits // 8)  # floats per vector register
        self.ft = float_type(dtype)

    def vec(self, n, elem=None):
        return ir.VectorType(self.ft if elem is None else elem, n)

    def mask(self, left, n):
        """<n x i1>: lane < left (all lanes but in a row's last step)."""
        lane = ir.Constant(ir.VectorType(I64, n), list(range(n)))
        return self.b.icmp_unsigned("<", lane, splat(self.b, left, n))

    def _ptr(self, array, index, vty):
        return self.b.bitcast(self.b.gep(self.data[array], [index]), vty.as_pointer())

    def _align(self, vty):
        return ir.Constant(I32, vty.element.width // 8 if isinstance(vty.element, ir.IntType)
                           else self.bits // 8)

    def load(self, array, index, vty, left, fill=None):
        """vty's lanes from data[array][index:], those past ``left`` ``fill`` (zero by
        default; not read)."""
        if fill is None:
            fill = ir.Constant(vty, [0] * vty.count if isinstance(vty.element, ir.IntType)
                               else [0.0] * vty.count)
        return self.b.call(_masked(self.b, "load", vty),
                           [self._ptr(array, index, vty), self._align(vty),
                            self.mask(left, vty.count), fill])

    def store(self, value, array, index, left):
        """value's lanes below ``left`` to data[array][index:]."""
        vty = value.type
        self.b.call(_masked(self.b, "store", vty),
                    [value, self._ptr(array, index, vty), self._align(vty),
                     self.mask(left, vty.count)])

    def steps(self, n, per):
        """for each step of ``per`` outputs of n: (first output i, outputs left from i)."""
        count = self.b.udiv(self.b.add(n, ir.Constant(I64, per - 1)), ir.Constant(I64, per))
        with cgutils.for_range(self.b, count) as loop:
            i = self.b.mul(loop.index, ir.Constant(I64, per))
            yield i, self.b.sub(n, i)

    def size(self, array):
        return self.arrays[array].nitems

    def twice(self, value):
        return self.b.add(value, value)
