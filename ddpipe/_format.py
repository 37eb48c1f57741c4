"""Formatting helpers shared by the CLI, the library packages and ``bench``: JSON of numpy values,
byte counts for people, and the ``--keep`` fraction syntax. Standard library only (numpy is looked
up lazily, only when a value is a numpy object), so every package may import this module.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["json_default", "human_bytes", "keep_fraction"]


def json_default(o: Any) -> Any:
    """``json.dumps(..., default=json_default)``: numpy scalars and arrays as plain numbers and lists."""
    np = sys.modules.get("numpy")
    if np is not None:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    if hasattr(o, "__fspath__"):
        return str(o)
    if hasattr(o, "to_dict"):
        return o.to_dict()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def human_bytes(n: float | None) -> str:
    """``1536 -> '1.50 KiB'``; ``None -> '-'``."""
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.2f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def keep_fraction(text: str | float) -> float:
    """Accept 0.025, 1/40 or 40x for 'keep one in forty' (a number passes through); ValueError otherwise."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        t = str(text).strip().lower()
        try:
            if t.endswith("x"):
                value = 1.0 / float(t[:-1])
            elif "/" in t:
                num, den = t.split("/", 1)
                value = float(num) / float(den)
            else:
                value = float(t)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"expected a fraction such as 0.025, 1/40 or 40x, got {text!r}") from None
    if not 0 < value <= 1:
        raise ValueError(f"keep must be in (0, 1], got {text!r}")
    return value
