"""``ddpipe bench scale --quick``: every phase runs, rows have the issue's fields, the two-rank store
equals the one-rank store. No timings are asserted (benchmarks report them)."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("torch")

FIELDS = {"preset", "fraction", "epochs", "phase", "backend", "ranks", "samples_per_s", "peak_rss_mb",
          "open_source_s", "bytes_per_sample_epoch", "overhead_share", "image_size", "image_format",
          "peak_rss_total_mb"}


@pytest.mark.slow
def test_quick_scale_rehearsal(tmp_path, capsys):
    from ddpipe.bench import load_benchmark

    scale = load_benchmark("scale")
    cfg = scale.Config(quick=True, json=True, workdir=str(tmp_path / "work"), results_dir=str(tmp_path / "results"),
                       image_size=64, image_format="jpeg")
    assert scale.run(cfg) == 0
    rows = json.loads(capsys.readouterr().out)
    assert all(FIELDS <= set(r) for r in rows)
    assert all(r["image_format"] == "jpeg" and r["image_size"] == 64 and r["image_bytes_mean"] > 0 for r in rows)
    assert all(r["peak_rss_total_mb"] >= r["peak_rss_mb"] for r in rows)
    two_rank = [r for r in rows if r["ranks"] == 2]
    assert all(r["peak_rss_total_mb"] >= sum(r["peak_rss_ranks_mb"]) for r in two_rank)
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


def test_jpeg_images_and_the_rss_of_a_process_tree(tmp_path):
    import subprocess
    import sys

    from ddpipe.bench import load_benchmark
    from ddpipe.pipeline import open_source

    scale = load_benchmark("scale")
    folder, shards, mean = scale.make_images(str(tmp_path / "img"), 24, 3, 64, 0, "jpeg", 85)
    a, b = open_source(folder), open_source(shards)
    assert len(a) == len(b) == 24 and a.names[0].endswith(".jpg") and mean > 1000
    assert (a.labels == b.labels).all() and bytes(a.item(5)) == bytes(b.item(5))
    assert scale.make_images(str(tmp_path / "img"), 24, 3, 64, 0, "jpeg", 85)[2] == mean  # reused
    cfg = scale.Config(fraction=1.0, sweep=(8, 1), epochs=(1,), image_size=224, image_format="jpeg")
    assert scale._command(cfg).endswith("--image-size 224 --image-format jpeg --jpeg-quality 90")
    with pytest.raises(Exception, match="image_format"):
        scale.Config(image_format="webp")
    code = ("import subprocess, sys, time; b = bytearray(60 * 2**20); "
            "c = subprocess.Popen([sys.executable, '-c', 'b = bytearray(40 * 2**20); import time; time.sleep(1.5)']); "
            "c.wait()")
    proc = subprocess.Popen([sys.executable, "-c", code])
    from ddpipe.bench.common import wait_sampling_rss

    one, total = wait_sampling_rss(proc, every=0.05)
    assert proc.returncode == 0 and one > 60e6 and total > 100e6, (one, total)
