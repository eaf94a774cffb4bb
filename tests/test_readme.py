"""The README's Python example runs as written."""
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_example_runs(tmp_path, monkeypatch):
    blocks = [b for b in python_blocks() if '.to("cuda")' not in b]  # tests/cuda runs those
    assert blocks
    monkeypatch.chdir(tmp_path)
    namespaces = []
    for code in blocks:
        namespaces.append({})
        exec(compile(code, str(README), "exec"), namespaces[-1])
    assert (tmp_path / "model.npz").exists()
    assert namespaces[0]["loss"] < 0.5  # 100 steps on one batch of 32
    trained = [ns for ns in namespaces if "trainer" in ns]  # the Training section's fit
    assert len(trained) == 1 and trained[0]["history"][-1]["val_acc"] > 0.9
    assert (tmp_path / "run" / "checkpoint.npz").exists() and (tmp_path / "run" / "best.npz").exists()
