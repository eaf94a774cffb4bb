"""The README's Python examples run as written (the CUDA one where CUDA runs: marked cuda)."""
import pathlib
import re

import numpy as np
import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_example_runs(tmp_path, monkeypatch):
    blocks = [b for b in python_blocks() if '.to("cuda")' not in b]  # test_readme_cuda_example_runs
    assert blocks
    monkeypatch.chdir(tmp_path)
    namespaces = []
    for code in blocks:
        namespaces.append({})
        exec(compile(code, str(README), "exec"), namespaces[-1])
    assert (tmp_path / "model.npz").exists()
    assert namespaces[0]["loss"] < 0.5  # 100 steps on one batch of 32
    # the Training section's fit (the distributed example's keeps no history)
    trained = [ns for ns in namespaces if "trainer" in ns and "history" in ns]
    assert len(trained) == 1 and trained[0]["history"][-1]["val_acc"] > 0.9
    assert (tmp_path / "run" / "checkpoint.npz").exists() and (tmp_path / "run" / "best.npz").exists()
    (distributed,) = [ns for ns in namespaces if "dist" in ns]  # Beyond one machine, 1 rank
    assert distributed["trainer"].epoch == 2 and distributed["dist"].world_size() == 1


@pytest.mark.cuda
def test_readme_cuda_example_runs(capsys):
    (code,) = [b for b in python_blocks() if '.to("cuda")' in b]
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.split()
    assert printed[0] == "True" and np.isfinite(float(printed[-1]))
