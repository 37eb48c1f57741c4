"""``ddpipe bench logits``: the label statistics, the abs512 store rows, and a tiny end-to-end run
(a Fashion-MNIST teacher trained for seconds, 2 relabel epochs; no timing assertions)."""

import json
import math
import os

import numpy as np
import pytest

from ddpipe.bench import logit_profile as lp
from ddpipe.cli import main


def _random_probs(rng, s, e, c, sharp=3.0):
    z = sharp * rng.standard_normal((s, e, c))
    p = np.exp(z - z.max(axis=2, keepdims=True))
    return p / p.sum(axis=2, keepdims=True)


def test_label_stats_known_values():
    s, e, c = 4, 3, 10
    labels = np.arange(s)
    uniform = np.full((s, e, c), 1.0 / c)
    st = lp.label_stats(uniform, labels)
    assert st["entropy"] == pytest.approx(math.log(c))
    assert st["mass_3"] == pytest.approx(0.3) and st["profile_sum"] == pytest.approx(1.0)
    # One-hot on the own class, every epoch alike: top-k sets never change.
    onehot = np.zeros((s, e, c))
    onehot[np.arange(s), :, labels] = 1.0
    st = lp.label_stats(onehot, labels)
    assert st["entropy"] == pytest.approx(0.0) and st["mass_1"] == 1.0 and st["top1_is_class"] == 1.0
    assert st["jaccard_1"] == 1.0 and st["distinct_1"] == 1.0
    # A top-1 that moves every epoch: Jaccard 0, as many distinct classes as epochs.
    moving = np.zeros((s, e, c))
    for ep in range(e):
        moving[np.arange(s), ep, (labels + ep) % c] = 1.0
    st = lp.label_stats(moving, labels)
    assert st["jaccard_1"] == 0.0 and st["distinct_1"] == e
    assert st["top1_is_class"] == pytest.approx(1.0 / e)


def test_label_stats_ranges():
    rng = np.random.default_rng(0)
    probs = _random_probs(rng, 20, 5, 10)
    st = lp.label_stats(probs, np.arange(20) // 2)
    prof = np.asarray(st["profile"])
    assert np.all(np.diff(prof) <= 0) and prof.sum() == pytest.approx(1.0)
    assert st["mass_1"] <= st["mass_3"] <= st["mass_5"] <= 1.0
    for k in lp.SET_K:
        assert 0.0 <= st[f"jaccard_{k}"] <= 1.0
        assert k <= st[f"distinct_{k}"] <= min(10, k * 5)
    assert lp.fit_loss(st, st) == 0.0
    other = lp.label_stats(_random_probs(rng, 20, 5, 10, sharp=0.5), np.arange(20) // 2)
    assert lp.fit_loss(other, st) > 0.0


def test_store_row_model_labels_round_trip(tmp_path):
    """The abs512 format-4 store of model labels: positive bytes, same classes back, values within 1/512."""
    from ddpipe.bench.teacher_model import square_schedule

    sched = square_schedule(40, 28, 20, 2, seed=1, output_size=(28, 28))
    spec = sched.store_spec(10, 10, value_codec="fp32", temperature=1.0)
    units = [sched.unit(e, b) for e in range(2) for b in range(2)]
    topks = lp.model_topks(units, 10, 4, 0)
    for idx, p in topks:
        assert np.all(np.diff(p, axis=1) <= 0) and np.allclose(p.sum(axis=1), 1.0, atol=1e-5)
    rows = [lp.store_row("model", units, topks, k, spec, 28, str(tmp_path)) for k in (3, 10)]
    for r in rows:
        assert r["roundtrip"] and r["samples"] == 80
        assert 0 < r["label_bytes_per_sample_epoch"] < r["data_bytes_per_sample_epoch"] < r["bytes_per_sample_epoch"]
        assert r["max_prob_error"] <= lp.VALUE_BOUND + 1e-7
    assert rows[0]["label_bytes_per_sample_epoch"] < rows[1]["label_bytes_per_sample_epoch"]
    assert not os.listdir(tmp_path), "the stores are deleted after measuring"


@pytest.mark.slow
def test_bench_logits_quick(tmp_path, capsys):
    work, res = tmp_path / "work", tmp_path / "results"
    argv = ["bench", "logits", "--quick", "--json", "--workdir", str(work), "--results-dir", str(res),
            "--store-k", "3,10", "--threads", "2"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["benchmark"] == "logits" and out["quick"]
    rel = out["relabel"]
    assert rel["num_classes"] == 10 and rel["epochs"] == 2 and rel["num_samples"] == 200
    stats = {s["source"]: s for s in out["stats"]}
    assert set(stats) == {"real", "model-default", "model-fitted"}
    for s in stats.values():
        prof = np.asarray(s["profile"])
        assert len(prof) == 10 and np.all(np.diff(prof) <= 1e-12) and prof.sum() <= 1.0 + 1e-6
        assert 0.0 < s["entropy"] <= math.log(10) + 1e-9
        assert s["mass_1"] <= s["mass_3"] <= s["mass_5"] <= 1.0 + 1e-9
        for k in lp.SET_K:
            assert 0.0 <= s[f"jaccard_{k}"] <= 1.0 and k <= s[f"distinct_{k}"] <= min(10, 2 * k)
    cal = out["calibration"]
    assert set(cal["fitted"]) == set(lp.FIT_GRID) and cal["loss_fitted"] <= cal["loss_default"]
    assert stats["model-fitted"]["fit_loss"] == pytest.approx(cal["loss_fitted"])
    stores = out["stores"]
    assert {(r["source"], r["k"]) for r in stores} == {(s, k) for s in stats for k in (3, 10)}
    for r in stores:
        assert r["roundtrip"] and r["bytes"] > 0 and r["label_bytes_per_sample_epoch"] > 0
        assert r["samples"] == 200 * 2 and r["max_prob_error"] <= lp.VALUE_BOUND + 1e-7
        if r["source"] == "real":
            assert r["label_vs_real"] == 1.0
    assert out["teacher"]["computed_now"] and 0 < out["teacher"]["top1"] <= 100
    assert [p for p in os.listdir(res) if p.startswith("logits-") and p.endswith(".json")]
    assert not [p for p in os.listdir(work) if p.endswith(".zarr")], "stores are deleted after measuring"


def test_calibrated_is_the_named_set_and_leaves_the_defaults():
    from dataclasses import fields

    from ddpipe.bench.teacher_model import FASHION_MNIST_FIT, TeacherModel

    assert set(FASHION_MNIST_FIT) <= set(lp.FIT_GRID)
    for name, v in FASHION_MNIST_FIT.items():
        assert v in lp.FIT_GRID[name], "the named set is a point of the bench's grid"
    cal, default = TeacherModel.calibrated(10, 10, seed=2), TeacherModel(10, 10, seed=2)
    for f in fields(TeacherModel):
        want = FASHION_MNIST_FIT.get(f.name, getattr(default, f.name))
        assert getattr(cal, f.name) == want, f.name
    assert default.margin == 11.0 and default.tail_sigma == 1.0 and default.affinity == 5.0  # defaults untouched
    assert TeacherModel.calibrated(10, 10, tail_sigma=0.5).tail_sigma == 0.5  # overrides win
