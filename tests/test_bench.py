"""fastnet.bench: the twins compute what fastnet computes, the case list covers the
issue's ops and shapes, and ``python -m fastnet bench`` prints every case, timing fastnet
in a process that imported NumPy first and saying so. No timings are asserted.

The ONNX Runtime twin needs the ``bench`` extra (CI installs it); PyTorch's twins skip
where PyTorch is not installed."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import fastnet
from fastnet.bench import all_cases, available, compare, cuda_cases, numpy_twins, runner, torch_available
from fastnet.bench.cases import CUDA_FAMILIES
from fastnet.cli import main

QUICK = all_cases(quick=True)
DROPOUT = [c for c in QUICK if c.family == "dropout"]
ORT = pytest.mark.skipif(not available("onnxruntime"),
                         reason="onnxruntime is not installed (the bench extra)")


@pytest.mark.parametrize("case", QUICK, ids=[c.name for c in QUICK])
def test_twins_compute_the_same_numbers(case):
    ref = case.build("fastnet").once()
    assert ref and all(np.isfinite(v).all() for v in ref.values())
    for impl in case.impls[1:]:
        if available(impl):
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
                 "batch_norm1d 128x256 backward", "layer_norm 128x16x512 forward",
                 "layer_norm 128x16x512 backward", "dropout 128x4096 p0.5 forward",
                 "dropout 128x4096 p0.5 backward", "embedding 128x64 ids 10000x128 forward",
                 "embedding 128x64 ids 10000x128 backward",
                 # the issue's headline: four training steps at batch 128, and inference
                 "train mlp 128x1x28x28 784-256-256-10 step", "train resnet-small 128x3x32x32 step",
                 "lenet5 1x1x28x28 inference", "lenet5 64x1x28x28 inference",
                 "mlp 1x1x28x28 784-256-256-10 inference",
                 # issue 21: the character model's step, a bidirectional GRU
                 "train char-lstm 64x100 chars 96-64-2x256-96 step",
                 "gru 64x32x128->2x128 bidirectional forward",
                 "gru 64x32x128->2x128 bidirectional backward",
                 # issue 22: a depthwise 3x3 conv of MobileNet's size
                 "depthwise_conv2d 32x64x56x56 k3 p1 forward",
                 "depthwise_conv2d 32x64x56x56 k3 p1 backward"]:
        assert name in names
    ops = {c.op for c in full}
    assert {"sgd_momentum", "adam", "train mlp"} <= ops
    for c in full:  # every timed case reports a throughput
        assert c.flops or c.nbytes
        if c.family == "inference":
            assert c.samples == int(c.shape.split("x")[0]) and c.ort
            continue
        batch_64 = c.family == "recurrent" or c.op == "train char-lstm"
        assert c.samples == (0 if c.family == "optim" else 64 if batch_64 else
                             32 if c.op == "depthwise_conv2d" else
                             (1024 if "1024x" in c.shape else 128))
    # ONNX Runtime: inference, and the forwards of layers eval mode computes the same
    assert {c.family for c in full if c.ort} == {"dense", "conv", "pool", "activation",
                                                 "embedding", "inference", "norm"}
    assert {c.op for c in full if c.family == "norm" and c.ort} == {"layer_norm"}
    assert all(c.direction in ("forward", "inference") for c in full if c.ort)
    # the issue's models: 784-256-256-10 on 1x28x28; LeNet-5's 400 features into its head
    train = {c.op: c.inputs()["params"] for c in full if c.family == "train"}
    assert [v.shape for k, v in train["train mlp"].items() if k.endswith("weight")] == \
        [(256, 784), (256, 256), (10, 256)]
    assert train["train lenet5"]["5.weight"].shape == (120, 400)
    assert train["train vgg-small"]["7.weight"].shape == (256, 4096)


def test_resnet_case_is_the_model_zoos():
    """The ResNet-small step's spec builds fastnet.models.resnet_small(): the same state_dict
    keys and shapes, and the same layers in the same order."""
    from fastnet.bench import fastnet_impl
    from fastnet.models import resnet_small

    case = next(c for c in all_cases() if c.op == "train resnet-small")
    params = case.inputs()["params"]
    zoo = resnet_small((3, 32, 32))
    assert {k: v.shape for k, v in params.items()} == \
        {k: np.shape(v) for k, v in zoo.state_dict().items()}
    built = fastnet_impl.build(case.inputs()["spec"], params)
    assert [type(m).__name__ for m in built.modules()] == [type(m).__name__ for m in zoo.modules()]


@pytest.mark.parametrize("impl", ["fastnet", "numpy"] + (["torch"] if available("torch") else []))
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
    if available("torch"):
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


NUMBER = r"\d[\d.e+-]*"  # not "-"


def _rows(out):
    return {cells[0]: cells for cells in (re.split(r"\s{2,}", line) for line in out.splitlines())}


def test_cli_prints_every_case(capsys):
    """Every case with fastnet, NumPy and (where the case has it and it is installed)
    ONNX Runtime; the header says how the fastnet process imported its libraries and runs
    its threads, and how each twin runs."""
    assert main(["bench", "--quick", "--no-torch", "--repeat", "2"]) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    for case in QUICK:
        fastnet_ms, numpy_ms, torch_ms, ort_ms, numpy_ratio, torch_ratio, ort_ratio = \
            rows[case.name][1:8]
        assert all(re.fullmatch(NUMBER, c) for c in (fastnet_ms, numpy_ms, numpy_ratio))
        assert torch_ms == torch_ratio == "-"
        timed = case.ort and available("onnxruntime")
        assert all(bool(re.fullmatch(NUMBER, c)) == timed for c in (ort_ms, ort_ratio)), case.name
    pairs = {c.label for c in QUICK if c.direction == "backward"}
    assert all(f"{label} fwd+bwd" in rows for label in pairs)
    assert "GFLOP/s" in out and "GB/s" in out and "numpy/fastnet" in out and "ort/fastnet" in out
    header = out.split("\ncase ")[0]
    threads = fastnet.threading_info()
    # this test process imported NumPy before fastnet (tests/conftest.py), so it ran here
    assert "fastnet: in a process that imported numpy, then fastnet" in header
    assert f"Numba's {threads['threading_layer']} threading layer, {threads['num_threads']} " \
        "threads" in header
    assert "torch twin: left out (--no-torch)" in header
    assert "NumPy " in header and "Numba " in header and "CPU: " in header
    if available("onnxruntime"):
        assert f"intra_op_num_threads={threads['num_threads']}, inter_op_num_threads=1" in header


def test_cli_without_onnxruntime(monkeypatch, capsys):
    """Without onnxruntime its column is empty, the header says why, and nothing fails."""
    real = runner.available
    monkeypatch.setattr(runner, "available", lambda impl: impl != "onnxruntime" and real(impl))
    assert main(["bench", "--quick", "--no-torch", "--repeat", "1", "--filter", "inference"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime twin: not installed (pip install fastnet[bench])" in out
    for case in QUICK:
        if case.family == "inference":
            assert _rows(out)[case.name][4] == "-"


def _python(*argv):
    """A fresh Python running ``argv``, this fastnet on its path, without the variables
    fastnet's import sets."""
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OPENBLAS_THREAD_TIMEOUT")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastnet.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("code, order", [("import numpy; import fastnet", ["numpy", "fastnet"]),
                                         ("import fastnet", ["fastnet", "numpy"])])
def test_import_order(code, order):
    """The order in which imports began (sys.modules has the order in which they ended)."""
    out = _python("-c", f"{code}; from fastnet.bench.runner import import_order; print(import_order())")
    assert out.strip() == repr(order)


def test_python_m_fastnet_bench_times_fastnet_after_numpy():
    """``python -m fastnet`` imports fastnet first (its header would say so); the bench
    starts again in a process that imports NumPy first, with the environment fastnet's
    import changed put back."""
    out = _python("-m", "fastnet", "bench", "--quick", "--no-torch", "--repeat", "1",
                  "--filter", "relu 2x3x8x8 forward")
    assert "fastnet: in a process that imported numpy, then fastnet;" in out
    assert "threading layer" in out
    assert re.fullmatch(NUMBER, _rows(out)["relu 2x3x8x8 forward"][1])


def test_clean_env_undoes_what_import_fastnet_set(monkeypatch):
    from fastnet import runtime

    monkeypatch.setenv("GOMP_SPINCOUNT", "3000")
    monkeypatch.setattr(runtime, "WE_SET_SPINCOUNT", True)
    monkeypatch.setenv("OPENBLAS_THREAD_TIMEOUT", "7")  # the user's: kept
    env = runner.clean_env(malloc_tuning=False)
    assert "GOMP_SPINCOUNT" not in env and env["OPENBLAS_THREAD_TIMEOUT"] == "7"
    assert env["FASTNET_MALLOC_TUNING"] == "0"  # a twin's process: glibc's defaults
    assert runner.clean_env().get("FASTNET_MALLOC_TUNING") == os.environ.get("FASTNET_MALLOC_TUNING")


@ORT
def test_onnxruntime_session_options():
    import onnxruntime as ort

    from fastnet.bench import onnx_twins

    onnx_twins.set_threads(3)
    try:
        opts = onnx_twins.session_options()
    finally:
        onnx_twins.set_threads(1)
    assert opts.intra_op_num_threads == 3 and opts.inter_op_num_threads == 1
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


@ORT
def test_onnxruntime_worker_checks_and_times():
    """The worker process of the ONNX Runtime twin: outputs for the check, one time per run."""
    case = next(c for c in QUICK if c.family == "inference")
    with runner.TwinWorker("onnxruntime", quick=True, threads=1) as worker:
        outputs, times = worker.measure(case, repeat=3)
        assert compare(outputs, case.build("fastnet").once(), case.tolerance) is None
        assert len(times) == 3 and all(t > 0 for t in times)
        with pytest.raises(RuntimeError, match="no onnxruntime twin"):
            worker.measure(next(c for c in QUICK if c.family == "train"), repeat=1)


def test_cli_reports_a_twin_that_differs(monkeypatch, capsys):
    monkeypatch.setattr(numpy_twins.ReLU, "f", lambda self, x: np.maximum(x, 0.1))
    assert main(["bench", "--quick", "--no-torch", "--repeat", "1", "--filter", "relu"]) == 1
    captured = capsys.readouterr()
    assert "the numpy twin differs from fastnet: y: max |difference|" in captured.err
    assert re.search(r"relu 2x3x8x8 forward .* differs ", captured.out)


def test_cli_unknown_filter(capsys):
    assert main(["bench", "--quick", "--filter", "no such case"]) == 2
    assert "no case matches" in capsys.readouterr().err


@pytest.mark.skipif(not available("torch"), reason="PyTorch is not installed")
def test_cli_markdown_with_the_torch_worker(capsys):
    assert main(["bench", "--quick", "--repeat", "1", "--markdown", "--filter", "s2"]) == 0
    out = capsys.readouterr().out
    assert "PyTorch 2" in out and "torch.set_num_threads(" in out
    row = next(line for line in out.splitlines() if line.startswith("| conv2d 2x3x9x9->4 k3 s2 p1 backward"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # three times and two ratios; no ONNX Runtime twin for a backward
    assert all(re.fullmatch(NUMBER, c) for c in cells[1:4] + cells[5:7]), row
    assert cells[4] == cells[7] == "-"


def test_import_orders_table():
    """``--import-orders``: every training step and inference case timed in a process per
    import order (torch first where it is installed), the header naming each process's
    order and threading layer, and the two-threads row."""
    from fastnet.bench import orders

    lines = []
    assert orders.run(quick=True, rounds=1, repeat=2, out=lines.append) == 0
    out = "\n".join(lines)
    labels = [k for k in orders.ORDERS if k != "torch first" or torch_available()]
    assert "numpy first: imported numpy, then fastnet;" in out
    assert "fastnet first: imported fastnet, then numpy;" in out
    if torch_available():
        assert "torch first: imported torch, then numpy, then fastnet;" in out
    rows = _rows(out)
    for case in orders.headline_cases(quick=True):
        cells = rows[case.name]
        assert len(cells) == 2 + len(labels) and all(re.fullmatch(NUMBER, c) for c in cells[1:])
    assert case.family == "inference" and {c.family for c in orders.headline_cases(True)} == \
        {"train", "inference"}
    two = next(r for name, r in rows.items() if name.startswith("2 threads / 1 thread"))
    assert all(re.fullmatch(NUMBER, c) for c in two[1:1 + len(labels)])
