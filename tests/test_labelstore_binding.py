"""Format 3: content binding, atomic creation, leases within one process, I/O errors, locations.
(The process-level faults are in ``tests/fault/``.)"""

import gc
import json
import os
import socket

import numpy as np
import pytest

from ddpipe.labelstore import (
    FORMAT_VERSION,
    ChunkCorruptError,
    MetadataEditedError,
    MisplacedShardError,
    NotAStoreError,
    SameLocationError,
    SpecError,
    StoredValueError,
    StoreExistsError,
    StoreIOError,
    StoreSpec,
    check_distinct_locations,
    create_store,
    locations_overlap,
    open_store,
    open_writer,
    prune_store,
    same_location,
    store_location,
    verify_store,
)
from ddpipe.labelstore.binding import plan_sha256
from ddpipe.labelstore.writer import CREATING_TAG
from labelstore_units import all_units, downgrade_to_format_2, make_unit

SPEC = StoreSpec(num_samples=20, num_classes=7, epochs=4, batch_size=6, k=3, value_codec="fp16", units_per_shard=4)


@pytest.fixture
def store(tmp_path):
    path = str(tmp_path / "s")
    create_store(path, SPEC).write_many(all_units(SPEC))
    return path


def attrs(path):
    return json.load(open(os.path.join(path, "zarr.json")))["attributes"]["ddpipe"]


def test_attributes_bind_the_store(store, tmp_path):
    a = attrs(store)
    assert a["format_version"] == FORMAT_VERSION == 3
    assert len(a["store_id"]) == 32 and a["plan_sha256"] == plan_sha256(open_store(store).plan)
    assert set(a["checksum"]) == {"sha256", "fields"} and "spec.temperature" in a["checksum"]["fields"]
    other = str(tmp_path / "o")
    create_store(other, SPEC)
    assert attrs(other)["store_id"] != a["store_id"]


def test_edited_provenance_is_refused(store):
    meta = json.load(open(os.path.join(store, "zarr.json")))
    meta["attributes"]["ddpipe"]["provenance"]["created"] = "1999-01-01T00:00:00Z"
    json.dump(meta, open(os.path.join(store, "zarr.json"), "w"))
    with pytest.raises(MetadataEditedError, match=r"changed: provenance\)"):
        open_store(store)


def test_format_2_store_reads_and_what_is_checked(store):
    """Format 2 has no binding: the plan recomputed from the spec still catches a whole shard
    moved (its unit_epoch/unit_batch moved with it), and bad values are refused on read."""
    downgrade_to_format_2(store)
    r = open_store(store)
    assert r.format_version == 2 and r.complete and verify_store(store)["ok"]
    for name in r.array_names:  # shard 0 <-> shard 2, every array
        x = os.path.join(store, name, "c", "0")
        y = os.path.join(store, name, "c", "2")
        os.rename(x, x + ".t"), os.rename(y, x), os.rename(x + ".t", y)
    report = verify_store(store)
    assert {(p["unit"], p["array"]) for p in report["problems"] if p["array"] == "unit_epoch"} >= {(0, "unit_epoch"), (8, "unit_epoch")}
    with pytest.raises(MisplacedShardError, match=r"array 'unit_epoch' holding unit 0 \(epoch 0, batch 0\)"):
        open_store(store).read_unit(0)


@pytest.mark.parametrize("array, value, what", [
    ("label_index", 7, "class index >= num_classes 7"),
    ("unit_mix_kind", 9, "mix kind 9 does not exist"),
    ("unit_mix_perm", 6, "partner slot beyond the batch"),
])
def test_out_of_range_values_raise_store_errors_not_index_errors(store, array, value, what):
    import zarr

    downgrade_to_format_2(store)  # no content hash: only the value checks stand between
    g = zarr.open_group(store, mode="r+")
    block = np.asarray(g[array][5:6])
    block.reshape(-1)[0] = value
    g[array][5:6] = block
    r = open_store(store)
    with pytest.raises(StoredValueError, match=rf"array '{array}' holding unit 5 \(epoch 1, batch 1\): {what}"):
        r.read_unit(5)
    with pytest.raises(StoredValueError):
        list(r.iter_units())
    assert any(p["unit"] == 5 for p in verify_store(store)["problems"])


def test_pruned_plans_are_recomputed_or_hash_checked(store, tmp_path):
    p1 = prune_store(store, str(tmp_path / "p1"), 0.5, seed=3)
    r1 = open_store(p1)
    from ddpipe.labelstore import plan_units

    assert np.array_equal(r1.plan, plan_units(SPEC, 0.5, "batch", 3))  # recomputed from the spec
    p2 = prune_store(p1, str(tmp_path / "p2"), 0.5, seed=4)  # a prune of a prune: not reproducible
    r2 = open_store(p2)
    assert r2.num_units == 4 and verify_store(p2)["ok"]
    import zarr

    g = zarr.open_group(p2, mode="r+")
    g["unit_batch"].with_config({"write_empty_chunks": True})[0:1] = np.int32([2])
    with pytest.raises(MisplacedShardError, match="plan_sha256"):
        open_store(p2)


def test_interrupted_creation_leftovers_are_replaced(tmp_path):
    """What creation before format 3 left when killed (a group without ddpipe attributes and
    some arrays) and what a killed atomic creation leaves (a hidden sibling folder) do not block
    a fresh run or a resume; a folder with anything else in it is never touched."""
    old = tmp_path / "old"
    os.makedirs(old / "unit_epoch")
    (old / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
    (old / "unit_epoch" / "zarr.json").write_text("{}")
    with pytest.raises(NotAStoreError):
        open_store(old)
    create_store(old, SPEC, resume=True).close()
    assert open_store(old).num_units == SPEC.full_units
    dead = tmp_path / f".s{CREATING_TAG}{socket.gethostname()}-999999-abcd"
    os.makedirs(dead / "label_index")
    create_store(tmp_path / "s", SPEC).close()
    assert not dead.exists()
    user = tmp_path / "user"
    os.makedirs(user / "my_array")
    (user / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
    with pytest.raises(StoreExistsError, match=r"use --overwrite \(overwrite=True\)"):
        create_store(user, SPEC)
    assert (user / "my_array").exists()


def test_overwrite_replaces_in_one_step(store):
    before = attrs(store)["store_id"]
    create_store(store, SPEC.replace(k=2), overwrite=True).close()
    assert attrs(store)["store_id"] != before and open_store(store).spec.k == 2
    assert [n for n in os.listdir(os.path.dirname(store)) if n.startswith(".")] == []


def test_os_errors_become_store_io_errors_naming_the_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreIOError, match=rf"{blocker}") as info:
        create_store(blocker / "s", SPEC)
    assert info.value.errno is not None and "\n" not in str(info.value)
    assert not (tmp_path / "s").exists()


def test_leases_between_writers_of_one_process(store, tmp_path):
    path = str(tmp_path / "w")
    w1 = create_store(path, SPEC)
    w1.write(make_unit(SPEC, 0, 0))  # w1 takes shard 0
    w2 = open_writer(path)
    assert not w2.claim(0, 1) and 0 not in w2.pending_shards()
    assert w2.claim(1, 0)  # shard 1 (units 4..7) is free
    w1.close()  # gives shard 0 back
    assert w2.claim(0, 1)
    w2.close()
    w3 = open_writer(path)
    w3.write(make_unit(SPEC, 0, 0))
    del w3  # dropped without close: its lease is stale at once for this process
    gc.collect()
    w4 = open_writer(path)
    assert w4.claim(0, 0)
    for e, b in w4.pending_units():
        w4.write(make_unit(SPEC, int(e), int(b)))
    assert w4.complete and verify_store(path)["ok"]


def test_store_location_forms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    want = str(tmp_path / "a.zarr")
    for form in ("a.zarr", "./a.zarr", "a.zarr/", "~/a.zarr", f"file://{want}", f"FILE://localhost{want}", tmp_path / "a.zarr"):
        assert store_location(form) == want, form
    assert store_location("memory://m/x/") == "memory://m/x"
    assert store_location("S3://bucket/p/") == "s3://bucket/p"
    for bad in ("", "   ", None, 3, "file://otherhost/p", "memory://"):
        with pytest.raises(SpecError):
            store_location(bad)


def test_same_location_and_overlap(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.makedirs("S")
    os.symlink(tmp_path / "S", tmp_path / "L")
    assert same_location("S", "./S/") and same_location("S", "L") and same_location("S", f"file://{tmp_path}/S")
    assert not same_location("S", "T") and not same_location("S", "memory://S")
    assert locations_overlap("S", "S/x") and locations_overlap(str(tmp_path), "L") and not locations_overlap("S", "S2")
    assert locations_overlap("memory://a", "memory://a/b") and not locations_overlap("memory://a", "memory://ab")
    with pytest.raises(SameLocationError, match="prune: the output .* is the same location as the input"):
        check_distinct_locations("S", "L/", "prune")
    check_distinct_locations("S", "T")


def test_damaged_commit_record_is_named_and_resume_rewrites_the_shard(store):
    with open(os.path.join(store, "commit_shard", "c", "1", "0"), "wb") as f:
        f.write(b"garbage")
    problems = verify_store(store)["problems"]
    assert [(p["unit"], p["array"]) for p in problems] == [(4, "commit_shard")] and "damaged" in problems[0]["error"]
    r = open_store(store)
    r.read_unit(0)  # other shards read
    with pytest.raises(ChunkCorruptError, match="commit record of shard 1 is damaged"):
        r.read_unit(4)
    w = create_store(store, SPEC, resume=True)
    assert w.pending_shards() == [1]
    for e, b in w.pending_units():
        w.write(make_unit(SPEC, int(e), int(b)))
    assert verify_store(store)["ok"]
