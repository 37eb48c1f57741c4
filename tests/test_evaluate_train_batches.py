"""The batches ``ddpipe train`` consumes (ddpipe.evaluate.train_batches): one protocol for every label
mode, a logit store re-tempered by the loader alone, and the label bytes counted by the store."""

from __future__ import annotations

import os
import types
from dataclasses import replace

import numpy as np
import pytest
import torch

from dist_pipeline_data import digits
from ddpipe.evaluate.datasets import load_dataset
from ddpipe.evaluate.student import LabelBytesRead, TrainConfig
from ddpipe.evaluate.train_batches import HardLabelBatches, StoreBatches, TrainBatches, kd_loss, make_batches
from ddpipe.labelstore import create_store, open_store
from ddpipe.pipeline import ArraySource, Schedule, recipe
from ddpipe.pipeline.loader import LoaderConfig, make_loader

STORE_T = 20.0
ONE = types.SimpleNamespace(rank=0, world_size=1)  # a single process's DistInfo, as far as batches care


def _store(path, src, *, k, value_kind, epochs=1):
    sched = Schedule(recipe("sre2l", output_size=(8, 8)), 0, src.sizes, 32, epochs)
    spec = sched.store_spec(10, k, value_codec="fp32", value_kind=value_kind, temperature=STORE_T)
    with create_store(str(path), spec) as w:
        for e in range(epochs):
            for b in range(sched.batches_per_epoch):
                u = sched.unit(e, b)
                logits = np.random.default_rng(b).normal(scale=8.0, size=(u.count, 10)).astype(np.float32)
                w.write(replace(u, logits=logits))
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("batches")
    images, labels = digits()
    np.savez(root / "images.npz", images=images[:64], labels=labels[:64])
    src = ArraySource(images[:64], labels[:64])
    return {"images": str(root / "images.npz"), "src": src, "root": root, "dataset": load_dataset("digits")}


def _config(data, **kw):
    return TrainConfig(out="x", images=data["images"], dataset="digits", workers=0, progress=False, **kw)


def _loader_targets(data, store, temperature=None):
    ds = data["dataset"]
    cfg = LoaderConfig(channels=1, mean=tuple(ds.mean), std=tuple(ds.std), num_workers=0, output_size=(8, 8),
                       temperature=temperature)
    with make_loader(data["images"], store, cfg) as loader:
        return [t for _x, t, _m in loader.epoch(0)]


def test_train_T_on_a_logit_store_gives_the_loaders_targets(data):
    """`ddpipe train -T 5` on a logit store: exactly the targets of LoaderConfig(temperature=5)."""
    store = _store(data["root"] / "logits.zarr", data["src"], k=4, value_kind="logits")
    batches = make_batches(_config(data, labels=store, temperature=5.0), data["dataset"], ONE, "cpu")
    try:
        assert isinstance(batches, StoreBatches) and batches.temperature == 5.0
        got = [t for _x, t, _m in batches.epoch(0)]
    finally:
        batches.close()
    want = _loader_targets(data, store, temperature=5.0)
    assert len(got) == len(want) == 2
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    # and they are not the store's own (T = 20) targets
    assert not torch.allclose(got[0], _loader_targets(data, store)[0])


def test_a_probability_store_keeps_its_targets_and_T_is_the_losss(data):
    store = _store(data["root"] / "probs.zarr", data["src"], k=4, value_kind="probs")
    batches = make_batches(_config(data, labels=store, temperature=5.0), data["dataset"], ONE, "cpu")
    try:
        got = [t for _x, t, _m in batches.epoch(0)]
        loss = batches.criterion()
    finally:
        batches.close()
    for a, b in zip(got, _loader_targets(data, store)):
        assert torch.equal(a, b)
    out = torch.randn(got[0].shape[0], 10)
    assert torch.equal(loss(out, got[0]), kd_loss(5.0)(out, got[0]))


def test_every_label_mode_is_a_train_batches(data):
    store = _store(data["root"] / "modes.zarr", data["src"], k=4, value_kind="logits")
    ds = data["dataset"]
    made = [make_batches(_config(data, labels=store), ds, ONE, "cpu"),
            make_batches(_config(data, hard_labels=True, epochs=2, batch_size=16), ds, ONE, "cpu"),
            make_batches(_config(data, hard_labels=True, augment="dsa", epochs=2, batch_size=16), ds, ONE, "cpu")]
    try:
        assert [type(b).__name__ for b in made] == ["StoreBatches", "HardLabelBatches", "DSABatches"]
        for b in made:
            assert isinstance(b, TrainBatches), type(b)
            assert callable(b.criterion()) and b.epochs >= 1 and b.batch_size >= 1 and len(b.source) == 64
        assert made[0].store is not None and made[0].label_seconds == 0.0
        assert made[1].store is None and made[1].label_seconds is None and made[2].store is None
        hard = made[1]
        assert isinstance(hard, HardLabelBatches)
        images, targets, _ = next(iter(hard.epoch(1)))
        assert images.shape == (16, 1, 8, 8) and torch.allclose(targets.sum(1), torch.ones(16))
    finally:
        for b in made:
            b.close()


def _data_object_bytes(store, shard):
    """Bytes of one shard's data-array objects, by walking the folder (no zarr.json, no commit records)."""
    total = 0
    for root, _, files in os.walk(store):
        for f in files:
            parts = os.path.relpath(os.path.join(root, f), store).split(os.sep)
            if f != "zarr.json" and parts[0] != "commit_shard" and parts[1:3] == ["c", str(shard)]:
                total += os.path.getsize(os.path.join(root, f))
    return total


def test_label_bytes_are_the_stores_shard_sizes(data):
    store = _store(data["root"] / "bytes.zarr", data["src"], k=4, value_kind="logits", epochs=3)
    reader = open_store(store)
    assert reader.num_shards >= 2
    sizes = [reader.shard_bytes(s) for s in range(reader.num_shards)]
    assert sizes == [_data_object_bytes(store, s) for s in range(reader.num_shards)] and min(sizes) > 0
    counted = LabelBytesRead(reader)
    for epoch in (0, 0, 1, 2):  # an epoch read twice counts once
        counted.add_epoch(epoch)
    ups = reader.spec.units_per_shard
    shards = {u // ups for e in range(3) for u in reader.epoch_units(e)}
    assert counted.shards == shards and counted.bytes == sum(sizes[s] for s in shards)


def test_shard_bytes_behind_a_url_are_the_objects_sizes(data):
    """The same count for a store behind an fsspec URL (fsspec's in-memory filesystem here)."""
    import uuid

    import fsspec

    url = f"memory://ddpipe-bytes-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    try:
        _store(url, data["src"], k=4, value_kind="logits", epochs=2)
        reader = open_store(url)
        root = url.removeprefix("memory://")
        for s in range(reader.num_shards):
            want = sum(fs.size(p) for p in fs.find(root) if p.split(root, 1)[1].split("/")[2:4] == ["c", str(s)]
                       and p.split(root, 1)[1].split("/")[1] != "commit_shard")
            assert reader.shard_bytes(s) == want > 0
    finally:
        fs.rm(url.removeprefix("memory://"), recursive=True)
