"""``ddpipe show DIR --out grid.png``: one picture of an image set, one row per class.

Reads an ImageFolder (what ``ddpipe recover`` writes: class folders and files sorted by name),
takes the first ``--per-class`` images of each class, enlarges small images with nearest-neighbour
so every cell is at least ``--min-cell`` pixels, and writes one PNG grid. Grayscale sets stay grayscale.
"""

from __future__ import annotations

import argparse
import os

__all__ = ["add_arguments", "run", "make_args", "summary_text", "make_grid"]

_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("src", metavar="DIR", help="an ImageFolder: DIR/<class>/<image>")
    parser.add_argument("--out", default=None, help="the grid PNG to write (default DIR/grid.png)")
    parser.add_argument("--per-class", type=int, default=10, help="images per row (default 10)")
    parser.add_argument("--max-classes", type=int, default=100, help="rows at most (default 100)")
    parser.add_argument("--min-cell", type=int, default=64, help="enlarge images to at least this many pixels (default 64)")
    parser.add_argument("--pad", type=int, default=2, help="pixels between cells (default 2)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return parser


def make_args(src: str, **overrides) -> argparse.Namespace:
    from ddpipe.evaluate._phase import parse_with_overrides

    return parse_with_overrides(add_arguments, [os.fspath(src)], overrides, "show")


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


def run(args: argparse.Namespace) -> dict:
    from PIL import Image

    from ddpipe.evaluate.errors import EvaluateError

    src = os.path.abspath(os.path.expanduser(args.src))
    if not os.path.isdir(src):
        raise EvaluateError(f"{src} is not a directory; give an ImageFolder such as a `ddpipe recover --out` folder")
    classes = sorted(d for d in os.listdir(src) if os.path.isdir(os.path.join(src, d)))[: args.max_classes]
    rows, names = [], []
    for cls in classes:
        files = sorted(f for f in os.listdir(os.path.join(src, cls)) if f.lower().endswith(_EXTS))[: args.per_class]
        if not files:
            continue
        row = []
        for f in files:
            with Image.open(os.path.join(src, cls, f)) as img:
                img.load()
                row.append(img.copy())
        rows.append(row)
        names.append(cls)
    if not rows:
        raise EvaluateError(f"{src} holds no images in class folders (expected DIR/<class>/<image>.png|jpg)")
    grid = make_grid(rows, pad=args.pad, min_cell=args.min_cell)
    out = os.path.abspath(args.out or os.path.join(src, "grid.png"))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    grid.save(out, format="PNG")
    return {"src": src, "out": out, "classes": names, "rows": len(rows), "per_class": max(len(r) for r in rows),
            "size": list(grid.size), "mode": grid.mode}


def summary_text(res: dict) -> str:
    return f"show: {res['rows']} classes x up to {res['per_class']} images -> {res['out']} ({res['size'][0]}x{res['size'][1]} px)"
