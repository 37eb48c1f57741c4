"""``ddpipe bench sre2l-compare --quick``: SRe2L's relabel and train_FKD.py against ddpipe's, timed alike.

Runs when an SRe2L checkout is found (``$DDPIPE_SRE2L_REPO`` or /work/.mirror/VILA-Lab+SRe2L/repo, a
clone or a bare git directory); skipped otherwise. It checks the rows' shape and that both systems
did the same work, never the times.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ddpipe.bench import sre2l_compare as sc
from ddpipe.bench import sre2l_roundtrip as rt

REPO = rt.find_repo()
needs_repo = pytest.mark.skipif(
    REPO is None,
    reason=f"no SRe2L checkout (set ${rt.REPO_ENV} to a clone of github.com/VILA-Lab/SRe2L, or a bare git dir; "
           f"default {rt.DEFAULT_REPO})",
)


def test_the_module_does_not_import_torch_at_import():
    code = "import sys; import ddpipe.bench.sre2l_compare; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_a_batch_train_fkd_cannot_split_is_refused_in_one_line():
    from ddpipe.errors import DDPipeError

    with pytest.raises(DDPipeError, match="must be a multiple of grad_accum"):
        sc.Config(batch_size=5, grad_accum=2)


@needs_repo
@pytest.mark.slow
def test_quick_rows_have_the_keys_and_both_systems_count_the_same_samples(tmp_path):
    cfg = sc.Config(sre2l_repo=REPO, quick=True, workdir=str(tmp_path / "work"), results_dir=str(tmp_path / "res"))
    assert sc.run(cfg) == 0
    (name,) = os.listdir(tmp_path / "res")
    assert name.startswith("sre2l-compare-") and name.endswith(".json")
    res = json.load(open(tmp_path / "res" / name))
    rows = res["rows"]
    for row in rows:
        assert set(sc.ROW_KEYS) <= set(row), row
        assert row["phase"] in ("relabel", "train") and row["system"] in ("sre2l", "ddpipe")
        assert row["wall_s"] > 0 and row["model_s"] > 0 and row["peak_rss_mb"] > 0 and row["bytes_written"] > 0
    images = sc.QUICK["classes"] * sc.QUICK["per_class"] * sc.QUICK["epochs"]
    for phase in ("relabel", "train"):
        full = [r for r in rows if r["phase"] == phase and not r["keep"]]
        # SRe2L and ddpipe, each loader, 0 and 2 workers: every one saw every image of every epoch
        assert {(r["system"], r["workers"]) for r in full} == {(s, w) for s in ("sre2l", "ddpipe") for w in sc.WORKERS}
        assert {r["samples"] for r in full} == {images}, [(r["system"], r["loader"], r["samples"]) for r in full]
    pruned = [r for r in rows if r["keep"]]
    assert [r["phase"] for r in pruned] == ["relabel", "train"] and all(r["system"] == "ddpipe" for r in pruned)
    assert pruned[0]["samples"] < images  # the teacher computed only the kept units
    # the fidelity check re-ran the teacher on ddpipe's store: the stored values exactly
    assert res["fidelity"]["ok"] and res["fidelity"]["exact"]["ok"]
    assert set(res["targets"]) == {"relabel/torch", "relabel/batched", "train/torch", "train/batched"}
