"""``ddpipe bench store`` runs end to end at a tiny shape (no timing assertions)."""

import json
import os

import pytest

from ddpipe.cli import main

FIELDS = [
    "preset", "k", "codec", "keep", "bytes", "sre2l_bytes", "ratio",
    "seq_samples_per_s", "random_samples_per_s", "sre2l_samples_per_s",
]


def test_bench_store_tiny(tmp_path, capsys):
    work, res = tmp_path / "work", tmp_path / "results"
    argv = [
        "bench", "store", "--preset", "tiny-ipc50", "--epochs", "2", "--json", "--workdir", str(work),
        "--results-dir", str(res), "--sre2l-mb", "1", "--repeats", "1", "--seq-samples", "20000", "--random-units", "20",
    ]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    rows = out["rows"]
    assert {(r["codec"], r["keep"]) for r in rows} == {("fp16", 1.0), ("uint8", 1.0), ("fp16", 1 / 40), ("uint8", 1 / 40)}
    for r in rows:
        for f in FIELDS:
            assert r[f] is not None, f
        assert r["preset"] == "tiny-ipc50" and r["k"] == 10
        assert 0 < r["bytes"] < r["sre2l_bytes"]
        assert r["ratio"] == pytest.approx(r["sre2l_bytes"] / r["bytes"])
    full = {r["codec"]: r["units"] for r in rows if r["keep"] == 1.0}
    for r in rows:
        if r["keep"] < 1:
            assert r["units"] < full[r["codec"]]
    assert "teacher_model" in out["labels"]
    assert [p for p in os.listdir(res) if p.endswith(".json")]
    assert not os.listdir(work), "stores are deleted unless --keep-stores"


def test_bench_store_unknown_preset(tmp_path, capsys):
    assert main(["bench", "store", "--preset", "nope", "--workdir", str(tmp_path)]) == 2
    assert "unknown store preset" in capsys.readouterr().err
