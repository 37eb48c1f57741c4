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
processes re-open the file (the page cache is shared, nothing is pickled). A cache larger than RAM
is written chunk by chunk (one chunk's pixels in memory) into ``DIR.partial`` with a progress record
committed after each chunk: a build that is killed continues where it stopped when run again, and
``DIR`` appears only once it is whole. ``ddpipe cache`` reports the rate at which the written cache
reads back from disk (:func:`read_rate`).
"""

from __future__ import annotations

import contextlib
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
    "open_cache", "read_rate", "run", "summary_text", "with_cache",
]

_CHUNK = 256  # images decoded per step of the build (bounded memory, one progress record)
_READ_BLOCK = 16 * 2**20  # bytes read at a time when a resumed build re-hashes what was written
PROGRESS = "progress.json"  # in DIR.partial while a build runs: what is written so far


# --- building ------------------------------------------------------------------------------------
def _decoder(source: ImageSource, channels: int, offsets: np.ndarray, pool):
    """``decode(lo, hi, out)``: images ``lo..hi-1`` decoded into the flat uint8 ``out`` (which starts
    at ``offsets[lo]``), with the threads of ``pool`` (Pillow releases the GIL) or inline."""
    sizes = source.sizes

    def decode(lo: int, hi: int, out: np.ndarray) -> None:
        base = offsets[lo]

        def one(i: int) -> None:
            a = source.array(i, channels)
            if a.shape[:2] != tuple(sizes[i]) or a.shape[2] != channels:
                raise SourceError(f"{source.describe(i)} decodes to {a.shape}, not its recorded size {tuple(sizes[i])}")
            out[offsets[i] - base: offsets[i + 1] - base] = a.reshape(-1)

        if pool is None:
            for i in range(lo, hi):
                one(i)
        else:
            list(pool.map(one, range(lo, hi)))

    return decode


def _layout(source: ImageSource, channels: int) -> np.ndarray:
    per = source.sizes[:, 0].astype(np.int64) * source.sizes[:, 1] * channels
    return np.concatenate([[0], np.cumsum(per)]).astype(np.int64)


def _write_json(path: str, obj) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _resume_point(partial: str, job: dict, offsets: np.ndarray, h) -> int:
    """How many images of an interrupted build in ``partial`` can be kept (0: start over); the kept
    bytes are fed to the hash ``h`` (read back in chunks) and anything past them is cut off."""
    try:
        with open(os.path.join(partial, PROGRESS)) as f:
            done_rec = json.load(f)
    except (OSError, ValueError):
        done_rec = None
    data = os.path.join(partial, DATA)
    done = int(done_rec.get("done", 0)) if done_rec and {k: done_rec.get(k) for k in job} == job else 0
    if done <= 0 or not os.path.exists(data) or os.path.getsize(data) < offsets[done]:
        shutil.rmtree(partial, ignore_errors=True)
        return 0
    with open(data, "r+b") as f:
        f.truncate(int(offsets[done]))
        left = int(offsets[done])
        while left:
            block = f.read(min(left, _READ_BLOCK))
            h.update(block)
            left -= len(block)
    return done


def _build_on_disk(source: ImageSource, out: str, channels: int, workers: int, bar) -> None:
    """Decode ``source`` into ``out`` chunk by chunk (bounded memory: one chunk's pixels at a time),
    in ``out.partial``; a progress record is committed after each chunk, so a build that is killed
    continues where it stopped when run again. ``out`` appears (renamed) once everything is written."""
    offsets = _layout(source, channels)
    n, total = len(source), int(offsets[-1])
    job = {"format": "ddpipe-decoded-cache-build", "version": CACHE_VERSION, "source_hash": source.content_hash(),
           "source_kind": source.kind, "channels": channels, "num_images": n, "bytes": total}
    partial = f"{out}.partial"
    h = hashlib.sha256()
    done = _resume_point(partial, job, offsets, h) if os.path.isdir(partial) else 0
    os.makedirs(partial, exist_ok=True)
    if done:
        bar.update(done)
    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    decode = _decoder(source, channels, offsets, pool)
    try:
        with open(os.path.join(partial, DATA), "r+b" if done else "wb") as f:
            f.seek(int(offsets[done]))
            for lo in range(done, n, _CHUNK):
                hi = min(n, lo + _CHUNK)
                buf = np.empty(int(offsets[hi] - offsets[lo]), np.uint8)
                decode(lo, hi, buf)
                f.write(memoryview(buf))
                h.update(memoryview(buf))
                f.flush()
                os.fsync(f.fileno())
                _write_json(os.path.join(partial, PROGRESS), {**job, "done": hi})
                bar.update(hi - lo)
    finally:
        if pool is not None:
            pool.shutdown()
    np.savez(os.path.join(partial, INDEX), labels=source.labels, sizes=source.sizes, offsets=offsets)
    meta = {
        "format": "ddpipe-decoded-cache", "version": CACHE_VERSION, "source_hash": job["source_hash"],
        "source_kind": source.kind, "source": repr(source), "channels": channels, "num_images": n,
        "bytes": total, "data_sha256": h.hexdigest(), "names": list(source.names),
        "classes": list(getattr(source, "classes", [])),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _write_json(os.path.join(partial, META), meta)
    os.remove(os.path.join(partial, PROGRESS))
    os.replace(partial, out)


@contextlib.contextmanager
def _build_lock(out: str):
    """One builder per cache directory (ranks that start together wait for the first)."""
    import fcntl

    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(f"{out}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_cache(source, out: str | os.PathLike | None = None, *, channels: int = 3, workers: int = 2,
                overwrite: bool = False, progress: bool = False, in_memory="auto",
                reuse: bool = False) -> CachedSource:
    """Decode ``source`` (a source or a path) once into uint8; with ``out``, write the cache directory
    there and open it; without, keep it in RAM only. Writing takes bounded memory (one chunk of
    images at a time) and is resumable: a build that was killed leaves ``out.partial`` with a
    progress record, and the next call with the same source and channels continues from it.
    ``reuse=True`` opens a cache that is already at ``out`` (checked against ``source``) instead of
    refusing it (what :func:`with_cache` does, so ranks that start together build it once)."""
    if channels not in (1, 3):
        raise SourceError(f"channels must be 1 or 3, got {channels}")
    source = open_source(source)
    if isinstance(source, CachedSource):
        raise SourceError(f"{source!r} is already a decoded cache")
    workers = max(1, int(workers))
    bar = progress_bar(total=len(source), desc="cache", unit="img", enabled=progress)
    try:
        if out is None:
            offsets = _layout(source, channels)
            blob = np.empty(int(offsets[-1]), np.uint8)
            pool = ThreadPoolExecutor(workers) if workers > 1 else None
            try:
                decode = _decoder(source, channels, offsets, pool)
                for lo in range(0, len(source), _CHUNK):
                    hi = min(len(source), lo + _CHUNK)
                    decode(lo, hi, blob[offsets[lo]: offsets[hi]])
                    bar.update(hi - lo)
            finally:
                if pool is not None:
                    pool.shutdown()
            return CachedSource(blob, offsets, source.sizes, source.labels, channels=channels,
                                names=list(source.names), classes=list(getattr(source, "classes", [])),
                                source_hash=source.content_hash(), source_kind=source.kind)
        out = os.path.abspath(os.path.expanduser(os.fspath(out)))
        with _build_lock(out):
            if reuse and is_cache(out):
                return open_cache(out, source=source, in_memory=in_memory)
            if os.path.exists(out):
                if not overwrite:
                    raise SourceError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
                if not (is_cache(out) or os.path.isdir(out) and not os.listdir(out)):
                    raise SourceError(f"{out} exists and is not a decoded cache; refusing to replace it")
                shutil.rmtree(out)
            _build_on_disk(source, out, channels, workers, bar)
    finally:
        bar.close()
    return open_cache(out, in_memory=in_memory)


def read_rate(cached: CachedSource, max_bytes: int = 2**30, cold: bool = True) -> tuple[float, float]:
    """``(MB/s, images/s)`` reading the images of ``cached`` in order (at most ``max_bytes`` of them);
    ``cold`` first drops the file's pages from the page cache where the OS allows it (a read from
    disk, not from what was just written)."""
    n = max(1, int(np.searchsorted(cached.offsets, max_bytes, side="right")) - 1)
    n = min(n, len(cached))
    if cold and cached.path is not None and hasattr(os, "posix_fadvise"):
        fd = os.open(os.path.join(cached.path, DATA), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    sink = 0
    t0 = time.perf_counter()
    for i in range(n):
        sink += int(np.asarray(cached.item(i)).reshape(-1)[::4096].sum())  # one byte a page: every page is read
    dt = max(time.perf_counter() - t0, 1e-9)
    return float(cached.offsets[n]) / dt / 1e6, n / dt


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
    return build_cache(source, path, channels=channels, workers=workers, progress=progress, reuse=True)


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
    read_mb_per_s: float  # reading the written cache back, memory-mapped, from disk (page cache dropped)
    read_images_per_s: float
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
    read_mb, read_img = read_rate(cached)
    return CacheResult(
        phase="cache", images=os.fspath(config.images), out=cached.path, num_images=len(cached),
        channels=cached.channels, bytes=cached.nbytes,
        uniform_size=[int(v) for v in cached.sizes[0]] if cached.uniform else None,
        source_hash=cached.source_hash, wall_time_s=dt, images_per_s=len(cached) / dt if dt > 0 else 0.0,
        read_mb_per_s=read_mb, read_images_per_s=read_img, config=config_to_dict(config))


def summary_text(res: CacheResult) -> str:
    shape = f"{res.uniform_size[0]}x{res.uniform_size[1]}" if res.uniform_size else "mixed sizes"
    return (f"cache: {res.num_images} images ({shape}, {res.channels} channel{'s' if res.channels > 1 else ''}) "
            f"decoded into {res.out}\n"
            f"  {human_bytes(res.bytes)} uint8, {res.wall_time_s:.1f} s ({res.images_per_s:,.0f} images/s); "
            f"source hash {res.source_hash[:16]}…\n"
            f"  reads back at {res.read_mb_per_s:,.0f} MB/s ({res.read_images_per_s:,.0f} images/s, memory-mapped, "
            f"from disk)\n"
            f"  use it as the image set (`--images {res.out}`) or with LoaderConfig(cache={res.out!r})")
