"""Reading a label store: one unit, an epoch slab, or every unit in training order.

Before a shard is read for the first time the reader checks that it was committed and that each
array's shard object is present; a read that fails its checksum or decodes badly raises
:class:`ChunkCorruptError` naming the array and the units. Damaged data is never returned.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ddpipe.labelstore.backends import DEFAULT_CACHE_BYTES, make_backend
from ddpipe.labelstore.codecs import get_codec
from ddpipe.labelstore.errors import (
    ChunkCorruptError,
    ImageSetMismatchError,
    IncompleteUnitError,
    SpecError,
    StoreError,
)
from ddpipe.labelstore.layout import (
    COMMIT_ARRAY,
    CROP_SCALE,
    FILL_ARRAY,
    FILL_CHANNELS,
    array_defs,
    augmentation_fill,
    num_shards,
    shard_key,
    shard_units,
)
from ddpipe.labelstore.metadata import StoreMeta, is_local, read_meta
from ddpipe.labelstore.spec import MIX_KINDS, StoreSpec
from ddpipe.labelstore.topk import densify


@dataclass
class UnitData:
    """One unit, padding slots removed. Boxes as in :class:`ddpipe.labelstore.writer.Unit`."""

    unit: int  # position in the store (training order)
    epoch: int
    batch: int
    sample_ids: np.ndarray  # int64 [b]
    crops: np.ndarray  # float32 [b, 4] (top, left, height, width) fractions of the source image
    flips: np.ndarray  # bool [b]
    cutout: np.ndarray  # int32 [b, 4] (y0, x0, y1, x1) output pixels; all zero = none
    cutout_fill: np.ndarray  # uint8 [b, 3] each sample's cutout colour (RGB, 0..255)
    mix_kind: str  # none | cutmix | mixup
    mix_perm: np.ndarray  # int64 [b]
    mix_lambda: float
    mix_box: np.ndarray  # int32 [4] (y0, x0, y1, x1) output pixels
    indices: np.ndarray  # int64 [b, k]
    values: np.ndarray  # float32 [b, k] probabilities at the store's temperature

    @property
    def count(self) -> int:
        return len(self.sample_ids)

    def dense(self, num_classes: int) -> np.ndarray:
        """Dense targets ``[b, num_classes]`` by marginal smoothing (``docs/format.md``)."""
        return densify(self.indices, self.values, num_classes)


@dataclass
class Slab:
    """Consecutive units ``[start, stop)`` as stored (padded to the batch size). The arrays are
    those of the current format: for a format-1 store, ``sample_cutout_fill`` is filled in from
    the augmentation record's constant colour (:func:`ddpipe.labelstore.layout.augmentation_fill`)."""

    start: int
    arrays: dict[str, np.ndarray]
    values: np.ndarray  # float32 [n, B, k], decoded

    def __len__(self) -> int:
        return len(self.arrays["unit_count"])

    def unit(self, i: int) -> UnitData:
        a = self.arrays
        b = int(a["unit_count"][i])
        return UnitData(
            unit=self.start + i,
            epoch=int(a["unit_epoch"][i]),
            batch=int(a["unit_batch"][i]),
            sample_ids=a["sample_id"][i, :b].astype(np.int64),
            crops=(a["sample_crop"][i, :b].astype(np.float32) / np.float32(CROP_SCALE)),
            flips=a["sample_flip"][i, :b].astype(bool),
            cutout=a["sample_cutout"][i, :b].astype(np.int32),
            cutout_fill=a[FILL_ARRAY][i, :b].astype(np.uint8),
            mix_kind=MIX_KINDS[int(a["unit_mix_kind"][i])],
            mix_perm=a["unit_mix_perm"][i, :b].astype(np.int64),
            mix_lambda=float(a["unit_mix_lambda"][i]),
            mix_box=a["unit_mix_box"][i].astype(np.int32),
            indices=a["label_index"][i, :b].astype(np.int64),
            values=self.values[i, :b],
        )

    def __iter__(self) -> Iterator[UnitData]:
        return (self.unit(i) for i in range(len(self)))


class StoreReader:
    """Read-only view of a store. Use :func:`open_store`."""

    def __init__(self, path: str, group, meta: StoreMeta, backend: str = "auto", storage_options=None,
                 cache_bytes: int = DEFAULT_CACHE_BYTES):
        self.path = path
        self.meta = meta
        self.spec: StoreSpec = meta.spec
        self.num_units = meta.num_units
        self.num_shards = num_shards(self.num_units, self.spec)
        self.codec = get_codec(self.spec.value_codec)
        self._group = group
        self._local = is_local(path)
        self.format_version = meta.format_version
        self._defs = array_defs(self.spec, self.format_version)  # the arrays this store has
        self.array_names = [d.name for d in self._defs]
        self._default_fill = augmentation_fill(self.spec.augmentation)
        for name in [*self.array_names, COMMIT_ARRAY]:
            if name not in group:
                raise ChunkCorruptError(f"{path}: array {name!r} is missing; the store is damaged or incomplete")
        self._backend = make_backend(backend, group, path, self._local, [*self.array_names, COMMIT_ARRAY], cache_bytes)
        self.backend = self._backend.name
        self._checked: set[int] = set()
        self._lock = threading.Lock()
        plan_arrays = self._read_checked(["unit_epoch", "unit_batch"], 0, self.num_units, check=False)
        self.plan = np.stack([plan_arrays["unit_epoch"], plan_arrays["unit_batch"]], axis=1).astype(np.int64)
        self._flat = self.plan[:, 0] * self.spec.batches_per_epoch + self.plan[:, 1]
        self.refresh()

    # --- state ----------------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read the commit flags (to follow a store that is still being written)."""
        try:
            flags = self._backend.read(COMMIT_ARRAY, 0, self.num_shards)
        except Exception as e:  # noqa: BLE001 - any backend failure means damaged flags
            raise ChunkCorruptError(f"{self.path}: array {COMMIT_ARRAY!r} cannot be read: {e}") from None
        self.committed = np.asarray(flags, dtype=bool)

    @property
    def complete_units(self) -> int:
        return sum(len(self.shard_units(s)) for s in np.flatnonzero(self.committed))

    @property
    def complete(self) -> bool:
        return bool(self.committed.all())

    def shard_units(self, shard: int) -> range:
        return shard_units(shard, self.num_units, self.spec)

    def unit_index(self, epoch: int, batch: int) -> int:
        key = int(epoch) * self.spec.batches_per_epoch + int(batch)
        i = int(np.searchsorted(self._flat, key))
        if i == self.num_units or self._flat[i] != key:
            raise SpecError(f"(epoch {epoch}, batch {batch}) is not a unit of the store at {self.path}")
        return i

    def epoch_units(self, epoch: int) -> range:
        """Units of one epoch (contiguous: the store is in training order)."""
        lo = int(np.searchsorted(self._flat, epoch * self.spec.batches_per_epoch))
        hi = int(np.searchsorted(self._flat, (epoch + 1) * self.spec.batches_per_epoch))
        return range(lo, hi)

    def describe_units(self, start: int, stop: int) -> str:
        e0, b0 = self.plan[start]
        e1, b1 = self.plan[stop - 1]
        if stop - start == 1:
            return f"unit {start} (epoch {e0}, batch {b0})"
        return f"units {start}-{stop - 1} (epoch {e0} batch {b0} .. epoch {e1} batch {b1})"

    # --- checks -----------------------------------------------------------------------------
    def check_shard(self, shard: int, *, force: bool = False) -> None:
        """Raise unless ``shard`` is committed and all its objects are present."""
        if shard in self._checked and not force:
            return
        units = self.shard_units(shard)
        if not self.committed[shard]:
            raise IncompleteUnitError(
                f"{self.path}: {self.describe_units(units.start, units.stop)} not written yet (shard {shard} is not committed)"
            )
        for d in self._defs:
            key = shard_key(d.name, shard, 1 + len(d.trailing))
            if not self._exists(key):
                raise ChunkCorruptError(
                    f"{self.path}: array {d.name!r} chunk {key!r} holding {self.describe_units(units.start, units.stop)} is missing"
                )
        with self._lock:
            self._checked.add(shard)

    def _exists(self, key: str) -> bool:
        if self._local:
            return os.path.isfile(os.path.join(self.path, key))
        from zarr.core.sync import sync

        return bool(sync(self._group.store.exists(key)))

    def _read_checked(self, names, start: int, stop: int, check: bool = True) -> dict[str, np.ndarray]:
        if not 0 <= start < stop <= self.num_units:
            raise SpecError(f"unit range [{start}, {stop}) is outside the store's {self.num_units} units")
        if check:
            ups = self.spec.units_per_shard
            for s in range(start // ups, (stop - 1) // ups + 1):
                self.check_shard(s)
        try:
            return self._backend.read_many(names, start, stop)
        except Exception as e:  # noqa: BLE001 - checksum, truncation and decode errors alike
            where = self.describe_units(start, stop)
            bad = self._find_bad_array(names, start, stop)
            raise ChunkCorruptError(
                f"{self.path}: array {bad!r} holding {where} is damaged (checksum or decode failed: {_short(e)})"
            ) from None

    def _find_bad_array(self, names, start: int, stop: int) -> str:
        for n in names:
            try:
                self._backend.read(n, start, stop)
            except Exception:  # noqa: BLE001
                return n
        return "?"

    # --- reads ----------------------------------------------------------------------------------
    def read_slab(self, start: int, stop: int) -> Slab:
        """Units ``[start, stop)`` in one read per array."""
        arrays = self._read_checked(self.array_names, start, stop)
        if FILL_ARRAY not in arrays:  # format 1: every sample has the schedule's constant colour
            valid = np.arange(self.spec.batch_size)[None, :] < arrays["unit_count"][:, None]
            fill = np.zeros((stop - start, self.spec.batch_size, FILL_CHANNELS), np.uint8)
            fill[valid] = self._default_fill  # padding slots stay 0, as a writer stores them
            arrays[FILL_ARRAY] = fill
        values = self.codec.decode(arrays["label_value"], arrays.get("label_scale"))
        return Slab(start, arrays, values)

    def read_unit(self, unit: int) -> UnitData:
        return self.read_slab(unit, unit + 1).unit(0)

    def read_batch(self, epoch: int, batch: int) -> UnitData:
        return self.read_unit(self.unit_index(epoch, batch))

    def read_epoch(self, epoch: int) -> Slab:
        units = self.epoch_units(epoch)
        if not len(units):
            raise SpecError(f"{self.path} holds no units of epoch {epoch}")
        return self.read_slab(units.start, units.stop)

    def iter_slabs(self, start: int = 0, prefetch: bool = True) -> Iterator[Slab]:
        """Shard-aligned slabs from unit ``start`` on, the next one read in the background."""
        ups = self.spec.units_per_shard
        bounds = []
        s = start
        while s < self.num_units:
            e = min(self.num_units, (s // ups + 1) * ups)
            bounds.append((s, e))
            s = e
        if not prefetch:
            for s, e in bounds:
                yield self.read_slab(s, e)
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(self.read_slab, *bounds[0]) if bounds else None
            for i in range(len(bounds)):
                slab = pending.result()
                pending = pool.submit(self.read_slab, *bounds[i + 1]) if i + 1 < len(bounds) else None
                yield slab

    def iter_units(self, start: int = 0, prefetch: bool = True) -> Iterator[UnitData]:
        """Every unit from ``start`` on, in training order."""
        for slab in self.iter_slabs(start, prefetch):
            yield from slab

    def dense_targets(self, unit: UnitData) -> np.ndarray:
        return unit.dense(self.spec.num_classes)

    def __repr__(self) -> str:
        s = self.spec
        return (
            f"StoreReader({self.path!r}, units={self.num_units}, samples={s.num_samples}, classes={s.num_classes}, "
            f"epochs={s.epochs}, batch={s.batch_size}, k={s.k}, codec={s.value_codec}, backend={self.backend})"
        )


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:200]


def open_store(
    path: str | os.PathLike,
    *,
    backend: str = "auto",
    image_set_hash: str | None = None,
    storage_options: dict | None = None,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> StoreReader:
    """Open a store read-only.

    ``backend``: ``auto`` (tensorstore when installed and the store is local), ``tensorstore``
    or ``zarr``. ``image_set_hash``: when given, the store must have been built for that image set.
    ``cache_bytes``: the tensorstore backend's cache (shard indexes and recent chunks; default 32 MiB).
    """
    path = os.fspath(path)
    group, meta = read_meta(path, storage_options)
    if image_set_hash is not None and meta.spec.image_set_hash and image_set_hash != meta.spec.image_set_hash:
        raise ImageSetMismatchError(
            f"{path} was built for image set {meta.spec.image_set_hash[:16]}…, not {image_set_hash[:16]}…; "
            "relabel the images you train on (crops and labels refer to specific images)"
        )
    try:
        return StoreReader(path, group, meta, backend, storage_options, cache_bytes)
    except ValueError as e:
        raise StoreError(f"{path}: {e}") from None
