"""Errors raised by the pipeline. Each message says what was expected, what was found, and the fix."""

from ddpipe.errors import DDPipeError
from ..labelstore.errors import ImageSetMismatchError

__all__ = ["ImageSetMismatchError", "LoaderSpecError", "SourceError"]


class LoaderSpecError(DDPipeError, ValueError):
    """Raised when a loader, schedule or relabel request does not fit its store, source or config."""


class SourceError(DDPipeError, OSError):
    """Raised when an image source cannot be opened or one of its images cannot be read."""
