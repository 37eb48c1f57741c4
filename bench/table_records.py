"""What earlier runs of ``ddpipe bench table`` measured, kept in ``table.json`` so another machine continues.

A cell's numbers come from its folders under the work dir when they are there. The work dir is not
committed (hundreds of MB of images, stores and checkpoints) and a fresh clone or another machine has
none, so ``table.json`` also keeps one *record* per cell (top-1 and wall seconds per student seed, the
relabel's seconds, the label bytes). A rerun with the same settings takes a cell's record when its
folders are missing, counts the cell as finished, and recomputes only what a cell still to run needs
(its draw's images, see ``table.run_cells``). A rerun with other settings carries nothing.

Records are keyed by what the table shows (part, method, IPC, label setting, student, draw), not by
folder hashes (those contain the work dir's absolute path); the settings that decide a number are
compared once, as the *fingerprint*.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

FIELDS = ("top1", "wall", "relabel_s", "label_bytes")


@dataclass(frozen=True)
class CellRecord:
    """What one finished cell measured (the same keys in ``table.json``'s ``records``): top-1 and wall
    seconds per student seed (keys are seeds as text), the relabel's seconds, the label bytes, and where
    the numbers came from ("folders", or the source of the record they were carried from)."""

    top1: dict
    wall: dict
    relabel_s: float | None
    label_bytes: int | None
    source: str

    @classmethod
    def from_dict(cls, d: dict) -> "CellRecord":
        return cls(top1=dict(d.get("top1", {})), wall=dict(d.get("wall", {})), relabel_s=d.get("relabel_s"),
                   label_bytes=d.get("label_bytes"), source=d.get("source", "table.json"))

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def has_seeds(self, seeds) -> bool:
        """Whether the record has every student seed in ``seeds``."""
        return all(str(s) in self.top1 for s in seeds)


def fingerprint(args, protocols: dict) -> dict:
    """Everything that decides a cell's number besides its key: equal fingerprints, comparable records."""
    return dict(dataset=args.dataset, recipes=args.recipes, teacher_model=args.teacher_model,
                teacher_epochs=args.teacher_epochs, epochs=args.epochs, cross_epochs=args.cross_epochs,
                protocols=protocols)


def cell_key(c) -> str:
    """One cell's place in the table: ``part|method|ipc|label setting|student|draw`` (``c``: a cell, or
    anything with those attributes)."""
    return "|".join(str(getattr(c, k)) for k in ("part", "method", "ipc", "label_setting", "student", "draw"))


def _legacy_fingerprint(payload: dict, recipes: str) -> dict:
    # table.json files written before records existed: the same settings, read from the fields they had
    t, g = payload.get("teacher", {}), payload.get("grid", {})
    return dict(dataset=payload.get("dataset"), recipes=recipes, teacher_model=t.get("model"),
                teacher_epochs=t.get("epochs"), epochs=g.get("epochs"), cross_epochs=g.get("cross_epochs"),
                protocols=payload.get("protocols"))


def records_from_rows(rows: list[dict]) -> dict[str, CellRecord]:
    """Per-cell records from the rows of a table.json written before records existed.

    Rows keep top-1 per run (``draw/seed``) but wall and relabel seconds only as row means: a record
    made here carries the row's means for every seed.
    """
    out: dict[str, CellRecord] = {}
    for r in rows:
        by_draw: dict[str, dict] = {}
        for run, top1 in r.get("top1_by_run", {}).items():
            draw, seed = run.split("/")
            by_draw.setdefault(draw, {})[seed] = top1
        for draw, top1 in by_draw.items():
            key = "|".join(str(r[k]) for k in ("part", "method", "ipc", "label_setting", "student")) + f"|{int(draw)}"
            out[key] = CellRecord(top1=top1, wall={s: r.get("train_s") for s in top1}, relabel_s=r.get("relabel_s"),
                                  label_bytes=r.get("label_bytes"), source="table.json rows")
    return out


def load(path: str, args, protocols: dict) -> tuple[dict[str, CellRecord], str]:
    """The records of the table.json at ``path`` that this run may use, and one line saying what was taken."""
    try:
        with open(path) as f:
            payload = json.load(f)
    except FileNotFoundError:
        return {}, f"no {os.path.basename(path)} yet: nothing carried"
    except (OSError, ValueError) as e:
        return {}, f"{path} unreadable ({e}): nothing carried"
    legacy = "records" not in payload
    theirs = _legacy_fingerprint(payload, args.recipes) if legacy else payload.get("fingerprint")
    if theirs != fingerprint(args, protocols):
        return {}, f"{path} was made with other settings: nothing carried"
    if legacy:
        records = records_from_rows(payload.get("rows", []))
    else:
        records = {k: CellRecord.from_dict(v) for k, v in payload["records"].items()}
    return records, f"{len(records)} cell records carried from {path}"


def merge(record: CellRecord | None, seeds, top1: dict, wall: dict, relabel_s, label_bytes) -> tuple[dict, dict, object, object]:
    """A cell's numbers: its folders' where they have them, its ``record``'s for the rest of ``seeds``."""
    top1, wall = dict(top1), dict(wall)
    if record is None:
        return top1, wall, relabel_s, label_bytes
    wanted = {str(s) for s in seeds}
    for seed, v in record.top1.items():
        if seed in wanted and seed not in top1:
            top1[seed] = v
            wall[seed] = record.wall.get(seed)
    if relabel_s is None:
        relabel_s = record.relabel_s
    if label_bytes is None:
        label_bytes = record.label_bytes
    return top1, wall, relabel_s, label_bytes
