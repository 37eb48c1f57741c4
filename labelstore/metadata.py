"""Group attributes of a store: format version, spec, provenance; and opening a store's group."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from typing import Any

import numpy

from ddpipe import __version__
from .binding import check_checksum, make_checksum, new_store_id, plan_sha256
from .errors import FormatVersionError, NotAStoreError, SpecError, io_error
from .location import LOCAL_SCHEMES, is_url, store_location
from .spec import BOUND_FORMAT_VERSION, FORMAT_VERSION, READ_FORMAT_VERSIONS, StoreSpec

ATTR_KEY = "ddpipe"


@dataclass(frozen=True)
class StoreMeta:
    format_version: int
    spec: StoreSpec
    num_units: int  # units this store holds (all of the schedule, or the kept subset)
    provenance: dict
    store_id: str = ""  # format 3: random id made at creation, repeated in every commit record
    plan_sha256: str = ""  # format 3: SHA-256 of the unit plan (``binding.plan_sha256``)

    @property
    def bound(self) -> bool:
        """Format 3 or later: commit records and the attribute checksum are checked."""
        return self.format_version >= BOUND_FORMAT_VERSION


def software_versions() -> dict:
    import numcodecs  # zarr's codecs, loaded lazily as zarr is (it keeps `ddpipe --help` fast)
    import zarr

    return {
        "ddpipe": __version__,
        "zarr": zarr.__version__,
        "numcodecs": numcodecs.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def make_attrs(spec: StoreSpec, plan, provenance: dict | None = None, store_id: str | None = None) -> dict:
    """The group attributes of a new store holding the units of ``plan`` (current format)."""
    prov = {"software": software_versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    prov.update(provenance or {})
    body = {
        "format_version": spec.format_version,  # 3 unless the spec asks for 4
        "store_id": store_id or new_store_id(),
        "spec": spec.to_dict(),
        "num_units": int(len(plan)),
        "plan_sha256": plan_sha256(plan),
        "provenance": prov,
    }
    body = json.loads(json.dumps(body))  # exactly what zarr.json will hold, so the checksum matches
    body["checksum"] = make_checksum(body)
    return {ATTR_KEY: body}


def parse_format_version(value: Any, where: str) -> int:
    """The store's format version, if this ddpipe reads it (:data:`READ_FORMAT_VERSIONS`)."""
    if isinstance(value, bool) or not isinstance(value, int) or value not in READ_FORMAT_VERSIONS:
        vs = [str(v) for v in READ_FORMAT_VERSIONS]
        known = vs[0] if len(vs) == 1 else ", ".join(vs[:-1]) + " or " + vs[-1]
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
    if version >= BOUND_FORMAT_VERSION:
        check_checksum(a, where)  # before trusting any field: an edited temperature or k is refused
    spec = StoreSpec.from_dict(a.get("spec"))
    if spec.format_version != max(version, FORMAT_VERSION):
        raise SpecError(f"{where}: spec.format_version {spec.format_version} does not match the store's format_version {version}")
    num_units = a.get("num_units")
    if not isinstance(num_units, int) or num_units <= 0:
        raise SpecError(f"{where}: num_units must be a positive integer, got {num_units!r}")
    store_id = plan_hash = ""
    if version >= BOUND_FORMAT_VERSION:
        store_id, plan_hash = a.get("store_id"), a.get("plan_sha256")
        if not _is_hex(store_id, 32) or not _is_hex(plan_hash, 64):
            raise SpecError(f"{where}: store_id / plan_sha256 attributes are missing or malformed")
    return StoreMeta(version, spec, num_units, dict(a.get("provenance") or {}), store_id, plan_hash)


def _is_hex(value: Any, n: int) -> bool:
    if not isinstance(value, str) or len(value) != n:
        return False
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return True


def is_local(path: Any) -> bool:
    """A local path (also a ``file://`` URL, which :func:`store_location` turns into one)."""
    if isinstance(path, os.PathLike):
        return True
    if not isinstance(path, str):
        return False
    return not is_url(path) or path.split("://", 1)[0].lower() in LOCAL_SCHEMES


def open_group(path: Any, mode: str = "r", storage_options: dict | None = None):
    """Open the store's zarr group, turning 'nothing there' into :class:`NotAStoreError`."""
    import zarr

    where = store_location(path)
    if is_local(path) and mode in ("r", "r+") and not os.path.isfile(os.path.join(where, "zarr.json")):
        raise NotAStoreError(f"{where} is not a ddpipe label store (no zarr.json there)")
    kw = {"storage_options": storage_options} if storage_options else {}
    try:
        return zarr.open_group(store=where, mode=mode, zarr_format=3, **kw)
    except (FileNotFoundError, KeyError) as e:
        raise NotAStoreError(f"{where} is not a ddpipe label store ({e})") from None
    except (ValueError, TypeError) as e:
        raise NotAStoreError(f"{where} is not a readable Zarr v3 group: {e}") from None
    except OSError as e:
        raise io_error(e, "opening the store", where) from None


def read_meta(path: Any, storage_options: dict | None = None, mode: str = "r"):
    """Open ``path`` and return ``(group, StoreMeta)``; the version is checked before anything else."""
    group = open_group(path, mode, storage_options)
    return group, parse_attrs(dict(group.attrs), store_location(path))
