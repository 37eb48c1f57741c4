"""The decoded cache on disk and as an image source: its files, :class:`CachedSource`, and reading it.

A decoded cache (``ddpipe cache``, built by ``cache.py``) is a directory::

    DIR/cache.json   version, the source's kind and content hash, channels, names, classes
    DIR/index.npz    labels int64 [N], sizes int64 [N, 2] (H, W), offsets int64 [N + 1]
    DIR/images.u8    every image as uint8 HWC, one after another (offsets in bytes)

:func:`load_cache` opens one as a :class:`CachedSource` (``encoded = False``: items are decoded HWC
arrays; ``content_hash()`` is the hash of the images it was decoded from). The front door
``sources.open_source`` opens a cache directory with it; ``cache.py`` builds caches and checks them
against their source. This module needs only the source interface (``image_source.py``).
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from .errors import ImageSetMismatchError, SourceError
from .image_source import ImageSource

__all__ = ["CACHE_VERSION", "CachedSource", "StaleCacheError", "available_bytes", "is_cache", "load_cache"]

CACHE_VERSION = 1
META, INDEX, DATA = "cache.json", "index.npz", "images.u8"


class StaleCacheError(ImageSetMismatchError):
    """The decoded cache was built from other images than the source it is opened with."""


def is_cache(path) -> bool:
    """Whether ``path`` is a decoded-cache directory (it holds ``cache.json``)."""
    return isinstance(path, (str, os.PathLike)) and os.path.isfile(os.path.join(os.fspath(path), META))


def available_bytes() -> int:
    """Memory available to this process now (``MemAvailable``), 0 where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


class CachedSource(ImageSource):
    """Decoded uint8 images, one flat blob with offsets, in RAM or memory-mapped (see the module doc)."""

    kind = "decoded-cache"
    encoded = False

    def __init__(self, blob: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, labels: np.ndarray, *,
                 channels: int, names: list[str], classes: list[str], source_hash: str, source_kind: str,
                 path: str | None = None, in_memory: bool = True):
        self._blob = blob
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.channels = int(channels)
        self.names = list(names)
        self.classes = list(classes)
        self.source_hash = source_hash
        self.source_kind = source_kind
        self.path = path
        self.in_memory = bool(in_memory)

    # a worker gets the path and re-opens the file (memory-mapped): nothing big is pickled
    def __getstate__(self):
        d = dict(self.__dict__)
        if self.path is not None:
            d["_blob"] = None
        return d

    @property
    def blob(self) -> np.ndarray:
        if self._blob is None:
            self._blob = np.memmap(os.path.join(self.path, DATA), dtype=np.uint8, mode="c")  # copy-on-write: writable views, the file is never written
        return self._blob

    @property
    def nbytes(self) -> int:
        return int(self.offsets[-1])

    @property
    def uniform(self) -> bool:
        """Every image has the same size (then :meth:`stacked` is a view, no copy)."""
        return bool(len(self.sizes) and (self.sizes == self.sizes[0]).all())

    def item(self, i: int) -> np.ndarray:
        h, w = self.sizes[i]
        return self.blob[self.offsets[i]: self.offsets[i + 1]].reshape(int(h), int(w), self.channels)

    def stacked(self) -> np.ndarray:
        """All images as one ``[N, H, W, C]`` view (uniform sizes only)."""
        if not self.uniform:
            raise SourceError(f"{self!r} holds images of several sizes; it has no [N, H, W, C] view")
        h, w = self.sizes[0]
        return self.blob[: self.nbytes].reshape(len(self), int(h), int(w), self.channels)

    def content_hash(self) -> str:
        return self.source_hash

    def describe(self, i: int) -> str:
        return f"image {i} ({self.names[i]}, decoded cache {self.path or 'in memory'})"

    def __repr__(self) -> str:
        where = self.path or "memory"
        return f"CachedSource({where!r}, images={len(self)}, {self.nbytes / 2**20:.1f} MiB, " \
               f"{'in RAM' if self.in_memory else 'memory-mapped'})"


def load_cache(path, *, source: ImageSource | None = None, in_memory="auto", verify: bool = False) -> CachedSource:
    """Open the decoded cache at ``path``. With ``source`` (an opened source), refuse it when it was
    built from other images (:class:`StaleCacheError`). ``in_memory``: ``"auto"`` (RAM when the cache
    takes at most half the available memory), True or False (memory-mapped). ``verify`` re-hashes
    the decoded bytes against the hash recorded at build time. ``cache.open_cache`` takes a path as
    ``source`` too."""
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if not is_cache(path):
        raise SourceError(f"{path} is not a decoded cache (no {META}); build one with `ddpipe cache IMAGES --out {path}`")
    try:
        with open(os.path.join(path, META)) as f:
            meta = json.load(f)
        with np.load(os.path.join(path, INDEX)) as z:
            labels, sizes, offsets = z["labels"], z["sizes"], z["offsets"]
    except (OSError, ValueError, KeyError) as e:
        raise SourceError(f"decoded cache {path} cannot be read: {e}") from None
    if meta.get("format") != "ddpipe-decoded-cache" or meta.get("version") != CACHE_VERSION:
        raise SourceError(f"{path} is a decoded cache of version {meta.get('version')!r}, this ddpipe reads "
                          f"{CACHE_VERSION}: rebuild it with `ddpipe cache IMAGES --out {path} --overwrite`")
    data = os.path.join(path, DATA)
    size = os.path.getsize(data) if os.path.exists(data) else -1
    if size < int(offsets[-1]):
        raise SourceError(f"decoded cache {path}: {DATA} holds {size} bytes, {int(offsets[-1])} expected (truncated?)")
    if source is not None:
        have = source.content_hash()
        if have != meta["source_hash"]:
            raise StaleCacheError(
                f"the decoded cache {path} was built from image set {meta['source_hash'][:16]}…, not {have[:16]}… "
                f"({source!r}): the images changed; rebuild it with `ddpipe cache IMAGES --out {path} --overwrite`")
    total = int(offsets[-1])
    if in_memory == "auto":
        in_memory = total <= available_bytes() // 2
    if in_memory:
        blob = np.fromfile(data, dtype=np.uint8, count=total)
    else:
        blob = np.memmap(data, dtype=np.uint8, mode="c")  # copy-on-write: writable views, the file is never written
    cached = CachedSource(blob, offsets, sizes, labels, channels=meta["channels"], names=meta["names"],
                          classes=meta.get("classes", []), source_hash=meta["source_hash"],
                          source_kind=meta["source_kind"], path=path, in_memory=bool(in_memory))
    if verify:
        digest = hashlib.sha256(memoryview(cached.blob[:total])).hexdigest()
        if digest != meta.get("data_sha256"):
            raise SourceError(f"decoded cache {path}: its bytes do not match the hash recorded at build time "
                              f"(damaged?); rebuild it with --overwrite")
    return cached
