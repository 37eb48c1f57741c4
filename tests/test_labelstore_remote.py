"""Stores behind fsspec URLs (here fsspec's in-memory filesystem) work through the zarr backend."""

import uuid

import fsspec
import numpy as np
import pytest

from ddpipe.labelstore import ChunkCorruptError, StoreError, StoreSpec, create_store, open_store, prune_store, store_info, verify_store
from labelstore_units import all_units

SPEC = StoreSpec(num_samples=30, num_classes=9, epochs=3, batch_size=8, k=4, value_codec="uint8")


@pytest.fixture
def url():
    name = f"memory://ddpipe-test-{uuid.uuid4().hex}"
    yield name
    fsspec.filesystem("memory").rm(name.removeprefix("memory://"), recursive=True)


def test_write_read_prune_verify_over_fsspec(url, tmp_path):
    create_store(url, SPEC).write_many(all_units(SPEC))
    r = open_store(url)
    assert r.backend == "zarr" and r.complete
    local = str(tmp_path / "local")
    create_store(local, SPEC).write_many(all_units(SPEC))
    for a, b in zip(r.iter_units(), open_store(local).iter_units()):
        assert np.array_equal(a.indices, b.indices) and np.array_equal(a.values, b.values)
    assert verify_store(url)["ok"]
    assert store_info(url)["bytes_on_disk"] > 0
    prune_store(url, url + "-pruned", 0.5)
    assert open_store(url + "-pruned").num_units == 6
    with pytest.raises(StoreError, match="tensorstore backend reads local stores only"):
        open_store(url, backend="tensorstore")


def test_deleted_remote_chunk_is_named(url):
    create_store(url, SPEC).write_many(all_units(SPEC))
    fsspec.filesystem("memory").rm(url.removeprefix("memory://") + "/label_index/c/1/0/0")
    report = verify_store(url)
    assert [(p["array"], p["epoch"]) for p in report["problems"]] == [("label_index", 1)]
    with pytest.raises(ChunkCorruptError, match="label_index"):
        open_store(url).read_batch(1, 0)
