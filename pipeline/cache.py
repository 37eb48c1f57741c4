"""``ddpipe cache``: decode an image set once into a uint8 cache that every loader backend reads.

A distilled set is small and read every epoch for hundreds of epochs; decoding the same JPEG 300
times is the waste. The decoded cache is a directory (its files, :class:`CachedSource` and reading
them: ``decoded.py``)::

    DIR/cache.json   version, the source's kind and content hash, channels, names, classes
    DIR/index.npz    labels int64 [N], sizes int64 [N, 2] (H, W), offsets int64 [N + 1]
    DIR/images.u8    every image as uint8 HWC, one after another (offsets in bytes)

The library call is ``run(CacheConfig(images=..., out=...)) -> CacheResult`` (``ddpipe cache IMAGES
--out DIR``, with progress on stderr); :func:`build_cache` and :func:`open_cache` are the pieces.
A :class:`CachedSource` is an ordinary image source (``encoded = False``: items are decoded HWC
arrays) whose ``content_hash()`` is the hash of the images it was decoded from, so a store
relabelled from the JPEGs replays from the cache, and a cache of other images is refused by the
loader exactly like the other image set would be. Opening a cache against its source
(``open_cache(DIR, source=...)``, or a loader with ``LoaderConfig(cache=DIR)``) compares the hashes
and refuses a stale cache (:class:`StaleCacheError`) instead of serving old pixels.

The pixels are the reference decoder's (:meth:`ImageSource.array`: Pillow, converted to the cache's
channels), so every backend sees what it would have decoded itself. The cache is held in RAM when it
fits (``in_memory="auto"``: at most half the memory available) and memory-mapped otherwise; worker
processes re-open the file (the page cache is shared, nothing is pickled).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ddpipe._format import human_bytes
from ddpipe._progress import progress_bar
from ddpipe.config import Result, check_choices, check_int, config_to_dict, option
from .decoded import CACHE_VERSION, DATA, INDEX, META, CachedSource, StaleCacheError, is_cache, load_cache
from .errors import SourceError
from .image_source import ImageSource
from .sources import open_source

__all__ = [
    "CACHE_VERSION", "CacheConfig", "CacheResult", "CachedSource", "StaleCacheError", "build_cache", "is_cache",
    "open_cache", "run", "summary_text", "with_cache",
]

_CHUNK = 256  # images decoded per step of the build (bounded memory, one progress tick)


# --- building ------------------------------------------------------------------------------------
def _decode_all(source: ImageSource, channels: int, out: np.ndarray, offsets: np.ndarray, workers: int,
                progress) -> str:
    """Decode every image into ``out`` (flat uint8) with ``workers`` threads (Pillow releases the GIL);
    returns the SHA-256 of the decoded bytes."""
    sizes = source.sizes
    h = hashlib.sha256()

    def one(i: int) -> None:
        a = source.array(i, channels)
        if a.shape[:2] != tuple(sizes[i]) or a.shape[2] != channels:
            raise SourceError(f"{source.describe(i)} decodes to {a.shape}, not its recorded size {tuple(sizes[i])}")
        out[offsets[i]: offsets[i + 1]] = a.reshape(-1)

    n = len(source)
    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    try:
        for lo in range(0, n, _CHUNK):
            ids = range(lo, min(n, lo + _CHUNK))
            if pool is None:
                for i in ids:
                    one(i)
            else:
                list(pool.map(one, ids))
            h.update(memoryview(out[offsets[lo]: offsets[ids[-1] + 1]]))
            if progress is not None:
                progress.update(len(ids))
    finally:
        if pool is not None:
            pool.shutdown()
    return h.hexdigest()


def _layout(source: ImageSource, channels: int) -> np.ndarray:
    per = source.sizes[:, 0].astype(np.int64) * source.sizes[:, 1] * channels
    return np.concatenate([[0], np.cumsum(per)]).astype(np.int64)


def build_cache(source, out: str | os.PathLike | None = None, *, channels: int = 3, workers: int = 2,
                overwrite: bool = False, progress: bool = False, in_memory="auto") -> CachedSource:
    """Decode ``source`` (a source or a path) once into uint8; with ``out``, write the cache directory
    there (atomically: ``cache.json`` appears last) and open it; without, keep it in RAM only."""
    if channels not in (1, 3):
        raise SourceError(f"channels must be 1 or 3, got {channels}")
    source = open_source(source)
    if isinstance(source, CachedSource):
        raise SourceError(f"{source!r} is already a decoded cache")
    offsets = _layout(source, channels)
    total = int(offsets[-1])
    names, classes = list(source.names), list(getattr(source, "classes", []))
    bar = progress_bar(total=len(source), desc="cache", unit="img", enabled=progress)
    try:
        if out is None:
            blob = np.empty(total, np.uint8)
            _decode_all(source, channels, blob, offsets, max(1, int(workers)), bar)
            return CachedSource(blob, offsets, source.sizes, source.labels, channels=channels, names=names,
                                classes=classes, source_hash=source.content_hash(), source_kind=source.kind)
        out = os.path.abspath(os.path.expanduser(os.fspath(out)))
        if os.path.exists(out):
            if not overwrite:
                raise SourceError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
            if not (is_cache(out) or os.path.isdir(out) and not os.listdir(out)):
                raise SourceError(f"{out} exists and is not a decoded cache; refusing to replace it")
            shutil.rmtree(out)
        tmp = f"{out}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        try:
            data = np.memmap(os.path.join(tmp, DATA), dtype=np.uint8, mode="w+", shape=(max(1, total),))
            digest = _decode_all(source, channels, data, offsets, max(1, int(workers)), bar)
            data.flush()
            del data
            np.savez(os.path.join(tmp, INDEX), labels=source.labels, sizes=source.sizes, offsets=offsets)
            meta = {
                "format": "ddpipe-decoded-cache", "version": CACHE_VERSION, "source_hash": source.content_hash(),
                "source_kind": source.kind, "source": repr(source), "channels": channels, "num_images": len(source),
                "bytes": total, "data_sha256": digest, "names": names, "classes": classes,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            with open(os.path.join(tmp, META), "w") as f:
                json.dump(meta, f)
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        bar.close()
    return open_cache(out, in_memory=in_memory)


# --- opening ---------------------------------------------------------------------------------------
def open_cache(path, *, source=None, in_memory="auto", verify: bool = False) -> CachedSource:
    """Open the decoded cache at ``path``. With ``source`` (a source or a path), refuse it when it was
    built from other images (:class:`StaleCacheError`). ``in_memory``: ``"auto"`` (RAM when the cache
    takes at most half the available memory), True or False (memory-mapped). ``verify`` re-hashes
    the decoded bytes against the hash recorded at build time."""
    source = None if source is None else open_source(source)
    return load_cache(path, source=source, in_memory=in_memory, verify=verify)


def with_cache(source, cache, *, channels: int = 3, workers: int = 2, progress: bool = False) -> ImageSource:
    """What a loader reads for ``LoaderConfig(cache=...)``: ``None`` -> ``source`` as it is;
    ``"memory"`` -> the source decoded into RAM now; a directory -> the cache there, built on first
    use and refused when stale (its source hash is not ``source``'s)."""
    source = open_source(source)
    if cache is None or isinstance(source, CachedSource):
        return source
    if cache == "memory":
        return build_cache(source, None, channels=channels, workers=workers, progress=progress)
    path = os.fspath(cache)
    if is_cache(path):
        return open_cache(path, source=source)
    return build_cache(source, path, channels=channels, workers=workers, progress=progress)


# --- the `ddpipe cache` phase -------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class CacheConfig:
    """What ``ddpipe cache`` decodes and where it writes. Bad values raise :class:`SourceError` here."""

    images: str = option(positional=True, help="the image set: an ImageFolder, a .npz or WebDataset .tar shards")
    out: str = option(help="the cache directory to write")
    channels: int = option(3, choices=(1, 3), help="decode to 1 (grayscale) or 3 (RGB, default) channels")
    workers: int = option(2, help="decoding threads (default 2)")
    overwrite: bool = option(False, help="replace an existing cache at --out (a stale one, say)")
    verify: bool = option(False, help="re-read the written cache and check its bytes' hash")
    progress: bool = option(True, help="no progress on stderr (progress=False)")

    def __post_init__(self) -> None:
        if not self.images or not self.out:
            raise SourceError("images and out are required")
        check_choices(self, SourceError)
        check_int(SourceError, "workers", self.workers, min=1)
        out = os.path.expanduser(os.fspath(self.out))
        if os.path.isfile(out):
            raise SourceError(f"out {self.out} is an existing file, not a cache directory; choose another path")


@dataclass(frozen=True)
class CacheResult(Result):
    """What was decoded: counts, bytes, the source hash the cache carries, and the time it took."""

    phase: str
    images: str
    out: str
    num_images: int
    channels: int
    bytes: int
    uniform_size: list | None
    source_hash: str
    wall_time_s: float
    images_per_s: float
    config: dict


def run(config: CacheConfig) -> CacheResult:
    """Decode ``config.images`` into the cache at ``config.out``; returns what was written."""
    from ddpipe.phase import run_phase

    return run_phase(config, CacheConfig, _run, "cache")


def _run(config: CacheConfig) -> CacheResult:
    t0 = time.perf_counter()
    cached = build_cache(config.images, config.out, channels=config.channels, workers=config.workers,
                         overwrite=config.overwrite, progress=config.progress, in_memory=False)
    if config.verify:
        open_cache(config.out, in_memory=False, verify=True)
    dt = time.perf_counter() - t0
    return CacheResult(
        phase="cache", images=os.fspath(config.images), out=cached.path, num_images=len(cached),
        channels=cached.channels, bytes=cached.nbytes,
        uniform_size=[int(v) for v in cached.sizes[0]] if cached.uniform else None,
        source_hash=cached.source_hash, wall_time_s=dt, images_per_s=len(cached) / dt if dt > 0 else 0.0,
        config=config_to_dict(config))


def summary_text(res: CacheResult) -> str:
    shape = f"{res.uniform_size[0]}x{res.uniform_size[1]}" if res.uniform_size else "mixed sizes"
    return (f"cache: {res.num_images} images ({shape}, {res.channels} channel{'s' if res.channels > 1 else ''}) "
            f"decoded into {res.out}\n"
            f"  {human_bytes(res.bytes)} uint8, {res.wall_time_s:.1f} s ({res.images_per_s:,.0f} images/s); "
            f"source hash {res.source_hash[:16]}…\n"
            f"  use it as the image set (`--images {res.out}`) or with LoaderConfig(cache={res.out!r})")
