"""The README's Python example runs as written."""
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        namespace = {}
        exec(compile(code, str(README), "exec"), namespace)
    assert (tmp_path / "model.npz").exists()
    assert namespace["loss"] < 0.5  # 100 steps on one batch of 32
