"""The CUDA caching allocator's give-back never blocks (fastnet/cuda.py): a lease's
finalizer can be run by the garbage collector inside the pool's own locked region, and a
lock taken there deadlocked a simulator run in CI. Pure Python: no GPU needed."""
import threading

from fastnet import cuda as fcuda


def test_a_block_given_back_inside_the_pools_lock_does_not_deadlock():
    pool = fcuda._Pool()
    done = threading.Event()

    def finalizer_inside_the_lock():
        with pool._lock:
            pool._give_back(512, object())  # what the GC may run at any point
        done.set()

    t = threading.Thread(target=finalizer_inside_the_lock, daemon=True)
    t.start()
    assert done.wait(10), "give-back blocked on the pool's lock"
    assert pool.stats()["cached_bytes"] == 512  # filed under the lock afterwards


def test_a_returned_block_is_reused():
    pool = fcuda._Pool()
    raw = object()
    pool._give_back(1024, raw)
    with pool._lock:
        pool._drain()
        assert pool._free[1024] == [raw]
