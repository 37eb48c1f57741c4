"""Write units in any order, read them back through both backends: exact where the format promises."""

import os
import shutil
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddpipe.labelstore import (
    IncompleteUnitError,
    StoreSpec,
    create_store,
    densify,
    get_codec,
    open_store,
    softmax_at,
    top_k,
)
from ddpipe.labelstore import FORMAT_VERSION, FormatVersionError, open_writer, prune_store, store_info, verify_store
from ddpipe.labelstore.layout import CROP_SCALE, augmentation_fill
from labelstore_units import all_units, downgrade_to_format_1, make_unit, raw_arrays

BACKENDS = ["zarr", "tensorstore"]


def expected_labels(spec, unit):
    if unit.topk is not None:
        return np.asarray(unit.topk[0]), np.asarray(unit.topk[1], np.float32)
    return top_k(softmax_at(unit.logits, spec.temperature), spec.k)


def expected_fill(spec, unit):
    """The colours a unit was written with: its own, else the augmentation record's constant."""
    if unit.cutout_fill is not None:
        return np.asarray(unit.cutout_fill, np.uint8)
    return np.tile(augmentation_fill(spec.augmentation), (len(unit.sample_ids), 1))


def check_unit(spec, got, unit):
    assert (got.epoch, got.batch) == (unit.epoch, unit.batch)
    assert np.array_equal(got.sample_ids, unit.sample_ids)
    assert np.all(np.abs(got.crops - unit.crops) <= 0.5 / CROP_SCALE + 1e-7)
    assert np.array_equal(got.flips, unit.flips)
    assert got.mix_kind == unit.mix_kind
    assert np.array_equal(got.mix_perm, unit.mix_perm)
    assert got.mix_lambda == np.float32(unit.mix_lambda)
    assert np.array_equal(got.mix_box, unit.mix_box)
    assert np.array_equal(got.cutout, unit.cutout)
    assert got.cutout_fill.dtype == np.uint8 and got.cutout_fill.shape == (len(unit.sample_ids), 3)
    assert np.array_equal(got.cutout_fill, expected_fill(spec, unit))
    idx, val = expected_labels(spec, unit)
    codec = get_codec(spec.value_codec)
    assert np.array_equal(got.indices, idx)
    assert np.all(np.abs(got.values - val) <= codec.max_error(val))
    if codec.lossless:
        assert np.array_equal(got.values, val)


specs = st.builds(
    lambda n, c, e, b, kf, codec, t, ups, fill: StoreSpec(
        num_samples=n, num_classes=c, epochs=e, batch_size=b, k=max(1, int(round(kf * c))),
        value_codec=codec, temperature=t, units_per_shard=ups,
        augmentation={} if fill is None else {"cutout": 0.5, "fill": fill},
    ),
    n=st.integers(1, 40),
    c=st.integers(1, 24),
    e=st.integers(1, 3),
    b=st.integers(1, 16),
    kf=st.floats(0.0, 1.0),
    codec=st.sampled_from(["fp32", "fp16", "uint8"]),
    t=st.sampled_from([1.0, 4.0, 20.0]),
    ups=st.sampled_from([0, 1, 2, 3]),
    fill=st.sampled_from([None, [0, 0, 0], [7], [1, 2, 255], "random"]),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs, order_seed=st.integers(0, 2**16))
def test_round_trip_any_write_order(spec, order_seed):
    units = list(all_units(spec))
    order = np.random.default_rng(order_seed).permutation(len(units))
    tmp = tempfile.mkdtemp()
    try:
        w = create_store(tmp + "/s", spec)
        for i in order:
            w.write(units[i])
        assert w.complete and w.close() == 0
        for backend in BACKENDS:
            r = open_store(tmp + "/s", backend=backend)
            assert r.complete_units == r.num_units == len(units)
            got = list(r.iter_units())
            assert [(g.epoch, g.batch) for g in got] == [(u.epoch, u.batch) for u in units]
            for g, u in zip(got, units):
                check_unit(spec, g, u)
            # random access agrees with the sequential pass
            u = units[order[0]]
            check_unit(spec, r.read_batch(u.epoch, u.batch), u)
    finally:
        shutil.rmtree(tmp)


@pytest.mark.parametrize("backend", BACKENDS)
def test_uint32_indices_above_65535_classes(tmp_path, backend):
    spec = StoreSpec(num_samples=12, num_classes=70_000, epochs=2, batch_size=5, k=4, value_codec="uint8")
    assert spec.index_dtype == np.uint32
    w = create_store(tmp_path / "s", spec)
    units = list(all_units(spec, label_mode="topk"))
    for u in units:
        u.topk[0][:, 0] = 69_999  # the largest class index survives
    w.write_many(units)
    r = open_store(tmp_path / "s", backend=backend)
    for g, u in zip(r.iter_units(), units):
        check_unit(spec, g, u)
        assert g.indices.max() == 69_999


@pytest.mark.parametrize("backend", BACKENDS)
def test_epoch_slab_and_dense_targets(tmp_path, backend):
    spec = StoreSpec(num_samples=50, num_classes=30, epochs=3, batch_size=16, k=30, value_codec="fp32", temperature=2.0)
    w = create_store(tmp_path / "s", spec)
    units = list(all_units(spec))
    w.write_many(units)
    r = open_store(tmp_path / "s", backend=backend)
    slab = r.read_epoch(1)
    assert len(slab) == spec.batches_per_epoch
    last = slab.unit(len(slab) - 1)
    assert last.count == spec.last_batch_size == 2
    u = units[spec.batches_per_epoch + 1]
    dense = r.dense_targets(slab.unit(1))
    # k = C with fp32: the dense targets are exactly the teacher's softmax at the temperature
    assert np.array_equal(dense, softmax_at(u.logits, 2.0))
    ids = np.concatenate([x.sample_ids for x in slab])
    assert np.array_equal(np.sort(ids), np.arange(50)), "an epoch covers every sample once"


def test_uncommitted_shard_is_invisible(tmp_path):
    spec = StoreSpec(num_samples=20, num_classes=6, epochs=2, batch_size=8, k=2)
    w = create_store(tmp_path / "s", spec)
    units = list(all_units(spec))
    w.write_many(units[:4])  # epoch 0 complete (3 batches), one unit of epoch 1 buffered
    r = open_store(tmp_path / "s")
    assert r.complete_units == 3 and not r.complete
    check_unit(spec, r.read_batch(0, 2), units[2])
    with pytest.raises(IncompleteUnitError, match=r"epoch 1 batch 0 .. epoch 1 batch 2\) not written yet"):
        r.read_batch(1, 0)
    assert w.close() == 1  # one buffered unit lost, reported
    w2 = create_store(tmp_path / "s", spec, resume=True)
    assert w2.pending_units().tolist() == [[1, 0], [1, 1], [1, 2]]
    w2.write_many(units)  # replaying everything is fine: committed units are skipped
    r.refresh()
    assert r.complete
    check_unit(spec, r.read_batch(1, 0), units[3])


def test_cutout_fill_defaults_to_the_augmentation_constant():
    assert augmentation_fill({}).tolist() == [0, 0, 0]
    assert augmentation_fill({"fill": "random"}).tolist() == [0, 0, 0]
    assert augmentation_fill({"fill": [200]}).tolist() == [200, 200, 200]
    assert augmentation_fill({"fill": 9}).tolist() == [9, 9, 9]
    assert augmentation_fill({"fill": [1, 2, 3]}).tolist() == [1, 2, 3]
    for nonsense in ([1, 2], [300], ["a"], None, {"r": 1}):
        assert augmentation_fill({"fill": nonsense}).tolist() == [0, 0, 0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_format_1_store_reads_with_the_constant_fill(tmp_path, backend):
    """A store as format 1 wrote it (no sample_cutout_fill) still reads, verifies, reports and
    prunes; its colours are the augmentation record's constant fill. No writer touches it."""
    spec = StoreSpec(num_samples=21, num_classes=9, epochs=3, batch_size=8, k=3, value_codec="uint8",
                     augmentation={"cutout": 0.5, "fill": [10, 20, 30]})
    path = str(tmp_path / "v1")
    units = list(all_units(spec))
    create_store(path, spec).write_many(units)
    before = raw_arrays(path)
    downgrade_to_format_1(path)
    assert "sample_cutout_fill" not in raw_arrays(path)
    r = open_store(path, backend=backend)
    assert r.format_version == 1 and r.complete
    for got, unit in zip(r.iter_units(), units):
        unit.cutout_fill = None  # format 1 kept no colours: every sample has the constant
        check_unit(spec, got, unit)
        assert (got.cutout_fill == [10, 20, 30]).all()
    slab = r.read_slab(0, r.num_units)
    assert set(slab.arrays) == set(before) - {"commit_shard"}
    for name in slab.arrays:  # the other arrays are untouched; the colours are the constant
        want = before[name]
        if name == "sample_cutout_fill":
            valid = np.arange(spec.batch_size)[None, :] < before["unit_count"][:, None]
            want = np.where(valid[..., None], np.uint8([10, 20, 30]), 0).astype(np.uint8)
        assert np.array_equal(slab.arrays[name], want), name
    report = verify_store(path, backend=backend)
    assert report["ok"] and report["checked_units"] == r.num_units, report
    info = store_info(path, backend=backend)
    assert info["format_version"] == 1 and "sample_cutout_fill" not in info["bytes_by_array"]
    # a writer refuses to add format-2 units to it, with one clear error ...
    with pytest.raises(FormatVersionError, match="format_version 1; this ddpipe writes format_version 3"):
        open_writer(path)
    with pytest.raises(FormatVersionError, match="prune or relabel into a new store"):
        create_store(path, spec, resume=True)
    # ... and pruning it makes a standalone format-2 store holding the constant colours
    prune_store(path, str(tmp_path / "p"), 0.5, seed=1)
    p = open_store(str(tmp_path / "p"), backend=backend)
    assert p.format_version == FORMAT_VERSION and verify_store(str(tmp_path / "p"))["ok"]
    assert store_info(str(tmp_path / "p"))["bytes_by_array"]["sample_cutout_fill"] > 0
    for u in p.iter_units():
        assert (u.cutout_fill == [10, 20, 30]).all()
        np.testing.assert_array_equal(u.values, r.read_batch(u.epoch, u.batch).values)


def test_format_1_store_without_a_fill_reads_zeros(tmp_path):
    spec = StoreSpec(num_samples=10, num_classes=5, epochs=1, batch_size=4, k=2)
    create_store(tmp_path / "s", spec).write_many(all_units(spec))
    downgrade_to_format_1(str(tmp_path / "s"))
    got = [u.cutout_fill for u in open_store(tmp_path / "s").iter_units()]
    assert [len(g) for g in got] == [4, 4, 2] and not np.concatenate(got).any()


def test_format_2_stores_every_fill_object(tmp_path):
    """Every shard of the new array is an object, even when all its colours are zero."""
    spec = StoreSpec(num_samples=10, num_classes=5, epochs=2, batch_size=4, k=2, units_per_shard=2)
    units = list(all_units(spec))
    for u in units:
        u.cutout_fill = None
    create_store(tmp_path / "s", spec).write_many(units)
    r = open_store(tmp_path / "s")
    assert r.format_version == FORMAT_VERSION == 3
    objects = sorted(os.listdir(tmp_path / "s" / "sample_cutout_fill" / "c"))
    assert objects == [str(s) for s in range(r.num_shards)]
    assert verify_store(str(tmp_path / "s"))["ok"]
