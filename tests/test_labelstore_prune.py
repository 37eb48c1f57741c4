"""Random pruning (LPLD): planned before relabel or applied after, the kept units are the same and
the pruned store stands alone."""

import shutil

import numpy as np
import pytest

from ddpipe.labelstore import SpecError, StoreSpec, create_store, open_store, plan_units, prune_store, store_info, verify_store
from ddpipe.labelstore.prune import pruned_spec
from labelstore_units import all_units, raw_arrays

SPEC = StoreSpec(num_samples=60, num_classes=20, epochs=10, batch_size=16, k=5, value_codec="uint8")


@pytest.fixture(scope="module")
def full_store(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("full") / "s")
    create_store(path, SPEC).write_many(all_units(SPEC))
    return path


def test_plan_is_random_deterministic_and_in_training_order():
    a = plan_units(SPEC, 0.25, "batch", seed=3)
    assert len(a) == round(0.25 * SPEC.full_units) == 10
    assert np.array_equal(a, plan_units(SPEC, 0.25, "batch", seed=3))
    assert not np.array_equal(a, plan_units(SPEC, 0.25, "batch", seed=4))
    flat = a[:, 0] * SPEC.batches_per_epoch + a[:, 1]
    assert np.all(np.diff(flat) > 0)
    e = plan_units(SPEC, 0.3, "epoch", seed=0)
    epochs = np.unique(e[:, 0])
    assert len(epochs) == 3 and len(e) == 3 * SPEC.batches_per_epoch
    assert len(plan_units(SPEC, 1e-6, "batch")) == 1, "at least one unit is always kept"
    with pytest.raises(SpecError, match="keep must be a fraction"):
        plan_units(SPEC, 0, "batch")
    with pytest.raises(SpecError, match="granularity must be one of"):
        plan_units(SPEC, 0.5, "step")


@pytest.mark.parametrize("granularity", ["batch", "epoch"])
def test_prune_store_copies_kept_units_exactly(full_store, tmp_path, granularity):
    dst = str(tmp_path / "pruned")
    prune_store(full_store, dst, 0.2, granularity=granularity, seed=1)
    src, out = open_store(full_store), open_store(dst)
    assert out.complete and verify_store(dst)["ok"]
    assert np.array_equal(out.plan, plan_units(SPEC, 0.2, granularity, seed=1))
    assert out.spec.pruning == {"keep": 0.2, "granularity": granularity, "seed": 1, "source_units": SPEC.full_units}
    for u in out.iter_units():
        s = src.read_batch(u.epoch, u.batch)
        for field in ("sample_ids", "crops", "flips", "indices", "values", "mix_perm", "cutout", "mix_box"):
            assert np.array_equal(getattr(u, field), getattr(s, field)), field
    # standalone: the source can go away
    shutil.rmtree(full_store + "_gone", ignore_errors=True)
    info = store_info(dst)
    assert info["units"] == len(out.plan) and info["keep"] == 0.2
    assert info["sre2l_equivalent_bytes"] < store_info(full_store)["sre2l_equivalent_bytes"]


def test_planning_before_relabel_equals_pruning_after(full_store, tmp_path):
    """The teacher computes only the planned units, and the store is the same as a pruned full one."""
    keep, seed = 0.1, 7
    after = str(tmp_path / "after")
    prune_store(full_store, after, keep, seed=seed)
    plan = plan_units(SPEC, keep, "batch", seed=seed)
    before = str(tmp_path / "before")
    w = create_store(before, pruned_spec(SPEC, keep, "batch", seed), plan)
    computed = list(all_units(SPEC, plan))
    assert len(computed) == len(plan) == 4
    w.write_many(computed)
    assert w.complete
    a, b = raw_arrays(after), raw_arrays(before)
    for name in a:
        assert np.array_equal(a[name], b[name]), name


def test_pruning_a_pruned_store_compounds_keep(full_store, tmp_path):
    half = str(tmp_path / "half")
    prune_store(full_store, half, 0.5, seed=0)
    quarter = str(tmp_path / "quarter")
    prune_store(half, quarter, 0.5, seed=1)
    r = open_store(quarter)
    assert r.spec.pruning["keep"] == 0.25
    assert r.num_units == round(0.5 * round(0.5 * SPEC.full_units))
    assert set(map(tuple, r.plan)) <= set(map(tuple, open_store(half).plan))


def test_incomplete_source_is_refused(tmp_path):
    path = str(tmp_path / "s")
    w = create_store(path, SPEC)
    w.write_many(list(all_units(SPEC))[:5])
    with pytest.raises(SpecError, match="incomplete"):
        prune_store(path, str(tmp_path / "p"), 0.5)
