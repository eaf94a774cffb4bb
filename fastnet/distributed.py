"""Data-parallel training over MPI (mpi4py): ``DistributedDataParallel`` and the ranks.

Each process (rank) holds a copy of the model and takes its own share of every batch;
the gradients are averaged over the ranks during ``backward``, so every rank takes the
same optimizer step. Launch with ``mpiexec -n N python script.py`` (or ``srun``); the MPI
environment is detected, and outside it ``rank()`` is 0, ``world_size()`` 1 and
``DistributedDataParallel`` a pass-through.

``import fastnet`` never imports mpi4py: this module imports it on the first call that
needs MPI, and only when the environment says the process was started by an MPI launcher
with more than one rank (``pip install "fastnet[mpi]"`` brings mpi4py and MPICH).

Under MPI, with more than one rank:

- an uncaught exception on any rank prints that rank's traceback and aborts the whole job
  (``MPI_Abort``), so that no rank waits forever in a collective;
- each rank runs ``cores / ranks on this machine`` Numba threads unless
  ``NUMBA_NUM_THREADS`` is set (or the launcher bound the rank to fewer cores).
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback

import numpy as np

from .device import device_of, to_numpy, copy_into
from .layers.module import Module, Parameter

__all__ = ["rank", "world_size", "is_main", "local_rank", "launched_size", "init", "select_gpu",
           "DistributedDataParallel", "all_sum", "all_sum_start", "all_max", "broadcast_object", "barrier",
           "abort", "MPIUnavailableError"]

# Variables MPI launchers set in every rank: the world size (the first one set counts).
# Hydra (MPICH, Intel MPI) sets PMI_SIZE, Open MPI OMPI_COMM_WORLD_SIZE, MVAPICH
# MV2_COMM_WORLD_SIZE; Slurm's srun sets SLURM_STEP_NUM_TASKS in the step it starts
# (a batch script itself runs in the "batch" step, one task, whatever it asked for).
SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE",
                  "SLURM_STEP_NUM_TASKS")

DEFAULT_BUCKET_MB = 1.0  # gradient bucket size (see DistributedDataParallel)
ABORT_GRACE_S = 0.5      # between a failed rank's message and MPI_Abort


class MPIUnavailableError(RuntimeError):
    """Started by an MPI launcher with several ranks, but mpi4py cannot be imported."""


def launched_size() -> int:
    """The number of ranks the environment says this process was started with (1 when no
    MPI launcher started it). Reads environment variables only: imports nothing."""
    for name in SIZE_VARIABLES:
        value = os.environ.get(name)
        if value is None:
            continue
        if name == "SLURM_STEP_NUM_TASKS" and os.environ.get("SLURM_STEP_ID") in ("batch", "extern"):
            continue
        try:
            return max(1, int(value))
        except ValueError:
            continue
    return 1


class _World:
    """The communicator and what init() found, made once per process."""

    comm = None      # mpi4py's COMM_WORLD, or None outside MPI
    MPI = None       # the mpi4py.MPI module
    rank = 0
    size = 1
    local_rank = 0
    local_size = 1
    initialised = False


_WORLD = _World()


def init():
    """Join the MPI job if this process is one of several ranks (idempotent); returns
    ``world_size()``. Called by every function here that needs MPI: a program needs to
    call it only to fix the moment MPI starts (e.g. before forking workers)."""
    w = _WORLD
    if w.initialised:
        return w.size
    size = launched_size()
    if size > 1:
        try:
            from mpi4py import MPI
        except ImportError as e:
            raise MPIUnavailableError(
                f"fastnet: this process was started by an MPI launcher with {size} ranks, but "
                f"mpi4py cannot be imported ({e}); install it with pip install \"fastnet[mpi]\" "
                "(mpi4py and MPICH), or on a cluster build mpi4py against the site's MPI: "
                "see the README, 'Beyond one machine'") from None
        comm = MPI.COMM_WORLD
        w.MPI, w.comm, w.rank, w.size = MPI, comm, comm.Get_rank(), comm.Get_size()
        local = comm.Split_type(MPI.COMM_TYPE_SHARED)
        w.local_rank, w.local_size = local.Get_rank(), local.Get_size()
        local.Free()
        if w.size > 1:
            _install_abort_hook()
            _share_cores(w.local_size)
        else:  # a launcher variable without a job (e.g. left in the environment)
            w.comm = None
    w.initialised = True
    return w.size


def rank() -> int:
    """This process's rank, 0 outside MPI."""
    init()
    return _WORLD.rank


def world_size() -> int:
    """The number of ranks, 1 outside MPI."""
    return init()


def is_main() -> bool:
    """True on rank 0 (and outside MPI): the rank that prints and writes files."""
    return rank() == 0


def local_rank() -> int:
    """This rank's index among the ranks on its machine (0 outside MPI): the GPU it uses."""
    init()
    return _WORLD.local_rank


def select_gpu():
    """Make this rank's GPU the current one: GPU ``local_rank() % count`` (call it before
    the model moves to "cuda"; the Trainer does). Returns its index, None without CUDA."""
    from . import cuda

    if not cuda.is_available():
        return None
    if cuda.simulator():  # one simulated GPU
        return 0
    from numba import cuda as nbcuda

    count = len(nbcuda.gpus)
    if count == 0:
        return None
    index = local_rank() % count
    nbcuda.select_device(index)
    return index


_HOOKED = []
RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK", "PMIX_RANK",
                  "SLURM_PROCID")


def _who():
    """'rank R of N', from MPI once joined, else from the launcher's variables."""
    if _WORLD.initialised:
        return f"rank {_WORLD.rank} of {_WORLD.size}"
    rank = next((os.environ[v] for v in RANK_VARIABLES if v in os.environ), "?")
    return f"rank {rank} of {launched_size()}"


def _install_abort_hook():
    """An uncaught exception on one rank ends every rank: without this, the others would
    wait in their next collective forever (and this rank in MPI_Finalize). Installed when
    this module is imported (``import fastnet`` does) by a launcher's rank of several, so
    that an error before anything joined MPI ends the job too."""
    if _HOOKED:
        return
    _HOOKED.append(True)
    previous = sys.excepthook

    def hook(kind, value, tb):
        try:
            if previous is not sys.__excepthook__ and previous is not hook:
                sys.stderr.write(f"fastnet: {_who()} failed:\n")
                previous(kind, value, tb)
            else:  # one write: the launcher forwards it whole
                sys.stderr.write(f"fastnet: {_who()} failed:\n"
                                 + "".join(traceback.format_exception(kind, value, tb)))
        finally:
            abort(130 if issubclass(kind, KeyboardInterrupt) else 1)

    sys.excepthook = hook


def abort(code=1, grace_s=ABORT_GRACE_S):
    """End the whole MPI job with exit status ``code`` (outside MPI: ``os._exit``), after
    ``grace_s`` seconds for what this rank printed to reach the launcher."""
    sys.stdout.flush()
    sys.stderr.flush()
    comm = _WORLD.comm
    if comm is None and launched_size() > 1:  # failed before joining MPI: join to abort
        try:
            from mpi4py import MPI

            comm = MPI.COMM_WORLD
        except ImportError:  # the launcher ends the job when a rank exits non-zero
            pass
    if comm is not None:
        # NOTE: MPI_Abort makes the launcher kill every rank at once, this one included;
        # output still in its pipes can be lost: give it a moment to be forwarded
        time.sleep(grace_s)
        comm.Abort(int(code))
    os._exit(int(code))


def _share_cores(local_size):
    """Numba threads per rank: the cores this process may use, shared among the ranks on
    this machine, unless the user chose (NUMBA_NUM_THREADS) or the launcher bound the
    rank to a subset of the cores (then all of that subset)."""
    if "NUMBA_NUM_THREADS" in os.environ or local_size <= 1:
        return
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    threads = usable if usable < (os.cpu_count() or usable) else max(1, usable // local_size)
    import numba

    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


# ---- small collectives for metrics and decisions ----------------------------------------
def all_sum(values):
    """The element-wise sum over the ranks of a list of numbers (float64), as a list;
    ``values`` itself outside MPI."""
    values = [float(v) for v in values]
    if world_size() == 1:
        return values
    buf = np.array(values, dtype=np.float64)
    _WORLD.comm.Allreduce(_WORLD.MPI.IN_PLACE, buf, op=_WORLD.MPI.SUM)
    return buf.tolist()


class _PendingSum:
    """An all_sum under way (all_sum_start): ``wait()`` gives the list."""

    def __init__(self, values):
        self.buffer = np.array(values, dtype=np.float64)
        self.request = (_WORLD.comm.Iallreduce(_WORLD.MPI.IN_PLACE, self.buffer,
                                               op=_WORLD.MPI.SUM)
                        if world_size() > 1 else None)

    def wait(self):
        if self.request is not None:
            self.request.Wait()
            self.request = None
        return self.buffer.tolist()


def all_sum_start(values):
    """all_sum without waiting: the sum starts now, ``.wait()`` on the result gives it
    (every rank must start its sums in the same order, as with any collective)."""
    return _PendingSum([float(v) for v in values])


def all_max(value):
    """The largest ``value`` over the ranks."""
    if world_size() == 1:
        return float(value)
    buf = np.array([float(value)])
    _WORLD.comm.Allreduce(_WORLD.MPI.IN_PLACE, buf, op=_WORLD.MPI.MAX)
    return float(buf[0])


def broadcast_object(obj, root=0):
    """Rank ``root``'s ``obj`` (pickled: small things only) on every rank."""
    if world_size() == 1:
        return obj
    return _WORLD.comm.bcast(obj, root=root)


def barrier():
    if world_size() > 1:
        _WORLD.comm.Barrier()


# ---- CUDA-aware MPI ---------------------------------------------------------------------
def cuda_aware() -> bool:
    """Whether the MPI library takes CUDA device buffers (``__cuda_array_interface__``):
    ``FASTNET_MPI_CUDA_AWARE=1`` / ``0`` decides; otherwise Open MPI's
    ``MPIX_Query_cuda_support()`` or MPICH's ``MPIX_GPU_query_support`` is asked. False
    when neither answers: gradients then go through host buffers."""
    forced = os.environ.get("FASTNET_MPI_CUDA_AWARE")
    if forced is not None:
        return forced.strip().lower() in ("1", "true", "yes")
    if world_size() == 1:
        return False
    import ctypes

    for lib in _loaded_mpi_libraries():
        try:
            handle = ctypes.CDLL(lib)
        except OSError:
            continue
        query = getattr(handle, "MPIX_Query_cuda_support", None)
        if query is not None:
            query.restype = ctypes.c_int
            return bool(query())
        query = getattr(handle, "MPIX_GPU_query_support", None)
        if query is not None:  # MPICH: (gpu_type, int *is_supported), CUDA is type 0
            supported = ctypes.c_int(0)
            if query(ctypes.c_int(0), ctypes.byref(supported)) == 0:
                return bool(supported.value)
    return False


def _loaded_mpi_libraries():
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "libmpi" in line}
    except OSError:
        return []
    return sorted(p for p in paths if p.startswith("/"))


# ---- DistributedDataParallel ------------------------------------------------------------
class _Bucket:
    """Consecutive parameters (in the order backward reaches them), one dtype, whose
    gradients are averaged by one non-blocking allreduce. The host buffer holds their
    gradients and, after them, one flag per parameter: 1 where this rank has a gradient
    (the reduced flag says whether any rank had one)."""

    __slots__ = ("index", "params", "offsets", "total", "buffer", "device_buffer",
                 "request", "ready", "launched", "late", "views", "late_parts", "reduced",
                 "handed")

    def __init__(self, index, params, dtype):
        self.index, self.params = index, params
        self.offsets, total = [], 0
        for p in params:
            self.offsets.append(total)
            total += int(np.prod(p.shape, dtype=np.int64))
        self.total = total
        self.buffer = np.zeros(total + len(params), dtype=dtype)
        # each parameter's place in the buffer, in its shape: on the CPU, backward's
        # kernels write the gradients there (no copy before the allreduce)
        self.views = [self.buffer[off:off + int(np.prod(p.shape, dtype=np.int64))].reshape(p.shape)
                      for p, off in zip(params, self.offsets)]
        self.late_parts = {}  # parameter index -> contributions that came after the send
        # indices whose view slot_for handed out in this backward: a kernel writes all its
        # slots before its layer reports any (grad_done), so when another gradient of the
        # same layer completes the bucket first, the view already holds this one
        self.handed = set()
        self.reduced = None   # the first send's sum, while the late parts are sent
        self.device_buffer = None
        self.request = None
        self.ready = 0
        self.launched = False
        self.late = False


def _on_host(b):
    """Whether a bucket's parameters live on the CPU: their gradients are then written in
    the bucket, and late contributions sent as a second sum (on CUDA: gradients copied
    in, a late bucket sent again whole from the gradients)."""
    return isinstance(b.params[0].data, np.ndarray)


class _Reducer:
    """Averages the gradients of ``params`` over the ranks, bucket by bucket, while
    backward runs (see DistributedDataParallel)."""

    def __init__(self, comm, MPI, params, bucket_bytes, overlap, cuda_aware_mpi):
        self.comm, self.MPI = comm, MPI
        self.size = comm.Get_size()
        self.overlap = overlap
        self.cuda_aware = cuda_aware_mpi
        self.params = params
        # backward reaches the last layers first: buckets in reverse registration order
        order = list(reversed(params))
        self.buckets, current, current_bytes = [], [], 0
        for p in order:
            nbytes = int(np.prod(p.shape, dtype=np.int64)) * p.dtype.itemsize
            if current and (current_bytes + nbytes > bucket_bytes or p.dtype != current[0].dtype):
                self.buckets.append(_Bucket(len(self.buckets), current, current[0].dtype))
                current, current_bytes = [], 0
            current.append(p)
            current_bytes += nbytes
        if current:
            self.buckets.append(_Bucket(len(self.buckets), current, current[0].dtype))
        self.bucket_of = {}
        for b in self.buckets:
            for i, p in enumerate(b.params):
                self.bucket_of[id(p)] = (b, i)
        self.expected = None            # id(p) -> grad_done calls per backward (learned)
        self.calls = {}
        self.next_launch = 0
        self.active = False             # inside backward
        self.pending = False            # launched, not yet finished
        self.enabled = True             # False inside no_sync()
        self.late_flags = np.zeros(len(self.buckets), dtype=np.int32)
        # statistics (seconds, counts) since reset_stats()
        self.reset_stats()

    def reset_stats(self):
        self.stats = {"steps": 0, "wait_s": 0.0, "pack_s": 0.0, "unpack_s": 0.0,
                      "bytes": 0, "launched_in_backward": 0, "buckets": 0, "relaunched": 0}

    # -- backward ---------------------------------------------------------------------
    def begin(self):
        if self.pending:
            self.finish()
        self.calls = {id(p): 0 for p in self.params}
        self.next_launch = 0
        for b in self.buckets:
            b.launched, b.late, b.request = False, False, None
            b.handed.clear()
            # ready from the start: the parameters no call is expected for, and the frozen
            # ones (requires_grad=False: backward writes no gradient for them), so that a
            # bucket holding one is never waited for in backward
            b.ready = (sum(1 for p in b.params
                           if not p.requires_grad or self.expected[id(p)] == 0)
                       if self.expected is not None else 0)
        self.active = True

    # -- Parameter's hooks (grad_slot, grad_done, before grad_ready) ----------------------
    def slot_for(self, p):
        """Where a backward kernel should write ``p``'s first gradient of this backward:
        its place in its bucket (CPU, bucket not sent yet), or None for a new array."""
        if not self.active or not isinstance(p._data, np.ndarray):
            return None
        b, i = self.bucket_of[id(p)]
        if b.launched or p.dtype != b.buffer.dtype or p.shape != b.views[i].shape:
            return None
        b.handed.add(i)
        return b.views[i]

    def intercept(self, p, slot):
        """A contribution to a gradient whose bucket has left (CPU): kept aside, since MPI
        is reducing the buffer in place, and sent after the bucket's first sum at the end
        of backward. True when kept (Parameter.grad_done then does nothing more)."""
        if not self.active or not isinstance(p._data, np.ndarray):
            return False
        b, i = self.bucket_of[id(p)]
        if not b.launched:
            return False
        if slot is b.views[i] and i in b.handed:
            # written before its bucket left and sent with it (see _launch): only counted
            b.handed.discard(i)
            self.calls[id(p)] += 1
            return True
        part = b.late_parts.get(i)
        if part is None:
            b.late_parts[i] = slot
        else:
            part += slot
        b.late = True
        self.grad_ready(p)
        return True

    def grad_ready(self, p):
        """Parameter.grad_done's hook: ``p``'s gradient for this backward has grown."""
        if not self.active:
            return
        key = id(p)
        n = self.calls[key] = self.calls[key] + 1
        bucket, _ = self.bucket_of[key]
        if self.expected is None or not self.overlap:
            return
        want = self.expected[key]
        if n == want:
            bucket.ready += 1
            if bucket.ready == len(bucket.params):
                self._launch_ready()
        elif n > want and bucket.launched:
            bucket.late = True  # reduced before this contribution: again at the end
        self._progress()

    def _launch_ready(self):
        # in bucket order on every rank: MPI matches collectives by their order
        while self.next_launch < len(self.buckets):
            b = self.buckets[self.next_launch]
            if b.ready < len(b.params):
                break
            self._launch(b)
            self.stats["launched_in_backward"] += 1
            self.next_launch += 1

    def _progress(self):
        # NOTE: MPI moves a non-blocking collective's data only inside MPI calls (no
        # progress thread by default): each hook call gives it a turn.
        requests = [b.request for b in self.buckets if b.request is not None]
        if requests:
            self.MPI.Request.Testall(requests)

    def _launch(self, b):
        t0 = time.perf_counter()
        for p in b.params:
            if p.dtype != b.buffer.dtype:
                raise RuntimeError(
                    f"DistributedDataParallel: a parameter of shape {p.shape} is now "
                    f"{p.dtype}, it was {b.buffer.dtype} when the model was wrapped; convert "
                    "the model (model.to(dtype)) before wrapping it, on every rank")
        on_gpu = not isinstance(b.params[0].data, np.ndarray)
        if self.cuda_aware and on_gpu:
            self._pack_device(b)
            target = b.device_buffer
        else:
            buf, n = b.buffer, b.total
            flags = buf[n:]
            for i, (p, off) in enumerate(zip(b.params, b.offsets)):
                g = p._grad
                size = int(np.prod(p.shape, dtype=np.int64))
                if g is not None and not p.requires_grad:
                    # frozen: its gradient (from before the freezing) is neither sent nor
                    # replaced; taken out of the bucket, which is overwritten below
                    if g is b.views[i]:
                        p._grad = g.copy()
                    g = None
                if g is None and i in b.handed:
                    # its kernel wrote it in place; its grad_done comes next (intercept)
                    flags[i] = 1
                elif g is None:
                    buf[off:off + size] = 0
                    flags[i] = 0
                else:
                    if g is b.views[i]:
                        pass  # backward wrote it in place
                    elif isinstance(g, np.ndarray):
                        buf[off:off + size] = g.reshape(-1)
                    else:  # a CUDA array: through the host buffer
                        g.copy_to_host(buf[off:off + size].reshape(p.shape))
                    flags[i] = 1
            target = buf
        self.stats["pack_s"] += time.perf_counter() - t0
        b.request = self.comm.Iallreduce(self.MPI.IN_PLACE, target, op=self.MPI.SUM)
        b.launched = True
        self.stats["bytes"] += b.buffer.nbytes
        self.stats["buckets"] += 1

    def _pack_device(self, b):
        from . import cuda

        if b.device_buffer is None:
            b.device_buffer = cuda.zeros(b.buffer.shape, b.buffer.dtype)
        dev, n = b.device_buffer, b.total
        flags = np.zeros(len(b.params), dtype=b.buffer.dtype)
        for i, (p, off) in enumerate(zip(b.params, b.offsets)):
            size = int(np.prod(p.shape, dtype=np.int64))
            if p._grad is None or not p.requires_grad:  # (frozen: as in _launch)
                dev[off:off + size].copy_to_device(np.zeros(size, dtype=b.buffer.dtype))
            else:
                dev[off:off + size].copy_to_device(p._grad.reshape(size))
                flags[i] = 1
        dev[n:].copy_to_device(flags)
        cuda.synchronize()  # MPI reads the buffer outside any stream

    def end(self):
        """After the module's backward: launch what is left, in bucket order; then agree
        with the other ranks on the buckets a gradient reached after they left, and send
        those again."""
        self.active = False
        for b in self.buckets:
            if not b.launched:
                self._launch(b)
        # NOTE: a bucket can leave before a gradient it holds is complete (a parameter
        # reached more often than in the previous backward, e.g. a layer used this step
        # only, or on this rank only). Every rank must then reduce it again, in the same
        # order, here: the flags are reduced (max) in a small blocking allreduce, so that
        # finish(), which may run on some ranks only (a .grad read), just waits.
        self.late_flags[:] = [b.late for b in self.buckets]
        t0 = time.perf_counter()
        self.comm.Allreduce(self.MPI.IN_PLACE, self.late_flags, op=self.MPI.MAX)
        self.stats["wait_s"] += time.perf_counter() - t0  # (the ranks meet here)
        late = [b for b, flag in zip(self.buckets, self.late_flags) if flag]
        for b in late:
            b.request.Wait()
            if _on_host(b):  # a second sum: of what came after the first (zero if nothing)
                b.reduced = b.buffer.copy()
                b.buffer[:] = 0
                for i, part in b.late_parts.items():
                    b.views[i][...] = part
                    b.buffer[b.total + i] = 1
                b.late_parts.clear()
                b.request = self.comm.Iallreduce(self.MPI.IN_PLACE, b.buffer, op=self.MPI.SUM)
            else:  # again, whole, from the gradients (separate arrays: still this rank's)
                self._launch(b)
        self.stats["relaunched"] += len(late)
        self.expected = dict(self.calls)  # what the next backward waits for
        self.pending = True
        self.stats["steps"] += 1

    def finish(self):
        """Wait for every bucket, then write the averages into the parameters' ``.grad``
        (no new communication: it may run on one rank alone)."""
        if not self.pending:
            return
        self.pending = False  # first: the writes below go through Parameter's setter paths
        t0 = time.perf_counter()
        self.MPI.Request.Waitall([b.request for b in self.buckets if b.request is not None])
        t1 = time.perf_counter()
        self.stats["wait_s"] += t1 - t0
        for b in self.buckets:
            b.request = None
            self._unpack(b)
        self.stats["unpack_s"] += time.perf_counter() - t1

    def _unpack(self, b):
        n = b.total
        if b.device_buffer is not None and self.cuda_aware \
                and not isinstance(b.params[0].data, np.ndarray):
            self._unpack_device(b)
            return
        buf = b.buffer
        if b.reduced is not None:  # first sum + the late parts' sum
            buf += b.reduced
            b.reduced = None
        flags = buf[n:]
        for i, (p, off) in enumerate(zip(b.params, b.offsets)):
            if flags[i] == 0:  # no rank had a gradient: it stays None, as on one process
                continue
            size = int(np.prod(p.shape, dtype=np.int64))
            total = buf[off:off + size]
            g = p._grad
            if g is None:
                g = p._grad = (b.views[i] if isinstance(p.data, np.ndarray)
                               else device_of(p.data).empty(p.shape, p.dtype))
            if isinstance(g, np.ndarray):
                np.divide(total, self.size, out=g.reshape(-1))  # one pass: the average
            else:
                np.divide(total, self.size, out=total)
                g.copy_to_device(total.reshape(p.shape))

    def _unpack_device(self, b):
        from . import cuda
        from .kernels.cuda.elementwise import divide_into

        n, dev = b.total, b.device_buffer
        flags = dev[n:].copy_to_host()
        for i, (p, off) in enumerate(zip(b.params, b.offsets)):
            if flags[i] == 0:
                continue
            size = int(np.prod(p.shape, dtype=np.int64))
            if p._grad is None:
                p._grad = cuda.empty(p.shape, p.dtype)
            divide_into(p._grad.reshape(size), dev[off:off + size], self.size)

    def abandon(self):
        """Drop launched reductions without using them (after an error in backward)."""
        self.active = False
        for b in self.buckets:
            if b.request is not None:
                b.request.Wait()
                b.request = None
            b.late_parts.clear()
            b.handed.clear()
            b.reduced = None
        self.pending = False


class DistributedDataParallel(Module):
    """Data-parallel training of ``module`` over the MPI ranks, as PyTorch's
    ``DistributedDataParallel``: wrap the model, call the wrapper's ``forward`` /
    ``backward`` as the model's, and every rank's optimizer steps with the gradients
    averaged over the ranks.

    - At construction, every rank's parameter and buffer names, shapes and dtypes are
      compared (a mismatch raises ValueError on every rank), then rank 0's values are
      broadcast to all.
    - During ``backward`` the gradients are averaged in buckets of about
      ``bucket_cap_mb`` MB (in the order backward reaches the parameters): a bucket's
      non-blocking allreduce starts as soon as its last gradient is written, while the
      backward of the earlier layers goes on (``overlap=False`` starts them all at the
      end). The first read of a gradient (the optimizer's step, ``zero_grad``, anything
      reading ``.grad``) and the next ``forward`` wait for the rest.
    - A parameter that no rank's backward reached keeps ``.grad`` None; one reached on
      some ranks only counts as zero on the others. A frozen parameter
      (``requires_grad=False``) is neither reduced nor waited for: its bucket leaves as
      soon as its other gradients are written, and its ``.grad`` stays as it was.
    - With ``broadcast_buffers`` (PyTorch's default), each training forward first
      broadcasts rank 0's buffers (BatchNorm's running statistics): BatchNorm still
      normalises each rank's batch share by its own statistics (no SyncBatchNorm).
    - Gradients of a CUDA model travel through host buffers, or as CUDA buffers when the
      MPI library is CUDA-aware (``cuda_aware()``).
    - On the CPU, backward writes each gradient straight into its place in its bucket,
      and ``.grad`` stays a view of it (as PyTorch's ``gradient_as_bucket_view``): the
      next backward after ``zero_grad`` overwrites it in place; copy a gradient to keep it.
    - ``no_sync()``: a context in which backward accumulates local gradients without
      averaging (gradient accumulation); the first backward after it averages the sum.

    Outside MPI (one rank) it is a pass-through. The state_dict keys are ``module.*`` as
    in PyTorch; save ``ddp.module`` to get the model's own keys.
    """

    def __init__(self, module, bucket_cap_mb=DEFAULT_BUCKET_MB, broadcast_buffers=True,
                 overlap=True):
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel: expected a fastnet Module, got "
                            f"{type(module).__name__}")
        if isinstance(module, DistributedDataParallel):
            raise TypeError("DistributedDataParallel: the module is already wrapped")
        if isinstance(bucket_cap_mb, bool) or not isinstance(bucket_cap_mb, (int, float)) \
                or not 0 < bucket_cap_mb < 1e6:
            raise ValueError(f"DistributedDataParallel: bucket_cap_mb must be a positive "
                             f"number of MB, got {bucket_cap_mb!r}")
        self.module = module
        self.broadcast_buffers = bool(broadcast_buffers)
        self.bucket_cap_mb = float(bucket_cap_mb)
        self.overlap = bool(overlap)
        self.device = module.device
        self.training = module.training
        size = world_size()
        self._reducer = None
        if size == 1:
            return
        self._check_same_model()
        self._broadcast(list(module.parameters()) + list(module.buffers()))
        params = module.parameters()
        self._reducer = _Reducer(_WORLD.comm, _WORLD.MPI, params,
                                 int(self.bucket_cap_mb * 2 ** 20), self.overlap,
                                 cuda_aware() and module.device.type == "cuda")
        for p in params:
            p._reducer = self._reducer

    # -- construction ---------------------------------------------------------------
    def _check_same_model(self):
        mine = [(name, tuple(int(d) for d in a.shape), str(a.dtype))
                for name, a in self.module._walk_state()]
        everyone = _WORLD.comm.allgather(mine)
        for r, theirs in enumerate(everyone):
            if theirs == everyone[0]:
                continue
            first = everyone[0]
            where = next((i for i, (a, b) in enumerate(zip(first, theirs)) if a != b),
                         min(len(first), len(theirs)))
            what = (f"rank 0 has {first[where] if where < len(first) else 'nothing more'}, "
                    f"rank {r} has {theirs[where] if where < len(theirs) else 'nothing more'}")
            raise ValueError(f"DistributedDataParallel: the ranks hold different models "
                             f"(entry {where} of the state: {what}; rank 0 has "
                             f"{len(first)} parameters and buffers, rank {r} {len(theirs)}); "
                             "every rank must build the same model")

    def _broadcast(self, entries):
        comm = _WORLD.comm
        for e in entries:
            host = np.ascontiguousarray(to_numpy(e.data))
            if _WORLD.rank != 0 or not isinstance(e.data, np.ndarray):
                host = host.copy()
            comm.Bcast(host, root=0)
            if _WORLD.rank != 0:
                copy_into(e.data, host)

    # -- the module's work ------------------------------------------------------------
    def forward(self, x):
        r = self._reducer
        if r is not None:
            if r.pending:
                r.finish()
            if self.broadcast_buffers and self.module.training:
                self.sync_buffers()
        return self.module(x)

    def sync_buffers(self):
        """Give every rank rank 0's buffers (BatchNorm's running statistics, which each
        rank's training forwards update from its own share): done before each training
        forward with ``broadcast_buffers``, and by ``fastnet.train.evaluate`` before it
        evaluates. A collective: every rank calls it. Returns self."""
        if self._reducer is not None:
            buffers = self.module.buffers()
            if buffers:
                self._broadcast(buffers)
        return self

    def backward(self, grad_out, input_grad=True):
        r = self._reducer
        if r is None or not r.enabled:
            return self.module.backward(grad_out, input_grad)
        r.begin()
        try:
            result = self.module.backward(grad_out, input_grad)
        except BaseException:
            r.abandon()
            raise
        r.end()
        return result

    def finish(self):
        """Wait for the gradient averaging of the last backward (reading ``.grad`` does
        this too); returns self."""
        if self._reducer is not None:
            self._reducer.finish()
        return self

    @contextlib.contextmanager
    def no_sync(self):
        r = self._reducer
        if r is None:
            yield
            return
        r.finish()
        was, r.enabled = r.enabled, False
        try:
            yield
        finally:
            r.enabled = was  # (nested no_sync blocks: the outer one still holds)

    def comm_stats(self, reset=False):
        """{"steps", "wait_s", "pack_s", "unpack_s", "bytes", "buckets",
        "launched_in_backward", "relaunched", "bucket_count"} since construction (or the
        last reset): where the averaging's time went. ``wait_s`` is the time spent waiting
        for it after backward: what the overlap did not hide; ``relaunched`` counts the
        buckets sent again because a gradient grew after they left."""
        if self._reducer is None:
            return {}
        stats = dict(self._reducer.stats)
        stats["bucket_count"] = len(self._reducer.buckets)
        if reset:
            self._reducer.reset_stats()
        return stats

    def train(self, mode=True):
        self.module.train(mode)
        object.__setattr__(self, "training", bool(mode))
        return self

    def to(self, target):
        raise TypeError("DistributedDataParallel.to: move or convert the model before "
                        "wrapping it (the buckets are laid out for its device and dtype)")

    def __getattr__(self, name):
        # (only for names not found normally) the wrapped model's attributes
        module = self.__dict__.get("module")
        if module is None:
            raise AttributeError(name)
        return getattr(module, name)

    def __repr__(self):
        return f"DistributedDataParallel({self.module!r}, ranks={world_size()})"


if launched_size() > 1:
    _install_abort_hook()
