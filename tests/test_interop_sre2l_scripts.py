"""SRe2L's own, unmodified relabel and train_FKD.py scripts around ddpipe import/export.

Runs ``ddpipe.bench.sre2l_roundtrip`` (see its docstring for the CPU shims) when an SRe2L checkout is
found: ``$DDPIPE_SRE2L_REPO`` or /work/.mirror/VILA-Lab+SRe2L/repo, a clone or a bare git directory.
Skipped otherwise (CI has no network to fetch it).
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from ddpipe.bench import sre2l_roundtrip as rt

REPO = rt.find_repo()
needs_repo = pytest.mark.skipif(
    REPO is None,
    reason=f"no SRe2L checkout (set ${rt.REPO_ENV} to a clone of github.com/VILA-Lab/SRe2L, or a bare git dir; "
           f"default {rt.DEFAULT_REPO})",
)


def test_find_repo_refuses_a_folder_without_the_scripts(tmp_path):
    assert rt.find_repo(str(tmp_path)) is None
    assert rt.find_repo(str(tmp_path / "missing")) is None


def test_the_module_does_not_import_torch_at_import():
    import subprocess

    code = "import sys; import ddpipe.bench.sre2l_roundtrip; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


@needs_repo
@pytest.mark.slow
def test_their_relabel_imports_bit_for_bit_and_the_export_trains_identically(tmp_path):
    cfg = rt.Config(sre2l_repo=REPO, epochs=2, workdir=str(tmp_path / "work"), results_dir=str(tmp_path / "res"))
    assert rt.run(cfg) == 0
    (name,) = os.listdir(tmp_path / "res")
    res = json.load(open(tmp_path / "res" / name))
    # their files ran unmodified: the recorded hashes are of the files that ran
    assert set(res["sre2l"]["sha256"]) == set(rt.THEIR_FILES)
    # 1. every field of the import equals torch.load of their files (and the rows' images their sampler's)
    cmp = res["import"]["comparison"]
    assert cmp["identical"] and cmp["mismatches"] == [] and cmp["files"] == 2 * 5
    assert res["import"]["result"]["lossy"] == []
    # 2. the export is the original folder, element for element
    assert res["export"]["identical"] and res["export"]["differing"] == []
    # 3. train_FKD.py: the same metrics and the same checkpoint on both folders ...
    a, b = res["train_original"], res["train_export"]
    assert res["training_identical"]
    assert a["checkpoint_sha256"] == b["checkpoint_sha256"] and a["wandb_log"] == b["wandb_log"]
    assert len(a["wandb_log"]) == 2 and a["val_top1"] is not None
    # ... and a different one with a single logit moved by one ulp: the comparison can see a difference
    assert res["control"]["differs"]
