"""``ddpipe bench store`` runs end to end at a tiny shape (no timing assertions)."""

import json
import os

import numpy as np
import pytest

from ddpipe.cli import main
from ddpipe.errors import DDPipeError

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


def test_bench_store_units_are_pipelines_schedule(tmp_path, capsys):
    """The stores the bench measures hold ddpipe's own relabel schedule (no third crop/CutMix
    implementation), with the spec's augmentation record saying which."""
    from dataclasses import replace

    from ddpipe.bench.store import PRESETS, Config, run
    from ddpipe.labelstore import open_store

    cfg = Config(preset=("tiny-ipc50",), epochs=1, codec=("fp16",), keep=("1",), keep_stores=True, workers=1,
                 workdir=str(tmp_path / "work"), results_dir=str(tmp_path / "res"), sre2l_mb=0.5, repeats=1,
                 seq_samples=1000, random_units=5, seed=3)
    assert cfg.keep == (1.0,) and cfg.preset == ("tiny-ipc50",)
    assert run(cfg) == 0
    capsys.readouterr()
    (store,) = [os.path.join(r, d) for r, ds, _ in os.walk(tmp_path / "work") for d in ds if d.endswith(".zarr")]
    reader = open_store(store)
    sched = replace(PRESETS["tiny-ipc50"], epochs=1).relabel_schedule(3)
    assert reader.spec.augmentation == sched.config.to_dict() and reader.spec.seed == 3
    for u in (0, 77, reader.num_units - 1):
        got = reader.read_unit(u)
        want = sched.unit(got.epoch, got.batch)
        for f in ("sample_ids", "crops", "flips", "mix_perm", "mix_box"):
            np.testing.assert_array_equal(getattr(got, f), getattr(want, f))


def test_bench_store_config_names_the_bad_field():
    from ddpipe.bench.store import Config

    with pytest.raises(DDPipeError, match="keep"):
        Config(keep=("2",))
    with pytest.raises(DDPipeError, match="k must be"):
        Config(preset=("tiny-ipc50",), k=500)
    with pytest.raises(DDPipeError, match="workers"):
        Config(workers=0)


SIDE_FIELDS = ["preset", "num_classes", "k", "keep", "layout", "codec", "bytes", "bytes_per_sample_epoch",
               "max_prob_error", "random_samples_per_s"]


def test_bench_store_side_by_side_quick(tmp_path, capsys):
    """``--quick``: the same labels in ddpipe's format 3 and 4 and the anchors' layouts, side by side."""
    argv = ["bench", "store", "--quick", "--json", "--workdir", str(tmp_path / "work"), "--results-dir",
            str(tmp_path / "res"), "--repeats", "1", "--random-units", "5", "--sre2l-mb", "1"]
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    for r in rows:
        for f in SIDE_FIELDS:
            assert r[f] is not None, f
    cells = {(r["k"], r["keep"]) for r in rows}
    assert cells == {(10, 1.0), (10, 0.5), (50, 1.0), (50, 0.5)}
    for cell in cells:
        got = {(r["layout"], r["codec"], r["format"]): r for r in rows if (r["k"], r["keep"]) == cell}
        assert {lay for lay, _c, _f in got} == {"ddpipe", "lpqld", "tinyvit", "sre2l"}
        assert got[("ddpipe", "abs512", 4)]["max_prob_error"] <= 1 / 512
        assert got[("ddpipe", "fp16", 4)]["max_prob_error"] <= 2**-11
        assert got[("lpqld", "fp16 logits+int16", None)]["max_prob_error"] < 2e-3  # fp16 logits, exp'd
        # equal content: the quantised format-4 store is the smallest of the top-k layouts
        assert got[("ddpipe", "abs512", 4)]["bytes"] < got[("lpqld", "fp16 logits+int16", None)]["bytes"]
        assert got[("sre2l", "fp16 logits", None)]["bytes_per_sample_epoch"] > got[("lpqld", "fp16 logits+int16", None)]["bytes_per_sample_epoch"]
    assert not os.listdir(tmp_path / "work")
