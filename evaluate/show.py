"""``ddpipe show DIR --out grid.png``: one picture of an image set, one row per class.

The library call is ``run(ShowConfig(src=DIR)) -> ShowResult``. It reads an ImageFolder (what
``ddpipe recover`` writes: class folders and files sorted by name), takes the first ``per_class``
images of each class, enlarges small images with nearest-neighbour so every cell is at least
``min_cell`` pixels, and writes one PNG grid. Grayscale sets stay grayscale. Needs Pillow only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ddpipe.config import Result, check_int, option
from .errors import ShowError

__all__ = ["ShowConfig", "ShowResult", "run", "summary_text", "make_grid"]

_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass(frozen=True, kw_only=True)
class ShowConfig:
    """What ``ddpipe show`` draws. Bad values raise :class:`ShowError` here."""

    src: str = option(positional=True, metavar="DIR", help="an ImageFolder: DIR/<class>/<image>")
    out: str | None = option(None, help="the grid PNG to write (default DIR/grid.png)")
    per_class: int = option(10, help="images per row (default 10)")
    max_classes: int = option(100, help="rows at most (default 100)")
    min_cell: int = option(64, help="enlarge images to at least this many pixels (default 64)")
    pad: int = option(2, help="pixels between cells (default 2)")

    def __post_init__(self) -> None:
        e = ShowError
        if not self.src:
            raise e("src is required")
        check_int(e, "per_class", self.per_class, min=1)
        check_int(e, "max_classes", self.max_classes, min=1)
        check_int(e, "min_cell", self.min_cell, min=1)
        check_int(e, "pad", self.pad, min=0)
        if self.out is not None and os.path.isdir(os.path.expanduser(self.out)):
            raise e(f"out {self.out} is a directory; give the path of the PNG to write")


@dataclass(frozen=True)
class ShowResult(Result):
    """The grid written: its path, the class rows and its size."""

    phase: str
    src: str
    out: str
    classes: list
    rows: int
    per_class: int
    size: list
    mode: str


def make_grid(rows: list[list], pad: int = 2, min_cell: int = 64):
    """A PIL image of ``rows`` (lists of PIL images); cells share the first image's size (scaled up)."""
    from PIL import Image

    first = next(img for row in rows for img in row)
    w, h = first.size
    scale = max(1, -(-min_cell // max(1, min(w, h))))
    cw, ch = w * scale, h * scale
    ncol = max(len(r) for r in rows)
    mode = "L" if all(img.mode == "L" for row in rows for img in row) else "RGB"
    grid = Image.new(mode, (pad + ncol * (cw + pad), pad + len(rows) * (ch + pad)), color=255 if mode == "L" else (255, 255, 255))
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            cell = img.convert(mode).resize((cw, ch), Image.NEAREST)
            grid.paste(cell, (pad + c * (cw + pad), pad + r * (ch + pad)))
    return grid


def run(config: ShowConfig) -> ShowResult:
    """Draw the grid ``config`` asks for; returns what was written."""
    from ddpipe.phase import run_phase

    return run_phase(config, ShowConfig, _run, "show")


def _run(config: ShowConfig) -> ShowResult:
    from PIL import Image

    src = os.path.abspath(os.path.expanduser(config.src))
    if not os.path.isdir(src):
        raise ShowError(f"{src} is not a directory; give an ImageFolder such as a `ddpipe recover --out` folder")
    classes = sorted(d for d in os.listdir(src) if os.path.isdir(os.path.join(src, d)))[: config.max_classes]
    rows, names = [], []
    for cls in classes:
        files = sorted(f for f in os.listdir(os.path.join(src, cls)) if f.lower().endswith(_EXTS))[: config.per_class]
        if not files:
            continue
        row = []
        for f in files:
            path = os.path.join(src, cls, f)
            try:
                with Image.open(path) as img:
                    img.load()
                    row.append(img.copy())
            except (OSError, SyntaxError) as err:  # PIL: truncated or not an image
                raise ShowError(f"{path} is not a readable image ({err})") from None
        rows.append(row)
        names.append(cls)
    if not rows:
        raise ShowError(f"{src} holds no images in class folders (expected DIR/<class>/<image>.png|jpg)")
    grid = make_grid(rows, pad=config.pad, min_cell=config.min_cell)
    out = os.path.abspath(os.path.expanduser(config.out or os.path.join(src, "grid.png")))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    grid.save(out, format="PNG")
    return ShowResult(phase="show", src=src, out=out, classes=names, rows=len(rows),
                      per_class=max(len(r) for r in rows), size=list(grid.size), mode=grid.mode)


def summary_text(res: ShowResult) -> str:
    if isinstance(res, dict):  # a results.json read back
        res = ShowResult.from_dict(res)
    return f"show: {res.rows} classes x up to {res.per_class} images -> {res.out} ({res.size[0]}x{res.size[1]} px)"
