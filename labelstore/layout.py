"""The arrays of a store (formats 3 and 4, and the format 1-2 subsets): names, dtypes, shapes, chunking and codecs.

One plain array per field (no structured dtypes), all indexed ``[unit, ...]`` in training order.
Every array is sharded along the unit axis with ``units_per_shard`` units per shard, so one
writer shard is one object per array; inside a shard, inner chunks are compressed with blosc
(zstd, bit-shuffle) and each carries a CRC32C checksum (the shard index has its own), so damage is reported, never read
as wrong labels. ``docs/format.md`` is the prose version of this file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .binding import record_bytes
from .codecs import get_codec
from .spec import CHUNK_SAMPLES, PACKED_FORMAT_VERSION, StoreSpec

PAD_SAMPLE_ID = 2**32 - 1
"""``sample_id`` of the padding slots of a short last batch."""

CROP_SCALE = 65535
"""Crop and cutout boxes are stored as uint16 fixed point: value = round(fraction * 65535)."""

COMMIT_ARRAY = "commit_shard"
"""Format 3: uint8 ``[num_shards, record bytes]``, one unsharded chunk per shard: the shard's commit
record (``binding.py``), written once every array of the shard is written; all zero = not
committed. Formats 1-2: uint8 ``[num_shards]``, 1 = committed."""

LEASE_PREFIX = COMMIT_ARRAY + "/lease"
"""Writers' shard leases live under ``commit_shard/lease/<shard>/<generation>`` (``lease.py``): inside
an array's prefix, so Zarr readers never list them as nodes."""

FILL_ARRAY = "sample_cutout_fill"
"""uint8 ``[U, B, 3]``: each sample's cutout colour (format 2; absent from format-1 stores)."""

FILL_CHANNELS = 3


@dataclass(frozen=True)
class ArrayDef:
    name: str
    dtype: np.dtype
    trailing: tuple[int, ...]  # shape after the unit axis
    fill_value: int | float = 0
    dims: tuple[str, ...] = ()  # names of the trailing axes

    @property
    def per_slot(self) -> bool:
        """The first trailing axis is the batch slot (valid up to ``unit_count``)."""
        return self.dims[:1] == ("slot",)


LSE_ARRAY = "label_lse"
"""Logit stores: float64 ``[U, B]``, ``logsumexp(logits / temperature)`` of each sample's full row."""
AUX_ARRAY = "sample_aux"
"""Stores with ``aux_fields``: float64 ``[U, B, len(aux_fields)]``, per-sample values named by the spec."""


def crop_dtype(spec: StoreSpec) -> np.dtype:
    """``sample_crop``'s dtype: float32 with ``exact_fields``; with a ``crop_grid`` (format 4) uint8 up
    to 255 pixels, else uint16; otherwise uint16 fixed point (``CROP_SCALE``)."""
    if spec.exact_fields:
        return np.dtype("<f4")
    if spec.crop_grid and spec.crop_grid <= 255:
        return np.dtype("u1")
    return np.dtype("<u2")


SCHEDULE_ARRAYS = ("unit_mix_kind", "unit_mix_lambda", "unit_mix_box", "unit_mix_perm", "sample_id", "sample_crop",
                   "sample_flip", "sample_cutout", FILL_ARRAY)
"""The arrays a replay schedule determines (order, crops, flips, cutout, mix): not stored by a store with
``derived_fields``, which keeps :data:`DIGEST_ARRAY` instead (``fields.py``)."""

DIGEST_ARRAY = "unit_fields_digest"
"""Stores with ``derived_fields``: uint64 ``[U]``, the first 8 bytes (little-endian) of the SHA-256 of the
unit's :data:`SCHEDULE_ARRAYS` rows as they would be stored (``fields.fields_digest``)."""


def array_defs(spec: StoreSpec, format_version: int | None = None) -> list[ArrayDef]:
    """The data arrays a store with this spec keeps (not counting ``commit_shard``), as format
    ``format_version`` lays them out (default: the spec's; the reader passes the store's own version).
    With ``derived_fields`` the :data:`SCHEDULE_ARRAYS` are left out and :data:`DIGEST_ARRAY` follows
    ``unit_count``."""
    defs = unit_defs(spec, format_version)
    if not spec.derived_fields:
        return defs
    kept = [d for d in defs if d.name not in SCHEDULE_ARRAYS]
    return [*kept[:3], ArrayDef(DIGEST_ARRAY, np.dtype("<u8"), (), 0), *kept[3:]]


def schedule_defs(spec: StoreSpec) -> list[ArrayDef]:
    """The :data:`SCHEDULE_ARRAYS` of this spec's layout, stored or derived."""
    return [d for d in unit_defs(spec) if d.name in SCHEDULE_ARRAYS]


def unit_defs(spec: StoreSpec, format_version: int | None = None) -> list[ArrayDef]:
    """Every array of a unit as a reader hands it on (the stored ones and, with ``derived_fields``, the
    derived ones), in the layout's order."""
    b, k = spec.batch_size, spec.k
    format_version = spec.format_version if format_version is None else format_version
    codec = get_codec(spec.value_codec)
    defs = [
        ArrayDef("unit_epoch", np.dtype("<i4"), (), -1),
        ArrayDef("unit_batch", np.dtype("<i4"), (), -1),
        ArrayDef("unit_count", np.dtype("<i4"), (), 0),
        ArrayDef("unit_mix_kind", np.dtype("u1"), (), 0),
        # exact_fields: lambda as given (SRe2L's Python float), crops as float32 fractions (their FloatTensor)
        ArrayDef("unit_mix_lambda", np.dtype("<f8") if spec.exact_fields else np.dtype("<f4"), (), 1.0),
        ArrayDef("unit_mix_box", np.dtype("<u2"), (4,), 0, ("box",)),
        ArrayDef("unit_mix_perm", spec.slot_dtype, (b,), 0, ("slot",)),
        ArrayDef("sample_id", np.dtype("<u4"), (b,), PAD_SAMPLE_ID, ("slot",)),
        ArrayDef("sample_crop", crop_dtype(spec), (b, 4), 0, ("slot", "box")),
        ArrayDef("sample_flip", np.dtype("u1"), (b,), 0, ("slot",)),
        ArrayDef("sample_cutout", np.dtype("<u2"), (b, 4), 0, ("slot", "box")),
    ]
    if format_version >= 2:
        defs.append(ArrayDef(FILL_ARRAY, np.dtype("u1"), (b, FILL_CHANNELS), 0, ("slot", "channel")))
    if format_version >= PACKED_FORMAT_VERSION and spec.index_coding == "packed":  # k indices of index_bits each (packing.py)
        defs.append(ArrayDef("label_index", np.dtype("u1"), (b, spec.packed_index_bytes), 0, ("slot", "byte")))
    else:
        defs.append(ArrayDef("label_index", spec.index_dtype, (b, k), 0, ("slot", "k")))
    defs += [
        ArrayDef("label_value", codec.dtype, (b, k), 0, ("slot", "k")),
    ]
    if codec.has_scale:
        defs.append(ArrayDef("label_scale", np.dtype("<f4"), (b,), 0, ("slot",)))
    if spec.value_kind == "logits":
        defs.append(ArrayDef(LSE_ARRAY, np.dtype("<f8"), (b,), 0, ("slot",)))
    if spec.aux_fields:
        defs.append(ArrayDef(AUX_ARRAY, np.dtype("<f8"), (b, len(spec.aux_fields)), 0, ("slot", "aux")))
    return defs


def augmentation_fill(augmentation: dict) -> np.ndarray:
    """The constant cutout colour of an augmentation record, uint8 ``[3]``: its ``fill`` (one
    value, repeated, or the first three), or zeros when there is none or it is not a constant
    (e.g. ``"random"``). The colour of every sample of a format-1 store, and what the writer stores
    for a unit given without per-sample colours."""
    zeros = np.zeros(FILL_CHANNELS, np.uint8)
    fill = (augmentation or {}).get("fill")
    if isinstance(fill, (int, float)) and not isinstance(fill, bool):
        fill = [fill]
    if not isinstance(fill, (list, tuple)):
        return zeros  # none, or "random"
    try:
        vals = [int(v) for v in fill]
    except (TypeError, ValueError, OverflowError):
        return zeros
    if len(vals) == 1:
        vals = vals * FILL_CHANNELS
    if len(vals) < FILL_CHANNELS or any(not 0 <= v <= 255 for v in vals):
        return zeros
    return np.asarray(vals[:FILL_CHANNELS], np.uint8)


def inner_chunk_units(spec: StoreSpec) -> int:
    """Units per inner chunk of the per-slot arrays: the largest divisor of ``units_per_shard``
    holding at most ``CHUNK_SAMPLES`` samples (at least one unit): chunks big enough to compress
    and stream, small enough that a random unit read decompresses little besides the unit."""
    ups = spec.units_per_shard
    want = max(1, CHUNK_SAMPLES // spec.batch_size)
    return max(d for d in range(1, min(ups, want) + 1) if ups % d == 0)


def num_shards(num_units: int, spec: StoreSpec) -> int:
    return -(-num_units // spec.units_per_shard)


def shard_units(shard: int, num_units: int, spec: StoreSpec) -> range:
    """The unit indices of one writer shard."""
    start = shard * spec.units_per_shard
    return range(start, min(num_units, start + spec.units_per_shard))


def shard_key(array: str, shard: int, ndim: int) -> str:
    """Store key of the object holding ``shard`` of ``array`` (default chunk key encoding)."""
    return "/".join([array, "c", str(shard)] + ["0"] * (ndim - 1))


def commit_record_bytes(spec: StoreSpec) -> int:
    """Bytes of one commit record of a format-3 store with this spec."""
    return record_bytes(len(array_defs(spec)))


def create_arrays(group, spec: StoreSpec, num_units: int, zstd_level: int) -> None:
    """Create every array of the layout (current format) in an (empty) zarr group."""
    from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec

    ups = spec.units_per_shard
    inner = inner_chunk_units(spec)
    for d in array_defs(spec):
        shape = (num_units, *d.trailing)
        chunk_units = inner if d.per_slot else ups
        group.create_array(
            d.name,
            shape=shape,
            dtype=d.dtype,
            chunks=(chunk_units, *d.trailing),
            shards=(ups, *d.trailing),
            serializer=BytesCodec(),
            compressors=[
                # bit-shuffled zstd: top-k indices, ids and permutations shrink ~20% over plain zstd
                BloscCodec(cname="zstd", clevel=zstd_level, shuffle="bitshuffle", typesize=d.dtype.itemsize),
                Crc32cCodec(),
            ],
            fill_value=d.fill_value,
            dimension_names=["unit", *d.dims],
        )
    rec = commit_record_bytes(spec)
    group.create_array(
        COMMIT_ARRAY,
        shape=(num_shards(num_units, spec), rec),
        dtype="u1",
        chunks=(1, rec),
        serializer=BytesCodec(),
        compressors=[Crc32cCodec()],
        fill_value=0,
        dimension_names=["shard", "record"],
    )
