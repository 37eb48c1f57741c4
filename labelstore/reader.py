"""Reading a label store: one unit, an epoch slab, or every unit in training order.

Before a shard is read for the first time the reader checks that it was committed and that each
array's shard object is present; for format 3 also that the shard's commit record belongs to this
store, shard and unit range, and that each object hashes to the SHA-256 it records (the hashing
runs while the backend decodes). A read that fails its checksum or decodes badly raises
:class:`ChunkCorruptError`, a shard that is intact but not where it belongs
:class:`MisplacedShardError`, values out of their range :class:`StoredValueError`, each naming the
array and the units. The plan the reader checks against is recomputed from the spec. Damaged or
misplaced data is never returned. Format 4's bit-packed ``label_index`` is unpacked right after the
read (before any check), so a :class:`Slab`'s arrays hold class indices in every format.
"""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .backends import DEFAULT_CACHE_BYTES, make_backend
from .codecs import get_codec
from .binding import is_committed_row, plan_sha256, unpack_record
from .errors import (
    ChunkCorruptError,
    ImageSetMismatchError,
    IncompleteUnitError,
    MisplacedShardError,
    SpecError,
    StoredValueError,
    StoreError,
)
from .layout import (
    AUX_ARRAY,
    COMMIT_ARRAY,
    CROP_SCALE,
    DIGEST_ARRAY,
    FILL_ARRAY,
    FILL_CHANNELS,
    LSE_ARRAY,
    array_defs,
    augmentation_fill,
    num_shards,
    shard_key,
    shard_units,
)
from .location import store_location
from .metadata import StoreMeta, is_local, read_meta
from .objects import Objects
from .plan import recomputed_plan
from .fields import FieldsFn, derive_arrays
from .packing import from_gaps, unpack_indices
from .spec import MIX_KINDS, PACKED_FORMAT_VERSION, StoreSpec
from .topk import logit_probs
from .unit import Unit


UnitData = Unit
"""What the reader returns: the one unit record, :class:`ddpipe.labelstore.unit.Unit` (padding
slots removed, every array filled in, labels as ``topk``, ``unit`` = its position in the store).
The name is kept for code written against the reader's former record type."""


class DamagedObject(ChunkCorruptError):
    """Marks, in :meth:`StoreReader.shard_problems`, an object with byte damage (it fails to
    decode): reads and ``verify`` locate the damaged units by decoding."""


class MissingObject(ChunkCorruptError):
    """Marks, in :meth:`StoreReader.shard_problems`, a committed shard's object that is absent."""


@dataclass
class Slab:
    """Consecutive units ``[start, stop)`` as stored (padded to the batch size). The arrays are
    those of the current format: for a format-1 store, ``sample_cutout_fill`` is filled in from
    the augmentation record's constant colour (:func:`ddpipe.labelstore.layout.augmentation_fill`); for a
    format-4 store, ``label_index`` holds the decoded indices (the spec's index dtype, ``[n, B, k]``; with the
    ``gaps`` index coding each sample's top-k is in ascending class order, its values alike) and
    integer ``sample_crop`` is divided by ``crop_scale`` (the spec's ``crop_grid``, or 65535)."""

    start: int
    arrays: dict[str, np.ndarray]
    values: np.ndarray  # float32 [n, B, k], decoded: probabilities (at the store's temperature for a logit store)
    logits: np.ndarray | None = None  # float32 [n, B, k]: a logit store's top-k logits as stored
    crop_scale: int = CROP_SCALE  # integer crops are divided by this: the spec's crop_grid, or 1/65535 fixed point

    def __len__(self) -> int:
        return len(self.arrays["unit_count"])

    def unit(self, i: int) -> Unit:
        a = self.arrays
        if "sample_id" not in a:
            raise SpecError(
                f"unit {self.start + i}: the store keeps no sample ids, crops, flips or mix (derived_fields: they are "
                "recomputed from the replay schedule); open it with open_store(path, fields=schedule.unit) "
                "(ddpipe.pipeline.open_labels does) to read whole units"
            )
        b = int(a["unit_count"][i])
        return Unit(
            unit=self.start + i,
            epoch=int(a["unit_epoch"][i]),
            batch=int(a["unit_batch"][i]),
            sample_ids=a["sample_id"][i, :b].astype(np.int64),
            crops=(a["sample_crop"][i, :b].copy() if a["sample_crop"].dtype.kind == "f"
                   else a["sample_crop"][i, :b].astype(np.float32) / np.float32(self.crop_scale)),
            flips=a["sample_flip"][i, :b].astype(bool),
            cutout=a["sample_cutout"][i, :b].astype(np.int32),
            cutout_fill=a[FILL_ARRAY][i, :b].astype(np.uint8),
            mix_kind=MIX_KINDS[int(a["unit_mix_kind"][i])],
            mix_perm=a["unit_mix_perm"][i, :b].astype(np.int64),
            mix_lambda=float(a["unit_mix_lambda"][i]),
            mix_box=a["unit_mix_box"][i].astype(np.int32),
            topk=(a["label_index"][i, :b].astype(np.int64), self.values[i, :b]),
            topk_logits=None if self.logits is None else (a["label_index"][i, :b].astype(np.int64), self.logits[i, :b]),
            lse=a[LSE_ARRAY][i, :b].copy() if LSE_ARRAY in a else None,
            aux=a[AUX_ARRAY][i, :b].copy() if AUX_ARRAY in a else None,
        )

    def __iter__(self) -> Iterator[Unit]:
        return (self.unit(i) for i in range(len(self)))


class StoreReader:
    """Read-only view of a store. Use :func:`open_store`."""

    def __init__(self, path: str, group, meta: StoreMeta, backend: str = "auto", storage_options=None,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, fields: FieldsFn | None = None):
        self.path = path
        self.fields = fields  # derived_fields stores: the replay schedule's unit(epoch, batch)
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
        self._zarrays = {}  # zarr array handles (their metadata), read once: remote first reads decode with them
        for name in [*self.array_names, COMMIT_ARRAY]:
            try:
                self._zarrays[name] = group[name]
            except KeyError:
                raise ChunkCorruptError(f"{path}: array {name!r} is missing; the store is damaged or incomplete") from None
        self._backend = make_backend(backend, group, path, self._local, [*self.array_names, COMMIT_ARRAY], cache_bytes)
        self.backend = self._backend.name
        self._objects = Objects(path, None if self._local else group.store)
        self._checked: set[int] = set()
        self._lock = threading.Lock()
        self.plan = self._expected_plan()
        self._flat = self.plan[:, 0] * self.spec.batches_per_epoch + self.plan[:, 1]
        self.refresh()

    def _stored_plan(self) -> np.ndarray:
        plan_arrays = self._read_checked(["unit_epoch", "unit_batch"], 0, self.num_units, check=False)
        return np.stack([plan_arrays["unit_epoch"], plan_arrays["unit_batch"]], axis=1).astype(np.int64)

    def _expected_plan(self) -> np.ndarray:
        """The units this store holds, from the spec where it determines them (the full schedule,
        or the pruning record's draw), never from the arrays being checked. Format 3 records the
        plan's hash: a plan the spec does not determine (a prune of a prune, an explicit plan) is
        read from the plan arrays and must match it. Formats 1-2 have no such hash: a pruned plan
        the spec does not reproduce is taken from the plan arrays as they are."""
        if self.meta.bound:
            plan = recomputed_plan(self.spec, self.num_units, self.meta.plan_sha256)
            if plan is not None:
                return plan
            stored = self._stored_plan()
            if plan_sha256(stored) != self.meta.plan_sha256:
                raise MisplacedShardError(
                    f"{self.path}: arrays 'unit_epoch'/'unit_batch' do not hold the unit plan recorded in the "
                    "attributes (plan_sha256): shards of the plan arrays were moved, replaced or damaged"
                )
            return stored
        if self.spec.pruning is None:
            return recomputed_plan(self.spec, self.num_units)
        stored = self._stored_plan()
        plan = recomputed_plan(self.spec, self.num_units, plan_sha256(stored))
        return stored if plan is None else plan

    # --- state ----------------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read the commit flags / records (to follow a store that is still being written)."""
        self.damaged_records: set[int] = set()
        try:
            flags = np.asarray(self._backend.read(COMMIT_ARRAY, 0, self.num_shards))
        except Exception:  # noqa: BLE001 - a damaged record: read them one by one to name it
            flags = self._read_records_one_by_one()
        if self.meta.bound:
            if flags.ndim != 2:
                raise ChunkCorruptError(f"{self.path}: array {COMMIT_ARRAY!r} has shape {flags.shape}, not [shards, record]")
            self._records = flags.astype(np.uint8)
            self.committed = np.array([is_committed_row(r) for r in self._records], dtype=bool)
        else:
            self._records = None
            self.committed = flags.reshape(-1) == 1
        with self._lock:
            self._checked = {s for s in self._checked if self.committed[s]}

    def _read_records_one_by_one(self) -> np.ndarray:
        rows = []
        shape = None
        for s in range(self.num_shards):
            try:
                row = np.asarray(self._backend.read(COMMIT_ARRAY, s, s + 1))
                shape = row.shape[1:]
            except Exception:  # noqa: BLE001 - checksum or decode failure of this record
                row = None
                self.damaged_records.add(s)
            rows.append(row)
        if shape is None:
            raise ChunkCorruptError(f"{self.path}: array {COMMIT_ARRAY!r}: no commit record can be read (damaged)")
        return np.concatenate([r if r is not None else np.zeros((1, *shape), np.uint8) for r in rows])

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
        if getattr(self, "plan", None) is None:  # while the plan itself is being read
            return f"unit {start}" if stop - start == 1 else f"units {start}-{stop - 1}"
        e0, b0 = self.plan[start]
        e1, b1 = self.plan[stop - 1]
        if stop - start == 1:
            return f"unit {start} (epoch {e0}, batch {b0})"
        return f"units {start}-{stop - 1} (epoch {e0} batch {b0} .. epoch {e1} batch {b1})"

    # --- checks -----------------------------------------------------------------------------
    def check_shard(self, shard: int, *, force: bool = False, objects: dict | None = None) -> None:
        """Raise unless ``shard`` is committed, all its objects are present and (format 3) its
        commit record belongs to this store and position and every object hashes to its digest.
        Done once per shard (hashing the stored, compressed bytes), before the first decode.
        ``objects`` (:meth:`fetch_shard`'s) are hashed instead of fetching the objects again."""
        if shard in self._checked and not force:
            return
        units = self.shard_units(shard)
        if shard in self.damaged_records:
            raise ChunkCorruptError(
                f"{self.path}: array {COMMIT_ARRAY!r} holding {self.describe_units(units.start, units.stop)}: "
                f"the commit record of shard {shard} is damaged (checksum or decode failed)"
            )
        if not self.committed[shard]:
            raise IncompleteUnitError(
                f"{self.path}: {self.describe_units(units.start, units.stop)} not written yet (shard {shard} is not committed)"
            )
        # byte damage inside an object is left to the decode, which names the exact units
        problems = [p for p in self.shard_problems(shard, objects) if p[2] is not DamagedObject]
        if problems:
            array, error, cls = problems[0]
            desc = self.describe_units(units.start, units.stop)
            if cls is MissingObject:
                raise ChunkCorruptError(f"{self.path}: array {array!r} {error.removesuffix(' is missing')} holding {desc} is missing")
            raise cls(f"{self.path}: array {array!r} holding {desc}: {error}")
        with self._lock:
            self._checked.add(shard)

    def shard_problems(self, shard: int, objects: dict | None = None) -> list[tuple[str, str, type]]:
        """Everything wrong with a committed shard's objects and commit record, without decoding:
        ``(array, message, error class)`` for each problem (empty when the shard is sound). An
        object whose hash differs and that fails to decode is damaged (:data:`DamagedObject`: the
        decode names the units); one that decodes but hashes differently was put there whole.
        ``objects``: the shard's object bytes by array name (:meth:`fetch_shard`), hashed as they are."""
        units = self.shard_units(shard)
        out: list[tuple[str, str, type]] = []
        record = None
        if self.meta.bound:
            record = unpack_record(self._records[shard])
            if record is None or "error" in record:
                why = "not committed" if record is None else record["error"]
                return [(COMMIT_ARRAY, f"shard {shard}: {why}", ChunkCorruptError)]
            where = []
            if record["store_id"] != self.meta.store_id:
                where.append(f"belongs to another store (id {record['store_id'][:12]}…, this store is {self.meta.store_id[:12]}…)")
            if record["shard"] != shard or record["units"] != units:
                where.append(
                    f"was written for shard {record['shard']} (units {record['units'].start}-{record['units'].stop - 1}), "
                    f"not shard {shard} (units {units.start}-{units.stop - 1})"
                )
            if len(record["digests"]) != len(self._defs):
                where.append(f"lists {len(record['digests'])} arrays, the layout has {len(self._defs)}")
            if where:
                msg = "the shard's commit record " + " and ".join(where) + ": the shard was moved or copied here"
                return [(COMMIT_ARRAY, msg, MisplacedShardError)]
        for i, d in enumerate(self._defs):
            key = shard_key(d.name, shard, 1 + len(d.trailing))
            if record is None:
                present = objects[d.name] is not None if objects is not None else self._objects.exists(key)
                if not present:
                    out.append((d.name, f"chunk {key} is missing", MissingObject))
                continue
            if objects is not None:
                data = objects[d.name]
                digest = None if data is None else hashlib.sha256(data).digest()
            else:
                digest = self._objects.sha256(key)
            if digest is None:
                out.append((d.name, f"chunk {key} is missing", MissingObject))
            elif digest != record["digests"][i]:
                try:
                    self._backend.read(d.name, units.start, units.stop)
                except Exception:  # noqa: BLE001 - checksum or decode failure: byte damage
                    out.append((d.name, "checksum or decode failed (damaged chunk)", DamagedObject))
                    continue
                out.append((
                    d.name,
                    f"object {key} does not match the SHA-256 in its commit record: it was moved from another "
                    "position, epoch or array, copied from another store, or changed",
                    MisplacedShardError,
                ))
        return out

    def _exists(self, key: str) -> bool:
        return self._objects.exists(key)

    # --- remote first reads: one GET per object -----------------------------------------------------
    def fetch_shard(self, shard: int, names=None) -> dict[str, bytes | None]:
        """The stored bytes of ``shard``'s objects by array name (all arrays by default; None where
        absent), fetched together (one GET each on S3)."""
        names = list(self.array_names if names is None else names)
        ndim = {d.name: 1 + len(d.trailing) for d in self._defs}
        data = self._objects.get_many([shard_key(n, shard, ndim[n]) for n in names])
        return dict(zip(names, data))

    def shard_bytes(self, shard: int) -> int:
        """The stored (compressed) size of one writer shard's data objects: one object per data array
        (``docs/format.md`` §3; not the metadata, not the commit record), local or behind a URL, as a
        reader fetches them. An absent object counts 0."""
        total = 0
        for d in self._defs:
            key = shard_key(d.name, shard, 1 + len(d.trailing))
            if self._local:
                try:
                    total += os.path.getsize(os.path.join(self.path, *key.split("/")))
                except FileNotFoundError:
                    pass
                continue
            from zarr.core.sync import sync

            try:
                total += int(sync(self._group.store.getsize(key)))
            except FileNotFoundError:
                pass
        return total

    def _decode_object(self, name: str, shard: int, data: bytes | None) -> np.ndarray:
        """Decode one shard object of ``name`` from its bytes (zarr's codecs, checksums included), as
        the backends would read it from the store; absent: the array's fill value, as zarr reads it."""
        import zarr
        from zarr.core.buffer import default_buffer_prototype
        from zarr.storage import MemoryStore

        proto = default_buffer_prototype()
        arr = self._zarrays[name]
        objs = dict(arr.metadata.to_buffer_dict(proto))
        rows = self.shard_units(shard)
        if data is not None:
            objs[shard_key(name, shard, arr.ndim).split("/", 1)[1]] = proto.buffer.from_bytes(data)
        one = zarr.open_array(store=MemoryStore(store_dict=objs), mode="r", zarr_format=3)
        return np.asarray(one[rows.start:rows.stop])

    def _read_fetched(self, names, start: int, stop: int, fetched: dict) -> dict[str, np.ndarray]:
        """Units ``[start, stop)`` decoded from the shards' fetched objects (``{shard: {name: bytes}}``)."""
        ups = self.spec.units_per_shard
        shards = range(start // ups, (stop - 1) // ups + 1)
        parts: dict[str, list] = {n: [] for n in names}
        for s in shards:
            for n in names:
                parts[n].append(self._decode_object(n, s, fetched[s][n]))
        lo = start - shards[0] * ups
        return {n: np.concatenate(p)[lo:lo + stop - start] for n, p in parts.items()}

    def _read_checked(self, names, start: int, stop: int, check: bool = True,
                      objects: dict | None = None) -> dict[str, np.ndarray]:
        if not 0 <= start < stop <= self.num_units:
            raise SpecError(f"unit range [{start}, {stop}) is outside the store's {self.num_units} units")
        names = list(names)
        if not self._local and check:
            # a remote store's first read of a shard fetches each object once: hashed for the check, then
            # decoded from the same bytes (the backend would fetch them again: index, then chunks)
            ups = self.spec.units_per_shard
            shards = range(start // ups, (stop - 1) // ups + 1)
            if objects is not None or any(s not in self._checked for s in shards):
                for s in shards:
                    if not self.committed[s]:
                        self.check_shard(s)  # raises IncompleteUnitError before any read
                fetched = dict(objects or {})
                for s in shards:
                    if s not in fetched:
                        fetched[s] = self.fetch_shard(s, None if s not in self._checked else names)
                    if s not in self._checked:
                        self.check_shard(s, objects=fetched[s])
                try:
                    return self._read_fetched(names, start, stop, fetched)
                except Exception as e:  # noqa: BLE001 - checksum, truncation and decode errors alike
                    bad = "?"
                    for n in names:
                        try:
                            for s in shards:
                                self._decode_object(n, s, fetched[s][n])
                        except Exception:  # noqa: BLE001
                            bad = n
                            break
                    raise ChunkCorruptError(
                        f"{self.path}: array {bad!r} holding {self.describe_units(start, stop)} is damaged "
                        f"(checksum or decode failed: {_short(e)})"
                    ) from None
        unchecked = []
        if check:
            ups = self.spec.units_per_shard
            for s in range(start // ups, (stop - 1) // ups + 1):
                if not self.committed[s] or s not in self._checked:
                    if not self.committed[s]:
                        self.check_shard(s)  # raises IncompleteUnitError before any read
                    unchecked.append(s)
        try:
            # the decode runs in the backend's threads while the shards' objects are hashed here;
            # nothing decoded is returned unless every check passed
            collect = self._backend.start_read(names, start, stop)
        except Exception as e:  # noqa: BLE001 - e.g. a truncated shard index
            collect = _raiser(e)
        for s in unchecked:
            self.check_shard(s)
        try:
            return collect()
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
    def read_slab(self, start: int, stop: int, *, check_values: bool = True, objects: dict | None = None) -> Slab:
        """Units ``[start, stop)`` in one read per array. ``check_values=False`` (``verify``, which
        reports every bad value itself) skips the range checks of :meth:`_check_stored`. ``objects``
        (remote stores): ``{shard: fetch_shard(shard)}`` already fetched, decoded instead of read again."""
        arrays = self._read_checked(self.array_names, start, stop, objects=objects)
        if self.spec.derived_fields:
            if self.fields is not None:  # rebuilt from the schedule, each unit checked against its stored digest
                arrays.update(derive_arrays(self.spec, self.fields, self.plan[start:stop], arrays[DIGEST_ARRAY],
                                            lambda i: f"{self.path}: {self.describe_units(start + i, start + i + 1)}"))
        elif FILL_ARRAY not in arrays:  # format 1: every sample has the schedule's constant colour
            valid = np.arange(self.spec.batch_size)[None, :] < arrays["unit_count"][:, None]
            fill = np.zeros((stop - start, self.spec.batch_size, FILL_CHANNELS), np.uint8)
            fill[valid] = self._default_fill  # padding slots stay 0, as a writer stores them
            arrays[FILL_ARRAY] = fill
        if self.format_version >= PACKED_FORMAT_VERSION:  # coded indices: decoded here, before any check
            if self.spec.index_coding == "gaps":
                arrays["label_index"] = from_gaps(arrays["label_index"], self.spec.num_classes, self.spec.index_dtype)
            else:
                arrays["label_index"] = unpack_indices(arrays["label_index"], self.spec.index_bits, self.spec.k,
                                                       self.spec.index_dtype)
        if check_values:
            self._check_stored(arrays, start, stop)
        values = self.codec.decode(arrays["label_value"], arrays.get("label_scale"))
        if self.spec.value_kind == "logits":
            logits = values
            values = logit_probs(logits, arrays[LSE_ARRAY], self.spec.num_classes, self.spec.temperature)
            return Slab(start, arrays, values, logits, self.spec.crop_scale)
        return Slab(start, arrays, values, crop_scale=self.spec.crop_scale)

    def _check_stored(self, a: dict[str, np.ndarray], start: int, stop: int) -> None:
        """Refuse units that are not the plan's or hold values no reader can use (a class index
        >= num_classes, a mix kind or partner slot that does not exist, a count beyond the batch):
        each would otherwise surface as an IndexError far from the store, or as wrong labels."""
        spec = self.spec
        plan = self.plan[start:stop]

        def fail(i: int, array: str, what: str):
            u = start + int(i)
            raise StoredValueError(f"{self.path}: array {array!r} holding {self.describe_units(u, u + 1)}: {what}")

        for name, col in (("unit_epoch", 0), ("unit_batch", 1)):
            bad = np.flatnonzero(a[name].astype(np.int64) != plan[:, col])
            if bad.size:
                i = bad[0]
                raise MisplacedShardError(
                    f"{self.path}: array {name!r} holding {self.describe_units(start + int(i), start + int(i) + 1)}: "
                    f"stores (epoch {a['unit_epoch'][i]}, batch {a['unit_batch'][i]}), not the plan's unit: "
                    "the shard was moved from another position"
                )
        counts = a["unit_count"].astype(np.int64)
        want = np.where(plan[:, 1] == spec.batches_per_epoch - 1, spec.last_batch_size, spec.batch_size)
        bad = np.flatnonzero(counts != want)
        if bad.size:
            fail(bad[0], "unit_count", f"count {counts[bad[0]]}, but the batch holds {want[bad[0]]} samples")
        valid = np.arange(spec.batch_size)[None, :] < counts[:, None]
        if "unit_mix_kind" in a:  # stored, or derived (derive_arrays checked them): absent when not derived
            bad = np.flatnonzero(a["unit_mix_kind"] >= len(MIX_KINDS))
            if bad.size:
                fail(bad[0], "unit_mix_kind", f"mix kind {int(a['unit_mix_kind'][bad[0]])} does not exist")
        for name, limit, what in (
            ("unit_mix_perm", counts[:, None], "partner slot beyond the batch"),
            ("sample_id", spec.num_samples, f"sample id >= num_samples {spec.num_samples}"),
        ):
            if name not in a:
                continue
            over = (a[name].astype(np.int64) >= limit) & valid
            bad = np.flatnonzero(over.any(axis=1))
            if bad.size:
                fail(bad[0], name, what)
        if spec.value_kind == "logits":
            for name in ("label_value", LSE_ARRAY):
                finite = np.isfinite(a[name].astype(np.float64))
                bad = np.flatnonzero((~finite.reshape(*finite.shape[:2], -1).all(axis=2) & valid).any(axis=1))
                if bad.size:
                    fail(bad[0], name, "a logit or log-sum-exp that is not finite")
        if spec.num_classes < 2 ** (8 * a["label_index"].dtype.itemsize):
            over = (a["label_index"] >= spec.num_classes).any(axis=2) & valid
            bad = np.flatnonzero(over.any(axis=1))
            if bad.size:
                fail(bad[0], "label_index", f"class index >= num_classes {spec.num_classes}")

    def read_unit(self, unit: int) -> Unit:
        return self.read_slab(unit, unit + 1).unit(0)

    def read_batch(self, epoch: int, batch: int) -> Unit:
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

    def iter_units(self, start: int = 0, prefetch: bool = True) -> Iterator[Unit]:
        """Every unit from ``start`` on, in training order."""
        for slab in self.iter_slabs(start, prefetch):
            yield from slab

    def dense_targets(self, unit: Unit) -> np.ndarray:
        return unit.dense(self.spec.num_classes)

    def __repr__(self) -> str:
        s = self.spec
        return (
            f"StoreReader({self.path!r}, units={self.num_units}, samples={s.num_samples}, classes={s.num_classes}, "
            f"epochs={s.epochs}, batch={s.batch_size}, k={s.k}, codec={s.value_codec}, backend={self.backend})"
        )


def _raiser(e: BaseException):
    def collect():
        raise e

    return collect


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
    fields: FieldsFn | None = None,
) -> StoreReader:
    """Open a store read-only.

    ``backend``: ``auto`` (tensorstore when installed and the store is local), ``tensorstore``
    or ``zarr``. ``image_set_hash``: when given, the store must have been built for that image set.
    ``cache_bytes``: the tensorstore backend's cache (shard indexes and recent chunks; default 32 MiB).
    ``fields``: for a store with ``derived_fields``, the replay schedule's ``unit(epoch, batch)``: each
    unit's sample ids, crops, flips, cutout and mix are taken from it and checked against the stored
    digest (:class:`FieldsMismatchError`); without it such a store gives labels only (``read_slab``).
    """
    path = store_location(path)
    group, meta = read_meta(path, storage_options)
    if image_set_hash is not None and meta.spec.image_set_hash and image_set_hash != meta.spec.image_set_hash:
        raise ImageSetMismatchError(
            f"{path} was built for image set {meta.spec.image_set_hash[:16]}…, not {image_set_hash[:16]}…; "
            "relabel the images you train on (crops and labels refer to specific images)"
        )
    try:
        return StoreReader(path, group, meta, backend, storage_options, cache_bytes, fields)
    except ValueError as e:
        raise StoreError(f"{path}: {e}") from None
