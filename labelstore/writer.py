"""Writing a label store: units in any order, shards committed only when complete.

A *unit* is one relabel batch. The writer buffers units per writer shard (``units_per_shard``
consecutive units, one epoch by default); when the last unit of a shard arrives it writes every
array's shard object and then sets ``commit_shard[s] = 1``. A reader never sees a shard before
that flag, so a writer killed at any moment leaves only whole committed shards behind, and a
resumed writer (``create_store(..., exist_ok=True)`` or :func:`open_writer`) rewrites the rest.
Separate processes may write disjoint shards of one store at the same time: each shard is its
own set of objects, including its commit flag.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from ddpipe.labelstore.codecs import get_codec
from ddpipe.labelstore.errors import FormatVersionError, SpecError, StoreError, StoreExistsError
from ddpipe.labelstore.layout import (
    COMMIT_ARRAY,
    CROP_SCALE,
    FILL_ARRAY,
    FILL_CHANNELS,
    array_defs,
    augmentation_fill,
    create_arrays,
    num_shards,
    shard_units,
)
from ddpipe.labelstore.metadata import is_local, make_attrs, open_group, parse_attrs
from ddpipe.labelstore.spec import FORMAT_VERSION, MIX_KINDS, StoreSpec, parse_plan
from ddpipe.labelstore.topk import softmax_at, top_k

log = logging.getLogger(__name__)

DEFAULT_ZSTD_LEVEL = 5


@dataclass
class Unit:
    """One relabel batch as the teacher saw it.

    Boxes are ``(top, left, height, width)`` fractions of the source image for crops (torchvision's
    RandomResizedCrop coordinates, as SRe2L stores them), and ``(y0, x0, y1, x1)`` pixels of the
    output image for the CutMix box and cutout boxes (half-open). Give exactly one of ``logits``
    (softmax at the store's temperature is applied), ``probs`` (already at that temperature) or
    ``topk = (indices, values)`` (already selected probabilities, e.g. from an importer).
    ``cutout_fill`` is each sample's cutout colour, 0..255 per RGB channel (LPLD draws one per
    sample); ``None`` stores the constant ``fill`` of the spec's augmentation record, or zeros.
    """

    epoch: int
    batch: int
    sample_ids: Sequence[int]
    crops: Any  # [b, 4] float fractions (top, left, height, width)
    flips: Any = None  # [b] bool; None = no flips
    mix_kind: str = "none"  # none | cutmix | mixup
    mix_perm: Any = None  # [b] in-batch partner of each slot; None = identity
    mix_lambda: float = 1.0  # weight of the slot's own image (SRe2L's lam)
    mix_box: Any = None  # (y0, x0, y1, x1) output pixels of the pasted region (cutmix)
    cutout: Any = None  # [b, 4] (y0, x0, y1, x1) output pixels per sample; None = no cutout
    logits: Any = None
    probs: Any = None
    topk: Any = None
    cutout_fill: Any = None  # [b, 3] integers 0..255, each sample's cutout colour; None = the spec's constant


@dataclass
class _ShardBuffer:
    arrays: dict[str, np.ndarray]
    received: np.ndarray  # bool [units in shard]
    units: range = field(default_factory=lambda: range(0))


class StoreWriter:
    """Writes units into an existing store. Use :func:`create_store` or :func:`open_writer`."""

    def __init__(self, group, path: str):
        self._group = group
        self.path = path
        meta = parse_attrs(dict(group.attrs), path)
        if meta.format_version != FORMAT_VERSION:
            raise FormatVersionError(
                f"{path} has format_version {meta.format_version}; this ddpipe writes format_version "
                f"{FORMAT_VERSION} only: read it as it is, or prune or relabel into a new store"
            )
        self.spec: StoreSpec = meta.spec
        self.num_units = meta.num_units
        self.codec = get_codec(self.spec.value_codec)
        self._defs = {d.name: d for d in array_defs(self.spec)}
        # Every shard object is written even when it holds only fill values (an all-zero cutout
        # array, say): a missing object must always mean damage, never "nothing to store".
        cfg = {"write_empty_chunks": True}
        self._arrays = {name: group[name].with_config(cfg) for name in self._defs}
        self._commit = group[COMMIT_ARRAY].with_config(cfg)
        epochs = np.asarray(self._arrays["unit_epoch"][:], dtype=np.int64)
        batches = np.asarray(self._arrays["unit_batch"][:], dtype=np.int64)
        self.plan = np.stack([epochs, batches], axis=1)
        flat = epochs * self.spec.batches_per_epoch + batches
        self._unit_of = dict(zip(flat.tolist(), range(self.num_units)))
        self._committed = np.asarray(self._commit[:], dtype=bool)
        self._buffers: dict[int, _ShardBuffer] = {}
        self.num_shards = num_shards(self.num_units, self.spec)
        self._default_fill = augmentation_fill(self.spec.augmentation)

    # --- what is left to do --------------------------------------------------------------
    def unit_index(self, epoch: int, batch: int) -> int:
        try:
            return self._unit_of[int(epoch) * self.spec.batches_per_epoch + int(batch)]
        except KeyError:
            raise SpecError(f"(epoch {epoch}, batch {batch}) is not a unit of the store at {self.path}") from None

    def shard_of(self, unit: int) -> int:
        return unit // self.spec.units_per_shard

    def is_committed(self, epoch: int, batch: int) -> bool:
        return bool(self._committed[self.shard_of(self.unit_index(epoch, batch))])

    def pending_shards(self, rank: int = 0, world_size: int = 1) -> list[int]:
        """Uncommitted shards, the ones of ``rank`` when ``world_size`` processes share the work."""
        return [s for s in range(self.num_shards) if not self._committed[s] and s % world_size == rank]

    def pending_units(self, rank: int = 0, world_size: int = 1) -> np.ndarray:
        """(epoch, batch) rows still to write, in training order, for this rank's shards."""
        rows = [self.plan[u] for s in self.pending_shards(rank, world_size) for u in self.shard_units(s)]
        return np.asarray(rows, dtype=np.int64).reshape(-1, 2)

    def shard_units(self, shard: int) -> range:
        return shard_units(shard, self.num_units, self.spec)

    @property
    def complete(self) -> bool:
        return bool(self._committed.all())

    # --- writing ---------------------------------------------------------------------------
    def write(self, unit: Unit) -> bool:
        """Buffer one unit; write and commit its shard if it completes it. Returns whether it did.

        A unit of an already committed shard is checked for shape and then skipped, so a resumed
        run may simply replay its schedule from the start.
        """
        u = self.unit_index(unit.epoch, unit.batch)
        return self._put(u, self._encode(unit))

    def write_rows(self, epoch: int, batch: int, rows: dict[str, np.ndarray]) -> bool:
        """Write one unit given as stored rows (every array of the layout, padded). Used to copy
        units between stores without decoding them (``prune``, importers)."""
        u = self.unit_index(epoch, batch)
        missing = set(self._defs) - set(rows)
        if missing:
            raise SpecError(f"unit (epoch {epoch}, batch {batch}): rows lack arrays {sorted(missing)}")
        for name, d in self._defs.items():
            if np.shape(rows[name]) != d.trailing:
                raise SpecError(f"unit (epoch {epoch}, batch {batch}): {name} must have shape {d.trailing}")
        return self._put(u, rows)

    def _put(self, u: int, rows: dict[str, Any]) -> bool:
        s = self.shard_of(u)
        if self._committed[s]:
            return False
        buf = self._buffers.get(s)
        if buf is None:
            units = self.shard_units(s)
            n = len(units)
            arrays = {
                name: np.full((n, *d.trailing), d.fill_value, dtype=d.dtype) for name, d in self._defs.items()
            }
            buf = self._buffers[s] = _ShardBuffer(arrays, np.zeros(n, dtype=bool), units)
        i = u - buf.units.start
        for name, value in rows.items():
            buf.arrays[name][i] = value
        buf.received[i] = True
        if buf.received.all():
            self._flush(s)
            return True
        return False

    def write_many(self, units: Iterable[Unit]) -> int:
        return sum(self.write(u) for u in units)

    def _flush(self, s: int) -> None:
        buf = self._buffers.pop(s)
        sl = slice(buf.units.start, buf.units.stop)
        for name, data in buf.arrays.items():
            self._arrays[name][sl] = data
        self._commit[s] = 1  # last: the shard becomes visible only now
        self._committed[s] = True

    def close(self) -> int:
        """Drop incomplete shard buffers (they stay uncommitted) and return how many units that lost."""
        lost = int(sum(b.received.sum() for b in self._buffers.values()))
        if lost:
            log.warning("%s: %d buffered units of incomplete shards were not committed", self.path, lost)
        self._buffers.clear()
        return lost

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- one unit to rows --------------------------------------------------------------------
    def _encode(self, unit: Unit) -> dict[str, Any]:
        spec = self.spec
        where = f"unit (epoch {unit.epoch}, batch {unit.batch})"
        b = spec.batch_count(int(unit.batch))
        B = spec.batch_size

        def arr(value, name, shape, dtype=None):
            a = np.asarray(value) if dtype is None else np.asarray(value, dtype=dtype)
            if a.shape != shape:
                raise SpecError(f"{where}: {name} must have shape {shape}, got {a.shape}")
            return a

        def pad(a, fill=0):
            out = np.full((B, *a.shape[1:]), fill, dtype=a.dtype)
            out[:b] = a
            return out

        ids = arr(unit.sample_ids, "sample_ids", (b,))
        if not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0 or ids.max() >= spec.num_samples:
            raise SpecError(f"{where}: sample_ids must be integers in [0, {spec.num_samples})")
        crops = arr(unit.crops, "crops", (b, 4), np.float64)
        if not np.all(np.isfinite(crops)) or crops.min() < 0 or crops.max() > 1:
            raise SpecError(f"{where}: crops must be fractions in [0, 1] (top, left, height, width)")
        flips = np.zeros(b, bool) if unit.flips is None else arr(unit.flips, "flips", (b,)).astype(bool)
        if unit.mix_kind not in MIX_KINDS:
            raise SpecError(f"{where}: mix_kind must be one of {MIX_KINDS}, got {unit.mix_kind!r}")
        perm = np.arange(b) if unit.mix_perm is None else arr(unit.mix_perm, "mix_perm", (b,))
        if not np.array_equal(np.sort(perm), np.arange(b)):
            raise SpecError(f"{where}: mix_perm must be a permutation of 0..{b - 1}")
        lam = float(unit.mix_lambda)
        if not 0.0 <= lam <= 1.0:
            raise SpecError(f"{where}: mix_lambda must be in [0, 1], got {lam}")
        box = np.zeros(4, np.int64) if unit.mix_box is None else arr(unit.mix_box, "mix_box", (4,), np.int64)
        cut = np.zeros((b, 4), np.int64) if unit.cutout is None else arr(unit.cutout, "cutout", (b, 4), np.int64)
        for name, a in (("mix_box", box), ("cutout", cut)):
            if a.size and (a.min() < 0 or a.max() > 65535):
                raise SpecError(f"{where}: {name} must hold pixel coordinates in [0, 65535]")
        if unit.cutout_fill is None:
            fill = np.broadcast_to(self._default_fill, (b, FILL_CHANNELS))
        else:
            fill = arr(unit.cutout_fill, "cutout_fill", (b, FILL_CHANNELS))
            if fill.size and (
                not np.issubdtype(fill.dtype, np.number) or not np.all(np.isfinite(fill))
                or np.any(fill != np.rint(fill)) or fill.min() < 0 or fill.max() > 255
            ):
                raise SpecError(f"{where}: cutout_fill must hold integer colours in [0, 255]")
        idx, val = self._labels(unit, b, where)

        enc_val, scale = self.codec.encode(val)
        rows = {
            "unit_epoch": unit.epoch,
            "unit_batch": unit.batch,
            "unit_count": b,
            "unit_mix_kind": MIX_KINDS.index(unit.mix_kind),
            "unit_mix_lambda": np.float32(lam),
            "unit_mix_box": box.astype(np.uint16),
            "unit_mix_perm": np.concatenate([perm, np.arange(b, B)]).astype(spec.slot_dtype),
            "sample_id": pad(ids.astype(np.uint32), np.uint32(2**32 - 1)),
            "sample_crop": pad(np.rint(crops * CROP_SCALE).astype(np.uint16)),
            "sample_flip": pad(flips.astype(np.uint8)),
            "sample_cutout": pad(cut.astype(np.uint16)),
            FILL_ARRAY: pad(np.asarray(fill).astype(np.uint8)),
            "label_index": pad(idx.astype(spec.index_dtype)),
            "label_value": pad(enc_val),
        }
        if scale is not None:
            rows["label_scale"] = pad(scale)
        return rows

    def _labels(self, unit: Unit, b: int, where: str) -> tuple[np.ndarray, np.ndarray]:
        spec = self.spec
        given = [x is not None for x in (unit.logits, unit.probs, unit.topk)]
        if sum(given) != 1:
            raise SpecError(f"{where}: give exactly one of logits, probs or topk")
        if unit.topk is not None:
            idx = np.asarray(unit.topk[0])
            val = np.asarray(unit.topk[1], dtype=np.float32)
            if idx.shape != (b, spec.k) or val.shape != (b, spec.k):
                raise SpecError(f"{where}: topk must be two arrays of shape {(b, spec.k)}, got {idx.shape}, {val.shape}")
            if not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0 or idx.max() >= spec.num_classes:
                raise SpecError(f"{where}: topk indices must be integers in [0, {spec.num_classes})")
            if not np.all(np.isfinite(val)) or val.min() < 0 or val.max() > 1:
                raise SpecError(f"{where}: topk values must be probabilities in [0, 1]")
            return idx, val
        dense = unit.logits if unit.logits is not None else unit.probs
        dense = np.asarray(dense, dtype=np.float32)
        if dense.shape != (b, spec.num_classes):
            name = "logits" if unit.logits is not None else "probs"
            raise SpecError(f"{where}: {name} must have shape {(b, spec.num_classes)}, got {dense.shape}")
        probs = softmax_at(dense, spec.temperature) if unit.logits is not None else dense
        return top_k(probs, spec.k)


def _clear_local(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def create_store(
    path: str | os.PathLike,
    spec: StoreSpec,
    plan: Any = None,
    *,
    exist_ok: bool = False,
    overwrite: bool = False,
    provenance: dict | None = None,
    zstd_level: int = DEFAULT_ZSTD_LEVEL,
    storage_options: dict | None = None,
) -> StoreWriter:
    """Create a store for ``spec`` holding the units of ``plan`` (default: every unit).

    ``exist_ok=True`` reopens an existing store with the same spec and plan to resume it;
    ``overwrite=True`` replaces whatever is at ``path``.
    """
    path = os.fspath(path)
    units = parse_plan(spec, plan)
    local = is_local(path)
    exists = os.path.exists(os.path.join(path, "zarr.json")) if local else _remote_exists(path, storage_options)
    if exists and not overwrite:
        if not exist_ok:
            raise StoreExistsError(f"{path} already holds a store; pass exist_ok=True to resume it or overwrite=True")
        writer = open_writer(path, storage_options=storage_options)
        if writer.spec != spec or not np.array_equal(writer.plan, units):
            raise StoreExistsError(f"{path} holds a store with a different spec or unit plan; refusing to resume it")
        return writer
    if local and os.path.exists(path):
        if not overwrite and not (os.path.isdir(path) and not os.listdir(path)):
            raise StoreExistsError(f"{path} exists and is not an empty directory; pass overwrite=True to replace it")
        _clear_local(path)
    group = open_group(path, "w", storage_options)
    create_arrays(group, spec, len(units), zstd_level)
    group["unit_epoch"][:] = units[:, 0].astype(np.int32)
    group["unit_batch"][:] = units[:, 1].astype(np.int32)
    group.attrs.update(make_attrs(spec, len(units), provenance))
    return StoreWriter(group, path)


def open_writer(path: str | os.PathLike, *, storage_options: dict | None = None) -> StoreWriter:
    """Open an existing store to write its remaining shards (resume, or another process)."""
    path = os.fspath(path)
    group = open_group(path, "r+", storage_options)
    try:
        return StoreWriter(group, path)
    except KeyError as e:
        raise StoreError(f"{path} is missing array {e}; the store was not created completely") from None


def _remote_exists(path: str, storage_options: dict | None) -> bool:
    try:
        open_group(path, "r", storage_options)
        return True
    except StoreError:
        return False
