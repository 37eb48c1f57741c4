"""Files and their names: writing a file so that its path holds either the old content or the complete
new one, and telling a URL from a local path. No imports beyond the standard library: every package
may use it."""

from __future__ import annotations

import os
import tempfile
from typing import IO, Callable


def is_url(location: object) -> bool:
    """Whether ``location`` is a URL (``s3://``, ``memory://``, ``file://`` ...) rather than a local path:
    the one test every package uses (``ddpipe.labelstore.is_url`` is this function)."""
    return isinstance(location, str) and "://" in location


def replace_atomically(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> None:
    """Call ``write`` on a temporary binary file beside ``path``, fsync it, then rename it into place."""
    commit_temp(write_temp(path, write), path)


def write_temp(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> str:
    """The first half of :func:`replace_atomically`: call ``write`` on a new temporary binary file beside
    ``path`` (mode as ``open()`` would give it), close it and return its name; nothing is synced yet."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=d)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a written file gets open()'s usual mode
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
    except BaseException as e:
        _discard(tmp, e, path)
        raise
    return tmp


def commit_temp(tmp: str, path: str | os.PathLike) -> None:
    """The second half of :func:`replace_atomically`: fsync the file ``tmp`` (from :func:`write_temp`) and
    rename it to ``path``; ``tmp`` is removed if that fails. Safe to call from another thread."""
    path = os.fspath(path)
    try:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        _discard(tmp, e, path)
        raise


def _discard(tmp: str, e: BaseException, path: str) -> None:
    """Remove ``tmp`` after a failed write; an ``OSError`` without a file name is given ``path``'s."""
    if os.path.exists(tmp):
        os.unlink(tmp)
    if isinstance(e, OSError) and e.filename is None and e.errno is not None:  # say which file (ENOSPC ...)
        raise OSError(e.errno, e.strerror or str(e), path) from e


def _umask() -> int:
    """The process's umask (read without changing it where /proc says it, else set and restored)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
