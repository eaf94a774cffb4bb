"""fastnet.data.preprocess.mnist_style against a step-by-step reference, and ``predict`` on
a digit drawn enlarged and off-centre on a large canvas."""
import re

import numpy as np
import pytest

from fastnet.cli import main
from fastnet.data import load_digits, train_test_split
from fastnet.data.preprocess import area_resize, mnist_style


def reference(image, height, width, box):
    """MNIST's steps one at a time, with loops (written differently from mnist_style)."""
    a = np.array(image, dtype=np.float64)
    h0, w0 = a.shape
    border = [a[i, j] for i in range(h0) for j in range(w0) if i in (0, h0 - 1) or j in (0, w0 - 1)]
    bg = float(np.median(border))
    if bg - a.min() > a.max() - bg:  # dark ink
        a, bg = 1 - a, 1 - bg
    a = np.clip((a - bg) / (a.max() - bg), 0, 1)
    ink = [(i, j) for i in range(h0) for j in range(w0) if a[i, j] > 0.3]
    top, bottom = min(i for i, _ in ink), max(i for i, _ in ink)
    left, right = min(j for _, j in ink), max(j for _, j in ink)
    crop = a[top:bottom + 1, left:right + 1]
    ch, cw = crop.shape
    side = round(box * min(height, width))
    nh, nw = max(1, round(ch * side / max(ch, cw))), max(1, round(cw * side / max(ch, cw)))
    # area averaging: integrate the piecewise-constant crop over each output cell
    small = np.zeros((nh, nw))
    for i in range(nh):
        for j in range(nw):
            y0, y1 = i * ch / nh, (i + 1) * ch / nh
            x0, x1 = j * cw / nw, (j + 1) * cw / nw
            total = 0.0
            for r in range(ch):
                for c in range(cw):
                    dy = max(0.0, min(y1, r + 1) - max(y0, r))
                    dx = max(0.0, min(x1, c + 1) - max(x0, c))
                    total += crop[r, c] * dy * dx
            small[i, j] = total / ((y1 - y0) * (x1 - x0))
    ys, xs = np.mgrid[0:nh, 0:nw]
    cy, cx = (small * ys).sum() / small.sum(), (small * xs).sum() / small.sum()
    oy = min(max(round((height - 1) / 2 - cy), 0), height - nh)
    ox = min(max(round((width - 1) / 2 - cx), 0), width - nw)
    out = np.zeros((height, width))
    out[oy:oy + nh, ox:ox + nw] = small
    return out


def drawing(shape=(37, 50), seed=0):
    """Dark strokes on light, grey paper, off-centre, with a little noise."""
    rng = np.random.default_rng(seed)
    a = 0.9 + 0.05 * rng.random(shape)
    a[6:25, 30:34] = 0.1            # a tall bar
    a[6:9, 22:40] = 0.15            # a top bar
    a[20:24, 27:31] = 0.4           # a softer blot
    return a


@pytest.mark.parametrize("size, box", [((28, 28), 20 / 28), ((8, 8), 1.0), ((16, 12), 20 / 28)])
def test_mnist_style_equals_the_step_by_step_reference(size, box):
    img = drawing()
    got = mnist_style(img, size, box)
    assert got.dtype == np.float32 and got.shape == size
    np.testing.assert_allclose(got, reference(img, *size, box), rtol=0, atol=1e-6)
    # light ink on dark (MNIST's own polarity) gives the same digit
    np.testing.assert_allclose(mnist_style(1 - img, size, box), got, atol=1e-6)


def test_area_resize_keeps_the_mean_and_blocks():
    a = np.random.default_rng(0).random((12, 9))
    small = area_resize(a, 5, 4)
    assert small.shape == (5, 4)
    np.testing.assert_allclose(small.mean(), a.mean())
    np.testing.assert_allclose(area_resize(np.kron(a, np.ones((3, 3))), 12, 9), a)


def test_mnist_style_finds_dark_ink_on_grey_paper():
    """A photographed page is often darker than mid-grey: dark ink on a 0.45 ground is
    still dark ink (it was taken for a light-on-dark image: the digit lost, a speck of
    the paper's noise scaled up in its place)."""
    a = 0.45 + 0.01 * np.random.default_rng(0).standard_normal((60, 60))
    a[10:50, 28:33] = 0.1  # a "1"
    got = mnist_style(np.clip(a, 0, 1))
    np.testing.assert_allclose(got, mnist_style(1 - np.clip(a, 0, 1)), atol=1e-6)
    rows = np.flatnonzero((got > 0.3).any(axis=1))
    assert rows[-1] - rows[0] + 1 == 20  # the bar, scaled into MNIST's 20-pixel box


def test_mnist_style_refuses_blank_and_malformed_images():
    with pytest.raises(ValueError, match="found no ink"):
        mnist_style(np.full((20, 20), 0.8))
    with pytest.raises(ValueError, match=r"expected a 2-D grayscale image, got shape \(3, 4, 4\)"):
        mnist_style(np.zeros((3, 4, 4)))


def test_predict_prepares_a_large_off_centre_drawing_like_the_training_digits(tmp_path, capsys):
    """A model trained on the digits as MNIST-style 28x28 images (--data an .npz) predicts
    each test digit, drawn 12x larger in dark ink at a corner of a white 200x200 canvas,
    as the class it gives the 28x28 digit itself."""
    image = pytest.importorskip("PIL.Image")
    x, y = load_digits()
    x28 = np.stack([mnist_style(d[0], (28, 28)) for d in x])
    x_tr, y_tr, x_te, y_te = train_test_split(x28, y, test_fraction=0.2, seed=0)
    np.savez(tmp_path / "digits28.npz", x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    out = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "digits28.npz"), "--model", "mlp",
                 "--optimizer", "adam", "--epochs", "3", "--no-progress", "--val-fraction", "0",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    _, _, orig_te, _ = train_test_split(x, y, test_fraction=0.2, seed=0)
    picks = [int(np.flatnonzero(y_te == k)[0]) for k in range(10)]
    files = []
    for n, i in enumerate(picks):
        np.save(tmp_path / f"d{n}.npy", x_te[i])
        canvas = np.full((200, 200), 255, np.uint8)
        big = np.kron(orig_te[i, 0], np.ones((12, 12)))
        top, left = 10 + 7 * n, 95 - 5 * n
        canvas[top:top + 96, left:left + 96] = np.round(255 * (1 - big))
        image.fromarray(canvas).save(tmp_path / f"d{n}.png")
        files += [str(tmp_path / f"d{n}.npy"), str(tmp_path / f"d{n}.png")]
    # black ink on a transparent canvas (as drawing programs save it): on white paper
    rgba = np.zeros((120, 150, 4), np.uint8)
    rgba[10:106, 40:136, 3] = np.round(255 * np.kron(orig_te[picks[4], 0], np.ones((12, 12))))
    image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    files += [str(tmp_path / "d4.npy"), str(tmp_path / "alpha.png")]
    assert main(["predict", "--checkpoint", str(out), *files]) == 0
    lines = capsys.readouterr().out.splitlines()
    classes = [int(re.search(r": class (\d+),", line).group(1)) for line in lines]
    assert classes[0::2] == classes[1::2], lines
    assert sum(c == k for c, k in zip(classes[0::2], range(10))) >= 8  # and mostly right
    files = files[:-2]
    # without the preparation the whole canvas shrinks to 28x28: not the same digits
    assert main(["predict", "--checkpoint", str(out), "--no-preprocess", *files[1::2]]) == 0
    plain = [int(re.search(r": class (\d+),", line).group(1))
             for line in capsys.readouterr().out.splitlines()]
    assert plain != classes[1::2]
