"""``ddpipe bench origin``: each family's own recover code against ddpipe's recipes on identical inputs.

The comparisons run when a checkout of the family's repository is found (``$DDPIPE_SRE2L_REPO``,
``$DDPIPE_LPLD_REPO``, ``$DDPIPE_GVBSM_REPO``, ``$DDPIPE_DELT_REPO``, or the mirrors under /work/.mirror, a
clone or a bare git directory; G-VBSM's code also needs einops, DELT's pandas) and are skipped with the
reason otherwise. Each family is paired with a control that changes ddpipe's recipe and must be reported
as a difference.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ddpipe.bench import origin as bo
from ddpipe.errors import DDPipeError

REPO = {name: bo.find_checkout(a)[0] for name, a in bo.ADAPTERS.items()}


def needs(method: str):
    adapter = bo.ADAPTERS[method]
    repo, reason = bo.find_checkout(adapter)
    return pytest.mark.skipif(repo is None, reason=f"{reason} (set ${adapter.repo_env} to a clone of "
                                                   f"github.com/{adapter.origin}, or a bare git dir)")


def _check(method: str, tmp_path, **fields):
    config = bo.Config(method=method, steps=2, batch_size=4, **fields)
    return bo.check_method(bo.ADAPTERS[method], REPO[method], config, str(tmp_path))


def test_the_module_does_not_import_torch_at_import():
    code = "import sys; import ddpipe.bench.origin; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_registered_behind_ddpipe_bench():
    from ddpipe.bench import list_benchmarks, load_benchmark

    assert "origin" in list_benchmarks()
    assert load_benchmark("origin") is bo
    assert {"sre2l", "cda", "sre2l.tiny", "cda.tiny", "cda.in21k", "lpld", "lpld.tiny", "gvbsm", "delt",
            "delt.rounds", "rded"} <= set(bo.list_adapters())


def test_an_unknown_method_is_refused():
    with pytest.raises(DDPipeError, match="no origin adapter"):
        bo.Config(method="sre2l,nope")


def test_a_missing_or_foreign_checkout_is_skipped_with_its_reason(tmp_path, capsys):
    adapter = bo.ADAPTERS["sre2l"]
    repo, reason = bo.find_checkout(adapter, str(tmp_path / "absent"))
    assert repo is None and "not a directory" in reason
    (tmp_path / "other").mkdir()
    repo, reason = bo.find_checkout(adapter, str(tmp_path / "other"))
    assert repo is None and "not a VILA-Lab/SRe2L tree" in reason

    results = tmp_path / "results"
    rc = bo.run(bo.Config(repo=str(tmp_path / "other"), json=True, results_dir=str(results)))
    assert rc == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["rows"] == [] and [s["method"] for s in payload["skipped"]] == list(bo.ADAPTERS)
    assert all(f"not a {bo.ADAPTERS[s['method']].origin} tree" in s["reason"] or "not installed" in s["reason"]
               for s in payload["skipped"])
    assert not results.exists()  # nothing compared, nothing written


def test_overrides_reach_ddpipe_recipe_only():
    from ddpipe.synth import create_method

    cfg = create_method("sre2l.in1k")
    out = bo.apply_override(cfg, "r_bn=0.02, eps=1e-6,jitter=4,flip=false")
    assert out.loss == {"ce": 1.0, "bn_stats": 0.02} and cfg.loss["bn_stats"] == 0.01
    assert (out.eps, out.jitter, out.flip) == (1e-6, 4, False)
    with pytest.raises(DDPipeError, match="no field"):
        bo.apply_override(cfg, "nope=1")
    with pytest.raises(DDPipeError, match="NAME=VALUE"):
        bo.apply_override(cfg, "r_bn")


def test_hyperparameters_are_compared_field_by_field():
    from ddpipe.synth import create_method

    adapter = bo.ADAPTERS["cda"]
    cfg = create_method(adapter.recipe)
    theirs = {"lr": 0.25, "iteration": 4000, "jitter": 32, "r_bn": 0.01, "first_bn_multiplier": 10.0, "milestone": 1.0}
    assert bo.compare_hparams(adapter, cfg, theirs) == []
    bad = bo.compare_hparams(adapter, cfg, {**theirs, "milestone": 0.5, "r_bn": 0.05})
    assert sorted(m["ddpipe"] for m in bad) == ["milestone", "r_bn"]


@pytest.mark.parametrize("method", ["sre2l", "cda", "sre2l.tiny", "cda.tiny", "cda.in21k"])
def test_ddpipe_matches_its_origin_code(method, tmp_path):
    if REPO[method] is None:
        pytest.skip(bo.find_checkout(bo.ADAPTERS[method])[1])
    row = _check(method, tmp_path)
    assert row["hparams"] == "equal" and row["jitter_bounds_equal"]
    assert row["scale_max_abs_diff"] <= 1e-9
    assert row["input_max_abs_diff"] == 0.0  # the same crop, flip and jitter give the same batch, bit for bit
    assert row["loss_abs_diff"] <= 1e-5 * abs(row["their_loss"])
    assert row["grad_max_abs"] > 0 and row["grad_max_abs_diff"] <= 1e-5 * row["grad_max_abs"]
    assert row["step1_diff"] <= row["step1_bound"]
    # later steps: within float tolerance, or no further than a rounding-sized gradient change alone takes them
    assert row["images_max_abs_diff"] <= max(bo.IMAGE_TOL, row["images_floor"])
    assert row["match"]
    assert len(row["commit"]) == 40 and set(row["sha256"]) == set(bo.ADAPTERS[method].files)
    assert {"what", "where", "size"} <= set(row["deliberate"][0])


@needs("sre2l")
def test_a_different_r_bn_is_caught(tmp_path):
    row = _check("sre2l", tmp_path, ddpipe_override="r_bn=0.02")
    assert not row["match"]
    assert row["hparam_mismatches"] == [{"ddpipe": "r_bn", "value": 0.02, "theirs": "r_bn", "their_value": 0.01}]
    assert row["loss_abs_diff"] > 1e-3  # the statistic term is weighted differently, not just a label


@needs("sre2l")
def test_a_difference_outside_the_compared_hyperparameters_is_caught_in_the_numbers(tmp_path):
    # Adam's eps is hard-coded in their file (not an argparse flag): only the images can tell
    row = _check("sre2l", tmp_path, ddpipe_override="eps=1e-6")
    assert row["hparams"] == "equal" and row["loss_abs_diff"] <= 1e-5 * abs(row["their_loss"])
    assert row["step1_diff"] > row["step1_bound"] and not row["match"]


@needs("cda.tiny")
def test_two_sided_jitter_is_caught(tmp_path):
    # ddpipe's cda.tiny had SRe2L's two-sided Tiny jitter; CDA's recover_cda_tiny.py draws randint(0, 4)
    row = _check("cda.tiny", tmp_path, ddpipe_override="jitter_two_sided=true")
    assert row["hparams"] == "equal" and not row["jitter_bounds_equal"] and not row["match"]


@needs("cda")
def test_cda_crop_curriculum_is_compared(tmp_path):
    row = _check("cda", tmp_path, ddpipe_override="milestone=0.5,min_scale=0.5")
    assert not row["match"]
    assert row["scale_max_abs_diff"] > 1e-9  # the crop scale range ddpipe asked for differs from theirs
    assert [m["ddpipe"] for m in row["hparam_mismatches"]] == ["milestone"]


@needs("sre2l")
def test_cli_json_rows_and_results_file(tmp_path):
    results = tmp_path / "results"
    out = subprocess.run(
        [sys.executable, "-m", "ddpipe", "bench", "origin", "--method", "sre2l", "--steps", "1", "--batch-size", "2",
         "--json", "--results-dir", str(results)],
        capture_output=True, text=True, env={**os.environ, "DDPIPE_SRE2L_REPO": REPO["sre2l"]}, timeout=300)
    assert out.returncode == 0, out.stderr
    payload = json.loads(out.stdout)
    (row,) = payload["rows"]
    for key in ("method", "repo", "commit", "steps", "loss_abs_diff", "grad_max_abs_diff", "images_max_abs_diff",
                "deliberate"):
        assert key in row
    assert row["method"] == "sre2l" and row["steps"] == 1 and payload["ok"]
    assert "loss |diff|" in out.stderr  # the table goes to stderr under --json
    assert len(list(results.glob("origin-*.json"))) == 1


# --- LPLD, G-VBSM, DELT ------------------------------------------------------------------------------------------
NEW = ["lpld", "lpld.tiny", pytest.param("gvbsm", marks=pytest.mark.slow), "delt", "delt.rounds"]


@pytest.mark.parametrize("method", NEW)
def test_the_other_families_match_their_origin_code(method, tmp_path):
    if REPO[method] is None:
        pytest.skip(bo.find_checkout(bo.ADAPTERS[method])[1])
    row = _check(method, tmp_path)
    assert row["hparams"] == "equal" and row["jitter_bounds_equal"] and row["scale_max_abs_diff"] <= 1e-9
    assert row["input_max_abs_diff"] == 0.0
    assert row["loss_abs_diff"] <= 1e-5 * abs(row["their_loss"])
    assert row["loss_max_abs_diff_all_steps"] <= 1e-5 * abs(row["their_loss"])
    assert row["grad_max_abs"] > 0 and row["grad_max_abs_diff"] <= 1e-5 * row["grad_max_abs"]
    assert row["step1_diff"] <= row["step1_bound"]
    assert row["images_max_abs_diff"] <= max(bo.IMAGE_TOL, row["images_floor"])
    assert row["match"] and len(row["commit"]) == 40 and set(row["sha256"]) == set(bo.ADAPTERS[method].files)
    if method == "gvbsm":  # their ConvFeatureHook and ddpipe's collect_conv_stats on the same images and teachers
        assert 0 < row["stats_max_abs_diff"] <= 1e-5 * row["stats_max_abs"]
        gap = [d for d in row["deliberate"] if "measured" in d and "statistics' data" in d["what"]]
        assert gap and gap[0]["measured"] > 1e-3  # their crop + flip pass would give other targets: reported
    if method.startswith("delt"):  # their rank + store_medium pick the same real images in the same order
        assert row["selection_equal"] and all(len(v) >= 3 for v in row["selection"].values())


@pytest.mark.parametrize("method", ["lpld", "lpld.tiny"])
def test_lpld_jitter_sidedness_is_caught(method, tmp_path):
    # their ImageNet script draws randint(0, 32), their Tiny script randint(-4, 4): ddpipe's recipes must follow each
    if REPO[method] is None:
        pytest.skip(bo.find_checkout(bo.ADAPTERS[method])[1])
    flipped = "false" if bo.ADAPTERS[method].recipe == "lpld.tiny" else "true"
    row = _check(method, tmp_path, ddpipe_override=f"jitter_two_sided={flipped}")
    assert row["hparams"] == "equal" and not row["jitter_bounds_equal"] and not row["match"]


@needs("lpld")
def test_lpld_matches_class_statistics_not_the_global_ones(tmp_path):
    # the same check against a teacher whose class buffers equal the global running statistics: the loss moves,
    # so the equality above rests on the class-wise targets
    row = _check("lpld", tmp_path)
    teacher = bo.class_bn_teacher(bo.make_teacher("tiny", 0), 0, 1000)
    import torch

    with torch.no_grad():
        for m in teacher.modules():
            if hasattr(m, "class_running_mean"):
                m.class_running_mean.copy_(m.running_mean.expand_as(m.class_running_mean))
                m.class_running_var.copy_(m.running_var.expand_as(m.class_running_var))
    from ddpipe.synth import create_method

    cfg = create_method("lpld.in1k", batch_size=4)
    side, _, _ = bo.run_ddpipe(cfg, teacher, 1, bo.ADAPTERS["lpld"])
    assert abs(side.loss - row["their_loss"]) > 1e-3


@needs("gvbsm")
@pytest.mark.slow
def test_gvbsm_patch_size_is_caught_in_the_numbers(tmp_path):
    # their 16 px patches are hard-coded (no flag): only the loss can tell
    row = _check("gvbsm", tmp_path, ddpipe_override="patch_size=8", floor=False)
    assert row["hparams"] == "equal" and row["loss_abs_diff"] > 1e-3 and not row["match"]
    assert row["stats_max_abs_diff"] == float("inf")  # the patch statistics have another shape


@needs("delt")
def test_delt_ranking_is_compared(tmp_path):
    row = _check("delt", tmp_path, ddpipe_override="init=top", floor=False)
    assert row["hparams"] == "equal" and row["selection_equal"] is False and not row["match"]


def test_repos_maps_methods_families_and_origins(tmp_path):
    config = bo.Config(repo="/r/all", repos="lpld.tiny=/r/tiny, delt=/r/delt, VILA-Lab/SRe2L=/r/sre2l")
    got = {m: config.repo_for(bo.ADAPTERS[m]) for m in ("lpld", "lpld.tiny", "delt.rounds", "cda.tiny", "gvbsm")}
    assert got == {"lpld": "/r/all", "lpld.tiny": "/r/tiny", "delt.rounds": "/r/delt", "cda.tiny": "/r/sre2l",
                   "gvbsm": "/r/all"}
    with pytest.raises(DDPipeError, match="KEY=PATH"):
        bo.Config(repos="lpld")
    with pytest.raises(DDPipeError, match="multiple of 2"):
        bo.check_method(bo.ADAPTERS["delt"], str(tmp_path), bo.Config(method="delt", batch_size=3), str(tmp_path))


# --- RDED: their patch scoring, selection and stitching -------------------------------------------------------
def _rded(tmp_path, **fields):
    config = bo.Config(method="rded", batch_size=2, **fields)
    return bo.check_rded(bo.ADAPTERS["rded"], REPO["rded"], config, str(tmp_path))


@needs("rded")
@pytest.mark.slow
def test_rded_matches_their_init_images(tmp_path, capsys):
    """Through ``run`` (the adapter's own check): the same scores for every candidate patch, the same kept
    patches and stitched images, their published settings equal to rded.in1k's."""
    rc = bo.run(bo.Config(method="rded", batch_size=2, json=True, results_dir=str(tmp_path / "results")))
    payload = json.loads(capsys.readouterr().out)
    (row,) = payload["rows"]
    assert rc == 0 and payload["ok"] and row["match"]
    for key in ("method", "repo", "commit", "steps", "loss_abs_diff", "grad_max_abs_diff", "images_max_abs_diff",
                "deliberate"):
        assert key in row
    assert row["hparams"] == "equal" and row["scale_max_abs_diff"] == 0.0 and row["crop_ratio_equal"]
    assert row["scores_max_abs"] > 0 and row["scores_max_abs_diff"] <= 1e-5 * row["scores_max_abs"]
    assert row["images_max_abs_diff"] <= bo.IMAGE_TOL and row["selection_equal"] and row["unused_draws"] == 0
    assert len(row["commit"]) == 40 and set(row["sha256"]) == set(bo.ADAPTERS["rded"].files)
    (rounding,) = [d for d in row["deliberate"] if "truncate" in d["what"]]
    assert rounding["measured"] == 1 and "1 uint8 levels" in rounding["size"]  # ddpipe rounds, theirs truncate


@needs("rded")
@pytest.mark.slow
def test_rded_controls_are_caught(tmp_path, monkeypatch):
    """Two controls that must fail: a crop scale of ddpipe's own (their code asks for RandomResizedCrop's 0.08),
    and ddpipe keeping each image's worst crop (same scores, other patches)."""
    row = _rded(tmp_path / "scale", ddpipe_override="min_scale=0.2")
    assert not row["match"] and row["scale_max_abs_diff"] == pytest.approx(0.12)
    import ddpipe.synth.rded as R

    plain = R.select_patches
    monkeypatch.setattr(R, "select_patches", lambda scores, keep: plain(-scores, keep))
    row = _rded(tmp_path / "select")
    assert row["scores_max_abs_diff"] == 0.0 and row["hparams"] == "equal"
    assert not row["selection_equal"] and row["images_max_abs_diff"] > 0.1 and not row["match"]
