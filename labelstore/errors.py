"""Errors raised by the label store. Each message names the store and what to do about it.

:func:`io_error` turns an ``OSError`` into the one-line :class:`StoreIOError` every module raises.
"""

import errno as errno_mod

from ddpipe.errors import DDPipeError


class StoreError(DDPipeError):
    """Raised when a label store cannot be created, opened or read."""


class SpecError(StoreError, ValueError):
    """Raised when a store spec or a written unit does not make sense (k > classes, wrong shapes …)."""


class NotAStoreError(StoreError, FileNotFoundError):
    """Raised when a path holds no ddpipe label store."""


class FormatVersionError(StoreError):
    """Raised when a store's ``format_version`` is not one this reader reads (or this writer writes)."""


class StoreExistsError(StoreError, FileExistsError):
    """Raised when creating a store where a different store already lives."""


class IncompleteUnitError(StoreError):
    """Raised when reading a unit whose shard has not been committed yet."""


class ChunkCorruptError(StoreError):
    """Raised when stored bytes fail their checksum, are truncated, or are missing."""


class ImageSetMismatchError(StoreError):
    """Raised when a store is opened against an image set other than the one it was built from."""


class FieldsMismatchError(StoreError):
    """Raised when the replay schedule a ``derived_fields`` store is read with gives other sample ids,
    crops, flips, cutout or mix than the relabel run's (their stored digest differs)."""


class MisplacedShardError(ChunkCorruptError):
    """Raised when a shard's objects are intact but do not belong where they are: moved to another
    position or epoch, swapped between arrays, or copied from another store (their content hash or
    commit record disagrees with this store and position)."""


class StoredValueError(ChunkCorruptError):
    """Raised when stored values are out of their range (a class index >= num_classes, a mix kind
    or permutation slot that does not exist …): read as they are, they would index out of bounds."""


class MetadataEditedError(StoreError):
    """Raised when a store's group attributes (``zarr.json``) no longer match their checksum."""


class SameLocationError(StoreError, ValueError):
    """Raised when an operation would write its output onto (or inside, or around) its input."""


class StoreIOError(StoreError, OSError):
    """Raised when the filesystem or object store refuses a write or read (ENOSPC, EACCES …).

    The message names the path; ``errno`` is the underlying error number. What was being written
    is left invisible (an uncommitted shard, or no store at all), never half-valid."""

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno


def io_error(e: OSError, what: str, where: str) -> StoreIOError:
    """One line for an OSError: what failed, where, and why (ENOSPC, EACCES …)."""
    reason = e.strerror or str(e) or type(e).__name__
    name = errno_mod.errorcode.get(e.errno or 0, "")
    path = e.filename or where
    hint = ""
    if e.errno == errno_mod.ENOSPC:
        hint = "; free some space and resume (--resume / resume=True)"
    elif e.errno in (errno_mod.EACCES, errno_mod.EPERM, errno_mod.EROFS):
        hint = "; choose a writable location"
    return StoreIOError(f"{what} failed at {path}: {reason}{f' ({name})' if name else ''}{hint}", e.errno)
