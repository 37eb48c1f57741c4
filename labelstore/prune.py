"""Random pruning of stored units (LPLD), after relabel or planned before it.

:func:`plan_units` returns the (epoch, batch) units to keep, so a relabel run can skip the teacher
on everything else; :func:`prune_store` copies a kept subset of an existing store into a new,
standalone store without decoding (the stored bytes of each kept unit are copied as they are).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .errors import SpecError
from .location import check_distinct_locations, is_url, store_location
from .reader import open_store
from .spec import PRUNE_GRANULARITIES, StoreSpec, full_plan
from .writer import create_store


def _parse_keep(keep: Any) -> float:
    try:
        k = float(keep)
    except (TypeError, ValueError):
        raise SpecError(f"keep must be a fraction in (0, 1], got {keep!r}") from None
    if not 0 < k <= 1:
        raise SpecError(f"keep must be a fraction in (0, 1], got {keep!r}")
    return k


def select_units(plan: np.ndarray, keep: float, granularity: str = "batch", seed: int = 0) -> np.ndarray:
    """Keep a random ``keep`` fraction of the rows of ``plan`` (at least one unit or epoch).

    ``batch``: units drawn uniformly without replacement. ``epoch``: whole epochs drawn the same
    way (LPLD's epoch granularity). The result stays in training order.
    """
    keep = _parse_keep(keep)
    if granularity not in PRUNE_GRANULARITIES:
        raise SpecError(f"granularity must be one of {PRUNE_GRANULARITIES}, got {granularity!r}")
    rng = np.random.default_rng(seed)
    if granularity == "batch":
        n = max(1, int(round(keep * len(plan))))
        rows = np.sort(rng.choice(len(plan), size=n, replace=False))
        return plan[rows]
    epochs = np.unique(plan[:, 0])
    n = max(1, int(round(keep * len(epochs))))
    chosen = np.sort(rng.choice(epochs, size=n, replace=False))
    return plan[np.isin(plan[:, 0], chosen)]


def plan_units(spec: StoreSpec, keep: float, granularity: str = "batch", seed: int = 0) -> np.ndarray:
    """The (epoch, batch) units a pruned relabel run must compute, in training order: int64 ``[n, 2]``."""
    return select_units(full_plan(spec), keep, granularity, seed)


def pruned_spec(spec: StoreSpec, keep: float, granularity: str, seed: int, source_units: int | None = None) -> StoreSpec:
    """The spec of a pruned store: ``pruning.keep`` is the fraction of the *full* schedule kept."""
    keep = _parse_keep(keep)
    prior = spec.pruning["keep"] if spec.pruning else 1.0
    return spec.replace(
        pruning={
            "keep": prior * keep,
            "granularity": granularity,
            "seed": seed,
            "source_units": source_units or spec.full_units,
        }
    )


def prune_store(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    keep: float,
    *,
    granularity: str = "batch",
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = False,
    storage_options: dict | None = None,
    dst_storage_options: dict | None = None,
) -> str:
    """Write a standalone store at ``dst`` holding a random ``keep`` fraction of ``src``'s units.

    ``dst`` may not be ``src`` (in any spelling: trailing slash, ``./``, a symlink, a ``file://``
    URL), nor inside or around it: :class:`SameLocationError` before anything is touched.
    ``storage_options``: fsspec options of ``src`` behind a URL (``s3://``: s3fs's); ``dst_storage_options``
    those of ``dst`` (default: ``storage_options`` when ``dst`` is a URL too)."""
    check_distinct_locations(src, dst, "prune")
    if dst_storage_options is None and is_url(store_location(dst)):
        dst_storage_options = storage_options
    reader = open_store(src, storage_options=storage_options)
    if not reader.complete:
        raise SpecError(f"{src} is incomplete ({reader.complete_units}/{reader.num_units} units); finish it before pruning")
    kept = select_units(reader.plan, keep, granularity, seed)
    spec = pruned_spec(reader.spec, keep, granularity, seed, reader.spec.full_units)
    writer = create_store(
        dst, spec, kept, overwrite=overwrite, provenance={"pruned_from": store_location(src)},
        storage_options=dst_storage_options,
    )
    kept_units = np.array([reader.unit_index(e, b) for e, b in kept], dtype=np.int64)
    shards = np.unique(kept_units // reader.spec.units_per_shard)
    bar = _progress(len(shards), "prune", progress)
    with writer:
        for s in shards:
            units = reader.shard_units(int(s))
            slab = reader.read_slab(units.start, units.stop)
            for u in kept_units[(kept_units >= units.start) & (kept_units < units.stop)]:
                i = int(u) - units.start
                rows = {name: arr[i] for name, arr in slab.arrays.items()}
                writer.write_rows(int(reader.plan[u, 0]), int(reader.plan[u, 1]), rows)
            bar.update(1)
    bar.close()
    return os.fspath(dst)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="shard", disable=not enabled, leave=False)
