"""Group attributes of a store: format version, spec, provenance; and opening a store's group."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from typing import Any

from ddpipe.labelstore.errors import FormatVersionError, NotAStoreError, SpecError
from ddpipe.labelstore.spec import FORMAT_VERSION, READ_FORMAT_VERSIONS, StoreSpec

ATTR_KEY = "ddpipe"


@dataclass(frozen=True)
class StoreMeta:
    format_version: int
    spec: StoreSpec
    num_units: int  # units this store holds (all of the schedule, or the kept subset)
    provenance: dict


def software_versions() -> dict:
    import numcodecs
    import numpy
    import zarr

    from ddpipe import __version__

    return {
        "ddpipe": __version__,
        "zarr": zarr.__version__,
        "numcodecs": numcodecs.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def make_attrs(spec: StoreSpec, num_units: int, provenance: dict | None = None) -> dict:
    prov = {"software": software_versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    prov.update(provenance or {})
    return {
        ATTR_KEY: {
            "format_version": FORMAT_VERSION,
            "spec": spec.to_dict(),
            "num_units": int(num_units),
            "provenance": prov,
        }
    }


def parse_format_version(value: Any, where: str) -> int:
    """The store's format version, if this ddpipe reads it (:data:`READ_FORMAT_VERSIONS`)."""
    if isinstance(value, bool) or not isinstance(value, int) or value not in READ_FORMAT_VERSIONS:
        known = " or ".join(str(v) for v in READ_FORMAT_VERSIONS)
        raise FormatVersionError(
            f"{where} has format_version {value!r}; this ddpipe reads format_version {known} "
            "only (upgrade ddpipe to read newer stores)"
        )
    return int(value)


def parse_attrs(attrs: Any, where: str) -> StoreMeta:
    if not isinstance(attrs, dict) or ATTR_KEY not in attrs or not isinstance(attrs[ATTR_KEY], dict):
        raise NotAStoreError(f"{where} is a Zarr group but not a ddpipe label store (no '{ATTR_KEY}' attributes)")
    a = attrs[ATTR_KEY]
    version = parse_format_version(a.get("format_version"), where)
    spec = StoreSpec.from_dict(a.get("spec"))
    num_units = a.get("num_units")
    if not isinstance(num_units, int) or num_units <= 0:
        raise SpecError(f"{where}: num_units must be a positive integer, got {num_units!r}")
    return StoreMeta(version, spec, num_units, dict(a.get("provenance") or {}))


def is_local(path: Any) -> bool:
    return isinstance(path, (str, os.PathLike)) and "://" not in os.fspath(path)


def open_group(path: Any, mode: str = "r", storage_options: dict | None = None):
    """Open the store's zarr group, turning 'nothing there' into :class:`NotAStoreError`."""
    import zarr

    where = os.fspath(path) if isinstance(path, os.PathLike) else str(path)
    if is_local(path) and mode in ("r", "r+") and not os.path.isfile(os.path.join(where, "zarr.json")):
        raise NotAStoreError(f"{where} is not a ddpipe label store (no zarr.json there)")
    kw = {"storage_options": storage_options} if storage_options else {}
    try:
        return zarr.open_group(store=where, mode=mode, zarr_format=3, **kw)
    except (FileNotFoundError, KeyError) as e:
        raise NotAStoreError(f"{where} is not a ddpipe label store ({e})") from None
    except (ValueError, TypeError) as e:
        raise NotAStoreError(f"{where} is not a readable Zarr v3 group: {e}") from None


def read_meta(path: Any, storage_options: dict | None = None, mode: str = "r"):
    """Open ``path`` and return ``(group, StoreMeta)``; the version is checked before anything else."""
    group = open_group(path, mode, storage_options)
    return group, parse_attrs(dict(group.attrs), str(path))
