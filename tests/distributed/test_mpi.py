"""Data-parallel training under a real MPI launcher: ``mpiexec -n 2`` and ``-n 3`` on this
machine (loopback). Every launch has its own timeout, so that a hang fails the test fast.

The ranks run ``tests/distributed/mpi_worker.py`` (or the CLI); the reference is the same
script in one process.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("mpi4py", reason='the MPI tests need the mpi extra: pip install ".[mpi]"')

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _mpiexec():
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")  # the venv's (mpich wheel)
    return here if os.path.exists(here) else shutil.which("mpiexec")


MPIEXEC = _mpiexec()
if MPIEXEC is None:  # pragma: no cover - the mpi extra brings it
    pytest.skip("no mpiexec on PATH (pip install \".[mpi]\" brings MPICH's)",
                allow_module_level=True)


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("NUMBA_NUM_THREADS", None)
    env.update(extra)
    return env


def launch(n, args, timeout=120, **env):
    """``mpiexec -n n python args...`` (n = 1: one plain process), its CompletedProcess."""
    cmd = ([MPIEXEC, "-n", str(n)] if n > 1 else []) + [sys.executable] + list(args)
    return subprocess.run(cmd, cwd=ROOT, env=_env(**env), capture_output=True, text=True,
                          timeout=timeout)


def worker(n, case, out, timeout=120, **env):
    proc = launch(n, ["-m", "tests.distributed.mpi_worker", case, str(out)], timeout, **env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(os.path.join(out, "meta.json")) as f:
        meta = json.load(f)
    assert meta["world"] == n
    return np.load(os.path.join(out, "arrays.npz")), meta


def relative_errors(ref, got, prefix):
    """Per parameter tensor: ||got - ref|| / ||ref||."""
    errors = {}
    for k in ref.files:
        if k.startswith(prefix + "/"):
            errors[k] = float(np.linalg.norm(got[k] - ref[k]) / np.linalg.norm(ref[k]))
    assert errors, prefix
    return errors


@pytest.fixture(scope="module")
def equivalence(tmp_path_factory):
    base = tmp_path_factory.mktemp("equivalence")
    return {n: worker(n, "equivalence", base / f"n{n}") for n in (1, 2, 3)}


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("model", ["lenet", "residual", "lstm"])
@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-10), ("float32", 1e-5)])
def test_same_model_as_one_process(equivalence, n, model, opt, dtype, tol):
    """N ranks with batch B/N take the steps of one process with batch B (SGD with
    momentum and weight decay, Adam), and every rank holds bitwise the same parameters."""
    ref, _ = equivalence[1]
    got, meta = equivalence[n]
    tag = f"{model}-{opt}-{dtype}"
    errors = relative_errors(ref, got, tag)
    assert max(errors.values()) <= tol, errors
    assert meta["same"][tag], f"{tag}: the ranks' parameters differ"


@pytest.mark.parametrize("n", [2, 3])
def test_no_sync_accumulates(equivalence, n):
    ref, _ = equivalence[1]
    got, _ = equivalence[n]
    assert max(relative_errors(ref, got, "lenet-nosync-float64").values()) <= 1e-10
    # and it is the same training as without no_sync
    plain = {k.replace("lenet-nosync-float64", "lenet-sgd-float64"): got[k]
             for k in got.files if k.startswith("lenet-nosync-float64/")}
    for k, v in plain.items():
        np.testing.assert_allclose(v, got[k], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n", [2, 3])
def test_sharding_uneven_dataset(tmp_path, n):
    """23 samples, batch 4: every rank runs the same number of batches, the shares are
    disjoint but for the padding (the order's start repeated), and every sample is seen;
    two epochs draw two orders, the same on every rank; evaluation counts each sample once."""
    _, meta = worker(n, "sharding", tmp_path)
    _, single = worker(1, "sharding", tmp_path / "one")
    ranks = meta["ranks"]
    assert len(ranks) == n
    share = -(-23 // n)
    assert {r["len"] for r in ranks} == {-(-share // 4)}
    assert len({r["state"] for r in ranks}) == 1
    for epoch in range(2):
        seen = [i for r in ranks for i in r["epochs"][epoch]]
        assert len(seen) == share * n
        assert sorted(set(seen)) == list(range(23))
        assert len(seen) - len(set(seen)) == share * n - 23  # only the padding repeats
        # rank r takes positions r, r + n, ... of the epoch's order: the same order as one
        # process draws
        order = single["ranks"][0]["epochs"][epoch]
        interleaved = [ranks[p % n]["epochs"][epoch][p // n] for p in range(23)]
        assert interleaved == order
    assert meta["eval"]["loss"] == pytest.approx(single["eval"]["loss"], rel=1e-6)
    assert meta["eval"]["acc"] == single["eval"]["acc"]


def test_non_finite_loss_stops_every_rank_at_the_same_step(tmp_path):
    _, meta = worker(2, "nonfinite", tmp_path)
    ranks = meta["ranks"]
    assert ranks[0]["stopped"] is not None
    assert all(r == ranks[0] for r in ranks)  # the same epoch and step, weights finite
    assert ranks[0]["finite"]


def test_batchnorm_ranks_stay_identical(tmp_path):
    """Parameters stay identical; evaluation syncs the running statistics first, so every
    rank evaluates rank 0's model (what the checkpoint holds)."""
    _, meta = worker(3, "batchnorm", tmp_path)
    assert meta["same"]
    assert meta["eval"]["acc"] == meta["eval_rank0_alone"]["acc"]
    assert meta["eval"]["loss"] == pytest.approx(meta["eval_rank0_alone"]["loss"], rel=1e-6)


@pytest.mark.parametrize("n,pattern", [(2, "-,0,0"), (2, "0,-,0"), (2, "01,1,-,0,01"),
                                       (3, "2,-,01,012,1")])
def test_layer_used_on_some_ranks_and_steps(tmp_path, n, pattern):
    """A parameter reached on some ranks only, or not in the previous step: its bucket
    may leave before its gradient is complete on some rank; every rank then reduces it
    again, in the same order, and ends with the average of the ranks' own gradients."""
    proc = launch(n, ["-m", "tests.distributed.mpi_worker", "conditional", str(tmp_path),
                      pattern], 60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["same"] and meta["worst"] < 1e-14, meta
    assert meta["nested_no_sync_held"]


def test_unequal_loaders_refused_on_every_rank(tmp_path):
    proc = launch(2, ["-m", "tests.distributed.mpi_worker", "uneven_loaders", str(tmp_path)], 60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("the ranks' train loaders give 4 to 5 batches per epoch") == 2


def test_exception_before_joining_mpi_ends_the_job(tmp_path):
    start = time.perf_counter()
    proc = launch(2, ["-m", "tests.distributed.mpi_worker", "early", str(tmp_path)], 60)
    assert proc.returncode != 0
    assert "deliberate early failure on rank 1" in proc.stderr
    assert "rank 1 of 2 failed" in proc.stderr
    assert time.perf_counter() - start < 30


def test_different_models_refused_on_every_rank(tmp_path):
    proc = launch(2, ["-m", "tests.distributed.mpi_worker", "mismatch", str(tmp_path)], 60)
    assert proc.returncode != 0
    assert proc.stdout.count("refused: DistributedDataParallel: the ranks hold different "
                             "models") == 2, proc.stdout + proc.stderr
    assert "accepted" not in proc.stdout


def test_exception_on_one_rank_ends_the_job(tmp_path):
    start = time.perf_counter()
    proc = launch(2, ["-m", "tests.distributed.mpi_worker", "raise", str(tmp_path)], 60)
    took = time.perf_counter() - start
    assert proc.returncode != 0
    assert "deliberate failure on rank 1" in proc.stderr
    assert "rank 1 of 2 failed" in proc.stderr
    assert took < 30  # with start-up; the abort itself is immediate


def test_mpi4py_missing_under_a_launcher(tmp_path):
    """The launcher's variables say 2 ranks but mpi4py cannot be imported: a clear error
    from the library and from the CLI, and no hang."""
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "mpi4py.py").write_text("raise ImportError('No module named mpi4py')\n")
    env = {"PMI_SIZE": "2", "PMI_RANK": "0",
           "PYTHONPATH": f"{blocker}{os.pathsep}{ROOT}"}
    code = ("from fastnet import distributed as d\n"
            "try:\n    d.world_size()\nexcept d.MPIUnavailableError as e:\n    print(e)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(**env),
                          capture_output=True, text=True, timeout=60)
    assert "started by an MPI launcher with 2 ranks, but mpi4py cannot be imported" in proc.stdout
    assert 'pip install "fastnet[mpi]"' in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "fastnet", "train", "--epochs", "1"], cwd=ROOT,
                          env=_env(**env), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "fastnet train: this process was started by an MPI launcher" in proc.stderr


def _train(n, out, *extra, timeout=240):
    return launch(n, ["-m", "fastnet", "train", "--epochs", "2", "--no-progress", "--out",
                      str(out), *extra], timeout)


def test_cli_trains_on_the_digits_and_resumes_with_other_world_sizes(tmp_path):
    """mpiexec -n 2 python -m fastnet train: rank 0 alone prints and writes the files; the
    checkpoint resumes with 3 ranks and with 1."""
    out = tmp_path / "run"
    proc = _train(2, out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert sum(line.startswith("fastnet 0") for line in lines) == 1  # one header: rank 0's
    assert "batch 32 per rank x 2 ranks = 64" in lines[0]
    epochs = [line for line in lines if line.startswith("epoch")]
    assert len(epochs) == 2 and all("(batch 64 over 2 ranks)" in e for e in epochs)
    assert sum(line.startswith("test accuracy") for line in lines) == 1
    assert {"best.npz", "checkpoint.npz", "metrics.json"} <= set(os.listdir(out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["ranks"] for r in metrics["history"]] == [2, 2]
    assert metrics["test"]["acc"] > 0
    # the test metrics cover the whole held-out set once: the same as one process on the model
    from fastnet.train import load_model

    _, info = load_model(out / "checkpoint.npz")
    assert info["epoch"] == 2

    for n, epochs_total in ((3, 3), (1, 4)):
        proc = launch(n, ["-m", "fastnet", "train", "--epochs", str(epochs_total),
                          "--no-progress", "--resume", str(out)], 240)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"resumed from {out / 'checkpoint.npz'} after epoch {epochs_total - 1}" in proc.stdout
        done = [line for line in proc.stdout.splitlines() if line.startswith("epoch")]
        assert len(done) == 1 and done[0].startswith(f"epoch   {epochs_total}/{epochs_total}")
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert [r.get("ranks", 1) for r in history] == [2, 2, 3, 1]


def test_cli_test_metrics_cover_the_whole_set(tmp_path):
    """The same checkpoint evaluated by 3 ranks (through the Trainer's split evaluation)
    and by one process give the same test metrics."""
    out = tmp_path / "run"
    proc = _train(3, out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    reported = json.loads((out / "metrics.json").read_text())["test"]
    proc = launch(1, ["-m", "fastnet", "evaluate", "--checkpoint", str(out / "checkpoint.npz")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    acc = float(proc.stdout.split("test accuracy: ")[1].split("%")[0])
    assert abs(acc - 100 * reported["acc"]) < 0.01


def test_ctrl_c_stops_every_rank_and_keeps_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    cmd = [MPIEXEC, "-n", "2", sys.executable, "-m", "fastnet", "train", "--epochs", "1000",
           "--no-progress", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint.npz").exists() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        assert (out / "checkpoint.npz").exists()
        time.sleep(1.0)  # a few epochs more, one of them probably mid-write
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the launcher
        proc.communicate(timeout=10)
        assert time.monotonic() - sent < 10
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode != 0
    time.sleep(0.5)
    left = subprocess.run(["pgrep", "-f", f"--out {out}"], capture_output=True, text=True)
    assert left.stdout.strip() == "", "a rank outlived the job"
    from fastnet.train import load_model

    _, info = load_model(out / "checkpoint.npz")  # intact: it loads
    assert info["epoch"] >= 1


@pytest.mark.cuda
def test_cuda_model_in_the_simulator(tmp_path):
    """DDP of a CUDA model (the simulator): through host buffers, and through CUDA buffers
    as with a CUDA-aware MPI; both the one-process result."""
    ref, _ = worker(1, "cuda", tmp_path / "one", NUMBA_ENABLE_CUDASIM="1")
    for aware in ("0", "1"):
        got, meta = worker(2, "cuda", tmp_path / f"aware{aware}", 300,
                           NUMBA_ENABLE_CUDASIM="1", FASTNET_MPI_CUDA_AWARE=aware)
        assert meta["cuda_aware"] is (aware == "1")
        for opt in ("sgd", "adam"):
            errors = relative_errors(ref, got, f"tiny-{opt}-float64")
            assert max(errors.values()) <= 1e-10, errors
