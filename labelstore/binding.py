"""Content binding (format 3): what ties every committed shard to its store, array and position.

- The group attributes carry a random ``store_id`` (made at creation), ``plan_sha256`` (the SHA-256
  of the unit plan) and a ``checksum`` of everything else they hold, with a short digest per field
  so that an edit (``temperature``, ``k``, ``num_classes`` …) is reported by field name.
- A shard is committed by writing its *commit record* (row ``s`` of ``commit_shard``): magic,
  store id, shard number, unit range and the SHA-256 of each data array's shard object, in the
  layout's array order. A reader checks the record and the objects' hashes once per shard before
  decoding, so a shard moved between positions or epochs, swapped between two arrays of the same
  shape, or copied from another store is an error naming the unit range and the array.

``docs/format.md`` §6 specifies the record byte by byte.
"""

from __future__ import annotations

import hashlib
import json
import struct
import uuid
from typing import Any

import numpy as np

from .errors import MetadataEditedError

RECORD_MAGIC = b"DDPC"
RECORD_LAYOUT = 1
RECORD_HEADER = 64
HASH_BYTES = 32
_HEADER = struct.Struct("<4sI16sQQQI12x")  # magic, layout, store id, shard, unit start, unit stop, arrays
assert _HEADER.size == RECORD_HEADER


def new_store_id() -> str:
    return uuid.uuid4().hex


def record_bytes(num_arrays: int) -> int:
    """Length of a commit record for a store with ``num_arrays`` data arrays."""
    return RECORD_HEADER + HASH_BYTES * num_arrays


def pack_record(store_id: str, shard: int, units: range, digests: list[bytes]) -> np.ndarray:
    head = _HEADER.pack(RECORD_MAGIC, RECORD_LAYOUT, bytes.fromhex(store_id), shard, units.start, units.stop, len(digests))
    return np.frombuffer(head + b"".join(digests), dtype=np.uint8).copy()


def unpack_record(row: np.ndarray) -> dict | None:
    """The fields of a commit record, or None for an all-zero row (not committed). A row that is
    neither gives ``{"error": ...}``."""
    raw = np.asarray(row, dtype=np.uint8).tobytes()
    if not any(raw):
        return None
    if len(raw) < RECORD_HEADER:
        return {"error": f"commit record has {len(raw)} bytes, fewer than its {RECORD_HEADER}-byte header"}
    magic, layout, sid, shard, start, stop, n = _HEADER.unpack_from(raw)
    if magic != RECORD_MAGIC or layout != RECORD_LAYOUT:
        return {"error": "commit record has no valid header (damaged)"}
    digests = [raw[RECORD_HEADER + i * HASH_BYTES: RECORD_HEADER + (i + 1) * HASH_BYTES] for i in range(n)]
    if len(raw) < RECORD_HEADER + n * HASH_BYTES:
        return {"error": f"commit record lists {n} arrays but holds fewer digests (damaged)"}
    return {"store_id": sid.hex(), "shard": shard, "units": range(start, stop), "digests": digests}


def is_committed_row(row: np.ndarray) -> bool:
    return bytes(np.asarray(row[:4], dtype=np.uint8)) == RECORD_MAGIC


def plan_sha256(plan: np.ndarray) -> str:
    """SHA-256 of a unit plan as little-endian int64 ``[units, 2]`` in C order."""
    return hashlib.sha256(np.ascontiguousarray(np.asarray(plan, dtype="<i8")).tobytes()).hexdigest()


# --- the attributes' checksum -----------------------------------------------------------------
def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def _fields(attrs: dict) -> dict[str, Any]:
    """The checksummed fields: each spec field on its own, every other top-level key as a whole."""
    out = {}
    for key, value in attrs.items():
        if key == "checksum":
            continue
        if key == "spec" and isinstance(value, dict):
            for f, v in value.items():
                out[f"spec.{f}"] = v
        else:
            out[key] = value
    return out


def make_checksum(attrs: dict) -> dict:
    """``{"sha256": digest of all fields, "fields": {name: 8-hex digest}}`` for a ``ddpipe`` attribute
    dict (JSON values; ``checksum`` itself excluded). ``docs/format.md`` §2 gives the encoding."""
    body = {k: v for k, v in attrs.items() if k != "checksum"}
    fields = {name: hashlib.sha256(_canonical(v)).hexdigest()[:8] for name, v in _fields(body).items()}
    return {"sha256": hashlib.sha256(_canonical(body)).hexdigest(), "fields": fields}


def check_checksum(attrs: dict, where: str) -> None:
    """Raise :class:`MetadataEditedError` naming the edited fields when ``attrs`` (a format-3
    ``ddpipe`` attribute dict) does not match its checksum."""
    rec = attrs.get("checksum")
    if not isinstance(rec, dict) or not isinstance(rec.get("sha256"), str):
        raise MetadataEditedError(f"{where}/zarr.json: the ddpipe attributes carry no checksum (edited or damaged)")
    try:
        now = make_checksum(attrs)
    except (TypeError, ValueError) as e:
        raise MetadataEditedError(f"{where}/zarr.json: the ddpipe attributes are not plain JSON ({e})") from None
    if now["sha256"] == rec["sha256"]:
        return
    old = rec.get("fields") if isinstance(rec.get("fields"), dict) else {}
    changed = sorted(
        name for name in set(old) | set(now["fields"]) if old.get(name) != now["fields"].get(name)
    )
    what = ", ".join(changed) if changed else "the checksum record itself"
    raise MetadataEditedError(
        f"{where}/zarr.json: the ddpipe attributes were edited after the store was written "
        f"(changed: {what}); the labels were made with the recorded values, so the store cannot be "
        "trusted with these. Restore zarr.json or relabel"
    )
