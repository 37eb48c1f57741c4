"""``ddpipe bench recover``: do the synthesis methods beat random real images?

One teacher (``ddpipe squeeze``), then for every method the IPC-N image set (``ddpipe recover``:
random, herding, sre2l, cda, lpld, gvbsm, delt, dm), then ONE fixed relabel recipe (``ddpipe
relabel``) and ONE fixed student recipe (``ddpipe train``) on each set, the student trained with
several seeds and validated on the real test set. The table gives, per method, the wall time of
its images, the student's top-1 (mean and sample standard deviation over the seeds), the
difference to random real images, Welch's t of that difference and whether the mean is higher.
The relabel + student recipe defaults to ``ddpipe demo``'s (batch 10, 300 epochs, top-5, T = 4).

Every step is the phase's own ``run(Config(...))`` (squeeze, recover, relabel, train) and resumes:
each output lives in a folder
named by a hash of everything that determines it (teacher, recipe, relabel and student flags),
so a rerun reuses finished steps, continues a killed one, and a changed recipe gets a new folder.
Steps run in this process, or in ``--jobs`` spawned processes (one method's chain each) with
``--threads`` torch threads apiece; progress lines go to stderr. The JSON goes under ``bench/results/``
of the current directory (``--results-dir``), the steps' folders under ``bench/work/`` (``--workdir``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import time
import types
from dataclasses import dataclass

from . import common
from .common import csv_list, int_list
from ddpipe._progress import say
from ddpipe.config import option
from ddpipe.errors import DDPipeError

DESCRIPTION = (
    "Synthesis methods vs random real images at IPC N: one teacher, every method's image set, one fixed "
    "relabel + student recipe, student top-1 on the real test set (mean +- std over seeds)."
)

METHODS = ("random", "herding", "sre2l", "cda", "lpld", "gvbsm", "delt", "dm")
BASELINE = "random"
# recipe tag per dataset: the 28 px recipes for Fashion-MNIST, the two-iteration test recipes for digits
DEFAULT_TAG = {"fashion-mnist": "fmnist", "digits": "test"}
# rough relative cost, so the longest chains start first when --jobs > 1
COST = {"dm": 6, "gvbsm": 5, "lpld": 4, "sre2l": 4, "cda": 4, "delt": 3, "herding": 1, "random": 0}

COLUMNS = [
    ("method", "method", ""),
    ("recipe", "recipe", ""),
    ("images_wall_s", "images wall s", ",.1f"),
    ("images_cpu_s", "images CPU s", ",.1f"),
    ("top1_text", "student top-1 (mean +- std)", ""),
    ("delta_text", "vs random", ""),
    ("welch_t", "t", ".1f"),
    ("beats_random", "beats random", ""),
]

QUICK = dict(teacher_epochs=1, epochs=30, iterations_scale=0.1, seeds=(0, 1))


# --- configuration ----------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Config:
    """``ddpipe bench recover``'s settings (flags ``--field-name``; ``--methods a,b`` and ``--seeds 0,1`` take
    comma-separated lists). Checked when the run starts (:func:`resolve`)."""

    dataset: str = option("fashion-mnist", group="data and teacher", help="fashion-mnist or digits (default fashion-mnist)")
    data_root: str | None = option(None, group="data and teacher",
                                   help="where the dataset's files are (default: Debian's location)")
    ipc: int = option(10, group="data and teacher", help="images per class (default 10)")
    teacher_model: str = option("convnet_d3_w32_bn", group="data and teacher", help="teacher (default convnet_d3_w32_bn)")
    teacher_epochs: int = option(4, group="data and teacher", help="teacher training epochs (default 4)")
    methods: tuple[str, ...] = option(METHODS, parse=csv_list, group="image sets",
                                      help=f"comma-separated methods (default {','.join(METHODS)}); random is always run")
    recipes: str | None = option(None, metavar="TAG", group="image sets",
                                 help="recipe tag of every method, e.g. fmnist -> sre2l.fmnist, cda.fmnist ... (default: "
                                      "fmnist for fashion-mnist, test for digits); a family without that tag uses its "
                                      "default recipe")
    iterations_scale: float = option(1.0, group="image sets",
                                     help="multiply every recipe's iterations (and DELT's round length) by this (default 1)")
    image_seed: int = option(0, group="image sets",
                             help="seed of every recover run: random selection, real initialisation, augmentation "
                                  "(default 0)")
    dm_model: str = option("convnet_d3_w32", group="image sets",
                           help="DM's random network (default convnet_d3_w32: DM's ConvNet at width 32, for the CPU budget)")
    epochs: int = option(300, group="the fixed relabel + student recipe", help="relabel = student epochs (default 300)")
    batch_size: int = option(10, flags=("-b",), group="the fixed relabel + student recipe",
                             help="relabel = replay batch (default 10, as `ddpipe demo`)")
    k: int = option(5, flags=("--topk",), group="the fixed relabel + student recipe",
                    help="soft-label entries per sample, the store's k (default 5)")
    temperature: float = option(4.0, flags=("-T",), group="the fixed relabel + student recipe",
                                help="distillation temperature (default 4)")
    min_scale: float = option(0.25, group="the fixed relabel + student recipe",
                              help="smallest RandomResizedCrop area (default 0.25)")
    student_model: str = option("convnet_d3_w32_bn", group="the fixed relabel + student recipe",
                                help="student (default convnet_d3_w32_bn)")
    seeds: tuple[int, ...] = option((0, 1, 2, 3, 4), parse=int_list, group="the fixed relabel + student recipe",
                                    help="student seeds, comma-separated (default 0,1,2,3,4)")
    schedule_seed: int = option(42, group="the fixed relabel + student recipe", help="relabel schedule seed (default 42)")
    quick: bool = option(False, group="run",
                         help="smoke run: teacher 1 epoch, 30 student epochs, a tenth of the recover iterations, "
                              "student seeds 0,1 (settings given explicitly still win)")
    jobs: int = option(1, group="run", help="methods run at once, each in its own process (default 1, at most 2)")
    threads: int = option(1, group="run", help="torch threads per process (default 1)")
    workdir: str | None = option(None, group="run",
                                 help="where every step's output goes (default bench/work/recover-DATASET under the current "
                                      "directory)")
    results_dir: str | None = option(None, group="run",
                                     help="where the results JSON goes (default bench/results under the current directory)")
    progress: bool = option(True, group="run", help="no progress lines on stderr (progress=False)")
    json: bool = option(False, cli=False, help="print the rows as one JSON object on stdout (the CLI's --json)")


def resolve(config: Config) -> types.SimpleNamespace:
    """The settings of one run: ``quick`` applied to those left at their defaults, the rest checked."""
    args = common.resolved_args(config, QUICK)
    args.methods, args.seeds = list(args.methods), [int(s) for s in args.seeds]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        raise DDPipeError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    args.methods = [BASELINE] + [m for m in dict.fromkeys(args.methods) if m != BASELINE]
    if not args.seeds:
        raise DDPipeError("--seeds needs at least one seed")
    if not 1 <= args.jobs <= 2:
        raise DDPipeError(f"--jobs must be 1 or 2 (this bench never runs more than two compute processes), got {args.jobs}")
    if args.threads < 1 or args.ipc < 1 or args.epochs < 1 or args.teacher_epochs < 1:
        raise DDPipeError("--threads, --ipc, --epochs and --teacher-epochs must be at least 1")
    if not args.iterations_scale > 0:
        raise DDPipeError(f"--iterations-scale must be positive, got {args.iterations_scale}")
    if args.recipes is None:
        args.recipes = DEFAULT_TAG.get(args.dataset, "default")
    args.workdir = common.work_dir(args.workdir, f"recover-{args.dataset}")
    args.results_dir = common.results_dir(args.results_dir)
    return args


# --- keys and recipes ------------------------------------------------------------------------------
def recipe_for(method: str, tag: str) -> str:
    """``method.tag`` when registered, else the family's default recipe."""
    from ..synth import default_recipe, is_method

    return f"{method}.{tag}" if is_method(f"{method}.{tag}") else default_recipe(method)


def recover_overrides(recipe: str, scale: float) -> dict:
    """Recover settings that scale the recipe's iterations (DELT's round length with them)."""
    from ..synth import create_method

    cfg = create_method(recipe)
    if scale == 1.0 or cfg.select is not None:
        return {}
    out = {"iterations": max(1, round(cfg.iterations * scale))}
    if cfg.round_iterations:
        out["round_iterations"] = max(1, min(out["iterations"], round(cfg.round_iterations * scale)))
    return out


@dataclass(frozen=True)
class MethodPlan:
    """One method's steps: its recover settings and method config, and the folders of its images, its
    label store and its students (seed -> folder)."""

    method: str
    recipe: str
    recover: dict  # the recover run's settings (method = the recipe, ipc, seed, dataset, dm_model, overrides)
    config: dict  # the recipe's method config, overrides applied
    images: str
    store: str
    students: dict  # seed -> folder


@dataclass(frozen=True)
class Plan:
    """Every step's folder and settings, keyed so that a folder is reused only for the same inputs."""

    teacher_dir: str
    teacher_cfg: dict
    relabel: dict  # the fixed relabel recipe (these keys name the label folders and the JSON's fixed_recipe)
    student: dict
    methods: dict  # method -> MethodPlan

    @property
    def teacher_pt(self) -> str:
        return os.path.join(self.teacher_dir, "teacher.pt")


def plan(args) -> Plan:
    """Every step's folder and flags, keyed so that a folder is reused only for the same inputs."""
    from ..synth import create_method

    key = common.folder_key
    teacher_cfg = dict(dataset=args.dataset, model=args.teacher_model, epochs=args.teacher_epochs, seed=0)
    # the relabel recipe's keys name the label folders (a hash of them) and the JSON's fixed_recipe: kept as they are
    relabel_cfg = dict(epochs=args.epochs, batch_size=args.batch_size, topk=args.k, temperature=args.temperature,
                       min_scale=args.min_scale, seed=args.schedule_seed)
    student_cfg = dict(dataset=args.dataset, model=args.student_model)
    methods = {}
    for m in args.methods:
        recipe = recipe_for(m, args.recipes)
        over = recover_overrides(recipe, args.iterations_scale)
        cfg = create_method(recipe, **over).to_dict()
        rec = dict(method=recipe, ipc=args.ipc, seed=args.image_seed, dataset=args.dataset,
                   dm_model=args.dm_model if m == "dm" else None, **over)
        ikey = key([teacher_cfg, rec, cfg])
        lkey = key([ikey, relabel_cfg])
        methods[m] = MethodPlan(
            method=m, recipe=recipe, recover=rec, config=cfg,
            images=os.path.join(args.workdir, "images", f"{m}-{ikey}"),
            store=os.path.join(args.workdir, "labels", f"{m}-{lkey}.zarr"),
            students={s: os.path.join(args.workdir, "students", f"{m}-s{s}-{key([lkey, student_cfg, s])}")
                      for s in args.seeds})
    return Plan(teacher_dir=os.path.join(args.workdir, f"teacher-{key(teacher_cfg)}"), teacher_cfg=teacher_cfg,
                relabel=relabel_cfg, student=student_cfg, methods=methods)


# --- steps ------------------------------------------------------------------------------------------
TAG = "bench recover"


@dataclass(frozen=True)
class TeacherStep:
    """The teacher's squeeze result and whether this call trained it (False: reused)."""

    result: object  # evaluate.squeeze.SqueezeResult
    computed_now: bool

    @property
    def top1(self) -> float:
        return self.result.final["top1"]


def train_teacher(args, teacher_dir: str, c: dict) -> TeacherStep:
    """The teacher of settings ``c`` (a plan's ``teacher_cfg``) in ``teacher_dir``: reused when the folder
    holds a complete squeeze, else trained (resuming)."""
    from ..evaluate import squeeze

    res = common.finished(squeeze.SqueezeResult, os.path.join(teacher_dir, "results.json"))
    if res is not None and os.path.exists(os.path.join(teacher_dir, "teacher.pt")):
        say(args.progress, f"teacher: reused {teacher_dir} (top-1 {res.final['top1']:.2f}%)", TAG)
        return TeacherStep(res, computed_now=False)
    say(args.progress, f"teacher: {c['model']} on {c['dataset']}, {c['epochs']} epochs ...", TAG)
    res = common.timed(teacher_dir + ".bench.json", lambda: squeeze.run(squeeze.SqueezeConfig(
        out=teacher_dir, dataset=c["dataset"], data_root=args.data_root, model=c["model"], epochs=c["epochs"],
        seed=c["seed"], resume=True, threads=args.threads * args.jobs, progress=False)))
    say(args.progress, f"teacher: top-1 {res.final['top1']:.2f}% in {res.wall_time_s:.0f} s", TAG)
    return TeacherStep(res, computed_now=True)


@dataclass(frozen=True)
class ChainTask:
    """One method's chain for :func:`run_chain` (picklable: it crosses to a worker process).
    ``upto``: stop after "images" or "labels" (None: the students too)."""

    method: MethodPlan
    teacher_pt: str
    relabel: dict
    student: dict
    args: dict
    upto: str | None = None


@dataclass(frozen=True)
class StepTime:
    """A step's own wall seconds (its result's) and the CPU seconds :func:`common.timed` summed."""

    wall_time_s: float
    cpu_s: float | None


@dataclass(frozen=True)
class StudentRun:
    top1: float
    top5: float
    wall_time_s: float
    cpu_s: float | None
    out: str


@dataclass(frozen=True)
class ChainOutcome:
    """What :func:`run_chain` found or computed for one method."""

    method: str
    computed: tuple  # the steps this call computed (not reused)
    images: StepTime
    recover_notes: dict | None
    labels: StepTime | None = None
    image_set_hash: str | None = None
    students: dict | None = None  # seed (str) -> StudentRun


def run_chain(task: ChainTask) -> ChainOutcome:
    """One method: recover -> relabel -> one student per seed (``task.upto``: stop after "images" or
    "labels"). Runs in a worker process or in-process."""
    import torch

    from ..evaluate import recover, relabel, student
    from ..labelstore.location import results_path

    args = types.SimpleNamespace(**task.args)
    m = task.method
    torch.set_num_threads(args.threads)
    computed = []
    # 1. images
    images = common.finished(recover.RecoverResult, os.path.join(m.images, "results.json"))
    if images is None:
        rc = m.recover
        say(args.progress, f"{m.method}: recover {m.recipe} ...", TAG)
        images = common.timed(m.images + ".bench.json", lambda: recover.run(recover.RecoverRunConfig(
            out=m.images, method=rc["method"], teacher=(task.teacher_pt,), ipc=rc["ipc"], seed=rc["seed"],
            dataset=rc["dataset"], data_root=args.data_root, dm_model=args.dm_model,
            iterations=rc.get("iterations"), round_iterations=rc.get("round_iterations"),
            threads=args.threads, progress=False)))
        computed.append("images")
        say(args.progress, f"{m.method}: images in {images.wall_time_s:.1f} s", TAG)
    out = ChainOutcome(method=m.method, computed=(), images=StepTime(images.wall_time_s,
                       common.sidecar_cpu_s(m.images + ".bench.json")), recover_notes=images.notes)
    if task.upto == "images":
        return dataclasses.replace(out, computed=tuple(computed))
    # 2. labels
    rl = common.finished(relabel.RelabelResult, results_path(m.store))
    if rl is None:
        c = task.relabel
        say(args.progress, f"{m.method}: relabel {c['epochs']} epochs ...", TAG)
        rl = common.timed(m.store + ".bench.json", lambda: relabel.run(relabel.RelabelConfig(
            out=m.store, images=m.images, teacher=(task.teacher_pt,), epochs=c["epochs"],
            batch_size=c["batch_size"], k=c["topk"], temperature=c["temperature"], min_scale=c["min_scale"],
            seed=c["seed"], workers=0, resume=True, threads=args.threads, progress=False)))
        computed.append("labels")
        say(args.progress, f"{m.method}: labels in {rl.wall_time_s:.1f} s", TAG)
    out = dataclasses.replace(out, labels=StepTime(rl.wall_time_s, common.sidecar_cpu_s(m.store + ".bench.json")),
                              image_set_hash=rl.image_set_hash)
    if task.upto == "labels":
        return dataclasses.replace(out, computed=tuple(computed))
    # 3. students
    students = {}
    for seed, folder in m.students.items():
        res = common.finished(student.TrainResult, os.path.join(folder, "results.json"))
        if res is None:
            say(args.progress, f"{m.method}: student seed {seed} ...", TAG)
            res = common.timed(folder + ".bench.json", lambda: student.run(student.TrainConfig(
                out=folder, images=m.images, labels=m.store, dataset=args.dataset, data_root=args.data_root,
                model=task.student["model"], seed=int(seed), workers=0, threads=args.threads,
                val_every=args.epochs, resume=True, progress=False)))
            computed.append(f"student seed {seed}")
            say(args.progress, f"{m.method}: student seed {seed}: top-1 {res.final['top1']:.2f}% "
                               f"in {res.wall_time_s:.0f} s", TAG)
        students[str(seed)] = StudentRun(top1=res.final["top1"], top5=res.final["top5"], wall_time_s=res.wall_time_s,
                                         cpu_s=common.sidecar_cpu_s(folder + ".bench.json"), out=folder)
    return dataclasses.replace(out, students=students, computed=tuple(computed))


# --- table -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One method's row of the table and of the JSON's ``rows`` (:meth:`to_dict`, the same keys)."""

    method: str
    recipe: str
    init: str | None
    iterations: int | None
    loss: dict | None
    lr: float | None
    images_wall_s: float
    images_cpu_s: float | None
    relabel_wall_s: float
    relabel_cpu_s: float | None
    student_wall_s: float
    student_cpu_s: float | None
    top1_by_seed: dict
    top5_by_seed: dict
    top1_mean: float
    top1_std: float
    top5_mean: float
    images: str
    store: str
    image_set_hash: str
    recover_notes: dict | None
    computed_now: list
    top1_text: str
    delta_vs_random: float
    beats_random: bool | None  # None for random itself
    delta_text: str
    welch_t: float | None

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _row(m: MethodPlan, chain: ChainOutcome, base: ChainOutcome) -> Row:
    """``m``'s row; ``base`` is random real images' chain (``chain`` itself for random)."""
    students = chain.students.values()
    top1 = [s.top1 for s in students]
    base_top1 = [s.top1 for s in base.students.values()]
    mean, base_mean = statistics.fmean(top1), statistics.fmean(base_top1)
    is_base = m.method == BASELINE
    selection = bool(m.config.get("select"))
    return Row(
        method=m.method, recipe=m.recipe,
        init=None if selection else m.config["init"],
        iterations=None if selection else m.config["iterations"],
        loss=m.config["loss"] or None, lr=None if selection else m.config["lr"],
        images_wall_s=chain.images.wall_time_s, images_cpu_s=chain.images.cpu_s,
        relabel_wall_s=chain.labels.wall_time_s, relabel_cpu_s=chain.labels.cpu_s,
        student_wall_s=sum(s.wall_time_s for s in students),
        student_cpu_s=_sum_or_none(s.cpu_s for s in students),
        top1_by_seed={k: s.top1 for k, s in chain.students.items()},
        top5_by_seed={k: s.top5 for k, s in chain.students.items()},
        top1_mean=mean, top1_std=statistics.stdev(top1) if len(top1) > 1 else 0.0,
        top5_mean=statistics.fmean(s.top5 for s in students),
        images=m.images, store=m.store, image_set_hash=chain.image_set_hash,
        recover_notes=chain.recover_notes, computed_now=list(chain.computed),
        top1_text=f"{mean:.2f} +- {statistics.stdev(top1) if len(top1) > 1 else 0.0:.2f}",
        delta_vs_random=0.0 if is_base else mean - base_mean,
        beats_random=None if is_base else bool(mean > base_mean),
        delta_text="-" if is_base else f"{mean - base_mean:+.2f}",
        welch_t=None if is_base else welch_t(top1, base_top1))


def _sum_or_none(values) -> float | None:
    values = list(values)
    return None if any(v is None for v in values) else float(sum(values))


def welch_t(a: list[float], b: list[float]) -> float | None:
    """Welch's t of mean(a) - mean(b): the difference in units of its standard error (None below two seeds)."""
    if len(a) < 2 or len(b) < 2:
        return None
    se = (statistics.variance(a) / len(a) + statistics.variance(b) / len(b)) ** 0.5
    diff = statistics.fmean(a) - statistics.fmean(b)
    return diff / se if se > 0 else (0.0 if diff == 0 else float("inf") if diff > 0 else float("-inf"))


# --- run --------------------------------------------------------------------------------------------
def run(config: Config) -> int:
    t_start = time.time()
    args = resolve(config)
    out = common.table_stream(args.json)
    os.makedirs(args.workdir, exist_ok=True)
    p = plan(args)
    say(args.progress, f"work dir {args.workdir}; methods {', '.join(args.methods)}; recipes {args.recipes}; "
                       f"{len(args.seeds)} student seed(s); {args.jobs} process(es) x {args.threads} thread(s)", TAG)
    teacher = train_teacher(args, p.teacher_dir, p.teacher_cfg)
    shared = dict(vars(args))
    tasks = [ChainTask(method=p.methods[m], teacher_pt=p.teacher_pt, relabel=p.relabel, student=p.student, args=shared)
             for m in sorted(args.methods, key=lambda m: -COST.get(m, 1))]
    chains: dict[str, ChainOutcome] = {}
    if args.jobs == 1:
        for t in tasks:
            chains[t.method.method] = run_chain(t)
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(args.jobs, maxtasksperchild=1) as pool:
            for res in pool.imap_unordered(run_chain, tasks):
                chains[res.method] = res
    rows = [_row(p.methods[m], chains[m], chains[BASELINE]) for m in args.methods]
    wall = time.time() - t_start
    payload = {
        "benchmark": "recover", "dataset": args.dataset, "ipc": args.ipc, "recipes": args.recipes,
        "question": "does each method's image set beat random real images under one fixed relabel + student recipe?",
        "teacher": {"model": args.teacher_model, "epochs": args.teacher_epochs, "top1": teacher.top1,
                    "top5": teacher.result.final["top5"], "wall_time_s": teacher.result.wall_time_s,
                    "teacher_hash": teacher.result.teacher_hash, "dir": p.teacher_dir,
                    "cpu_s": common.sidecar_cpu_s(p.teacher_dir + ".bench.json"), "computed_now": teacher.computed_now},
        "fixed_recipe": {
            "relabel": {**p.relabel, "schedule": "sre2l (RandomResizedCrop(min_scale..1) + flip + CutMix)",
                        "codec": "fp16"},
            "student": {**p.student, "seeds": args.seeds, "optimizer": "AdamW lr 1e-3 wd 0.01, cosine",
                        "loss": "KL(store soft labels || softmax(student / T))", "validation": "real test set"},
        },
        "image_seed": args.image_seed, "iterations_scale": args.iterations_scale,
        "recover_configs": {m: p.methods[m].config for m in args.methods},
        "rows": [r.to_dict() for r in rows],
        "std": "sample standard deviation over the student seeds (0 with one seed)",
        "beats_random": "the method's mean student top-1 is higher than random real images' mean",
        "welch_t": "(mean - random mean) / sqrt(var/n + var_random/n) over the student seeds; |t| above "
                   "about 2.3 with 5 + 5 seeds (2.8 with 3 + 3) is unlikely from student-seed noise alone (two-sided 5%)",
        "wall_time_s": wall,
        "timing_note": "wall_time_s: this invocation (steps reused from earlier runs take none); steps_wall_s / "
                       "steps_cpu_s: the steps' own wall and process CPU seconds summed over every session that "
                       "computed them (CPU time is what the work costs when other processes share the machine)",
        "steps_wall_s": (teacher.result.wall_time_s or 0.0) + sum(
            r.images_wall_s + r.relabel_wall_s + r.student_wall_s for r in rows),
        "steps_cpu_s": _sum_or_none([common.sidecar_cpu_s(p.teacher_dir + ".bench.json")] + [
            v for r in rows for v in (r.images_cpu_s, r.relabel_cpu_s, r.student_cpu_s)]),
        "machine": common.machine_info(), "loadavg": os.getloadavg(),
        "args": shared,
    }
    print(f"\nddpipe bench recover: {args.dataset}, IPC {args.ipc}, recipes '{args.recipes}', teacher "
          f"{args.teacher_model} {teacher.top1:.2f}%; relabel + student fixed: {args.epochs} epochs, "
          f"batch {args.batch_size}, top-{args.k}, T={args.temperature:g}, min-scale {args.min_scale:g}, "
          f"{args.student_model}, seeds {','.join(map(str, args.seeds))}", file=out)
    print(common.format_table(payload["rows"], COLUMNS), file=out)
    wins = [r.method for r in rows if r.beats_random]
    losers = [r.method for r in rows if r.beats_random is False]
    print(f"beat random: {', '.join(wins) or 'none'}; do not: {', '.join(losers) or 'none'}. "
          f"Wall time {wall / 60:.1f} min (steps reused from earlier runs take none).", file=out)
    path = common.write_results("recover", payload, args.results_dir)
    print(f"wrote {path}", file=out, flush=True)
    if args.json:
        sys.stdout.write(json.dumps(payload, default=common.json_default) + "\n")
    return 0
