"""``info``: what a store holds and what it costs on disk, next to SRe2L's layout for the same units."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .location import store_location
from .metadata import is_local
from .reader import open_store
from .spec import StoreSpec

# SRe2L's relabel writes, per (epoch, batch), torch.save([coords, flip, mix_index, lam, bbox, logits]):
# fp16 logits [b, C], float32 coords [b, 4], bool flips [b], int64 mix_index [b], a float lambda
# and four int64 box numbers. Payload bytes only; torch.save's container adds ~1-2 KB per file.
SRE2L_BYTES_PER_SAMPLE_FIXED = 16 + 1 + 8
SRE2L_BYTES_PER_FILE_FIXED = 8 + 32


def sre2l_bytes(spec: StoreSpec, counts: np.ndarray) -> int:
    """Bytes of SRe2L's per-batch full-fp16 files holding units with these sample counts."""
    counts = np.asarray(counts, dtype=np.int64)
    per_sample = 2 * spec.num_classes + SRE2L_BYTES_PER_SAMPLE_FIXED
    return int(counts.sum() * per_sample + len(counts) * SRE2L_BYTES_PER_FILE_FIXED)


def unit_counts(spec: StoreSpec, plan: np.ndarray) -> np.ndarray:
    batches = np.asarray(plan)[:, 1]
    return np.where(batches == spec.batches_per_epoch - 1, spec.last_batch_size, spec.batch_size)


def disk_usage(path: str) -> tuple[int, dict[str, int]]:
    """Total bytes of the store's files, and bytes per top-level array."""
    total, per = 0, {}
    for root, _dirs, files in os.walk(path):
        rel = os.path.relpath(root, path)
        top = rel.split(os.sep)[0] if rel != "." else "(group)"
        for f in files:
            n = os.path.getsize(os.path.join(root, f))
            total += n
            per[top] = per.get(top, 0) + n
    return total, dict(sorted(per.items()))


def remote_usage(reader) -> tuple[int, dict[str, int]]:
    """Bytes of a remote store's objects: one recursive listing (object stores return sizes with the
    names: a few LIST requests per thousand objects), else one size request per key."""
    from zarr.core.sync import sync

    store = reader._group.store
    fs = getattr(store, "fs", None)
    if fs is not None and hasattr(fs, "_find"):
        root = str(getattr(store, "path", "") or "").rstrip("/")

        async def listing():
            return await fs._find(root, detail=True)

        total, per = 0, {}
        for name, entry in sync(listing()).items():
            key = name[len(root):].lstrip("/") if root and name.startswith(root) else name
            n = int(entry.get("size") or 0)
            top = key.split("/")[0] if "/" in key else "(group)"
            total += n
            per[top] = per.get(top, 0) + n
        return total, dict(sorted(per.items()))

    async def walk():
        total, per = 0, {}
        async for key in store.list():
            n = await store.getsize(key)
            top = key.split("/")[0] if "/" in key else "(group)"
            total += n
            per[top] = per.get(top, 0) + n
        return total, per

    return sync(walk())


def store_info(path: str | os.PathLike, *, backend: str = "auto", storage_options: dict | None = None) -> dict[str, Any]:
    """The fields of ``ddpipe info --json`` (``docs/format.md`` §info). ``storage_options``: for a
    store behind a URL, the fsspec options (``s3://``: s3fs's, e.g. ``client_kwargs.endpoint_url``)."""
    path = store_location(path)
    r = open_store(path, backend=backend, storage_options=storage_options)
    s = r.spec
    total, per_array = disk_usage(path) if is_local(path) else remote_usage(r)
    counts = unit_counts(s, r.plan)
    complete = np.zeros(r.num_units, dtype=bool)
    for sh in np.flatnonzero(r.committed):
        units = r.shard_units(int(sh))
        complete[units.start : units.stop] = True
    samples_done = int(counts[complete].sum())
    sre2l = sre2l_bytes(s, counts)
    return {
        "path": path,
        "format_version": r.meta.format_version,
        "num_samples": s.num_samples,
        "num_classes": s.num_classes,
        "epochs": s.epochs,
        "batch_size": s.batch_size,
        "batches_per_epoch": s.batches_per_epoch,
        "k": s.k,
        "value_codec": s.value_codec,
        "value_kind": s.value_kind,
        "exact_fields": s.exact_fields,
        "index_coding": s.index_coding,
        "derived_fields": s.derived_fields,
        "temperature": s.temperature,
        "seed": s.seed,
        "units": r.num_units,
        "complete_units": int(complete.sum()),
        "shards": r.num_shards,
        "complete_shards": int(r.committed.sum()),
        "pruning": s.pruning,
        "keep": s.pruning["keep"] if s.pruning else 1.0,
        "bytes_on_disk": total,
        "bytes_by_array": per_array,
        "bytes_per_sample_epoch": (total / samples_done) if samples_done else None,
        "sre2l_equivalent_bytes": sre2l,
        "sre2l_full_schedule_bytes": sre2l_bytes(s, unit_counts(s, _all_rows(s))),
        "compression_vs_sre2l": (sre2l / total) if total else None,
        "image_set_hash": s.image_set_hash,
        "teacher_hash": s.teacher_hash,
        "augmentation": s.augmentation,
        "provenance": r.meta.provenance,
        "read_backend": r.backend,
    }


def _all_rows(spec: StoreSpec) -> np.ndarray:
    b = np.tile(np.arange(spec.batches_per_epoch), spec.epochs)
    return np.stack([np.zeros_like(b), b], axis=1)
