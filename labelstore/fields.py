"""A unit's schedule fields (sample order, crops, flips, cutout, mix) as stored rows, and their digest.

The writer stores these rows (``layout.SCHEDULE_ARRAYS``); a store with ``derived_fields`` (format 4)
stores only their digest, one uint64 per unit, and its reader rebuilds the rows from the replay
schedule it is given (``open_store(path, fields=schedule.unit)``) and compares digests, so labels are
never paired with crops other than the ones the teacher saw. Both sides go through
:func:`encode_fields`, the one encoding of these rows.
"""

from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np

from .errors import FieldsMismatchError, SpecError
from .layout import (CROP_SCALE, DIGEST_ARRAY, FILL_ARRAY, FILL_CHANNELS, SCHEDULE_ARRAYS, augmentation_fill, crop_dtype,
                     schedule_defs)
from .spec import MIX_KINDS, StoreSpec
from .unit import Unit

FieldsFn = Callable[[int, int], Unit]
"""``fields(epoch, batch)``: the unit of the replay schedule (no labels needed), e.g. ``Schedule.unit``."""


def shaped(value, name: str, shape: tuple, where: str, dtype=None) -> np.ndarray:
    """``value`` as an array of ``shape`` (and ``dtype``), or :class:`SpecError` naming the unit and field."""
    a = np.asarray(value) if dtype is None else np.asarray(value, dtype=dtype)
    if a.shape != shape:
        raise SpecError(f"{where}: {name} must have shape {shape}, got {a.shape}")
    return a


def padded(a: np.ndarray, batch_size: int, fill=0) -> np.ndarray:
    """Rows ``a`` of a unit's valid slots, padded with ``fill`` to ``batch_size`` slots."""
    out = np.full((batch_size, *a.shape[1:]), fill, dtype=a.dtype)
    out[: len(a)] = a
    return out


def encode_fields(spec: StoreSpec, unit: Unit, default_fill: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The :data:`~ddpipe.labelstore.layout.SCHEDULE_ARRAYS` rows of one unit, padded to the batch size,
    in their stored dtypes; bad values raise :class:`SpecError` naming the unit and the field."""
    where = f"unit (epoch {unit.epoch}, batch {unit.batch})"
    b = spec.batch_count(int(unit.batch))
    B = spec.batch_size
    if default_fill is None:
        default_fill = augmentation_fill(spec.augmentation)

    def arr(value, name, shape, dtype=None):
        return shaped(value, name, shape, where, dtype)

    def pad(a, fill=0):
        return padded(a, B, fill)

    ids = arr(unit.sample_ids, "sample_ids", (b,))
    if not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0 or ids.max() >= spec.num_samples:
        raise SpecError(f"{where}: sample_ids must be integers in [0, {spec.num_samples})")
    crops = arr(unit.crops, "crops", (b, 4), np.float64)
    if spec.exact_fields:  # stored as float32: a value float32 cannot hold is refused, never rounded
        crops32 = np.asarray(unit.crops).astype(np.float32)
        if not np.array_equal(crops32.astype(np.float64), crops, equal_nan=True):
            raise SpecError(f"{where}: crops must be float32 values in a store with exact_fields")
    if not np.all(np.isfinite(crops)) or crops.min() < 0 or crops.max() > 1:
        raise SpecError(f"{where}: crops must be fractions in [0, 1] (top, left, height, width)")
    if spec.crop_grid:  # integer source pixels: the fractions must be on the grid (within 1/65535 fixed point)
        px = crops * spec.crop_grid
        off = np.abs(px - np.rint(px))
        if off.size and off.max() > spec.crop_grid / CROP_SCALE + 1e-4:
            raise SpecError(f"{where}: crops are not whole pixels of a {spec.crop_grid}-pixel source image "
                            f"(off by {off.max():.4f} px); store them with crop_grid 0 or exact_fields")
        stored_crops = np.rint(px).astype(crop_dtype(spec))
    elif spec.exact_fields:
        stored_crops = crops.astype(np.float32)
    else:
        stored_crops = np.rint(crops * CROP_SCALE).astype(np.uint16)
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
        fill = np.broadcast_to(default_fill, (b, FILL_CHANNELS))
    else:
        fill = arr(unit.cutout_fill, "cutout_fill", (b, FILL_CHANNELS))
        if fill.size and (
            not np.issubdtype(fill.dtype, np.number) or not np.all(np.isfinite(fill))
            or np.any(fill != np.rint(fill)) or fill.min() < 0 or fill.max() > 255
        ):
            raise SpecError(f"{where}: cutout_fill must hold integer colours in [0, 255]")
    return {
        "unit_mix_kind": np.uint8(MIX_KINDS.index(unit.mix_kind)),
        "unit_mix_lambda": np.float64(lam) if spec.exact_fields else np.float32(lam),
        "unit_mix_box": box.astype(np.uint16),
        "unit_mix_perm": np.concatenate([perm, np.arange(b, B)]).astype(spec.slot_dtype),
        "sample_id": pad(ids.astype(np.uint32), np.uint32(2**32 - 1)),
        "sample_crop": pad(stored_crops),
        "sample_flip": pad(flips.astype(np.uint8)),
        "sample_cutout": pad(cut.astype(np.uint16)),
        FILL_ARRAY: pad(np.asarray(fill).astype(np.uint8)),
    }


def fields_digest(rows: dict[str, np.ndarray], spec: StoreSpec) -> np.uint64:
    """The first 8 bytes, little-endian, of the SHA-256 of one unit's schedule rows: each array of
    ``SCHEDULE_ARRAYS`` in that order, cast to its stored dtype, its bytes in C order (``docs/format.md`` §3.2)."""
    h = hashlib.sha256()
    for d in schedule_defs(spec):
        h.update(np.ascontiguousarray(np.asarray(rows[d.name]).astype(d.dtype, copy=False)).tobytes())
    return np.uint64(int.from_bytes(h.digest()[:8], "little"))


def derive_arrays(spec: StoreSpec, fields: FieldsFn, plan: np.ndarray, digests: np.ndarray, where) -> dict[str, np.ndarray]:
    """The schedule arrays ``[n, ...]`` of the units ``plan`` (``(epoch, batch)`` rows) from ``fields``,
    each unit's digest compared with the stored one: a difference raises :class:`FieldsMismatchError`
    (``where(i)`` describes unit ``i`` of the slice)."""
    defs = schedule_defs(spec)
    out = {d.name: np.empty((len(plan), *d.trailing), d.dtype) for d in defs}
    fill = augmentation_fill(spec.augmentation)
    for i, (e, b) in enumerate(np.asarray(plan, np.int64)):
        unit = fields(int(e), int(b))
        if (int(unit.epoch), int(unit.batch)) != (int(e), int(b)):
            raise FieldsMismatchError(f"{where(i)}: the schedule returned (epoch {unit.epoch}, batch {unit.batch}) for it")
        rows = encode_fields(spec, unit, fill)
        got = fields_digest(rows, spec)
        if got != np.uint64(digests[i]):
            raise FieldsMismatchError(
                f"{where(i)}: the replay schedule given gives other sample ids, crops, flips, cutout or mix than "
                f"the relabel run stored (digest {int(got):016x}, stored {int(digests[i]):016x}); open the store with "
                "the schedule (seed, augmentation, image sizes) it was relabelled with"
            )
        for name, value in rows.items():
            out[name][i] = value
    return out


__all__ = ["DIGEST_ARRAY", "SCHEDULE_ARRAYS", "FieldsFn", "derive_arrays", "encode_fields", "fields_digest"]
