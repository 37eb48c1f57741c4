"""Progress on stderr, the one way: bars for long loops and one-line messages. Every package uses
these two (labelstore included: nothing here imports torch), so a run's stderr looks the same
whichever phase or benchmark prints it, and ``progress=False`` silences both.

- :func:`progress_bar` is ``tqdm`` on stderr, transient (``leave=False``) and quiet in its refresh
  rate; pass ``iterable`` to wrap a loop or ``total`` to call ``update`` yourself.
- :func:`say` prints ``[tag] text`` (or ``text`` without a tag) when enabled, flushed at once.
"""

from __future__ import annotations

import sys
from typing import Any, Iterable

__all__ = ["progress_bar", "say"]


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
                 enabled: bool = True, **kwargs: Any):
    """A transient tqdm bar on stderr, disabled (a no-op with the same methods) unless ``enabled``."""
    from tqdm import tqdm

    options = {"file": sys.stderr, "leave": False, "dynamic_ncols": True, "mininterval": 0.5, **kwargs}
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled, **options)


def say(enabled: bool, text: str, tag: str | None = None) -> None:
    """``[tag] text`` on one stderr line when ``enabled``."""
    if enabled:
        print(f"[{tag}] {text}" if tag else text, file=sys.stderr, flush=True)
