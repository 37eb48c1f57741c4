"""``ddpipe bench scale --quick``: every phase runs, rows have the issue's fields, the two-rank store
equals the one-rank store. No timings are asserted (benchmarks report them)."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("torch")

FIELDS = {"preset", "fraction", "epochs", "phase", "backend", "ranks", "samples_per_s", "peak_rss_mb",
          "open_source_s", "bytes_per_sample_epoch", "overhead_share"}


@pytest.mark.slow
def test_quick_scale_rehearsal(tmp_path, capsys):
    from ddpipe.bench import load_benchmark

    scale = load_benchmark("scale")
    cfg = scale.Config(quick=True, json=True, workdir=str(tmp_path / "work"), results_dir=str(tmp_path / "results"))
    assert scale.run(cfg) == 0
    rows = json.loads(capsys.readouterr().out)
    assert all(FIELDS <= set(r) for r in rows)
    phases = {(r["phase"], r["backend"], r["ranks"], r["epochs"]) for r in rows}
    assert ("relabel", "torch", 2, 1) in phases and ("replay", "torch", 1, 2) in phases
    assert len({r["images"] for r in rows}) == 2  # F/2 and F
    two = [r for r in rows if r["ranks"] == 2]
    assert two and all(r["arrays_equal_1rank"] for r in two)
    for r in rows:
        assert r["samples_per_s"] > 0 and r["peak_rss_mb"] > 0 and r["bytes_per_sample_epoch"] > 0
        if r["phase"] == "relabel" and r["ranks"] == 1:
            assert 0 <= r["overhead_share"] <= 1
    written = os.listdir(tmp_path / "results")
    assert any(n.endswith(".json") for n in written)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert any(n.endswith(".png") for n in written)


def test_sweep_phases_and_targets_choose_the_rows():
    from ddpipe.bench import load_benchmark
    from ddpipe.errors import DDPipeError

    scale = load_benchmark("scale")
    cfg = scale.Config(fraction=1.0, sweep=(8, 1), epochs=(1,), targets=("dense",))
    assert scale._command(cfg) == ("ddpipe bench scale --preset imagenet21k-ipc20 --fraction 1 --sweep 8 --sweep 1 "
                                   "--epochs 1 --targets dense")
    assert scale.Config(quick=True).sweep == (2, 1)
    for bad in ({"sweep": (0,)}, {"phases": ("train",)}, {"targets": ()}, {"targets": ("logits",)}):
        with pytest.raises(DDPipeError):
            scale.Config(**bad)
