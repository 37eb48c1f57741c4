"""The teacher-logit model behind the store benchmark and the demo: deterministic, well-formed top-k."""

import subprocess
import sys

import numpy as np
import pytest

from ddpipe.bench.teacher_model import TeacherModel, normal_cdf, normal_isf, square_schedule
from ddpipe.labelstore import softmax_at, top_k
from ddpipe.pipeline import Schedule, recipe


def _unit(num_samples=5000, batch=256, mix="none", epoch=1, b=2, seed=0):
    return square_schedule(num_samples, 224, batch, epochs=2, seed=seed, mix=mix).unit(epoch, b)


@pytest.mark.parametrize("mix", ["none", "cutmix"])
def test_deterministic_for_a_seed(mix):
    u = _unit(mix=mix)
    a = TeacherModel(1000, 5, seed=3).topk(u, 10)
    b = TeacherModel(1000, 5, seed=3).topk(_unit(mix=mix), 10)
    c = TeacherModel(1000, 5, seed=4).topk(u, 10)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


@pytest.mark.parametrize("classes,ipc,mix", [(1000, 5, "none"), (1000, 5, "cutmix"), (10450, 1, "cutmix"), (200, 25, "none"), (12, 400, "cutmix")])
def test_topk_well_formed(classes, ipc, mix):
    u = _unit(mix=mix)
    k = 10
    idx, val = TeacherModel(classes, ipc, seed=0).topk(u, k)
    assert idx.shape == val.shape == (len(u.sample_ids), k)
    assert idx.min() >= 0 and idx.max() < classes
    assert all(len(set(row)) == k for row in idx.tolist())
    assert np.all(np.diff(val, axis=1) <= 0), "values must be sorted, largest first"
    assert val.min() > 0 and np.all(val.sum(axis=1) <= 1 + 1e-5)


def test_top1_is_mostly_the_true_class_but_not_always():
    u = _unit(num_samples=5000, batch=1024, mix="none")
    idx, val = TeacherModel(1000, 5, seed=0).topk(u, 10)
    hit = (idx[:, 0] == u.sample_ids // 5).mean()
    assert 0.7 < hit < 1.0
    assert 0.2 < float(np.median(val[:, 0])) < 0.999  # a heavy head, not a one-hot


def test_cutmix_puts_mass_on_the_partner_class():
    sched = square_schedule(5000, 224, 512, epochs=1, seed=0, mix="cutmix")
    u = next(x for x in (sched.unit(0, b) for b in range(9)) if 0.3 < x.mix_lambda < 0.7)
    idx, _ = TeacherModel(1000, 5, seed=0).topk(u, 10)
    partner = (u.sample_ids // 5)[u.mix_perm]
    own = u.sample_ids // 5
    keep = partner != own
    assert (idx[keep] == partner[keep, None]).any(axis=1).mean() > 0.8


def test_dense_logits_agree_with_the_fast_topk():
    u = _unit(mix="cutmix")
    tm = TeacherModel(1000, 5, seed=1)
    idx, val = tm.topk(u, 10)
    dense = tm.dense_logits(u, 10)
    assert dense.shape == (len(u.sample_ids), 1000) and dense.dtype == np.float32
    i2, v2 = top_k(softmax_at(dense, 1.0), 10)
    np.testing.assert_array_equal(i2, idx)
    np.testing.assert_allclose(v2, val, rtol=0.15)


def test_units_come_from_ddpipes_schedule():
    """The bench and the store demo relabel with ddpipe's own schedule: the same units as relabel's."""
    sched = square_schedule(3000, 64, 512, epochs=3, seed=5, schedule="lpld-tiny")
    ref = Schedule(recipe("lpld-tiny"), 5, np.full((3000, 2), 64), 512, 3)
    seen = np.concatenate([sched.unit(2, b).sample_ids for b in range(6)])
    assert sorted(seen.tolist()) == list(range(3000))
    for b in (0, 5):
        u, v = sched.unit(2, b), ref.unit(2, b)
        for f in ("sample_ids", "crops", "flips", "cutout", "mix_perm", "mix_box", "cutout_fill"):
            np.testing.assert_array_equal(getattr(u, f), getattr(v, f))
    c = sched.unit(2, 1).crops
    assert c.min() >= 0 and np.all(c[:, 0] + c[:, 2] <= 1 + 1e-6) and np.all(c[:, 1] + c[:, 3] <= 1 + 1e-6)


def test_normal_cdf_and_isf_match_the_standard_library():
    """The scipy-free normal CDF and inverse survival function, against Python's own."""
    import math
    from statistics import NormalDist

    nd = NormalDist()
    xs = np.linspace(-8, 8, 161)
    want = np.array([0.5 * math.erfc(-x / math.sqrt(2)) for x in xs])
    np.testing.assert_allclose(normal_cdf(xs), want, rtol=2e-7)
    us = np.concatenate([np.logspace(-15, -1, 57), np.linspace(0.11, 0.89, 27), 1 - np.logspace(-9, -2, 8)])
    want = np.array([-nd.inv_cdf(u) for u in us])
    np.testing.assert_allclose(normal_isf(us), want, rtol=1e-6, atol=1e-7)
    tiny = normal_isf(np.array([1e-300]))[0]  # far tails stay finite and right: P(Z > 37.0471) = 1e-300
    assert abs(tiny - 37.0471) < 1e-3


def test_bench_store_import_is_cheap():
    code = ("import sys, ddpipe.bench.store, ddpipe.bench.teacher_model, ddpipe.demo; "
            "assert 'torch' not in sys.modules and 'scipy' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
