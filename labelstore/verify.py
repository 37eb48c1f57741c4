"""``verify``: read every byte of a store and check it means what the format says.

Checks: the group attributes match their checksum (format 3; an edited ``temperature``, ``k`` or
``num_classes`` raises :class:`MetadataEditedError` naming the field); then per writer shard:
committed (complete); every array's object present; format 3: the commit record belongs to this
store, shard and unit range, and every object hashes to the SHA-256 it records (a shard moved
between positions or epochs, swapped between arrays or copied from another store is named);
every chunk passes its CRC32C checksum and decodes; then, per unit, the stored values make sense:
the unit is the one the plan *recomputed from the spec* says (``StoreReader.plan``: the full
schedule or the pruning record's draw; format 3 checks a plan the spec does not determine against
its recorded hash), sample ids and class indices in range and distinct, probabilities in [0, 1]
with total mass at most 1 (within the codec's error), crop boxes inside the image, the mix
permutation a permutation. Every problem names the unit, its (epoch, batch) and the array.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ddpipe._progress import progress_bar
from .errors import ChunkCorruptError, FieldsMismatchError
from .fields import FieldsFn
from .layout import DIGEST_ARRAY, PAD_SAMPLE_ID
from .reader import DamagedObject, StoreReader, open_store
from .spec import MIX_KINDS


def _problem(reader: StoreReader, unit: int, array: str, error: str, last: int | None = None) -> dict:
    e, b = (int(x) for x in reader.plan[unit])
    p = {"unit": int(unit), "epoch": e, "batch": b, "array": array, "error": error}
    if last is not None and last != unit:
        p["last_unit"] = int(last)
    return p


def _runs(units: list[int]) -> list[tuple[int, int]]:
    """Collapse sorted unit numbers into (first, last) runs."""
    out: list[tuple[int, int]] = []
    for u in units:
        if out and u == out[-1][1] + 1:
            out[-1] = (out[-1][0], u)
        else:
            out.append((u, u))
    return out


def _check_values(reader: StoreReader, start: int, slab_arrays: dict, values: np.ndarray) -> list[dict]:
    spec = reader.spec
    probs: list[dict] = []
    a = slab_arrays
    for i in range(len(a["unit_count"])):
        u = start + i
        e, b = (int(x) for x in reader.plan[u])

        def bad(array: str, error: str) -> None:
            probs.append(_problem(reader, u, array, error))

        if int(a["unit_epoch"][i]) != e or int(a["unit_batch"][i]) != b:
            bad("unit_epoch", f"stored (epoch, batch) ({a['unit_epoch'][i]}, {a['unit_batch'][i]}) differs from the plan")
        n = int(a["unit_count"][i])
        if n != spec.batch_count(b):
            bad("unit_count", f"count {n} but batch {b} holds {spec.batch_count(b)} samples")
            continue
        if "sample_id" in a:  # absent: a derived_fields store read without its schedule (labels only)
            if int(a["unit_mix_kind"][i]) >= len(MIX_KINDS):
                bad("unit_mix_kind", f"unknown mix kind {int(a['unit_mix_kind'][i])}")
            lam = float(a["unit_mix_lambda"][i])
            if not 0.0 <= lam <= 1.0:
                bad("unit_mix_lambda", f"lambda {lam} outside [0, 1]")
            perm = a["unit_mix_perm"][i].astype(np.int64)
            if not np.array_equal(np.sort(perm[:n]), np.arange(n)):
                bad("unit_mix_perm", "not a permutation of the batch slots")
            ids = a["sample_id"][i].astype(np.int64)
            if ids[:n].max() >= spec.num_samples or np.any(ids[n:] != PAD_SAMPLE_ID):
                bad("sample_id", f"sample ids outside [0, {spec.num_samples}) or padding slots not marked")
            if a["sample_crop"].dtype.kind == "f":  # exact_fields: float32 fractions as the source gave them
                fc = a["sample_crop"][i, :n].astype(np.float64)
                if (not np.all(np.isfinite(fc)) or fc.min(initial=0) < 0 or np.any(fc[:, 0] + fc[:, 2] > 1 + 1e-3)
                        or np.any(fc[:, 1] + fc[:, 3] > 1 + 1e-3)):
                    bad("sample_crop", "crop box reaches outside the image")
            else:
                crop = a["sample_crop"][i, :n].astype(np.int64)
                lim = spec.crop_scale + (0 if spec.crop_grid else 1)  # whole pixels add up exactly; fixed point rounds
                if np.any(crop[:, 0] + crop[:, 2] > lim) or np.any(crop[:, 1] + crop[:, 3] > lim):
                    bad("sample_crop", "crop box reaches outside the image")
        idx = a["label_index"][i, :n].astype(np.int64)
        if idx.max() >= spec.num_classes:
            bad("label_index", f"class index {int(idx.max())} >= num_classes {spec.num_classes}")
        elif spec.k > 1:
            srt = np.sort(idx, axis=1)
            if np.any(srt[:, 1:] == srt[:, :-1]):
                bad("label_index", "a class appears twice in one sample's top-k")
        v = values[i, :n]
        if not np.all(np.isfinite(v)) or v.min() < 0 or v.max() > 1 + 1e-6:
            bad("label_value", "probabilities outside [0, 1]")
            continue
        mass = v.sum(axis=1, dtype=np.float64)
        tol = reader.codec.max_error(v).sum(axis=1) + 1e-5
        worst = int(np.argmax(mass - tol))
        if mass[worst] > 1 + tol[worst]:
            bad("label_value", f"slot {worst}: top-k probability mass {mass[worst]:.6f} exceeds 1")
    return probs


def verify_store(path: str | os.PathLike, *, backend: str = "auto", progress: bool = False,
                 storage_options: dict | None = None, fields: FieldsFn | None = None) -> dict[str, Any]:
    """Return ``{"ok", "problems", "checked_units", "units"}`` (``docs/format.md`` §verify).
    ``storage_options``: the fsspec options of a store behind a URL (``s3://``: s3fs's). A remote
    store's objects are fetched once each: hashed, then decoded from the same bytes. ``fields``: a
    ``derived_fields`` store's replay schedule (``open_store``): every unit's schedule fields are
    recomputed and checked against their stored digest; without it such a store's labels are checked."""
    reader = open_store(path, backend=backend, storage_options=storage_options, fields=fields)
    remote = not reader._local
    problems: list[dict] = []
    checked = 0
    for s in progress_bar(range(reader.num_shards), desc="verify", unit="shard", enabled=progress):
        units = reader.shard_units(s)
        before = len(problems)
        if s in reader.damaged_records:
            problems.append(_problem(reader, units.start, "commit_shard",
                                     f"the commit record of shard {s} is damaged (checksum or decode failed)", units.stop - 1))
            continue
        if not reader.committed[s]:
            problems.append(
                _problem(reader, units.start, "commit_shard", f"shard {s} not committed (incomplete)", units.stop - 1)
            )
            continue
        objects = reader.fetch_shard(s) if remote else None
        found = reader.shard_problems(s, objects)  # objects present; format 3: record and content hashes
        if any(cls is DamagedObject for _a, _e, cls in found):
            problems.extend(_locate_damage(reader, units))
        found = [p for p in found if p[2] is not DamagedObject]
        for array, error, _cls in found:
            problems.append(_problem(reader, units.start, array, error, units.stop - 1))
        if len(problems) > before:
            continue
        try:
            slab = reader.read_slab(units.start, units.stop, check_values=False,
                                    objects=None if objects is None else {s: objects})
        except ChunkCorruptError:
            problems.extend(_locate_damage(reader, units))
            continue
        except FieldsMismatchError as e:
            problems.append(_problem(reader, units.start, DIGEST_ARRAY, str(e), units.stop - 1))
            continue
        problems.extend(_check_values(reader, units.start, slab.arrays, slab.values))
        checked += len(units)
    return {"ok": not problems, "problems": problems, "checked_units": checked, "units": reader.num_units}


def _locate_damage(reader: StoreReader, units: range) -> list[dict]:
    """Unit by unit and array by array, find which reads fail."""
    found = []
    for name in reader.array_names:
        bad = []
        for u in units:
            try:
                reader._backend.read(name, u, u + 1)
            except Exception:  # noqa: BLE001 - checksum or decode failure
                bad.append(u)
        for first, last in _runs(bad):
            found.append(_problem(reader, first, name, "checksum or decode failed (damaged chunk)", last))
    return found
