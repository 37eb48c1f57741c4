"""Where a store lives: one normal form for every way of naming it, and the "same place" test.

:func:`store_location` is the only place that turns what a user typed into the store's location:
relative paths (``./labels.zarr``, ``../x.zarr``), ``~``, trailing slashes and ``file://`` URLs all
become one absolute local path; other URLs (``memory://``, ``s3://`` …) stay URLs, with the scheme
lower-cased and trailing slashes removed. Every entry point of ``labelstore`` normalises with it,
so the tensorstore and zarr backends see the same absolute path; higher packages use it instead of
``os.path.abspath`` (which turns ``memory://m`` into ``$PWD/memory:/m``).

:func:`locations_overlap` / :func:`check_distinct_locations` refuse to write an output onto, inside
or around its input (``prune S --out S``, ``--out S/``, ``--out ./S``, a symlink to ``S``, a
``file://`` URL of ``S``, or ``--out`` a folder that holds ``S``).
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import unquote, urlsplit

from ddpipe._files import is_url, replace_atomically  # is_url: the one URL test, re-exported here
from ddpipe._format import json_default

from .errors import SameLocationError, SpecError

LOCAL_SCHEMES = ("file", "local")


RESULTS = "results.json"


def results_path(location: Any) -> str:
    """Where a phase's ``results.json`` lies inside the store at ``location`` (a path or a URL)."""
    loc = store_location(location)
    return loc.rstrip("/") + "/" + RESULTS if is_url(loc) else os.path.join(loc, RESULTS)


def write_results(location: Any, result: Any, storage_options: dict | None = None) -> str:
    """Write ``result`` (a dict, or anything with ``to_dict()``) as indented JSON to ``results.json``
    inside the store at ``location``: atomically for a local store, through fsspec at a URL. The one
    writer of a store's ``results.json`` (relabel, prune, import); returns where it was written.

    The file sits at the group's root beside ``zarr.json``; readers of the store ignore it."""
    if hasattr(result, "to_dict"):
        result = result.to_dict()
    text = (json.dumps(result, indent=2, default=json_default) + "\n").encode()
    path = results_path(location)
    if is_url(path):
        import fsspec

        with fsspec.open(path, "wb", **(storage_options or {})) as f:
            f.write(text)
    else:
        replace_atomically(path, lambda f: f.write(text))
    return path


def store_location(path: Any) -> str:
    """The normal form of a store location: an absolute local path, or a URL.

    ``./a.zarr``, ``a.zarr/``, ``~/a.zarr`` and ``file:///abs/a.zarr`` give absolute paths (symlinks
    are kept: the store is where the user put it); ``memory://m/``, ``S3://b/p`` give ``memory://m``,
    ``s3://b/p``. Raises :class:`SpecError` for something that is not a path at all.
    """
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, str) or not path.strip():
        raise SpecError(f"a store location must be a path or a URL, got {path!r}")
    if is_url(path):
        scheme, rest = path.split("://", 1)
        scheme = scheme.lower()
        if scheme in LOCAL_SCHEMES:
            parts = urlsplit(f"file://{rest}")
            if parts.netloc not in ("", "localhost"):
                raise SpecError(f"{path}: a file:// URL must name a local path (file:///abs/path), not host {parts.netloc!r}")
            local = unquote(parts.path)
            if not local:
                raise SpecError(f"{path}: the file:// URL names no path")
            return _local(local)
        rest = rest.rstrip("/")
        if not rest:
            raise SpecError(f"{path}: the URL names no store (nothing after {scheme}://)")
        return f"{scheme}://{rest}"
    return _local(path)


def _local(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def _physical(location: str) -> str:
    """A local location with symlinks resolved (also of parents that exist)."""
    return os.path.realpath(location)


def locations_overlap(a: Any, b: Any) -> bool:
    """True when ``a`` and ``b`` are the same store location, or one lies inside the other (so that
    writing or replacing one changes the other). Symlinks are resolved for local paths."""
    la, lb = store_location(a), store_location(b)
    if is_url(la) != is_url(lb):
        return False
    if not is_url(la):
        la, lb = _physical(la), _physical(lb)
        try:
            if os.path.exists(la) and os.path.exists(lb) and os.path.samefile(la, lb):
                return True
        except OSError:
            pass
        sep = os.sep
    else:
        sep = "/"
    if la == lb:
        return True
    return la.startswith(lb.rstrip(sep) + sep) or lb.startswith(la.rstrip(sep) + sep)


def same_location(a: Any, b: Any) -> bool:
    """True when ``a`` and ``b`` name the same store (after :func:`store_location` and, for local
    paths, resolving symlinks)."""
    la, lb = store_location(a), store_location(b)
    if is_url(la) or is_url(lb):
        return la == lb
    pa, pb = _physical(la), _physical(lb)
    if pa == pb:
        return True
    try:
        return os.path.exists(pa) and os.path.exists(pb) and os.path.samefile(pa, pb)
    except OSError:
        return False


def check_distinct_locations(src: Any, dst: Any, action: str = "write") -> None:
    """Raise :class:`SameLocationError` when ``dst`` is ``src``, inside it or around it. Call it
    before touching anything (prune, export, import, copy)."""
    if locations_overlap(src, dst):
        ls, ld = store_location(src), store_location(dst)
        how = "is the same location as" if same_location(ls, ld) else "overlaps"
        raise SameLocationError(
            f"{action}: the output {ld} {how} the input {ls}; writing there would destroy the input. "
            "Choose another output path"
        )


_SECRET_WORDS = ("key", "secret", "token", "password", "credential")


def redact_storage_options(options: Any) -> Any:
    """``storage_options`` as a results file may record them: values under names that look like
    credentials (``key``, ``secret``, ``token`` ...) replaced by ``"***"``, at any depth."""
    if isinstance(options, dict):
        return {k: "***" if any(w in str(k).lower() for w in _SECRET_WORDS) and not isinstance(v, dict)
                else redact_storage_options(v) for k, v in options.items()}
    if isinstance(options, (list, tuple)):
        return [redact_storage_options(v) for v in options]
    return options
