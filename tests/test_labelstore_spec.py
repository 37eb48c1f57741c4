"""Bad specs, bad units, unknown versions and paths that are not stores: one clear error each."""

import json
import os

import numpy as np
import pytest
import zarr

from ddpipe.labelstore import (
    FormatVersionError,
    NotAStoreError,
    SpecError,
    StoreExistsError,
    StoreSpec,
    Unit,
    create_store,
    open_store,
)
from labelstore_units import make_unit

GOOD = dict(num_samples=10, num_classes=5, epochs=2, batch_size=4, k=3)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"k": 6}, "k must be at most num_classes"),
        ({"k": 0}, "k must be a positive integer"),
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"epochs": -3}, "epochs must be a positive integer"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"num_classes": 2.5}, "num_classes must be a positive integer"),
        ({"value_codec": "bf16"}, "unknown value codec 'bf16'"),
        ({"temperature": 0}, "temperature must be a positive number"),
        ({"augmentation": {"fn": object()}}, "augmentation must hold only JSON values"),
        ({"pruning": {"keep": 2, "granularity": "batch"}}, "pruning.keep must be in (0, 1]"),
    ],
)
def test_bad_spec_is_one_clear_error(change, message):
    with pytest.raises(SpecError, match=None) as info:
        StoreSpec(**{**GOOD, **change})
    assert message in str(info.value)


def test_spec_round_trips_through_dict():
    spec = StoreSpec(**GOOD, value_codec="uint8", augmentation={"mix": "cutmix", "alpha": 1.0}, seed=7)
    assert StoreSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(SpecError, match="unknown spec fields"):
        StoreSpec.from_dict({**spec.to_dict(), "colour": "red"})
    with pytest.raises(SpecError, match="missing required fields"):
        StoreSpec.from_dict({"num_samples": 3})


def test_index_dtype_follows_class_count():
    assert StoreSpec(**{**GOOD, "num_classes": 65535}).index_dtype == np.uint16
    assert StoreSpec(**{**GOOD, "num_classes": 65536}).index_dtype == np.uint32


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("crops", np.zeros((3, 4)), "crops must have shape (4, 4)"),
        ("crops", np.full((4, 4), 1.5), "crops must be fractions in [0, 1]"),
        ("sample_ids", [0, 1, 2, 99], "sample_ids must be integers in [0, 10)"),
        ("logits", np.zeros((4, 6)), "logits must have shape (4, 5)"),
        ("mix_perm", [0, 0, 1, 2], "mix_perm must be a permutation"),
        ("mix_kind", "cutout", "mix_kind must be one of"),
        ("mix_lambda", 1.5, "mix_lambda must be in [0, 1]"),
        ("cutout_fill", np.zeros((4, 1)), "cutout_fill must have shape (4, 3)"),
        ("cutout_fill", np.full((4, 3), 256), "cutout_fill must hold integer colours in [0, 255]"),
        ("cutout_fill", np.full((4, 3), -1), "cutout_fill must hold integer colours in [0, 255]"),
        ("cutout_fill", np.full((4, 3), 12.5), "cutout_fill must hold integer colours in [0, 255]"),
    ],
)
def test_bad_unit_is_rejected_and_nothing_is_written(tmp_path, field, value, message):
    spec = StoreSpec(**GOOD)
    w = create_store(tmp_path / "s", spec)
    unit = make_unit(spec, 0, 0)
    setattr(unit, field, value)
    with pytest.raises(SpecError) as info:
        w.write(unit)
    assert message in str(info.value)
    assert "epoch 0, batch 0" in str(info.value)
    assert w.pending_units().shape[0] == spec.full_units


def test_labels_must_be_given_exactly_once(tmp_path):
    spec = StoreSpec(**GOOD)
    w = create_store(tmp_path / "s", spec)
    unit = make_unit(spec, 0, 0)
    unit.probs = np.full((4, 5), 0.2)
    with pytest.raises(SpecError, match="exactly one of logits, probs or topk"):
        w.write(unit)
    unit.logits = None
    unit.probs[0, 0] = np.nan
    with pytest.raises(SpecError, match="NaN"):
        w.write(unit)


def test_unit_outside_the_plan(tmp_path):
    spec = StoreSpec(**GOOD)
    w = create_store(tmp_path / "s", spec)
    with pytest.raises(SpecError, match=r"\(epoch 2, batch 0\) is not a unit"):
        w.write(make_unit(spec, 2, 0))


def test_bad_plans(tmp_path):
    spec = StoreSpec(**GOOD)
    for plan, msg in [
        ([[0, 1], [0, 0]], "training order"),
        ([[0, 3]], "outside"),
        (np.zeros((0, 2), int), "non-empty"),
    ]:
        with pytest.raises(SpecError, match=msg):
            create_store(tmp_path / "s", spec, plan)


def test_path_that_is_not_a_store(tmp_path):
    with pytest.raises(NotAStoreError, match="not a ddpipe label store"):
        open_store(tmp_path / "nothing-here")
    (tmp_path / "file.txt").write_text("hello")
    with pytest.raises(NotAStoreError):
        open_store(tmp_path / "file.txt")
    zarr.open_group(str(tmp_path / "plain"), mode="w", zarr_format=3)
    with pytest.raises(NotAStoreError, match="not a ddpipe label store"):
        open_store(tmp_path / "plain")


@pytest.mark.parametrize("version", [5, 0, "2", None])
def test_unknown_format_version_is_refused(tmp_path, version):
    spec = StoreSpec(**GOOD)
    create_store(tmp_path / "s", spec)
    meta_path = os.path.join(tmp_path / "s", "zarr.json")
    meta = json.load(open(meta_path))
    assert meta["attributes"]["ddpipe"]["format_version"] == 3
    meta["attributes"]["ddpipe"]["format_version"] = version
    json.dump(meta, open(meta_path, "w"))
    want = f"format_version {version!r}; this ddpipe reads format_version 1, 2, 3 or 4 only (upgrade ddpipe"
    with pytest.raises(FormatVersionError) as info:
        open_store(tmp_path / "s")
    assert want in str(info.value)
    with pytest.raises(FormatVersionError):
        create_store(tmp_path / "s", spec, resume=True)


def test_create_refuses_to_clobber(tmp_path):
    spec = StoreSpec(**GOOD)
    create_store(tmp_path / "s", spec)
    with pytest.raises(StoreExistsError, match="already holds a store"):
        create_store(tmp_path / "s", spec)
    with pytest.raises(StoreExistsError, match="different spec"):
        create_store(tmp_path / "s", spec.replace(k=2), resume=True)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.me").write_text("x")
    with pytest.raises(StoreExistsError, match="not an empty directory"):
        create_store(tmp_path / "busy", spec)
    assert (tmp_path / "busy" / "keep.me").exists()
    create_store(tmp_path / "s", spec.replace(k=2), overwrite=True)
    assert open_store(tmp_path / "s").spec.k == 2


@pytest.mark.parametrize(
    "samples, batch, expected_units, expected_chunk",
    [
        (50_000, 1024, 50, 2),  # ImageNet-1K IPC50: 49 batches -> 25 chunks of 2
        (209_000, 1024, 206, 2),  # ImageNet-21K IPC20: 205 batches
        (10_000, 64, 160, 32),  # Tiny IPC50 (LPLD's batch 64): 157 batches, a prime
        (40, 8, 5, 5),  # a small store: one epoch in one chunk
    ],
)
def test_default_shards_are_about_an_epoch_in_whole_chunks(samples, batch, expected_units, expected_chunk):
    from ddpipe.labelstore.layout import inner_chunk_units

    spec = StoreSpec(num_samples=samples, num_classes=10, epochs=3, batch_size=batch, k=2)
    assert spec.units_per_shard == expected_units >= spec.batches_per_epoch
    assert inner_chunk_units(spec) == expected_chunk
    assert spec.units_per_shard % expected_chunk == 0
