"""Errors raised by the label store. Each message names the store and what to do about it."""

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
