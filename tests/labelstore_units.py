"""Deterministic units for label-store tests: the same (spec, seed) always gives the same units.

Importable from test processes (SIGKILL and concurrency tests run writers in subprocesses).
"""

from __future__ import annotations

import numpy as np

from ddpipe.labelstore import StoreSpec, Unit


def make_unit(spec: StoreSpec, epoch: int, batch: int, seed: int = 0, label_mode: str = "logits") -> Unit:
    """One unit of a fake relabel run: a per-epoch permutation, random crops, cutmix, normal logits."""
    order = np.random.default_rng([seed, epoch]).permutation(spec.num_samples)
    ids = order[batch * spec.batch_size : (batch + 1) * spec.batch_size]
    b = len(ids)
    rng = np.random.default_rng([seed, epoch, batch, 1])
    h = rng.uniform(0.1, 1.0, b)
    w = rng.uniform(0.1, 1.0, b)
    crops = np.stack([rng.uniform(0, 1 - h), rng.uniform(0, 1 - w), h, w], axis=1)
    flips = rng.random(b) < 0.5
    kind = ("none", "cutmix", "mixup")[(epoch + batch) % 3]
    perm = rng.permutation(b)
    lam = float(rng.beta(1.0, 1.0))
    box = np.sort(rng.integers(0, 224, 4).reshape(2, 2), axis=0).T.reshape(-1)[[0, 2, 1, 3]]
    cutout = np.zeros((b, 4), np.int64)
    cutout[:, :2] = rng.integers(0, 100, (b, 2))
    cutout[:, 2:] = cutout[:, :2] + rng.integers(0, 100, (b, 2))
    kw: dict = {}
    if label_mode == "logits":
        kw["logits"] = rng.normal(0, 3, (b, spec.num_classes)).astype(np.float32)
    elif label_mode == "topk":
        idx = np.stack([rng.choice(spec.num_classes, spec.k, replace=False) for _ in range(b)])
        vals = np.sort(rng.dirichlet(np.ones(spec.k + 1), b)[:, : spec.k], axis=1)[:, ::-1].astype(np.float32)
        kw["topk"] = (idx, vals)
    else:
        raise ValueError(label_mode)
    # per-sample cutout colours on every other unit; the rest store the spec's constant (or zeros)
    if (epoch + batch) % 2 == 0:
        kw["cutout_fill"] = rng.integers(0, 256, (b, 3))
    return Unit(epoch, batch, ids, crops, flips, kind, perm, lam, box, cutout, **kw)


def all_units(spec: StoreSpec, plan=None, seed: int = 0, label_mode: str = "logits"):
    rows = plan if plan is not None else [(e, b) for e in range(spec.epochs) for b in range(spec.batches_per_epoch)]
    for e, b in rows:
        yield make_unit(spec, int(e), int(b), seed, label_mode)


def raw_arrays(path: str) -> dict[str, np.ndarray]:
    """Every array of a store as zarr-python decodes it (for exact comparisons). In format-3
    commit records the store id (bytes 8-23, random per store) is zeroed: the rest of a record
    (shard, unit range, each object's SHA-256) must match byte for byte between two stores
    written with the same units, which makes equal records mean byte-identical objects."""
    import zarr

    g = zarr.open_group(path, mode="r")
    out = {name: np.asarray(arr[:]) for name, arr in g.arrays()}
    rec = out.get("commit_shard")
    if rec is not None and rec.ndim == 2:
        rec = rec.copy()
        rec[:, 8:24] = 0
        out["commit_shard"] = rec
    return out


def downgrade_to_format_2(path: str) -> None:
    """Turn a store into what format 2 wrote: one-byte commit flags instead of commit records, no
    ``store_id`` / ``plan_sha256`` / ``checksum`` attributes (every data array is the same)."""
    import zarr
    from zarr.codecs import BytesCodec, Crc32cCodec

    g = zarr.open_group(path, mode="r+")
    attrs = dict(g.attrs["ddpipe"])
    if attrs["format_version"] < 3:
        return
    records = np.asarray(g["commit_shard"][:])
    flags = (records[:, :4] == np.frombuffer(b"DDPC", np.uint8)).all(axis=1).astype(np.uint8)
    del g["commit_shard"]
    c = g.create_array("commit_shard", shape=flags.shape, dtype="u1", chunks=(1,), serializer=BytesCodec(),
                       compressors=[Crc32cCodec()], fill_value=0, dimension_names=["shard"])
    c.with_config({"write_empty_chunks": True})[:] = flags
    for key in ("store_id", "plan_sha256", "checksum"):
        attrs.pop(key, None)
    attrs["format_version"] = 2
    g.attrs["ddpipe"] = attrs


def downgrade_to_format_1(path: str) -> None:
    """Turn a store into what format 1 wrote: format 2's layout without the ``sample_cutout_fill``
    array, ``format_version`` 1 (every other array and the attributes are the same in both formats)."""
    import zarr

    downgrade_to_format_2(path)
    g = zarr.open_group(path, mode="r+")
    del g["sample_cutout_fill"]
    attrs = dict(g.attrs["ddpipe"])
    attrs["format_version"] = 1
    g.attrs["ddpipe"] = attrs
