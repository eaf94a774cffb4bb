"""fastnet.bench: the twins compute what fastnet computes, the case list covers the
issue's ops and shapes, and ``python -m fastnet bench`` prints every case. No timings
are asserted."""
import re

import numpy as np
import pytest

from fastnet.bench import all_cases, compare, cuda_cases, numpy_twins, torch_available
from fastnet.bench.cases import CUDA_FAMILIES
from fastnet.cli import main

QUICK = all_cases(quick=True)
TWINS = ["numpy"] + (["torch"] if torch_available() else [])
DROPOUT = [c for c in QUICK if c.family == "dropout"]


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
                 "lstm 64x32x128->128 backward", "batch_norm2d 128x32x16x16 forward",
                 "batch_norm2d 128x32x16x16 backward", "batch_norm1d 128x256 forward",
                 "batch_norm1d 128x256 backward", "dropout 128x4096 p0.5 forward",
                 "dropout 128x4096 p0.5 backward"]:
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


@pytest.mark.parametrize("impl", ["fastnet"] + TWINS)
@pytest.mark.parametrize("case", DROPOUT, ids=[c.name for c in DROPOUT])
def test_dropout_twins_draw_their_own_masks_and_scale_exactly(case, impl):
    """The timed code of each twin draws its own mask (the check above gives the twins
    fastnet's): about p of the elements are dropped, the rest scaled by exactly
    1 / (1 - p), and every call draws a new mask."""
    inputs = case.inputs()
    p = inputs["p"]
    scale = np.float32(1 / (1 - p))
    source = inputs["dout"] if case.direction == "backward" else inputs["x"]
    bench = case.build(impl)
    masks = []
    for _ in range(3):
        if bench.setup is not None:
            bench.setup()
        (got,) = bench.outputs(bench.run()).values()
        got = np.array(got)
        kept = got != 0
        np.testing.assert_array_equal(got[kept], source[kept] * scale)
        dropped = 1 - kept.mean()
        assert abs(dropped - p) <= 5 * np.sqrt(p * (1 - p) / kept.size), dropped
        masks.append(kept)
    assert not np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[1], masks[2])


def test_dropout_check_uses_fastnets_mask():
    """The twins' check applies the mask fastnet's layer draws on its first call."""
    case = next(c for c in DROPOUT if c.direction == "forward")
    inputs = case.inputs()
    y = case.build("fastnet").once()["y"]
    np.testing.assert_array_equal(y != 0, inputs["mask"])
    assert 0.3 < inputs["mask"].mean() < 0.7


def test_cuda_cases():
    """The GPU list: the CPU cases of CUDA_FAMILIES plus the GEMM and launch cases, with a
    fastnet and a PyTorch builder taking ``device`` for each."""
    import inspect

    from fastnet.bench import fastnet_impl

    for quick in (True, False):
        cases = cuda_cases(quick)
        names = [c.name for c in cases]
        assert len(set(names)) == len(names)
        assert {c.family for c in cases} == set(CUDA_FAMILIES) | {"gemm", "launch"}
        cpu = [c.name for c in all_cases(quick) if c.family in CUDA_FAMILIES]
        assert [n for n in names if n in set(cpu)] == cpu
    modules = [fastnet_impl]
    if torch_available():
        from fastnet.bench import torch_twins

        modules.append(torch_twins)
    for module in modules:
        for kind in {c.kind for c in cuda_cases()}:
            assert "device" in inspect.signature(getattr(module, kind)).parameters, kind
    with pytest.raises(ValueError, match="CPU only"):
        cuda_cases(True)[0].build("numpy", "cuda")


def test_synchronized_bench_syncs_after_run_setup_and_check():
    from fastnet.bench import Bench

    calls = []
    bench = Bench(run=lambda: calls.append("run") or 1, outputs=lambda r: {"r": r},
                  setup=lambda: calls.append("setup"), check=lambda: calls.append("check") or 2)
    synced = bench.synchronized(lambda: calls.append("sync"))
    assert synced.once() == {"r": 2}
    assert synced.run() == 1
    assert calls == ["setup", "sync", "check", "sync", "run", "sync"]


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
