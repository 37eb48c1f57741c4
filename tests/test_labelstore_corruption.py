"""A flipped byte, a truncated shard and a deleted chunk are each reported by verify, naming the
unit, and make reads raise an error naming it. Damaged data is never returned."""

import json
import os

import numpy as np
import pytest

from ddpipe.cli import main as cli
from ddpipe.labelstore import (
    ChunkCorruptError,
    IncompleteUnitError,
    MisplacedShardError,
    StoredValueError,
    StoreSpec,
    create_store,
    open_store,
    verify_store,
)
from labelstore_units import all_units, downgrade_to_format_2

SPEC = StoreSpec(num_samples=40, num_classes=16, epochs=3, batch_size=8, k=4, value_codec="fp16")
# units_per_shard defaults to one epoch: 5 units per shard, shard 1 = units 5..9 = epoch 1


@pytest.fixture
def store(tmp_path):
    path = str(tmp_path / "s")
    create_store(path, SPEC).write_many(all_units(SPEC))
    assert verify_store(path)["ok"]
    return path


def shard_file(path, array, shard):
    ndim = {"label_value": 3, "sample_crop": 3, "unit_mix_lambda": 1, "sample_id": 2}[array]
    return os.path.join(path, array, "c", str(shard), *["0"] * (ndim - 1))


def flip_byte(fname, offset):
    data = bytearray(open(fname, "rb").read())
    data[offset] ^= 0x40
    open(fname, "wb").write(bytes(data))


def assert_reported(path, array, epoch, capsys):
    report = verify_store(path)
    assert not report["ok"]
    hits = [p for p in report["problems"] if p["array"] == array]
    assert hits, report
    assert all(p["epoch"] == epoch for p in hits)
    units = range(epoch * 5, epoch * 5 + 5)
    assert all(p["unit"] in units for p in hits)
    # the CLI says the same, as JSON, and exits 1
    assert cli(["verify", path, "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and out["problems"] == report["problems"]
    return hits


@pytest.mark.parametrize("backend", ["zarr", "tensorstore"])
def test_flipped_byte_in_a_chunk(store, backend, capsys):
    fname = shard_file(store, "label_value", 1)
    flip_byte(fname, 40)  # inside the first inner chunk's compressed bytes
    hits = assert_reported(store, "label_value", 1, capsys)
    assert hits[0]["unit"] == 5
    r = open_store(store, backend=backend)
    r.read_batch(0, 0), r.read_batch(2, 4)  # other shards still read fine
    with pytest.raises(ChunkCorruptError, match=r"array 'label_value' holding unit 5 \(epoch 1, batch 0\) is damaged"):
        r.read_batch(1, 0)
    with pytest.raises(ChunkCorruptError, match="label_value"):
        list(r.iter_units())


@pytest.mark.parametrize("backend", ["zarr", "tensorstore"])
def test_flipped_byte_in_the_shard_index(store, backend, capsys):
    fname = shard_file(store, "sample_crop", 2)
    flip_byte(fname, os.path.getsize(fname) - 10)  # the index lives at the end of the shard
    assert_reported(store, "sample_crop", 2, capsys)
    with pytest.raises(ChunkCorruptError, match=r"array 'sample_crop' holding unit 1[0-4] \(epoch 2"):
        open_store(store, backend=backend).read_batch(2, 3)


@pytest.mark.parametrize("backend", ["zarr", "tensorstore"])
def test_truncated_shard(store, backend, capsys):
    fname = shard_file(store, "sample_id", 0)
    data = open(fname, "rb").read()
    open(fname, "wb").write(data[: len(data) // 2])
    hits = assert_reported(store, "sample_id", 0, capsys)
    assert hits[0]["unit"] == 0 and hits[0].get("last_unit") == 4  # the whole shard is unreadable
    with pytest.raises(ChunkCorruptError, match=r"array 'sample_id' holding unit 2 \(epoch 0, batch 2\) is damaged"):
        open_store(store, backend=backend).read_batch(0, 2)


@pytest.mark.parametrize("backend", ["zarr", "tensorstore"])
def test_deleted_chunk(store, backend, capsys):
    os.remove(shard_file(store, "unit_mix_lambda", 1))
    hits = assert_reported(store, "unit_mix_lambda", 1, capsys)
    assert "missing" in hits[0]["error"]
    r = open_store(store, backend=backend)
    with pytest.raises(ChunkCorruptError, match=r"unit_mix_lambda.*units 5-9 \(epoch 1 batch 0 .. epoch 1 batch 4\) is missing"):
        r.read_batch(1, 3)
    assert r.read_batch(0, 1).count == 8


def test_deleted_commit_flag_means_incomplete(store, capsys):
    os.remove(os.path.join(store, "commit_shard", "c", "2", "0"))  # shard 2's commit record
    report = verify_store(store)
    assert [p["array"] for p in report["problems"]] == ["commit_shard"]
    assert report["problems"][0]["epoch"] == 2
    with pytest.raises(IncompleteUnitError, match="epoch 2"):
        open_store(store).read_batch(2, 0)


@pytest.mark.parametrize("version", [3, 2])
def test_values_that_break_the_format_are_reported(store, version):
    """Format 3 binds each object to its commit record's SHA-256, so a rewrite through zarr is
    named before any value is decoded; format 2 (no binding) is caught by the value checks."""
    import zarr

    if version == 2:
        downgrade_to_format_2(store)
    g = zarr.open_group(store, mode="r+")
    idx = g["label_index"]
    block = np.asarray(idx[3:4])
    block[0, 2, 1] = block[0, 2, 0]  # the same class twice in one top-k
    idx[3:4] = block
    ids = g["sample_id"]
    block = np.asarray(ids[7:8])
    block[0, 0] = 999  # a sample that does not exist
    ids[7:8] = block
    report = verify_store(store)
    errors = {(p["unit"], p["array"]): p["error"] for p in report["problems"]}
    if version == 3:
        assert "does not match the SHA-256 in its commit record" in errors[(0, "label_index")]
        assert "does not match the SHA-256 in its commit record" in errors[(5, "sample_id")]
        with pytest.raises(MisplacedShardError, match=r"array 'sample_id' holding units 5-9"):
            open_store(store).read_unit(7)
        return
    assert "a class appears twice" in errors[(3, "label_index")]
    assert "sample ids outside" in errors[(7, "sample_id")]
    with pytest.raises(StoredValueError, match=r"array 'sample_id' holding unit 7 \(epoch 1, batch 2\)"):
        open_store(store).read_unit(7)  # an out-of-range id is refused on read, never an IndexError
