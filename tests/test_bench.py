"""fastnet.bench: the twins compute what fastnet computes, the case list covers the
issue's ops and shapes, and ``python -m fastnet bench`` prints every case. No timings
are asserted."""
import re

import numpy as np
import pytest

from fastnet.bench import all_cases, compare, numpy_twins, torch_available
from fastnet.cli import main

QUICK = all_cases(quick=True)
TWINS = ["numpy"] + (["torch"] if torch_available() else [])


@pytest.mark.parametrize("case", QUICK, ids=[c.name for c in QUICK])
def test_twins_compute_the_same_numbers(case):
    ref = case.build("fastnet").once()
    assert ref and all(np.isfinite(v).all() for v in ref.values())
    for impl in TWINS:
        assert compare(case.build(impl).once(), ref, case.tolerance) is None, impl


def test_cases_cover_the_issue():
    full = all_cases()
    names = [c.name for c in full]
    assert len(set(names)) == len(names) and len(full) == len(QUICK)
    for name in ["dense 128x784->256 relu forward", "dense 128x4096->256 relu backward",
                 "conv2d 128x1x28x28->6 k5 p2 forward", "conv2d 128x6x14x14->16 k5 backward",
                 "conv2d 128x32x32x32->32 k3 p1 forward", "conv2d 128x64x16x16->64 k3 p1 forward",
                 "conv2d 128x3x32x32->16 k3 s2 p1 backward", "max_pool2d 128x32x32x32 k2 forward",
                 "avg_pool2d 128x6x28x28 k2 backward", "relu 128x32x32x32 forward",
                 "sigmoid 128x32x32x32 backward", "tanh 128x32x32x32 forward",
                 "softmax 1024x1000 backward", "cross_entropy 128x10 fwd+bwd",
                 "cross_entropy 1024x1000 fwd+bwd", "train lenet5 128x1x28x28 step",
                 "train vgg-small 128x3x32x32 step", "lstm 64x32x128->128 forward",
                 "lstm 64x32x128->128 backward"]:
        assert name in names
    ops = {c.op for c in full}
    assert {"sgd_momentum", "adam", "train mlp"} <= ops
    for c in full:  # every timed case reports a throughput
        assert c.flops or c.nbytes
        assert c.samples == (0 if c.family == "optim" else 64 if c.family == "recurrent" else
                             (1024 if "1024x" in c.shape else 128))
    # the issue's models: 784-256-256-10 on 1x28x28; LeNet-5's 400 features into its head
    train = {c.op: c.inputs()["params"] for c in full if c.family == "train"}
    assert [v.shape for k, v in train["train mlp"].items() if k.endswith("weight")] == \
        [(256, 784), (256, 256), (10, 256)]
    assert train["train lenet5"]["5.weight"].shape == (120, 400)
    assert train["train vgg-small"]["7.weight"].shape == (256, 4096)


def test_compare_reports_shape_value_and_nan_differences():
    ref = {"y": np.ones((2, 3), np.float32)}
    assert compare({"y": ref["y"] + 1e-6}, ref) is None
    assert "shape" in compare({"y": np.ones(6, np.float32)}, ref)
    assert "max |difference|" in compare({"y": ref["y"] * 1.01}, ref)
    assert compare({"y": np.full((2, 3), np.nan, np.float32)}, ref) is not None
    assert "outputs" in compare({"z": ref["y"]}, ref)


def test_cli_prints_every_case(capsys):
    assert main(["bench", "--quick", "--no-torch", "--repeat", "2"]) == 0
    out = capsys.readouterr().out
    rows = {cells[0]: cells for cells in (re.split(r"\s{2,}", line) for line in out.splitlines())}
    for case in QUICK:
        fastnet_ms, numpy_ms, torch_ms, numpy_ratio, torch_ratio = rows[case.name][1:6]
        assert all(re.fullmatch(r"[\d.e+-]+", c) for c in (fastnet_ms, numpy_ms, numpy_ratio))
        assert torch_ms == torch_ratio == "-"
    pairs = {c.label for c in QUICK if c.direction == "backward"}
    assert all(f"{label} fwd+bwd" in rows for label in pairs)
    assert "GFLOP/s" in out and "GB/s" in out and "numpy/fastnet" in out


def test_cli_reports_a_twin_that_differs(monkeypatch, capsys):
    monkeypatch.setattr(numpy_twins.ReLU, "f", lambda self, x: np.maximum(x, 0.1))
    assert main(["bench", "--quick", "--no-torch", "--repeat", "1", "--filter", "relu"]) == 1
    captured = capsys.readouterr()
    assert "the numpy twin differs from fastnet: y: max |difference|" in captured.err
    assert re.search(r"relu 2x3x8x8 forward .* differs ", captured.out)


def test_cli_unknown_filter(capsys):
    assert main(["bench", "--quick", "--filter", "no such case"]) == 2
    assert "no case matches" in capsys.readouterr().err


@pytest.mark.skipif(not torch_available(), reason="PyTorch is not installed")
def test_cli_markdown_with_the_torch_worker(capsys):
    assert main(["bench", "--quick", "--repeat", "1", "--markdown", "--filter", "s2"]) == 0
    out = capsys.readouterr().out
    assert "PyTorch 2" in out and "threads" in out
    row = next(line for line in out.splitlines() if line.startswith("| conv2d 2x3x9x9->4 k3 s2 p1 backward"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert all(re.fullmatch(r"[\d.e+-]+", c) for c in cells[1:6]), row  # three times, two ratios
