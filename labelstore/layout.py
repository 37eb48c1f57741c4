"""The arrays of a format-1 store: names, dtypes, shapes, chunking and codecs.

One plain array per field (no structured dtypes), all indexed ``[unit, ...]`` in training order.
Every array is sharded along the unit axis with ``units_per_shard`` units per shard, so one
writer shard is one object per array; inside a shard, inner chunks are compressed with blosc
(zstd, bit-shuffle) and each carries a CRC32C checksum (the shard index has its own), so damage is reported, never read
as wrong labels. ``docs/format.md`` is the prose version of this file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ddpipe.labelstore.codecs import get_codec
from ddpipe.labelstore.spec import CHUNK_SAMPLES, StoreSpec

PAD_SAMPLE_ID = 2**32 - 1
"""``sample_id`` of the padding slots of a short last batch."""

CROP_SCALE = 65535
"""Crop and cutout boxes are stored as uint16 fixed point: value = round(fraction * 65535)."""

COMMIT_ARRAY = "commit_shard"
"""uint8 ``[num_shards]``, one unsharded chunk per shard: 1 once every array of the shard is written."""


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


def array_defs(spec: StoreSpec) -> list[ArrayDef]:
    """The data arrays of a store with this spec (not counting ``commit_shard``)."""
    b, k = spec.batch_size, spec.k
    codec = get_codec(spec.value_codec)
    defs = [
        ArrayDef("unit_epoch", np.dtype("<i4"), (), -1),
        ArrayDef("unit_batch", np.dtype("<i4"), (), -1),
        ArrayDef("unit_count", np.dtype("<i4"), (), 0),
        ArrayDef("unit_mix_kind", np.dtype("u1"), (), 0),
        ArrayDef("unit_mix_lambda", np.dtype("<f4"), (), 1.0),
        ArrayDef("unit_mix_box", np.dtype("<u2"), (4,), 0, ("box",)),
        ArrayDef("unit_mix_perm", spec.slot_dtype, (b,), 0, ("slot",)),
        ArrayDef("sample_id", np.dtype("<u4"), (b,), PAD_SAMPLE_ID, ("slot",)),
        ArrayDef("sample_crop", np.dtype("<u2"), (b, 4), 0, ("slot", "box")),
        ArrayDef("sample_flip", np.dtype("u1"), (b,), 0, ("slot",)),
        ArrayDef("sample_cutout", np.dtype("<u2"), (b, 4), 0, ("slot", "box")),
        ArrayDef("label_index", spec.index_dtype, (b, k), 0, ("slot", "k")),
        ArrayDef("label_value", codec.dtype, (b, k), 0, ("slot", "k")),
    ]
    if codec.has_scale:
        defs.append(ArrayDef("label_scale", np.dtype("<f4"), (b,), 0, ("slot",)))
    return defs


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


def create_arrays(group, spec: StoreSpec, num_units: int, zstd_level: int) -> None:
    """Create every array of the layout in an (empty) zarr group."""
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
    group.create_array(
        COMMIT_ARRAY,
        shape=(num_shards(num_units, spec),),
        dtype="u1",
        chunks=(1,),
        serializer=BytesCodec(),
        compressors=[Crc32cCodec()],
        fill_value=0,
        dimension_names=["shard"],
    )
