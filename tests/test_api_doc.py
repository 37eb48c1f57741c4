"""docs/api.md's Python example runs as written: squeeze -> recover -> relabel -> prune -> train -> validate on the
digits, through the public API only."""

import os
import re
import tempfile

import pytest

DOC = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "api.md")


def _example() -> str:
    text = open(DOC, encoding="utf-8").read()
    section = text.split("## The whole chain", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "docs/api.md has no python block under 'The whole chain'"
    return blocks[0]


def test_the_example_uses_only_the_public_api():
    code = _example()
    imports = re.findall(r"^(?:from|import) (\S+)", code, flags=re.M)
    for mod in imports:
        assert not any(part.startswith("_") for part in mod.split(".")), mod
    assert "ddpipe.cli" not in code and "argparse" not in code


def test_the_example_runs(tmp_path, monkeypatch, one_torch_thread, capsys):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    namespace = {"__name__": "api_example"}
    exec(compile(_example(), DOC, "exec"), namespace)
    out = capsys.readouterr().out
    assert "squeeze complete" in out and "student top-1 on the real digits test set" in out
    root = namespace["root"]
    assert root.startswith(str(tmp_path))
    for sub in ("teacher", "images", "labels.zarr", "pruned.zarr", "student"):
        assert os.path.exists(os.path.join(root, sub, "results.json")), sub
