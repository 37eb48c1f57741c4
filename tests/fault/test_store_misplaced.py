"""Valid shards in the wrong place, and edited metadata, are reported and refused, never read.

A shard moved to another epoch (with or without its commit record), copied from another store of
the same shape (another seed, as another teacher or image set would give), swapped between two
arrays of the same shape (crops and cutout boxes), and ``temperature`` / ``k`` / ``num_classes``
edited in ``zarr.json``: ``verify`` names the unit range and the array, reads raise a
:class:`StoreError`. A hypothesis property: any one shard object (a data array's or a commit
record) copied over any other, from this store or a foreign one, is caught. Rerun: ``pytest tests/fault/test_store_misplaced.py``.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddpipe.labelstore import MetadataEditedError, MisplacedShardError, StoreError, open_store, verify_store
from ddpipe.labelstore.layout import COMMIT_ARRAY, array_defs, shard_key
from store_faults import SPEC, build

DEFS = {d.name: d for d in array_defs(SPEC)}
NUM_SHARDS = -(-SPEC.full_units // SPEC.units_per_shard)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine")
    return build(str(root / "s")), build(str(root / "foreign"), seed=1)


@pytest.fixture
def store(tmp_path, pristine):
    path = str(tmp_path / "s")
    shutil.copytree(pristine[0], path)
    return path


def obj(path: str, array: str, shard: int) -> str:
    if array == COMMIT_ARRAY:
        return os.path.join(path, COMMIT_ARRAY, "c", str(shard), "0")
    return os.path.join(path, *shard_key(array, shard, 1 + len(DEFS[array].trailing)).split("/"))


def units(shard: int) -> range:
    return range(shard * SPEC.units_per_shard, (shard + 1) * SPEC.units_per_shard)


def assert_caught(path: str, array: str, shard: int) -> None:
    report = verify_store(path)
    assert not report["ok"]
    hits = [p for p in report["problems"] if p["unit"] in units(shard)]
    assert any(p["array"] in (array, COMMIT_ARRAY) for p in hits), report["problems"]
    r = open_store(path)
    with pytest.raises(StoreError, match=rf"array '\w+' holding units? {units(shard).start}"):
        r.read_unit(units(shard).start)


@pytest.mark.parametrize("with_record", [False, True])
def test_shards_swapped_between_epochs(store, with_record):
    arrays = list(DEFS) + ([COMMIT_ARRAY] if with_record else [])
    for a in arrays:  # shard 1 (epoch 0's tail, epoch 1's head) <-> shard 5
        x, y = obj(store, a, 1), obj(store, a, 5)
        os.rename(x, x + ".t"), os.rename(y, x), os.rename(x + ".t", y)
    for shard in (1, 5):
        assert_caught(store, "unit_epoch", shard)
    report = verify_store(store)
    assert {p["unit"] for p in report["problems"]} == {units(1).start, units(5).start}


@pytest.mark.parametrize("with_record", [False, True])
def test_shard_copied_from_another_store_of_the_same_shape(store, pristine, with_record):
    foreign = pristine[1]
    for a in list(DEFS) + ([COMMIT_ARRAY] if with_record else []):
        shutil.copyfile(obj(foreign, a, 3), obj(store, a, 3))
    assert_caught(store, "label_value", 3)
    if with_record:
        with pytest.raises(MisplacedShardError, match="belongs to another store"):
            open_store(store).read_unit(units(3).start)


def test_crops_and_cutout_boxes_swapped(store):
    assert DEFS["sample_crop"].trailing == DEFS["sample_cutout"].trailing
    x, y = obj(store, "sample_crop", 2), obj(store, "sample_cutout", 2)
    os.rename(x, x + ".t"), os.rename(y, x), os.rename(x + ".t", y)
    report = verify_store(store)
    assert {p["array"] for p in report["problems"]} == {"sample_crop", "sample_cutout"}
    with pytest.raises(MisplacedShardError, match="array 'sample_crop'"):
        open_store(store).read_epoch(1)


@pytest.mark.parametrize("field, value", [("temperature", 4.0), ("k", 4), ("num_classes", 13), ("seed", 7)])
def test_edited_metadata_is_refused_naming_the_field(store, field, value):
    meta_path = os.path.join(store, "zarr.json")
    meta = json.load(open(meta_path))
    meta["attributes"]["ddpipe"]["spec"][field] = value
    json.dump(meta, open(meta_path, "w"))
    for call in (open_store, verify_store):
        with pytest.raises(MetadataEditedError, match=rf"changed: spec\.{field}\)"):
            call(store)


SWAPPABLE = [*DEFS, COMMIT_ARRAY]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    src_array=st.sampled_from(SWAPPABLE),
    dst_array=st.sampled_from(SWAPPABLE),
    src_shard=st.integers(0, NUM_SHARDS - 1),
    dst_shard=st.integers(0, NUM_SHARDS - 1),
    foreign=st.booleans(),
)
def test_any_shard_object_copied_anywhere_is_caught(tmp_path_factory, pristine, src_array, dst_array, src_shard,
                                                    dst_shard, foreign):
    src_store = pristine[1] if foreign else pristine[0]
    src = obj(src_store, src_array, src_shard)
    with open(src, "rb") as f:
        data = f.read()
    path = str(tmp_path_factory.mktemp("h") / "s")
    shutil.copytree(pristine[0], path)
    dst = obj(path, dst_array, dst_shard)
    with open(dst, "rb") as f:
        same = f.read() == data
    with open(dst, "wb") as f:
        f.write(data)
    report = verify_store(path)
    if same:  # identical bytes (e.g. the same unit_count shard): nothing changed
        assert report["ok"]
        return
    assert not report["ok"]
    assert all(p["unit"] in units(dst_shard) for p in report["problems"]), report["problems"]
    named = {p["array"] for p in report["problems"]}
    assert dst_array in named or (src_array == dst_array == COMMIT_ARRAY and named == {COMMIT_ARRAY}), named
    with pytest.raises(StoreError, match=rf"array '\w+' holding units? {units(dst_shard).start}"):
        open_store(path).read_slab(units(dst_shard).start, units(dst_shard).stop)
    shutil.rmtree(path)
