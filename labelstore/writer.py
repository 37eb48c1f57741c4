"""Writing a label store: units in any order, shards committed only when complete.

A *unit* is one relabel batch. The writer buffers units per writer shard (``units_per_shard``
consecutive units, one epoch by default); when the last unit of a shard arrives it writes every
array's shard object and then the shard's commit record (store id, shard, unit range, the SHA-256
of each object: ``binding.py``). A reader never sees a shard before that record, so a writer
killed at any moment leaves only whole committed shards behind, and a resumed writer
(``create_store(..., resume=True)`` or :func:`open_writer`) rewrites the rest.

Creation is one step: the store is prepared in memory and written to a hidden sibling folder that
is renamed into place (local disks), or written object by object with the group's ``zarr.json``
last (URLs), so a kill or a full disk leaves nothing that looks like a store, or a whole one.

Writers of one store take a lease per shard (``lease.py``) when its first unit arrives: two
writers never write the same shard, and two resumed writers split the remaining shards (ask
:meth:`StoreWriter.claim` before computing a unit). Every ``OSError`` becomes a
:class:`StoreIOError` naming the path.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import uuid
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from .codecs import get_codec
from .binding import pack_record, plan_sha256, unpack_record
from .errors import (
    FormatVersionError,
    SpecError,
    StoreError,
    StoreExistsError,
    StoreIOError,
    io_error,
)
from .layout import (
    AUX_ARRAY,
    COMMIT_ARRAY,
    DIGEST_ARRAY,
    LSE_ARRAY,
    SCHEDULE_ARRAYS,
    array_defs,
    augmentation_fill,
    create_arrays,
    num_shards,
    shard_key,
    shard_units,
)
from .fields import encode_fields, fields_digest, padded, shaped
from .lease import DEFAULT_LEASE_TTL, ShardLeases, pid_alive
from .location import store_location
from .metadata import ATTR_KEY, is_local, make_attrs, open_group, parse_attrs
from .objects import Objects
from .packing import class_order, pack_indices, to_gaps
from .spec import PACKED_FORMAT_VERSION, WRITE_FORMAT_VERSIONS, StoreSpec, parse_plan
from .topk import logsumexp_at, softmax_at, top_k
from .unit import Unit

log = logging.getLogger(__name__)

DEFAULT_ZSTD_LEVEL = 5


@dataclass
class _ShardBuffer:
    arrays: dict[str, np.ndarray]
    received: np.ndarray  # bool [units in shard]
    units: range = field(default_factory=lambda: range(0))


class StoreWriter:
    """Writes units into an existing store. Use :func:`create_store` or :func:`open_writer`."""

    def __init__(self, group, path: str, lease_ttl: float = DEFAULT_LEASE_TTL):
        self._group = group
        self.path = path = store_location(path)
        meta = parse_attrs(dict(group.attrs), path)
        if meta.format_version not in WRITE_FORMAT_VERSIONS or meta.format_version != meta.spec.format_version:
            raise FormatVersionError(
                f"{path} has format_version {meta.format_version}; this ddpipe writes format_version "
                f"{' or '.join(map(str, WRITE_FORMAT_VERSIONS))} only: read it as it is, or prune or relabel into a new store"
            )
        self.spec: StoreSpec = meta.spec
        self.meta = meta
        self.num_units = meta.num_units
        self.codec = get_codec(self.spec.value_codec)
        self._defs = {d.name: d for d in array_defs(self.spec)}
        self._objects = Objects(path, None if is_local(path) else group.store)
        # Every shard object is written even when it holds only fill values (an all-zero cutout
        # array, say): a missing object must always mean damage, never "nothing to store".
        cfg = {"write_empty_chunks": True}
        self._arrays = {name: group[name].with_config(cfg) for name in self._defs}
        self._commit = group[COMMIT_ARRAY].with_config(cfg)
        try:
            epochs = np.asarray(self._arrays["unit_epoch"][:], dtype=np.int64)
            batches = np.asarray(self._arrays["unit_batch"][:], dtype=np.int64)
        except OSError as e:
            raise io_error(e, "reading the unit plan", path) from None
        except Exception as e:  # noqa: BLE001 - checksum or decode failure
            raise StoreError(f"{path}: the unit plan (unit_epoch, unit_batch) cannot be read ({e}); the store is damaged") from None
        self.plan = np.stack([epochs, batches], axis=1)
        if plan_sha256(self.plan) != meta.plan_sha256:
            raise StoreError(
                f"{path}: the stored unit plan (unit_epoch, unit_batch) does not match the plan recorded "
                "in the attributes; the store is damaged, relabel into a new one"
            )
        flat = epochs * self.spec.batches_per_epoch + batches
        self._unit_of = dict(zip(flat.tolist(), range(self.num_units)))
        self.num_shards = num_shards(self.num_units, self.spec)
        self._committed = self._read_committed()
        self._buffers: dict[int, _ShardBuffer] = {}
        self._default_fill = augmentation_fill(self.spec.augmentation)
        self._leases = ShardLeases(self._objects, self, lease_ttl)
        # a writer dropped without close() (or left open at exit) still gives its leases back
        weakref.finalize(self, self._leases.release_all)
        self._foreign: set[int] = set()  # shards another live writer held when we asked

    def _read_committed(self) -> np.ndarray:
        """Committed shards: a commit record of this store, for this shard and its units. A record
        that belongs elsewhere (copied or moved) does not count: the shard is written again."""
        try:
            rows = np.asarray(self._commit[:], dtype=np.uint8)
        except Exception:  # noqa: BLE001 - a damaged record counts as not committed: rewritten
            rows = np.zeros((self.num_shards, self._commit.shape[1]), np.uint8)
            for s in range(self.num_shards):
                try:
                    rows[s] = np.asarray(self._commit[s], dtype=np.uint8)
                except Exception:  # noqa: BLE001
                    log.warning("%s: the commit record of shard %d is damaged; rewriting the shard", self.path, s)
        out = np.zeros(self.num_shards, dtype=bool)
        for s in range(self.num_shards):
            rec = unpack_record(rows[s])
            if rec is None:
                continue
            ok = ("error" not in rec and rec["store_id"] == self.meta.store_id and rec["shard"] == s
                  and rec["units"] == self.shard_units(s) and len(rec["digests"]) == len(self._defs))
            if not ok:
                log.warning("%s: shard %d has a commit record that does not belong there; rewriting it", self.path, s)
            out[s] = ok
        return out

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
        """Uncommitted shards, the ones of ``rank`` when ``world_size`` processes share the work,
        without those another live writer holds a lease on right now."""
        return [
            s for s in range(self.num_shards)
            if not self._committed[s] and s % world_size == rank
            and (s in self._leases.held or self._leases.holder(s) is None)
        ]

    def claim(self, epoch: int, batch: int) -> bool:
        """Whether this writer should compute unit (epoch, batch): its shard is not committed and
        this writer holds (or now takes) its lease. Ask before running the teacher: two writers of
        one store then split the remaining shards instead of both computing them."""
        s = self.shard_of(self.unit_index(epoch, batch))
        return self._take(s)

    def _take(self, s: int) -> bool:
        if self._committed[s]:
            return False
        if s in self._leases.held:
            if self._leases.renew(s):
                return True
            self._lost(s)
            return False
        if not self._leases.acquire(s):
            if s not in self._foreign:
                self._foreign.add(s)
                holder = self._leases.holder(s) or {}
                log.info("%s: shard %d is being written by another writer (pid %s on %s); skipping it",
                         self.path, s, holder.get("pid", "?"), holder.get("host", "?"))
            return False
        self._foreign.discard(s)
        # committed meanwhile by the writer whose lease we found released?
        self._committed[s] = self._committed[s] or self._shard_committed_now(s)
        if self._committed[s]:
            self._leases.release(s)
            return False
        return True

    def _shard_committed_now(self, s: int) -> bool:
        try:
            rec = unpack_record(np.asarray(self._commit[s], dtype=np.uint8))
        except OSError as e:
            raise io_error(e, f"reading the commit record of shard {s}", self.path) from None
        except Exception:  # noqa: BLE001 - a damaged record: not committed, the shard is rewritten
            return False
        return bool(rec and "error" not in rec and rec["store_id"] == self.meta.store_id and rec["shard"] == s)

    def _lost(self, s: int) -> None:
        buf = self._buffers.pop(s, None)
        n = int(buf.received.sum()) if buf is not None else 0
        self._leases.held.pop(s, None)
        log.warning("%s: the lease on shard %d was taken over by another writer; dropping %d buffered units",
                    self.path, s, n)

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
        """Write one unit given as stored rows (every array of the layout, padded; rows of arrays this
        store does not keep are ignored, and a ``derived_fields`` store given the schedule rows keeps their
        digest). Used to copy units between stores without decoding them (``prune``, importers)."""
        u = self.unit_index(epoch, batch)
        if self.spec.derived_fields and DIGEST_ARRAY not in rows and all(n in rows for n in SCHEDULE_ARRAYS):
            rows = {**rows, DIGEST_ARRAY: fields_digest(rows, self.spec)}  # rows of a store that keeps them
        rows = {name: value for name, value in rows.items() if name in self._defs}  # e.g. a derived store's fields
        missing = set(self._defs) - set(rows)
        if missing:
            raise SpecError(f"unit (epoch {epoch}, batch {batch}): rows lack arrays {sorted(missing)}")
        if self.spec.index_coding == "gaps":  # a reader's rows carry the indices themselves, in any order
            idx, val = class_order(np.asarray(rows["label_index"]), np.asarray(rows["label_value"]))
            rows = {**rows, "label_index": to_gaps(idx, self.spec.index_dtype), "label_value": val}
        elif self.spec.format_version >= PACKED_FORMAT_VERSION and np.asarray(rows["label_index"]).dtype != np.uint8:
            # a reader's rows carry the indices unpacked (uint16/uint32 [B, k]); packed rows are uint8
            rows = {**rows, "label_index": pack_indices(rows["label_index"], self.spec.index_bits)}
        for name, d in self._defs.items():
            if np.shape(rows[name]) != d.trailing:
                raise SpecError(f"unit (epoch {epoch}, batch {batch}): {name} must have shape {d.trailing}")
        return self._put(u, rows)

    def _put(self, u: int, rows: dict[str, Any]) -> bool:
        s = self.shard_of(u)
        if self._committed[s]:
            return False
        if not self._take(s):  # another writer holds this shard: it writes it, we skip it
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
            return self._flush(s)
        return False

    def write_many(self, units: Iterable[Unit]) -> int:
        return sum(self.write(u) for u in units)

    def _flush(self, s: int) -> bool:
        """Write shard ``s``'s objects, then its commit record. False (nothing committed) when the
        lease was taken over meanwhile: the shard is then the new holder's to write."""
        buf = self._buffers.pop(s)
        sl = slice(buf.units.start, buf.units.stop)
        try:
            if not self._leases.check(s):
                self._lost(s)
                return False
            self._remove_partials(s)
            for name, data in buf.arrays.items():
                self._arrays[name][sl] = data
            digests = []
            for name in self._defs:  # read back what landed: the record binds exactly those bytes
                d = self._defs[name]
                key = shard_key(name, s, 1 + len(d.trailing))
                digest = self._objects.sha256(key)
                if digest is None:
                    raise StoreIOError(f"{self.path}: object {key} is missing right after it was written")
                digests.append(digest)
            if not self._leases.check(s):
                self._lost(s)
                return False
            record = pack_record(self.meta.store_id, s, buf.units, digests)
            self._commit[s, :] = record  # last: the shard becomes visible only now
        except OSError as e:
            self._leases.release(s)
            if isinstance(e, StoreIOError):
                raise
            raise io_error(e, f"writing shard {s} (units {sl.start}-{sl.stop - 1}; it stays uncommitted)", self.path) from None
        self._committed[s] = True
        self._leases.release(s)
        return True

    def _remove_partials(self, s: int) -> None:
        """Remove temporary files a killed writer left beside this shard's objects (local disks:
        ``<key>.<random>.partial``; never read by anyone, but they take space)."""
        if not self._objects.local:
            return
        for name, d in [*self._defs.items(), (COMMIT_ARRAY, None)]:
            key = f"{COMMIT_ARRAY}/c/{s}/0" if d is None else shard_key(name, s, 1 + len(d.trailing))
            folder, last = os.path.split(os.path.join(self.path, *key.split("/")))
            try:
                names = os.listdir(folder)
            except OSError:
                continue
            for n in names:
                if n.startswith(last + ".") and n.endswith(".partial"):
                    try:
                        os.remove(os.path.join(folder, n))
                    except OSError:
                        pass

    def close(self) -> int:
        """Drop incomplete shard buffers (they stay uncommitted), give back this writer's leases,
        and return how many buffered units that lost."""
        lost = int(sum(b.received.sum() for b in self._buffers.values()))
        if lost:
            log.warning("%s: %d buffered units of incomplete shards were not committed", self.path, lost)
        self._buffers.clear()
        self._leases.release_all()
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
            return shaped(value, name, shape, where, dtype)

        def pad(a, fill=0):
            return padded(a, B, fill)

        fields = encode_fields(spec, unit, self._default_fill)
        if spec.value_kind == "logits":
            idx, val, lse = self._logit_labels(unit, b, where)
        else:
            idx, val = self._labels(unit, b, where)
        aux = None
        if spec.aux_fields:
            if unit.aux is None:
                raise SpecError(f"{where}: the store keeps {list(spec.aux_fields)} per sample; give aux [{b}, {len(spec.aux_fields)}]")
            aux = arr(unit.aux, "aux", (b, len(spec.aux_fields)), np.float64)
        elif unit.aux is not None:
            raise SpecError(f"{where}: aux values given but the store has no aux_fields")

        if spec.index_coding == "gaps":  # class order: the values follow their classes
            idx, val = class_order(idx, val)
        enc_val, scale = self.codec.encode(val)
        rows = {
            "unit_epoch": unit.epoch,
            "unit_batch": unit.batch,
            "unit_count": b,
            **self._schedule_rows(fields),
            "label_index": pad(self._index_rows(idx)),
            "label_value": pad(enc_val),
        }
        if scale is not None:
            rows["label_scale"] = pad(scale)
        if spec.value_kind == "logits":
            rows[LSE_ARRAY] = pad(lse)
        if aux is not None:
            rows[AUX_ARRAY] = pad(aux)
        return rows

    def _index_rows(self, idx: np.ndarray) -> np.ndarray:
        """``label_index`` rows of top-k indices (in class order for the gaps coding) as the layout stores them."""
        spec = self.spec
        if spec.format_version < PACKED_FORMAT_VERSION:
            return idx.astype(spec.index_dtype)
        if spec.index_coding == "gaps":
            return to_gaps(idx, spec.index_dtype)
        return pack_indices(idx, spec.index_bits)

    def _schedule_rows(self, fields: dict[str, np.ndarray]) -> dict[str, Any]:
        """What the store keeps of a unit's schedule rows: the rows, or with ``derived_fields`` their digest."""
        if self.spec.derived_fields:
            return {DIGEST_ARRAY: fields_digest(fields, self.spec)}
        return fields

    def _logit_labels(self, unit: Unit, b: int, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-k logits (descending; the lower class first among equal logits) and each row's
        log-sum-exp at the store's temperature."""
        spec = self.spec
        # a unit read back from a logit store carries topk (its probabilities) too: topk_logits wins
        if (unit.logits is None) == (unit.topk_logits is None):
            raise SpecError(f"{where}: a logit store takes exactly one of logits or topk_logits")
        if unit.logits is not None:
            dense = np.asarray(unit.logits, dtype=np.float32)
            if dense.shape != (b, spec.num_classes):
                raise SpecError(f"{where}: logits must have shape {(b, spec.num_classes)}, got {dense.shape}")
            lse = logsumexp_at(dense, spec.temperature) if unit.lse is None else None
            if spec.k == spec.num_classes:  # the whole row, in class order: label_index compresses to nothing
                idx, val = np.broadcast_to(np.arange(spec.num_classes), dense.shape), dense
            else:
                idx, val = top_k(dense, spec.k)
        else:
            idx = np.asarray(unit.topk_logits[0])
            val = np.asarray(unit.topk_logits[1], dtype=np.float32)
            if idx.shape != (b, spec.k) or val.shape != (b, spec.k):
                raise SpecError(f"{where}: topk_logits must be two arrays of shape {(b, spec.k)}, got {idx.shape}, {val.shape}")
            if not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0 or idx.max() >= spec.num_classes:
                raise SpecError(f"{where}: topk_logits indices must be integers in [0, {spec.num_classes})")
            if not np.all(np.isfinite(val)):
                raise SpecError(f"{where}: topk_logits values must be finite")
            lse = logsumexp_at(val, spec.temperature) if unit.lse is None else None
        if lse is None:
            lse = arr_lse = np.asarray(unit.lse, dtype=np.float64)
            if arr_lse.shape != (b,) or not np.all(np.isfinite(arr_lse)):
                raise SpecError(f"{where}: lse must be finite float64 [{b}]")
        return idx, val, lse

    def _labels(self, unit: Unit, b: int, where: str) -> tuple[np.ndarray, np.ndarray]:
        spec = self.spec
        given = [x is not None for x in (unit.logits, unit.probs, unit.topk)]
        if sum(given) != 1:
            raise SpecError(f"{where}: give exactly one of logits, probs or topk")
        if unit.topk_logits is not None:
            raise SpecError(f"{where}: topk_logits are for logit stores; this store keeps probabilities (value_kind probs)")
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


CREATING_TAG = ".ddpipe-creating-"
"""Hidden sibling folders ``.<name>.ddpipe-creating-<host>-<pid>-<rand>`` hold a store being created
(local disks); renamed into place when complete. Ones left by a killed process are removed."""

REPLACED_TAG = ".ddpipe-replaced-"


def _clear_local(path: str) -> None:
    if os.path.islink(path) or os.path.isfile(path):
        os.remove(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)


def _known_names() -> set[str]:
    spec = StoreSpec(num_samples=1, num_classes=1, epochs=1, batch_size=1, k=1, value_codec="uint8")
    return {d.name for d in array_defs(spec)} | {COMMIT_ARRAY, "zarr.json"}


def _interrupted_creation(path: str) -> bool:
    """A local folder left by a store creation that did not finish: only ddpipe's array folders
    (and maybe a root ``zarr.json`` without ddpipe attributes, as creation before format 3 left
    it). Such a folder is no store and holds no labels, so creating a store there may replace it."""
    try:
        names = set(os.listdir(path))
    except OSError:
        return False
    if not names or not names <= _known_names():
        return False
    root = os.path.join(path, "zarr.json")
    if os.path.exists(root):
        try:
            with open(root) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            return False
        if not isinstance(doc, dict) or doc.get("node_type") != "group" or ATTR_KEY in (doc.get("attributes") or {}):
            return False
    return True


def _holds_ddpipe_attrs(path: str) -> bool:
    try:
        with open(os.path.join(path, "zarr.json")) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and isinstance((doc.get("attributes") or {}).get(ATTR_KEY), dict)


def _prepared_objects(spec: StoreSpec, units: np.ndarray, attrs: dict, zstd_level: int) -> dict[str, bytes]:
    """Every object of a new store (metadata, plan arrays), built in memory."""
    import zarr
    from zarr.storage import MemoryStore

    objs: dict = {}
    group = zarr.open_group(store=MemoryStore(store_dict=objs), mode="w", zarr_format=3)
    create_arrays(group, spec, len(units), zstd_level)
    cfg = {"write_empty_chunks": True}
    group["unit_epoch"].with_config(cfg)[:] = units[:, 0].astype(np.int32)
    group["unit_batch"].with_config(cfg)[:] = units[:, 1].astype(np.int32)
    group.attrs.update(attrs)
    return {k: v.to_bytes() for k, v in objs.items()}


def _write_objects(target: Objects, objs: dict[str, bytes]) -> None:
    """Write a prepared store, the group's ``zarr.json`` (with the ddpipe attributes) last: until
    that one object lands, nothing there is a store."""
    for key in sorted(k for k in objs if k != "zarr.json"):
        target.put(key, objs[key])
    target.put("zarr.json", objs["zarr.json"])


def _sweep_stale_creations(parent: str, base: str) -> None:
    """Remove creation folders of this store left by killed processes of this host."""
    host = socket.gethostname()
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        for tag in (CREATING_TAG, REPLACED_TAG):
            prefix = f".{base}{tag}{host}-"
            if not name.startswith(prefix):
                continue
            try:
                pid = int(name[len(prefix):].split("-", 1)[0])
            except ValueError:
                continue
            if pid != os.getpid() and not pid_alive(pid, ""):
                shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


class _Raced(Exception):
    """Another process created the store between our check and our rename."""


def _create_local(path: str, objs: dict[str, bytes], replace: bool) -> None:
    """Write the store into a hidden sibling folder, then rename it into place (one step)."""
    parent, base = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    _sweep_stale_creations(parent, base)
    tag = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = os.path.join(parent, f".{base}{CREATING_TAG}{tag}")
    try:
        os.mkdir(tmp)
    except OSError as e:
        # a folder we may write into but not beside (a mounted volume's root): build it in place,
        # the group's zarr.json last, which is just as invisible until complete
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and os.path.isdir(path) and not os.listdir(path):
            _write_objects(Objects(path), objs)
            return
        raise
    try:
        _write_objects(Objects(tmp), objs)
        if replace and os.path.lexists(path):
            trash = os.path.join(parent, f".{base}{REPLACED_TAG}{tag}")
            try:
                os.rename(path, trash)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EBUSY) or not os.path.isdir(path):
                    raise
                for name in os.listdir(path):  # a mount point: empty it, then build in place
                    _clear_local(os.path.join(path, name))
                _write_objects(Objects(path), objs)
                return
            os.rename(tmp, path)
            _clear_local(trash)
            return
        try:
            os.rename(tmp, path)  # onto nothing, or onto an empty folder: atomic either way
        except OSError as e:
            if os.path.isdir(path) and os.listdir(path):
                raise _Raced() from None
            if e.errno in (errno.EXDEV, errno.EBUSY):  # path is a mount point: write in place instead
                _write_objects(Objects(path), objs)
                return
            raise
    finally:
        if os.path.lexists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def create_store(
    path: str | os.PathLike,
    spec: StoreSpec,
    plan: Any = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    provenance: dict | None = None,
    zstd_level: int = DEFAULT_ZSTD_LEVEL,
    storage_options: dict | None = None,
    lease_ttl: float = DEFAULT_LEASE_TTL,
) -> StoreWriter:
    """Create a store for ``spec`` holding the units of ``plan`` (default: every unit).

    ``path``: any form :func:`ddpipe.labelstore.store_location` accepts (relative, ``~``, ``file://``,
    ``memory://``, fsspec URLs). ``resume=True`` reopens an existing store with the same spec and
    plan to resume it (the CLI's ``--resume``); ``overwrite=True`` replaces whatever is at ``path``
    (``--overwrite``). The store appears in one step: a kill or a full disk during creation leaves
    nothing that looks like a store (create again, or resume), never a half-made one.
    ``lease_ttl``: seconds a shard lease of this writer lives without renewal (``lease.py``).
    """
    path = store_location(path)
    units = parse_plan(spec, plan)
    local = is_local(path)
    if local:
        _sweep_stale_creations(*os.path.split(path))
    for _attempt in range(2):
        exists = os.path.exists(os.path.join(path, "zarr.json")) if local else _remote_exists(path, storage_options)
        if exists and local and _interrupted_creation(path):
            exists = False  # a creation killed before format 3 made creation atomic: no labels there
        if exists and not overwrite:
            if local and not _holds_ddpipe_attrs(path):
                raise StoreExistsError(
                    f"{path} holds a Zarr group that is not a ddpipe label store; choose another path, "
                    "or use --overwrite (overwrite=True) to replace it"
                )
            if not resume:
                raise StoreExistsError(
                    f"{path} already holds a store; use --resume (resume=True) to continue it "
                    "or --overwrite (overwrite=True) to replace it"
                )
            writer = open_writer(path, storage_options=storage_options, lease_ttl=lease_ttl)
            if writer.spec != spec or not np.array_equal(writer.plan, units):
                raise StoreExistsError(
                    f"{path} holds a store with a different spec or unit plan{_spec_diff(writer.spec, spec)}; "
                    "refusing to resume it (use --overwrite (overwrite=True) to replace it)"
                )
            return writer
        replace = False
        if local and os.path.lexists(path):
            empty = os.path.isdir(path) and not os.listdir(path)
            if not (overwrite or empty or _interrupted_creation(path)):
                raise StoreExistsError(
                    f"{path} exists and is not an empty directory; use --overwrite (overwrite=True) to replace it"
                )
            replace = not empty
        attrs = make_attrs(spec, units, provenance)
        try:
            objs = _prepared_objects(spec, units, attrs, zstd_level)
            if local:
                try:
                    _create_local(path, objs, replace)
                except _Raced:
                    continue  # another process made it: look again (resume it, or refuse)
            else:
                _write_objects(_remote_target(path, storage_options), objs)
        except OSError as e:
            if isinstance(e, StoreIOError):
                raise StoreIOError(f"creating the store at {path}: {e} (nothing was created)", e.errno) from None
            raise io_error(e, "creating the store (nothing was created)", path) from None
        return open_writer(path, storage_options=storage_options, lease_ttl=lease_ttl)
    raise StoreExistsError(f"{path} was created by another process at the same time; retry with --resume (resume=True)")


def _spec_diff(have: StoreSpec, want: StoreSpec) -> str:
    a, b = have.to_dict(), want.to_dict()
    diff = [f"{k}: stored {a[k]!r}, asked {b[k]!r}" for k in a if a[k] != b.get(k)]
    return f" ({'; '.join(diff)})" if diff else " (the unit plan differs)"


def _remote_target(path: str, storage_options: dict | None) -> Objects:
    """The objects of a URL store, emptied (as zarr's mode ``w`` does) but with no group written yet."""
    from zarr.core.sync import sync
    from zarr.storage._common import make_store_path

    sp = sync(make_store_path(path, mode="w", storage_options=storage_options))
    if sp.path:
        raise StoreError(f"{path}: URL stores must be the root of their zarr store (got sub-path {sp.path!r})")
    return Objects(path, sp.store)


def open_writer(
    path: str | os.PathLike, *, storage_options: dict | None = None, lease_ttl: float = DEFAULT_LEASE_TTL
) -> StoreWriter:
    """Open an existing store to write its remaining shards (resume, or another process)."""
    path = store_location(path)
    group = open_group(path, "r+", storage_options)
    try:
        return StoreWriter(group, path, lease_ttl)
    except KeyError as e:
        raise StoreError(f"{path} is missing array {e}; the store was not created completely") from None


def _remote_exists(path: str, storage_options: dict | None) -> bool:
    try:
        open_group(path, "r", storage_options)
        return True
    except StoreError:
        return False
