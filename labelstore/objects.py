"""Raw objects of a store (bytes under keys), the same on a local disk and behind a URL.

The writer, reader, leases and creation use this for what zarr's array API does not do: hashing a
shard object's stored bytes, create-only writes (leases), listing a prefix, and writing a prepared
store's objects in a chosen order. Every ``OSError`` becomes :class:`StoreIOError` naming the path.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid

from .errors import io_error
from .location import is_url
from .metadata import open_group


_HASH_BLOCK = 16 << 20


class Objects:
    """Bytes under keys of one store: files below a local directory, or a zarr store's keys."""

    def __init__(self, location: str, store=None):
        self.location = location
        self.local = not is_url(location)
        self._store = store

    # --- helpers -----------------------------------------------------------------------------
    def _path(self, key: str) -> str:
        return os.path.join(self.location, *key.split("/"))

    def _zstore(self):
        if self._store is None:
            self._store = open_group(self.location, "r").store
        return self._store

    @staticmethod
    def _sync(coro):
        from zarr.core.sync import sync

        return sync(coro)

    # --- reads -------------------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        if self.local:
            try:
                with open(self._path(key), "rb") as f:
                    return f.read()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                return None
            except OSError as e:
                raise io_error(e, "reading", self._path(key)) from None
        from zarr.core.buffer import default_buffer_prototype

        store = self._zstore()
        fs, path = _conditional_fs(store, key)
        if fs is not None and "memory" not in _protocols(fs):
            # s3fs: one GET (its default first asks the size with a HEAD, to split big downloads)
            try:
                return bytes(self._sync(fs._cat_file(path, max_concurrency=1)))
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                return None
        buf = self._sync(store.get(key, prototype=default_buffer_prototype()))
        return None if buf is None else buf.to_bytes()

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        """:meth:`get` of each key (None where absent); remote stores fetch them concurrently, one GET each."""
        if self.local or not keys:
            return [self.get(k) for k in keys]
        store = self._zstore()
        fs, _ = _conditional_fs(store, keys[0])
        if fs is None or "memory" in _protocols(fs):
            return [self.get(k) for k in keys]
        async def one(key: str):
            try:
                return bytes(await fs._cat_file(_conditional_fs(store, key)[1], max_concurrency=1))
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                return None

        async def every():
            return await asyncio.gather(*(one(k) for k in keys))

        return list(self._sync(every()))

    def sha256(self, key: str) -> bytes | None:
        """SHA-256 of the object's bytes (streamed from disk for local stores), None if absent."""
        if self.local:
            try:
                fd = os.open(self._path(key), os.O_RDONLY)
                try:  # plain os.read: half the per-object cost of a file object (many small shards)
                    h = hashlib.sha256()
                    want = os.fstat(fd).st_size
                    while True:
                        block = os.read(fd, max(1, min(want, _HASH_BLOCK)))
                        if not block:
                            break
                        h.update(block)
                    return h.digest()
                finally:
                    os.close(fd)
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                return None
            except OSError as e:
                raise io_error(e, "reading", self._path(key)) from None
        data = self.get(key)
        return None if data is None else hashlib.sha256(data).digest()

    def exists(self, key: str) -> bool:
        if self.local:
            return os.path.isfile(self._path(key))
        return bool(self._sync(self._zstore().exists(key)))

    def list(self, prefix: str) -> list[str]:
        """Names directly under ``prefix`` (a key ending without ``/``)."""
        if self.local:
            try:
                return sorted(os.listdir(self._path(prefix)))
            except (FileNotFoundError, NotADirectoryError):
                return []
            except OSError as e:
                raise io_error(e, "listing", self._path(prefix)) from None

        async def collect():
            return [k async for k in self._zstore().list_dir(prefix.rstrip("/") + "/")]

        return sorted(k.rstrip("/").rsplit("/", 1)[-1] for k in self._sync(collect()))

    # --- writes ------------------------------------------------------------------------------
    def _write_local(self, key: str, data: bytes, place):
        """Write ``data`` to a complete temporary file beside ``key``'s path, then ``place(tmp, path)``
        (rename or link it into place); an OSError becomes one StoreIOError naming the path."""
        path = self._path(key)
        tmp = f"{path}.{uuid.uuid4().hex}.partial"
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
            return place(tmp, path)
        except OSError as e:
            _unlink_quietly(tmp)
            raise io_error(e, "writing", path) from None

    def put(self, key: str, data: bytes) -> None:
        """Write a whole object (local: a temporary file renamed into place)."""
        if self.local:
            self._write_local(key, data, lambda tmp, path: os.replace(tmp, path))
            return
        from zarr.core.buffer import default_buffer_prototype

        self._sync(self._zstore().set(key, default_buffer_prototype().buffer.from_bytes(data)))

    def put_new(self, key: str, data: bytes) -> bool:
        """Create ``key`` only if it does not exist (True when this call created it). Local disks:
        a hard link of a complete temporary file, which fails if the name exists (atomic); other
        stores: their create-only write where they have one, then read back and compared."""
        if self.local:
            def link(tmp: str, path: str) -> bool:
                try:
                    os.link(tmp, path)
                    return True
                except FileExistsError:
                    return False
                finally:
                    _unlink_quietly(tmp)

            return self._write_local(key, data, link)
        from zarr.core.buffer import default_buffer_prototype

        store = self._zstore()
        fs, path = _conditional_fs(store, key)
        if fs is not None:
            # S3 (If-None-Match: *; AWS since 2024, MinIO, moto) and fsspec's memory store refuse
            # the write when the key exists: exactly one of two racing writers creates it
            try:
                self._sync(fs._pipe_file(path, data, mode="create"))
            except FileExistsError:
                return False
        else:  # zarr's own check-then-write; the read-back below catches a writer that came later
            self._sync(store.set_if_not_exists(key, default_buffer_prototype().buffer.from_bytes(data)))
        return self.get(key) == data

    def remove_empty(self, prefix: str) -> None:
        """Remove the (local) folder ``prefix`` if it is empty; object stores have no folders."""
        if self.local:
            try:
                os.rmdir(self._path(prefix))
            except OSError:
                pass

    def delete(self, key: str) -> None:
        if self.local:
            try:
                os.remove(self._path(key))
            except FileNotFoundError:
                pass
            except OSError as e:
                raise io_error(e, "deleting", self._path(key)) from None
            return
        self._sync(self._zstore().delete(key))


CONDITIONAL_WRITE_PROTOCOLS = ("s3", "s3a", "memory")
"""fsspec filesystems whose ``pipe_file(..., mode="create")`` is a create-only write on the server."""


def _conditional_fs(store, key: str):
    """``(async filesystem, path of key)`` when ``store`` is zarr's fsspec store over a filesystem
    with a server-side create-only write (:data:`CONDITIONAL_WRITE_PROTOCOLS`), else ``(None, "")``."""
    fs = getattr(store, "fs", None)
    if fs is None or not hasattr(fs, "_pipe_file"):
        return None, ""
    if not set(_protocols(fs)) & set(CONDITIONAL_WRITE_PROTOCOLS):
        return None, ""
    root = str(getattr(store, "path", "") or "").rstrip("/")
    return fs, f"{root}/{key}" if root else key


def _protocols(fs) -> tuple[str, ...]:
    p = getattr(fs, "protocol", ())
    return (p,) if isinstance(p, str) else tuple(p)


def _unlink_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
