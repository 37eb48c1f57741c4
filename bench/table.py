"""``ddpipe bench table``: the results table, every method at every IPC under two protocols.

Five parts, each a list of cells; a cell is a chain of phases whose outputs live in folders named
by a hash of what determines them (the same folders as ``ddpipe bench recover``, so the two share
finished work), so a rerun skips finished cells and continues a killed one:

- ``shared``: every method at every IPC and draw of real images (``--image-seeds``) under ONE
  recipe, ``ddpipe demo``'s soft-label relabel + student recipe (``bench recover``'s chain);
- ``own``: the same images under the method's own protocol: random, herding and DM with hard labels
  and DSA (the DC/DSA/DM evaluation, ``ddpipe train --augment dsa``), the SRe2L family with its
  paper's relabel (full labels, T = 20, crops 0.08-1);
- ``labels``: at one IPC, for random and the chosen method, label settings against bytes (full,
  top-k, uint8, 10x/40x/80x prune-before-relabel, hard labels, an online teacher);
- ``cross``: other students (ResNet-18 with a small stem, a timm model; one student seed) on the
  shared recipe's images and labels;
- ``hlr``: every method at every IPC and draw under the shared recipe with hard labels, DD-Ranking's
  acc(syn, hard), from which ``bench/ddranking.py`` gives each shared row its ``hlr``, ``ior`` and ``lrs``.

Cells run in priority order (the first draw at IPC 10 and 1, the label settings and other students,
the first draw at IPC 50, then more draws; within each, the cheaper cells first) in this process or
``--jobs 2`` processes, until every cell is done or ``--budget-minutes`` have passed; the table always covers the
whole grid, unfinished cells are shown as such. ``bench/results/table.json`` (under the current directory, or
``--results-dir``) holds the rows and one record per finished cell (``bench/table_records.py``), so a clone
without the work dir continues: finished cells come from the records, and a cell still to run first makes its
draw's images again. ``ddpipe.bench.table_report`` writes the markdown, the plots and the README section from it
(``--render-only`` redoes that from table.json).
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import time
import types
from dataclasses import dataclass, replace

from . import common, ddranking, recover, table_records, table_report
from .common import csv_list, folder_key, int_list, read_json, timed
from ddpipe._progress import say
from ddpipe.config import option
from ddpipe.errors import DDPipeError

DESCRIPTION = (
    "The results table: every method at IPC 1/10/50 under one shared recipe and under its own protocol, "
    "label settings against bytes, cross-architecture students; resumable, table.json + markdown + plots."
)

METHODS = recover.METHODS
PARTS = ("shared", "own", "labels", "cross", "hlr")  # "shared" always runs: the other parts use its images
SRE2L_FAMILY = ("sre2l", "cda", "lpld", "gvbsm", "delt")
# label settings: name -> (relabel overrides of the shared recipe, or None for no store; train mode)
LABEL_SETTINGS = {
    "full": ({"topk": "C"}, "store"),
    "top-2": ({"topk": 2}, "store"),
    "top-5": ({}, "store"),  # the shared recipe itself
    "top-5 uint8": ({"codec": "uint8"}, "store"),
    "10x pruned uint8": ({"codec": "uint8", "keep": 0.1}, "store"),
    "40x pruned uint8": ({"codec": "uint8", "keep": 0.025}, "store"),
    "80x pruned uint8": ({"codec": "uint8", "keep": 0.0125}, "store"),
    "hard": (None, "hard"),
    "online teacher": (None, "online"),
}
QUICK = dict(dataset="digits", ipcs=(1, 2), methods=("random", "herding", "sre2l", "dm"), image_seeds=(0, 1),
             seeds=(0,), teacher_model="convnet_d2_w32_bn", teacher_epochs=1, epochs=2, own_epochs=3,
             dsa_epochs=5, student_model="convnet_d2_w32_bn", label_ipc=2, label_methods=("random", "sre2l"),
             cross_students=("test_resnet_small", "test_timm_vit"), cross_epochs=2, recipes="test")

# reference rows (ConvNet-3, Fashion-MNIST, test top-1 %). "checked": the numbers were read in a copy of the
# cited table here (the KIP ConvNet paper, Nguyen et al. 2021, Tables 1 and 2, which quote DC and DSA);
# the random / herding / whole-set rows are the DSA paper's as the issue gives them, not read here.
REFERENCES = {
    "random": {"values": {1: 51.4, 10: 73.8, 50: 82.5}, "source": "DSA paper, Table 1", "checked": False},
    "herding": {"values": {1: 67.0, 10: 71.1, 50: 71.9}, "source": "DSA paper, Table 1", "checked": False},
    "DC": {"values": {1: 70.5, 10: 82.3, 50: 83.6}, "source": "KIP ConvNet paper, Table 1", "checked": True},
    "DSA": {"values": {1: 70.6, 10: 84.6, 50: 88.7}, "source": "KIP ConvNet paper, Table 1", "checked": True},
    "KIP to a finite ConvNet": {"values": {1: 73.8, 10: 86.8, 50: 87.8}, "source": "KIP ConvNet paper, Table 2",
                                "checked": True},
}
WHOLE_SET = 93.5


# --- configuration ----------------------------------------------------------------------------------
def _float_or_none(text: str) -> float | None:
    return None if text in (None, "", "none") else float(text)


@dataclass(frozen=True, kw_only=True)
class Config:
    """``ddpipe bench table``'s settings (list flags take comma-separated values)."""

    dataset: str = option("fashion-mnist", group="grid", help="fashion-mnist or digits (default fashion-mnist)")
    data_root: str | None = option(None, group="grid", help="where the dataset's files are (default: Debian's location)")
    methods: tuple[str, ...] = option(METHODS, parse=csv_list, group="grid",
                                      help=f"methods (default {','.join(METHODS)}); random is always included")
    ipcs: tuple[int, ...] = option((1, 10, 50), parse=int_list, group="grid", help="images per class (default 1,10,50)")
    image_seeds: tuple[int, ...] = option((0, 1, 2), parse=int_list, group="grid",
                                          help="draws of real images: the seed of every recover run (default 0,1,2)")
    seeds: tuple[int, ...] = option((0, 1), parse=int_list, group="grid", help="student seeds per cell (default 0,1)")
    parts: tuple[str, ...] = option(PARTS, parse=csv_list, group="grid", help=f"parts to run (default {','.join(PARTS)})")
    recipes: str | None = option(None, metavar="TAG", group="grid",
                                 help="recipe tag (default fmnist for fashion-mnist, test for digits)")
    teacher_model: str = option("convnet_d3_w32_bn", group="teacher", help="teacher (default convnet_d3_w32_bn)")
    teacher_epochs: int = option(4, group="teacher", help="teacher epochs (default 4)")
    epochs: int = option(300, group="shared recipe", help="relabel = student epochs of the shared recipe (default 300)")
    student_model: str = option("convnet_d3_w32_bn", group="shared recipe", help="the ConvNet-3 student (default convnet_d3_w32_bn)")
    own_epochs: int = option(300, group="own protocol", help="SRe2L family's own relabel/student epochs (default 300)")
    dsa_epochs: int = option(1000, group="own protocol", help="hard-label DSA student epochs (default 1000, DC/DSA/DM)")
    label_ipc: int = option(10, group="label settings", help="IPC of the label-settings part (default 10)")
    label_methods: tuple[str, ...] = option(("random", "delt"), parse=csv_list, group="label settings",
                                            help="methods of the label-settings and cross parts (default random,delt: "
                                                 "delt leads the IPC-10 recover bench)")
    label_settings: tuple[str, ...] = option(tuple(LABEL_SETTINGS), parse=csv_list, group="label settings",
                                             help=f"settings (default all: {', '.join(LABEL_SETTINGS)})")
    cross_students: tuple[str, ...] = option(("resnet18_small", "timm:resnet10t"), parse=csv_list, group="cross-architecture",
                                             help="other students (default resnet18_small,timm:resnet10t)")
    cross_epochs: int = option(100, group="cross-architecture",
                               help="their epochs, the store's first N (default 100: ResNet-18 costs 30x the ConvNet here)")
    quick: bool = option(False, group="run", help="smoke run on digits (a few minutes; writes table-quick.*)")
    jobs: int = option(1, group="run", help="cells at once, one process each (default 1, at most 2)")
    threads: int = option(1, group="run", help="torch threads per process (default 1)")
    budget_minutes: float | None = option(None, parse=_float_or_none, group="run",
                                          help="start no new cell after this many minutes (default: run every cell)")
    render_only: bool = option(False, group="run", help="compute nothing: rebuild markdown, plots and README from table.json (and its rows' DD-Ranking HLR, IOR, LRS)")
    readme: str | None = option(None, group="run", help="also write the generated section into this README")
    workdir: str | None = option(None, group="run", help="step outputs (default bench/work/recover-DATASET under the "
                                                         "current directory, shared with bench recover)")
    results_dir: str | None = option(None, group="run", help="where table.json, table.md and plots go (default "
                                                             "bench/results under the current directory)")
    progress: bool = option(True, group="run", help="no progress lines on stderr (progress=False)")
    json: bool = option(False, cli=False, help="print the rows as JSON on stdout (the CLI's --json)")


def _resolve(config: Config) -> types.SimpleNamespace:
    args = common.resolved_args(config, QUICK)
    for name in ("methods", "parts", "label_methods", "label_settings", "cross_students"):
        setattr(args, name, list(dict.fromkeys(getattr(args, name))))
    for name in ("ipcs", "image_seeds", "seeds"):
        setattr(args, name, [int(v) for v in getattr(args, name)])
    for name, allowed in (("methods", METHODS), ("parts", PARTS), ("label_methods", METHODS),
                          ("label_settings", tuple(LABEL_SETTINGS))):
        bad = [v for v in getattr(args, name) if v not in allowed]
        if bad:
            raise DDPipeError(f"--{name.replace('_', '-')}: unknown {bad[0]!r}; choose from {', '.join(allowed)}")
    args.methods = ["random"] + [m for m in args.methods if m != "random"]
    if not (args.ipcs and args.image_seeds and args.seeds):
        raise DDPipeError("--ipcs, --image-seeds and --seeds need at least one value each")
    if min(args.ipcs) < 1 or min(args.seeds) < 0 or min(args.image_seeds) < 0:
        raise DDPipeError("IPCs must be at least 1 and seeds at least 0")
    if not 1 <= args.jobs <= 2:
        raise DDPipeError(f"--jobs must be 1 or 2, got {args.jobs}")
    for name in ("teacher_epochs", "epochs", "own_epochs", "dsa_epochs", "cross_epochs", "threads", "label_ipc"):
        if getattr(args, name) < 1:
            raise DDPipeError(f"--{name.replace('_', '-')} must be at least 1")
    if args.budget_minutes is not None and args.budget_minutes < 0:
        raise DDPipeError("--budget-minutes must be at least 0")
    if args.recipes is None:
        args.recipes = recover.DEFAULT_TAG.get(args.dataset, "default")
    args.workdir = common.work_dir(args.workdir, f"recover-{args.dataset}")
    args.results_dir = common.results_dir(args.results_dir)
    args.stem = "table-quick" if args.quick else "table"
    return args


def recover_args(args, ipc: int, draw: int) -> types.SimpleNamespace:
    """``bench recover``'s resolved settings for one (IPC, draw): its folders are this table's shared cells."""
    return recover.resolve(recover.Config(
        dataset=args.dataset, data_root=args.data_root, ipc=ipc, teacher_model=args.teacher_model,
        teacher_epochs=args.teacher_epochs, methods=tuple(args.methods), recipes=args.recipes, image_seed=draw,
        epochs=args.epochs, student_model=args.student_model, seeds=tuple(args.seeds), workdir=args.workdir,
        threads=args.threads, progress=args.progress))


# --- the cells --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    """One cell of the grid: a chain of phases for one (part, method, IPC, draw, label setting, student),
    its folders, and the cell it needs first (``needs``: that cell's id). A "shared" cell runs ``bench
    recover``'s chain (``chain``: its :class:`recover.MethodPlan`); an "inputs" step remakes a shared cell's
    images (and labels, ``upto``) for the cells that read them; the other parts train students on those."""

    id: tuple
    part: str  # shared, own, labels, cross, or inputs
    protocol: str  # shared or own
    label_setting: str
    student: str  # the student model
    method: str
    ipc: int
    draw: int
    images: str
    shared_store: str  # the shared recipe's label store of this (method, IPC, draw)
    students: dict  # seed -> folder
    needs: tuple | None = None
    chain: recover.MethodPlan | None = None  # shared and inputs cells
    relabel: dict | None = None  # this cell's relabel recipe (None: no store of its own)
    pstudent: dict | None = None  # shared and inputs cells: bench recover's student settings
    rargs: dict | None = None  # shared and inputs cells: bench recover's resolved settings
    store: str | None = None  # the label store its students read (None: hard labels or an online teacher)
    mode: str | None = None  # labels cells: store, hard or online
    how: str | None = None  # own cells: the protocol in words
    upto: str | None = None  # inputs steps: "images" or "labels"
    record: table_records.CellRecord | None = None  # what an earlier run measured, carried from table.json


def build_cells(args) -> tuple[dict, list[Cell]]:
    """The teacher and every cell of the grid, in priority order, each with its folders and dependency."""
    cells = []
    teacher = None
    for ipc in args.ipcs:
        for draw in args.image_seeds:
            rargs = recover_args(args, ipc, draw)
            p = recover.plan(rargs)
            teacher = teacher or dict(dir=p.teacher_dir, cfg=p.teacher_cfg, args=vars(rargs))
            for m in args.methods:
                mp = p.methods[m]
                base = dict(method=m, ipc=ipc, draw=draw, images=mp.images, shared_store=mp.store)
                shared_id = ("shared", m, ipc, draw)
                # the shared cell always runs: it makes the images every other part uses
                cells.append(Cell(**base, id=shared_id, part="shared", protocol="shared", label_setting="top-5",
                                  student=args.student_model, students=mp.students, chain=mp, relabel=p.relabel,
                                  pstudent=p.student, rargs=vars(rargs)))
                if "own" in args.parts:
                    cells.append(_own_cell(args, base, shared_id, mp))
                if "hlr" in args.parts:
                    cells.append(_hlr_cell(args, base, shared_id))
                if ipc == args.label_ipc and m in args.label_methods:
                    if "labels" in args.parts:
                        for setting in args.label_settings:
                            if setting != "top-5":
                                cells.append(_label_cell(args, base, shared_id, mp, p.relabel, setting))
                    if "cross" in args.parts and draw == args.image_seeds[0]:
                        for arch in args.cross_students:
                            cells.append(_cross_cell(args, base, shared_id, arch, mp))
    cells.sort(key=lambda c: _priority(args, c))
    return teacher, cells


def _priority(args, c: Cell) -> tuple:
    draw = args.image_seeds.index(c.draw)
    largest = c.ipc == max(args.ipcs) and len(args.ipcs) > 1
    if c.part in ("labels", "cross") and draw == 0:
        stage = 1
    elif draw == 0:  # the first draw everywhere: the smaller IPCs, then the label parts, then the largest IPC
        stage = 2 if largest else 0
    else:  # more draws
        stage = 3 + 2 * draw + int(largest)
    cost = recover.COST.get(c.method, 1)
    # a hard-label DSA student (1000 epochs) costs 3-5 relabel-protocol students: the cheaper cells go first,
    # so a run that stops on --budget-minutes has finished more of the stage
    dsa = c.part == "own" and c.method not in SRE2L_FAMILY
    return (stage, -c.ipc, PARTS.index(c.part), dsa, cost, c.method)


def _student_dir(kind: str, args, *parts) -> str:
    return os.path.join(args.workdir, kind, f"{parts[0]}-{folder_key(list(parts))}")


def _own_cell(args, base: dict, shared_id: tuple, mp: recover.MethodPlan) -> Cell:
    m = base["method"]
    if m in SRE2L_FAMILY:  # the paper's relabel: full labels, T = 20, RandomResizedCrop(0.08, 1), CutMix
        relabel = dict(epochs=args.own_epochs, batch_size=10, topk="C", temperature=20.0, min_scale=0.08, seed=42,
                       codec="fp16")
        store = os.path.join(args.workdir, "labels-own", f"{m}-{folder_key([mp.store, relabel])}.zarr")
        students = {s: _student_dir("students-own", args, m, store, args.student_model, s) for s in args.seeds}
        how = "relabel: full labels, T 20, crops 0.08-1, CutMix; student AdamW 1e-3, cosine"
    else:  # DC / DSA / DM: hard labels, DSA, SGD 0.01
        relabel, store = None, None
        train = dict(augment="dsa", epochs=args.dsa_epochs, batch_size=256, opt="sgd", lr=0.01, weight_decay=5e-4)
        students = {s: _student_dir("students-own", args, m, base["images"], train, args.student_model, s)
                    for s in args.seeds}
        how = f"hard labels + DSA, SGD lr 0.01 wd 5e-4, batch 256, {args.dsa_epochs} epochs"
    return Cell(**base, id=("own", m, base["ipc"], base["draw"]), part="own", protocol="own",
                label_setting="full" if relabel else "hard", student=args.student_model, store=store,
                relabel=relabel, students=students, needs=shared_id, how=how)


def _label_cell(args, base: dict, shared_id: tuple, mp: recover.MethodPlan, shared_relabel: dict, setting: str) -> Cell:
    over, mode = LABEL_SETTINGS[setting]
    m = base["method"]
    relabel = store = None
    if over is not None:
        relabel = {**shared_relabel, "codec": "fp16", **over}
        store = os.path.join(args.workdir, "labels-settings", f"{m}-{folder_key([mp.images, relabel])}.zarr")
    students = {s: _student_dir("students-labels", args, m, store or base["images"], mode, args.student_model, s,
                                args.epochs) for s in args.seeds}
    return Cell(**base, id=("labels", m, setting, base["draw"]), part="labels", protocol="shared", label_setting=setting,
                student=args.student_model, store=store, relabel=relabel, mode=mode, students=students,
                needs=shared_id)


def _hlr_cell(args, base: dict, shared_id: tuple) -> Cell:
    """DD-Ranking's acc(syn, hard): the shared recipe's student on the method's images with hard labels. Its
    student folders are the label-settings part's ``hard`` ones, so the two parts never train one twice."""
    m = base["method"]
    students = {s: _student_dir("students-labels", args, m, base["images"], "hard", args.student_model, s, args.epochs)
                for s in args.seeds}
    return Cell(**base, id=("hlr", m, base["ipc"], base["draw"]), part="hlr", protocol="shared", label_setting="hard",
                student=args.student_model, mode="hard", students=students, needs=shared_id,
                how="the shared recipe with hard labels (DD-Ranking's syn-hard)")


def _cross_cell(args, base: dict, shared_id: tuple, arch: str, mp: recover.MethodPlan) -> Cell:
    s = args.seeds[0]  # one student: a ResNet-18 costs about 30 ConvNet-3s here
    students = {s: _student_dir("students-cross", args, base["method"], mp.store, arch, s, args.cross_epochs)}
    return Cell(**base, id=("cross", base["method"], arch, base["draw"]), part="cross", protocol="shared",
                label_setting="top-5", student=arch, store=mp.store, students=students, needs=shared_id)


# --- running a cell ---------------------------------------------------------------------------------
TAG = "bench table"


def _finished_student(folder: str):
    """The student's train result when its folder holds a complete run (else None)."""
    from ..evaluate.student import TrainResult

    return common.finished(TrainResult, os.path.join(folder, "results.json"))


def _finished_labels(store: str):
    """The relabel result when ``store`` holds a finished relabel (else None)."""
    from ..evaluate.relabel import RelabelResult
    from ..labelstore.location import results_path

    return common.finished(RelabelResult, results_path(store))


def _has_folders(c: Cell) -> bool:
    return all(_finished_student(f) for f in c.students.values())


def cell_done(c: Cell) -> bool:
    """Finished: every student's folder is complete, or an earlier run's record has every seed."""
    return _has_folders(c) or (c.record is not None and c.record.has_seeds(c.students))


def _inputs_ready(c: Cell, needs: Cell) -> bool:
    """Whether what cell ``c`` reads of the shared cell ``needs`` is on disk: its images, and for another
    student its label store too (a shared cell taken from a record has neither)."""
    from ..evaluate.recover import RecoverResult

    if common.finished(RecoverResult, os.path.join(needs.images, "results.json")) is None:
        return False
    return c.part != "cross" or _finished_labels(needs.shared_store) is not None


@dataclass(frozen=True)
class CellTask:
    """One cell for :func:`run_cell` (picklable: it crosses to a worker process)."""

    cell: Cell
    teacher_pt: str
    args: dict


def run_cell(task: CellTask) -> dict:
    """Compute one cell (a worker process or in-process); returns its id and wall seconds."""
    import torch

    args = types.SimpleNamespace(**task.args)
    c = task.cell
    torch.set_num_threads(args.threads)
    t0 = time.time()
    if c.part in ("shared", "inputs"):
        recover.run_chain(recover.ChainTask(method=c.chain, teacher_pt=task.teacher_pt, relabel=c.relabel,
                                            student=c.pstudent, args=c.rargs, upto=c.upto))
    else:
        _run_students(args, c, task.teacher_pt)
    return {"id": c.id, "wall_s": time.time() - t0}


def _num_classes(args) -> int:
    from ..evaluate.datasets import load_dataset

    return load_dataset(args.dataset, data_root=args.data_root).num_classes


def _run_students(args, c: Cell, teacher_pt: str) -> None:
    from ..evaluate import relabel, student

    where = f"{c.method} ipc {c.ipc} draw {c.draw}: {c.part}"
    if c.relabel and _finished_labels(c.store) is None:
        r = c.relabel
        topk = _num_classes(args) if r["topk"] == "C" else int(r["topk"])
        say(args.progress, f"{where} relabel {r} ...", TAG)
        timed(c.store + ".bench.json", lambda: relabel.run(relabel.RelabelConfig(
            out=c.store, images=c.images, teacher=(teacher_pt,), epochs=r["epochs"], batch_size=r["batch_size"],
            k=topk, temperature=r["temperature"], min_scale=r["min_scale"], seed=r["seed"], value_codec=r["codec"],
            keep=r.get("keep"), workers=0, resume=True, threads=args.threads, progress=False)))
    for seed, folder in c.students.items():
        if _finished_student(folder):
            continue
        common_kw = dict(out=folder, images=c.images, dataset=args.dataset, data_root=args.data_root,
                         model=c.student, seed=int(seed), workers=0, threads=args.threads, resume=True,
                         progress=False)
        if c.part == "own" and c.store is None:
            kw = dict(hard_labels=True, augment="dsa", epochs=args.dsa_epochs, batch_size=256, opt="sgd", lr=0.01,
                      weight_decay=5e-4, val_every=args.dsa_epochs)
        elif c.part in ("labels", "hlr") and c.mode == "hard":
            kw = dict(hard_labels=True, epochs=args.epochs, batch_size=10, min_scale=0.25, val_every=args.epochs)
        elif c.part == "labels" and c.mode == "online":
            kw = dict(online_teacher=(teacher_pt,), epochs=args.epochs, batch_size=10, min_scale=0.25, k=5,
                      temperature=4.0, val_every=args.epochs)
        elif c.part == "cross":
            kw = dict(labels=c.store, epochs=args.cross_epochs, val_every=args.cross_epochs)
        else:
            kw = dict(labels=c.store, val_every=10 ** 6)
        say(args.progress, f"{where} {c.label_setting} {c.student} seed {seed} ...", TAG)
        res = timed(folder + ".bench.json", lambda: student.run(student.TrainConfig(**common_kw, **kw)))
        say(args.progress, f"{where} {c.label_setting} {c.student} seed {seed}: top-1 {res.final['top1']:.2f}% "
                           f"in {res.wall_time_s:.0f} s", TAG)


def run_cells(args, teacher: dict, cells: list[Cell]) -> list[dict]:
    """Run the unfinished cells in priority order, a cell only after the one it needs; stop starting new ones
    once the budget is spent. Returns what ran."""
    t_start = time.time()
    teacher_pt = os.path.join(teacher["dir"], "teacher.pt")
    shared = dict(vars(args))
    done = {c.id for c in cells if cell_done(c)}
    todo = [c for c in cells if c.id not in done]
    say(args.progress, f"{len(cells)} cells, {len(done)} finished, {len(todo)} to run; {args.jobs} process(es)", TAG)
    todo = _with_inputs(todo, {c.id: c for c in cells}, done)

    def budget_left() -> bool:
        return args.budget_minutes is None or (time.time() - t_start) / 60 < args.budget_minutes

    def ready(c: Cell) -> bool:
        return c.needs is None or c.needs in done

    ran = []
    if args.jobs == 1:
        while todo and budget_left():
            c = next((c for c in todo if ready(c)), None)
            if c is None:
                break
            todo.remove(c)
            ran.append(run_cell(CellTask(cell=c, teacher_pt=teacher_pt, args=shared)))
            done.add(c.id)
        return ran
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(args.jobs, maxtasksperchild=1) as pool:
        running = {}
        while todo or running:
            while len(running) < args.jobs and budget_left():
                c = next((c for c in todo if ready(c)), None)
                if c is None:
                    break
                todo.remove(c)
                running[c.id] = pool.apply_async(run_cell, (CellTask(cell=c, teacher_pt=teacher_pt, args=shared),))
            if not running:
                break
            time.sleep(1.0)
            for cid, res in list(running.items()):
                if res.ready():
                    ran.append(res.get())  # a failed cell raises here, with its error
                    done.add(cid)
                    del running[cid]
    return ran


def _with_inputs(todo: list[Cell], by_id: dict, done: set) -> list[Cell]:
    """Cells to run whose shared cell was taken from a record need its images (and, for another student,
    its store) made again: one "inputs" step per shared cell, run just before the first cell that needs it
    (the steps are deterministic, so they are the same files the record's numbers came from)."""
    steps: dict[tuple, int] = {}  # step id -> its index in out
    out: list[Cell] = []
    for c in todo:
        need = by_id.get(c.needs) if c.needs else None
        if need is not None and c.needs in done and not _inputs_ready(c, need):
            sid = ("inputs",) + tuple(need.id[1:])
            upto = "labels" if c.part == "cross" else "images"
            if sid not in steps:
                steps[sid] = len(out)
                out.append(replace(need, id=sid, part="inputs", upto=upto, needs=None))
            elif upto == "labels":
                out[steps[sid]] = replace(out[steps[sid]], upto="labels")
            c = replace(c, needs=sid)
        out.append(c)
    return out


# --- rows -------------------------------------------------------------------------------------------
def _store_bytes(path: str | None) -> int | None:
    if not path or not os.path.isdir(path):
        return None
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            if f not in ("results.json",):
                total += os.path.getsize(os.path.join(root, f))
    return total


@dataclass(frozen=True)
class CellNumbers:
    """A cell's measurements: per-seed top-1 and wall seconds of its finished students, the relabel's wall
    seconds and the label bytes; from the cell's folders, and from its record where the folders are missing."""

    top1: dict
    wall: dict
    relabel_s: float | None
    label_bytes: int | None

    def record(self, source: str) -> table_records.CellRecord:
        return table_records.CellRecord(top1=self.top1, wall=self.wall, relabel_s=self.relabel_s,
                                        label_bytes=self.label_bytes, source=source)


def cell_numbers(c: Cell) -> CellNumbers:
    top1, wall = {}, {}
    for seed, folder in c.students.items():
        res = _finished_student(folder)
        if res:
            top1[str(seed)], wall[str(seed)] = res.final["top1"], res.wall_time_s
    store = c.shared_store if c.part == "shared" else c.store if c.part != "cross" else None
    rl = _finished_labels(store) if store else None
    return CellNumbers(*table_records.merge(c.record, c.students, top1, wall, rl.wall_time_s if rl else None,
                                            _label_bytes(c)))


def _label_bytes(c: Cell) -> int | None:
    if c.part in ("shared", "cross"):
        return _store_bytes(c.shared_store)
    if c.store:
        return _store_bytes(c.store)
    return 0  # hard labels and a live teacher store nothing


@dataclass(frozen=True)
class Row:
    """One row of the table: a (method, IPC, protocol, label setting, student, part) pooled over draws.
    :meth:`to_dict` gives table.json's keys (``paired_draws`` / ``paired_runs`` only where they apply)."""

    method: str
    ipc: int
    protocol: str
    label_setting: str
    student: str
    part: str
    top1_mean: float | None
    top1_std: float | None
    std_over: str
    n: int
    draws: int
    top1_by_draw: dict
    top1_by_run: dict
    label_bytes: int | None
    relabel_s: float | None
    train_s: float | None
    status: str
    how: str | None
    delta_vs_random: float | None = None
    t_vs_random: float | None = None
    paired_draws: int | None = None
    paired_runs: int | None = None

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("paired_draws", "paired_runs"):
            if out[name] is None:
                del out[name]
        return out


def _pooled_row(key: tuple, cs: list[Cell], numbers: dict) -> Row:
    method, ipc, protocol, setting, student_model, part = key
    draws = {}
    for c in cs:
        if numbers[c.id].top1 and len(numbers[c.id].top1) == len(c.students):  # a draw counts when all its students finished
            draws[c.draw] = statistics.fmean(numbers[c.id].top1.values())
    seeds_all = [v for c in cs for v in numbers[c.id].top1.values()]
    relabel_s = [numbers[c.id].relabel_s for c in cs if numbers[c.id].relabel_s is not None]
    return Row(method=method, ipc=ipc, protocol=protocol, label_setting=setting, student=student_model, part=part,
               top1_mean=statistics.fmean(draws.values()) if draws else None,
               top1_std=(statistics.stdev(draws.values()) if len(draws) > 1 else
                         statistics.stdev(seeds_all) if len(draws) == 1 and len(seeds_all) > 1 else None),
               std_over="draws" if len(draws) > 1 else "student seeds",
               n=len(seeds_all), draws=len(draws), top1_by_draw={str(d): v for d, v in sorted(draws.items())},
               top1_by_run={f"{c.draw}/{s}": v for c in cs for s, v in numbers[c.id].top1.items()},
               label_bytes=numbers[cs[0].id].label_bytes, relabel_s=_mean_or_none(relabel_s),
               train_s=_mean_or_none([v for c in cs for v in numbers[c.id].wall.values() if v is not None]),
               status="complete" if len(draws) == len(cs) else "partial" if draws else "not run",
               how=cs[0].how)


def _vs_random(row: Row, rows: list[Row]) -> Row:
    """``row`` with its paired difference to random real images on the same draws (same protocol)."""
    # own protocol: random's own (hard labels + DSA); label settings: random with the same setting
    base = next((r for r in rows if r.method == "random" and r.ipc == row.ipc and r.protocol == row.protocol
                 and r.student == row.student and r.part == row.part
                 and (r.label_setting == row.label_setting or row.part == "own")), None)
    if base is None or row.method == "random" or not row.top1_by_draw:
        return row
    diffs = table_report.paired_draw_differences(row.to_dict(), base.to_dict())
    if not diffs:
        return row
    if len(diffs) > 1:
        # pairs at the run level: (draw, student seed) against random's run with the same draw and seed. A t
        # over two per-draw means has one degree of freedom and reads in the hundreds when the two agree.
        runs = table_report.paired_run_differences(row.to_dict(), base.to_dict())
        sd = statistics.stdev(runs) if len(runs) > 1 else 0.0
        t = statistics.fmean(runs) / (sd / len(runs) ** 0.5) if sd > 0 else None
        return replace(row, delta_vs_random=statistics.fmean(diffs), paired_draws=len(diffs), paired_runs=len(runs),
                       t_vs_random=t)
    # one draw: Welch's t over the student seeds
    a = list(row.top1_by_run.values())
    b = [v for k, v in base.top1_by_run.items() if k.split("/")[0] in row.top1_by_draw]
    return replace(row, delta_vs_random=statistics.fmean(diffs), paired_draws=len(diffs), t_vs_random=recover.welch_t(a, b))


def rows_from_cells(cells: list[Cell], numbers: dict) -> list[Row]:
    """One row per (method, ipc, protocol, label setting, student, part), pooled over draws; ``numbers``:
    cell id -> :class:`CellNumbers`."""
    groups: dict[tuple, list[Cell]] = {}
    for c in cells:
        groups.setdefault((c.method, c.ipc, c.protocol, c.label_setting, c.student, c.part), []).append(c)
    rows = [_pooled_row(key, cs, numbers) for key, cs in groups.items()]
    return [_vs_random(r, rows) for r in rows]


def _mean_or_none(values):
    values = list(values)
    return statistics.fmean(values) if values else None


def protocols(args) -> dict:
    """The recipes of the parts in words (table.json says them, and they are part of the records' fingerprint)."""
    return dict(
        shared=f"ddpipe demo's recipe: relabel {args.epochs} epochs, batch 10, top-5 fp16, T 4, crops "
               f"0.25-1 + flip + CutMix; student {args.student_model}, AdamW 1e-3 wd 0.01, cosine, KL at T",
        own="random, herding, DM: hard labels + DSA per image, SGD lr 0.01 momentum 0.9 wd 5e-4, batch 256, "
            f"{args.dsa_epochs} epochs, cosine (DC/DSA/DM evaluate with one step at half); sre2l, cda, lpld, "
            f"gvbsm, delt: their relabel (full labels, T 20, crops 0.08-1, CutMix, {args.own_epochs} epochs, "
            "batch 10) and SRe2L's student recipe",
        cross=f"the shared recipe's images and labels, the store's first {args.cross_epochs} epochs")


def _records(carried: dict, cells: list[Cell], numbers: dict) -> dict:
    """Every record to keep, as JSON: the carried ones (cells outside this run's grid included), updated by
    this run's."""
    out = dict(carried)
    for c in cells:
        if numbers[c.id].top1:
            source = "folders" if _has_folders(c) or c.record is None else c.record.source
            out[table_records.cell_key(c)] = numbers[c.id].record(source)
    return {k: r.to_dict() for k, r in sorted(out.items())}


# --- run --------------------------------------------------------------------------------------------
def run(config: Config) -> int:
    args = _resolve(config)
    out = common.table_stream(args.json)
    table_path = os.path.join(args.results_dir, f"{args.stem}.json")
    if args.render_only:
        payload = read_json(table_path)
        if payload is None:
            raise DDPipeError(f"--render-only needs {table_path}; run the table first")
        common.write_json(ddranking.annotate(payload), table_path)  # rows derived from rows: HLR, IOR, LRS
    else:
        t0 = time.time()
        os.makedirs(args.workdir, exist_ok=True)
        teacher, cells = build_cells(args)
        carried, said = table_records.load(table_path, args, protocols(args))
        say(args.progress, said, TAG)
        cells = [replace(c, record=carried.get(table_records.cell_key(c))) for c in cells]
        targs = types.SimpleNamespace(**teacher["args"])
        targs.jobs = args.jobs  # the teacher trains with every thread the run has
        teacher_step = recover.train_teacher(targs, teacher["dir"], teacher["cfg"])
        ran = run_cells(args, teacher, cells)
        numbers = {c.id: cell_numbers(c) for c in cells}
        rows = [r.to_dict() for r in rows_from_cells(cells, numbers)]
        payload = dict(
            benchmark="table", dataset=args.dataset, quick=args.quick,
            teacher=dict(model=args.teacher_model, epochs=args.teacher_epochs, top1=teacher_step.top1,
                         dir=teacher["dir"]),
            grid=dict(methods=args.methods, ipcs=args.ipcs, image_seeds=args.image_seeds, seeds=args.seeds,
                      parts=args.parts, label_ipc=args.label_ipc, label_methods=args.label_methods,
                      label_settings=args.label_settings, cross_students=args.cross_students, epochs=args.epochs,
                      cross_epochs=args.cross_epochs),
            protocols=protocols(args),
            references=REFERENCES, whole_training_set=WHOLE_SET,
            fingerprint=table_records.fingerprint(args, protocols(args)), records=_records(carried, cells, numbers),
            rows=rows, cells=len(cells), cells_done=sum(cell_done(c) for c in cells),
            cells_run_now=sum(r["id"][0] != "inputs" for r in ran),  # "inputs" steps remake a record's images
            wall_time_s=time.time() - t0, machine=common.machine_info(),
            std="over draws of real images (each draw the mean of its student seeds); with one draw, over student seeds",
            t_vs_random="paired t of the differences to random's run with the same draw and student seed, over the draws both have (Welch's t over student seeds with one draw)")
        os.makedirs(args.results_dir, exist_ok=True)
        common.write_json(ddranking.annotate(payload), table_path)
    payload = ddranking.annotate(payload)
    written = table_report.write_all(payload, args.results_dir, args.stem, readme=args.readme)
    print(table_report.console_table(payload), file=out)
    print(f"{payload['cells_done']}/{payload['cells']} cells finished; wrote {table_path}" +
          "".join(f", {p}" for p in written), file=out, flush=True)
    if args.json:
        sys.stdout.write(json.dumps(payload["rows"], default=common.json_default) + "\n")
    return 0
