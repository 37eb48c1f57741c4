"""Random pruning of stored units (LPLD), after relabel or planned before it.

:func:`prune_store` copies a kept subset of an existing store into a new, standalone store without
decoding (the stored bytes of each kept unit are copied as they are). Which units are kept
(:func:`select_units`, :func:`plan_units` before relabel, :func:`pruned_spec`) is ``plan.py``'s;
those names are re-exported here.
"""

from __future__ import annotations

import os

import numpy as np

from ddpipe._progress import progress_bar
from .errors import SpecError
from .location import check_distinct_locations, is_url, store_location
from .plan import plan_units, pruned_spec, select_units
from .reader import open_store
from .writer import create_store

__all__ = ["plan_units", "prune_store", "pruned_spec", "select_units"]


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
    bar = progress_bar(total=len(shards), desc="prune", unit="shard", enabled=progress)
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
