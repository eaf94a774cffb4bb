"""fastnet.data.transforms and the DataLoader's transform and background threads: exact
semantics on tiny arrays, seeded determinism, resume equality, clean shutdown."""
import pathlib
import threading

import numpy as np
import pytest

import fastnet
from fastnet.data import (ArrayDataset, Compose, DataLoader, Normalize, RandomCrop,
                          RandomHorizontalFlip)
from fastnet.data import transforms


def images(n=5, c=2, h=3, w=4, dtype=np.float32):
    return np.arange(n * c * h * w, dtype=dtype).reshape(n, c, h, w) + 1


# ---- the transforms ----------------------------------------------------------------------
def test_random_crop_is_a_window_of_the_zero_padded_image_per_sample():
    x = images()
    rng = np.random.default_rng(0)
    out = RandomCrop((3, 4), padding=1)(x, rng)
    assert out.shape == x.shape and out.dtype == np.float32 and out.flags.c_contiguous
    draws = np.random.default_rng(0)
    top, left = draws.integers(0, 3, size=5), draws.integers(0, 3, size=5)
    for i in range(5):  # step by step: pad, then cut at the drawn offset
        padded = np.pad(x[i], ((0, 0), (1, 1), (1, 1)))
        np.testing.assert_array_equal(out[i], padded[:, top[i]:top[i] + 3, left[i]:left[i] + 4])
    assert len({(t, l) for t, l in zip(top, left)}) > 1  # offsets differ between samples
    # no padding and the full size: the identity; a smaller size: a window of the image
    np.testing.assert_array_equal(RandomCrop((3, 4))(x, rng), x)
    # padding (left and right, top and bottom), as torchvision's: here 2 columns each side
    wide = RandomCrop((3, 8), padding=(2, 0))(x, rng)
    np.testing.assert_array_equal(wide, np.pad(x, ((0, 0), (0, 0), (0, 0), (2, 2))))
    small = RandomCrop(2)(x, np.random.default_rng(1))
    assert small.shape == (5, 2, 2, 2)
    assert all(any((small[i] == x[i][:, a:a + 2, b:b + 2]).all() for a in range(2)
                   for b in range(3)) for i in range(5))


def test_random_horizontal_flip_mirrors_the_drawn_samples_only():
    x = images(n=8)
    out = RandomHorizontalFlip(0.5)(x, np.random.default_rng(3))
    flip = np.random.default_rng(3).random(8) < 0.5
    assert 0 < flip.sum() < 8
    np.testing.assert_array_equal(out[flip], x[flip][..., ::-1])
    np.testing.assert_array_equal(out[~flip], x[~flip])
    np.testing.assert_array_equal(RandomHorizontalFlip(1.0)(x, np.random.default_rng()), x[..., ::-1])
    np.testing.assert_array_equal(RandomHorizontalFlip(0.0)(x, np.random.default_rng()), x)
    assert out.dtype == np.float32 and np.shares_memory(out, x) is False


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_normalize_per_channel_in_the_batch_dtype(dtype):
    x = images(c=3, dtype=dtype)
    out = Normalize([1.0, 2.0, 0.1307], [0.5, 4.0, 0.3081])(x, None)
    assert out.dtype == dtype
    mean = np.array([1.0, 2.0, 0.1307], dtype=dtype)[None, :, None, None]
    std = np.array([0.5, 4.0, 0.3081], dtype=dtype)[None, :, None, None]
    np.testing.assert_array_equal(out, (x - mean) / std)
    np.testing.assert_array_equal(Normalize(0.5, 2)(x, None), (x - dtype(0.5)) / dtype(2))
    nan = x.copy()
    nan[0, 0, 0, 0] = np.nan
    assert np.isnan(Normalize(0, 1)(nan, None)[0, 0, 0, 0])  # NaN propagates


TORCH = np.load(pathlib.Path(__file__).parent / "data" / "torch_transforms.npz")
TORCH_CROPS = [((5, 6), (1, 2)), ((4, 4), (0, 0)), ((7, 9), (2, 1))]  # as the generator's


class Replay:
    """A generator stand-in that gives stored draws: integers() the given arrays in turn
    (each checked to lie in the range asked for), random() the given uniforms."""

    def __init__(self, *ints, u=None):
        self.ints, self.u = list(ints), u

    def integers(self, lo, hi, size):
        values = self.ints.pop(0)
        assert len(values) == size and lo <= values.min() and values.max() < hi
        return values

    def random(self, size):
        assert len(self.u) == size
        return self.u


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_transforms_match_torchvisions_operations(dtype):
    """Stored PyTorch results (tests/data/make_torch_transforms.py), NaN and inf included."""
    x = TORCH[f"{dtype}/x"]
    got = Normalize([0.1307, -0.5, 2.0], [0.3081, 1.5, 0.25])(x, None)
    assert got.dtype == x.dtype
    np.testing.assert_array_equal(got, TORCH[f"{dtype}/normalize"])
    for k, (size, padding) in enumerate(TORCH_CROPS):
        rng = Replay(TORCH[f"{dtype}/crop{k}/top"], TORCH[f"{dtype}/crop{k}/left"])
        np.testing.assert_array_equal(RandomCrop(size, padding)(x, rng), TORCH[f"{dtype}/crop{k}"])
    flipped = RandomHorizontalFlip(0.5)(x, Replay(u=TORCH[f"{dtype}/flip/u"]))
    np.testing.assert_array_equal(flipped, TORCH[f"{dtype}/flip"])


@pytest.mark.parametrize("make, error, message", [
    (lambda: RandomCrop(0), ValueError, r"RandomCrop: size must be an int >= 1"),
    (lambda: RandomCrop(2, padding=-1), ValueError, r"padding must be an int >= 0"),
    (lambda: RandomCrop((2, 2, 2)), ValueError, r"size must be an int >= 1 or a pair"),
    (lambda: RandomHorizontalFlip(1.5), ValueError, r"p must be a number in \[0, 1\], got 1.5"),
    (lambda: Normalize([0, 0], [1, 0]), ValueError, r"std must not be zero"),
    (lambda: Normalize([0, 0], [1, 1, 1]), ValueError, r"mean has 2 values but std has 3"),
    (lambda: Normalize("a", 1), ValueError, r"mean must be a number or a sequence"),
    (lambda: Compose([1]), TypeError, r"Compose: transform must be callable"),
])
def test_transform_arguments_are_checked(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_transforms_refuse_batches_they_cannot_take():
    rng = np.random.default_rng()
    with pytest.raises(ValueError, match=r"crop size \(6, 6\) is larger than the padded image"):
        RandomCrop(6, padding=1)(images(), rng)
    with pytest.raises(TypeError, match=r"RandomHorizontalFlip: expected a float \(N, C, H, W\)"):
        RandomHorizontalFlip()(np.zeros((2, 3)), rng)
    with pytest.raises(ValueError, match="Normalize: mean has 2 values, the batch has 3 channels"):
        Normalize([0, 0], [1, 1])(images(c=3), rng)


def test_user_callables_get_the_generator_when_they_take_it():
    assert transforms.takes_rng(lambda x, rng: x) and transforms.takes_rng(lambda x, g: x)
    assert not transforms.takes_rng(lambda x: x)
    assert not transforms.takes_rng(lambda x, scale=2: x)
    assert transforms.takes_rng(lambda x, rng=None: x) and transforms.takes_rng(np.negative) is False
    x = images()
    out = Compose([lambda x: 2 * x, lambda x, rng: x + rng.integers(0, 1), np.negative])(
        x, np.random.default_rng())
    np.testing.assert_array_equal(out, -2 * x)
    with pytest.raises(TypeError, match=r"returned a float32 array of shape \(2, 2, 3, 4\), "
                                        "expected a real array of 5 samples"):
        Compose([lambda x: x[:2]])(x, None)


# ---- in the DataLoader -------------------------------------------------------------------
AUGMENT = Compose([RandomCrop(4, padding=1), RandomHorizontalFlip(), Normalize(0.5, 2.0)])


def square_set(n=23):
    x = np.random.default_rng(0).integers(0, 255, size=(n, 1, 4, 4)).astype(np.uint8)
    return ArrayDataset(x, np.arange(n) % 3)


def epochs(loader, count):
    return [[(x.copy(), y.copy()) for x, y in loader] for _ in range(count)]


def assert_same(a, b):
    assert len(a) == len(b)
    for ea, eb in zip(a, b):
        assert len(ea) == len(eb)
        for (xa, ya), (xb, yb) in zip(ea, eb):
            assert xa.dtype == xb.dtype == np.float32
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)


def test_augmented_batches_are_seeded_new_each_epoch_and_resume_bitwise():
    make = lambda **kw: DataLoader(square_set(), 5, shuffle=True, seed=4, transform=AUGMENT, **kw)
    first = epochs(make(), 3)
    assert_same(first, epochs(make(), 3))
    assert not np.array_equal(first[0][0][0], first[1][0][0])  # a new draw every epoch
    # the same order with and without augmentation; the features differ
    plain = epochs(DataLoader(square_set(), 5, shuffle=True, seed=4), 1)[0]
    assert all(np.array_equal(yp, ya) for (_, yp), (_, ya) in zip(plain, first[0]))
    # resume after epoch 1 in a loader seeded otherwise: epochs 2 and 3 bitwise
    a = make()
    epochs(a, 1)
    b = DataLoader(square_set(), 5, shuffle=True, seed=99, transform=AUGMENT)
    b.load_state_dict(a.state_dict())
    assert_same(epochs(b, 2), first[1:])
    # background threads give the very same batches, in order
    assert_same(epochs(make(num_workers=2, prefetch_factor=1), 3), first)
    assert_same(epochs(make(num_workers=1), 3), first)


def test_loader_states_of_older_versions_and_bad_states():
    a = DataLoader(square_set(), 5, shuffle=True, seed=4, transform=AUGMENT)
    state = a.state_dict()
    assert state["seed"] == 4 and state["epoch"] == 0
    old = {"generator": state["generator"]}  # written before transforms: seed and epoch kept
    a.load_state_dict(old)
    assert a.seed == 4 and a.state_dict()["epoch"] == 0
    for bad in ({**state, "epoch": -1}, {**state, "seed": 1.5}, {**state, "epoch": True}):
        with pytest.raises(ValueError, match="DataLoader state's (epoch|seed) must be an int"):
            a.load_state_dict(bad)


def test_trainer_resume_replays_the_augmented_run(tmp_path):
    from fastnet.models import mlp
    from fastnet.optim import SGD
    from fastnet.train import Trainer

    def run(epochs, resume=None, workers=0):
        fastnet.manual_seed(0)
        model = mlp((1, 4, 4), 3, hidden=(8,))
        loader = DataLoader(square_set(40), 8, shuffle=True, seed=1, transform=AUGMENT,
                            num_workers=workers)
        trainer = Trainer(model, SGD(model.parameters(), lr=0.1), checkpoint_dir=tmp_path,
                          progress=False, log=None)
        trainer.fit(loader, epochs=epochs, resume=resume)
        return [p.data.copy() for p in model.parameters()]

    straight = run(3)
    run(1)
    resumed = run(3, resume=tmp_path / "checkpoint.npz", workers=1)
    for a, b in zip(straight, resumed):
        np.testing.assert_array_equal(a, b)


def loader_threads():
    return [t for t in threading.enumerate() if t.name.startswith("fastnet-loader")]


def test_background_threads_stop_on_break_on_errors_and_at_the_end():
    loader = DataLoader(square_set(), 2, shuffle=True, seed=0, transform=AUGMENT, num_workers=2)
    for _ in loader:
        assert loader_threads()
        break
    assert loader_threads() == []
    assert len(list(loader)) == 12 and loader_threads() == []
    try:
        for _ in loader:
            raise RuntimeError("in the step")
    except RuntimeError:
        pass
    assert loader_threads() == []

    def failing(x):
        if x[0, 0, 0] == 6:  # the fourth batch
            raise ArithmeticError("the transform failed")
        return x
    got = []
    numbered = ArrayDataset(np.arange(20, dtype=np.float32).reshape(20, 1, 1), np.zeros(20))
    with pytest.raises(ArithmeticError, match="the transform failed"):
        for x, _ in DataLoader(numbered, 2, transform=failing, num_workers=2):
            got.append(x[0, 0, 0])
    assert got == [0, 2, 4]  # the batches before the failed one, in order
    assert loader_threads() == []


def test_trainer_stops_the_threads_when_a_step_fails():
    from fastnet.models import mlp
    from fastnet.optim import SGD
    from fastnet.train import NonFiniteLossError, Trainer

    x = np.ones((16, 1, 4, 4), np.float32)
    x[9] = np.nan  # the third batch's loss is NaN
    model = mlp((1, 4, 4), 3, hidden=(4,))
    trainer = Trainer(model, SGD(model.parameters(), lr=0.1), progress=False, log=None)
    loader = DataLoader(ArrayDataset(x, np.zeros(16, np.int64)), 4, num_workers=2,
                        prefetch_factor=1)
    try:
        trainer.fit(loader, epochs=1)
    except NonFiniteLossError as e:
        assert e.step == 3
        assert loader_threads() == []  # already, while the traceback still holds the loop
    else:
        raise AssertionError("no NonFiniteLossError")


def test_ctrl_c_while_waiting_for_a_batch_stops_the_threads():
    import _thread
    import time

    def slow(x):
        time.sleep(0.2)
        return x

    import signal

    # Python's Ctrl-C handler, also where the run was started with SIGINT ignored (a
    # background job of a shell): interrupt_main does nothing without it
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        timer = threading.Timer(0.05, _thread.interrupt_main)
        it = iter(DataLoader(square_set(), 2, transform=slow, num_workers=1))
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            next(it)
            time.sleep(1)  # (when the interrupt came after the first batch)
        timer.join()
    finally:
        signal.signal(signal.SIGINT, previous)
    del it
    assert loader_threads() == []


@pytest.mark.parametrize("kwargs, error, message", [
    ({"num_workers": -1}, ValueError, "num_workers must be an int >= 0, got -1"),
    ({"num_workers": 1, "prefetch_factor": 0}, ValueError, "prefetch_factor must be a positive"),
    ({"transform": "crop"}, TypeError, "DataLoader: transform must be callable"),
])
def test_loader_transform_and_worker_arguments_are_checked(kwargs, error, message):
    with pytest.raises(error, match=message):
        DataLoader(square_set(), 4, **kwargs)


def test_a_keyword_only_rng_is_given_the_batch_generator():
    """``def f(x, *, rng)`` is given the generator (it was called as f(x): TypeError)."""
    def shift(x, *, rng):
        return x + rng.random()

    x = np.zeros((2, 1, 3, 3), np.float32)
    want = np.random.default_rng(7).random()
    np.testing.assert_allclose(transforms.apply(shift, x, np.random.default_rng(7)), x + want)


@pytest.mark.parametrize("workers", [0, 2])
def test_stop_iteration_in_a_transform_is_an_error_not_the_end_of_the_epoch(workers):
    """With background threads a StopIteration of batch 3 ended the loop quietly after 3 of
    10 batches (re-raised by __next__); without them it is PEP 479's RuntimeError."""
    def take(x):
        if x[0, 0, 0, 0] == 6:  # batch 3 (sample i holds i)
            next(iter(()))
        return x

    x = np.broadcast_to(np.arange(20, dtype=np.float32)[:, None, None, None], (20, 1, 2, 2))
    loader = DataLoader(ArrayDataset(x, np.zeros(20, int)), batch_size=2, transform=take,
                        num_workers=workers)
    seen = []
    with pytest.raises(RuntimeError, match="StopIteration"):
        for batch in loader:
            seen.append(batch)
    assert len(seen) == 3
