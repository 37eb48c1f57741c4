"""Writing a file so that its path holds either the old content or the complete new one. No imports
beyond the standard library: every package may use it."""

from __future__ import annotations

import os
import tempfile
from typing import IO, Callable


def replace_atomically(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> None:
    """Call ``write`` on a temporary binary file beside ``path``, fsync it, then rename it into place."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
