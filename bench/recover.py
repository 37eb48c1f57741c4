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
``--threads`` torch threads apiece; progress lines go to stderr.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import sys
import time
import types
from dataclasses import dataclass

from . import common
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
_COST = {"dm": 6, "gvbsm": 5, "lpld": 4, "sre2l": 4, "cda": 4, "delt": 3, "herding": 1, "random": 0}

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
def _csv(text: str) -> list[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in _csv(text)]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None


@dataclass(frozen=True, kw_only=True)
class Config:
    """``ddpipe bench recover``'s settings (flags ``--field-name``; ``--methods a,b`` and ``--seeds 0,1`` take
    comma-separated lists). Checked when the run starts (:func:`_resolve`)."""

    dataset: str = option("fashion-mnist", group="data and teacher", help="fashion-mnist or digits (default fashion-mnist)")
    data_root: str | None = option(None, group="data and teacher",
                                   help="where the dataset's files are (default: Debian's location)")
    ipc: int = option(10, group="data and teacher", help="images per class (default 10)")
    teacher_model: str = option("convnet_d3_w32_bn", group="data and teacher", help="teacher (default convnet_d3_w32_bn)")
    teacher_epochs: int = option(4, group="data and teacher", help="teacher training epochs (default 4)")
    methods: tuple[str, ...] = option(METHODS, parse=_csv, group="image sets",
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
    topk: int = option(5, group="the fixed relabel + student recipe", help="soft-label entries per sample (default 5)")
    temperature: float = option(4.0, flags=("-T",), group="the fixed relabel + student recipe",
                                help="distillation temperature (default 4)")
    min_scale: float = option(0.25, group="the fixed relabel + student recipe",
                              help="smallest RandomResizedCrop area (default 0.25)")
    student_model: str = option("convnet_d3_w32_bn", group="the fixed relabel + student recipe",
                                help="student (default convnet_d3_w32_bn)")
    seeds: tuple[int, ...] = option((0, 1, 2, 3, 4), parse=_ints, group="the fixed relabel + student recipe",
                                    help="student seeds, comma-separated (default 0,1,2,3,4)")
    schedule_seed: int = option(42, group="the fixed relabel + student recipe", help="relabel schedule seed (default 42)")
    quick: bool = option(False, group="run",
                         help="smoke run: teacher 1 epoch, 30 student epochs, a tenth of the recover iterations, "
                              "student seeds 0,1 (settings given explicitly still win)")
    jobs: int = option(1, group="run", help="methods run at once, each in its own process (default 1, at most 2)")
    threads: int = option(1, group="run", help="torch threads per process (default 1)")
    workdir: str | None = option(None, group="run",
                                 help="where every step's output goes (default bench/work/recover-DATASET)")
    results_dir: str | None = option(None, group="run", help="where the results JSON goes (default bench/results)")
    progress: bool = option(True, group="run", help="no progress lines on stderr (progress=False)")
    json: bool = option(False, cli=False, help="print the rows as one JSON object on stdout (the CLI's --json)")


def _resolve(config: Config) -> types.SimpleNamespace:
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
    args.workdir = os.path.abspath(args.workdir or os.path.join(common.WORK_DIR, f"recover-{args.dataset}"))
    return args


# --- keys and recipes ------------------------------------------------------------------------------
def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


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


def plan(args) -> dict:
    """Every step's folder and flags, keyed so that a folder is reused only for the same inputs."""
    from ..synth import create_method

    teacher_cfg = dict(dataset=args.dataset, model=args.teacher_model, epochs=args.teacher_epochs, seed=0)
    teacher_dir = os.path.join(args.workdir, f"teacher-{_key(teacher_cfg)}")
    relabel_cfg = dict(epochs=args.epochs, batch_size=args.batch_size, topk=args.topk, temperature=args.temperature,
                       min_scale=args.min_scale, seed=args.schedule_seed)
    student_cfg = dict(dataset=args.dataset, model=args.student_model)
    methods = {}
    for m in args.methods:
        recipe = recipe_for(m, args.recipes)
        over = recover_overrides(recipe, args.iterations_scale)
        cfg = create_method(recipe, **over).to_dict()
        rec = dict(method=recipe, ipc=args.ipc, seed=args.image_seed, dataset=args.dataset,
                   dm_model=args.dm_model if m == "dm" else None, **over)
        ikey = _key([teacher_cfg, rec, cfg])
        images = os.path.join(args.workdir, "images", f"{m}-{ikey}")
        lkey = _key([ikey, relabel_cfg])
        store = os.path.join(args.workdir, "labels", f"{m}-{lkey}.zarr")
        students = {s: os.path.join(args.workdir, "students", f"{m}-s{s}-{_key([lkey, student_cfg, s])}")
                    for s in args.seeds}
        methods[m] = dict(method=m, recipe=recipe, recover=rec, config=cfg, images=images, store=store,
                          students=students)
    return dict(teacher_dir=teacher_dir, teacher_cfg=teacher_cfg, relabel=relabel_cfg, student=student_cfg,
                methods=methods)


# --- steps ------------------------------------------------------------------------------------------
def _say(args, text: str) -> None:
    if args.progress:
        print(f"[bench recover] {text}", file=sys.stderr, flush=True)


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def train_teacher(args, p: dict) -> dict:
    from ..evaluate import squeeze

    res = _read_json(os.path.join(p["teacher_dir"], "results.json"))
    pt = os.path.join(p["teacher_dir"], "teacher.pt")
    if res and res.get("status") == "complete" and os.path.exists(pt):
        _say(args, f"teacher: reused {p['teacher_dir']} (top-1 {res['final']['top1']:.2f}%)")
        return {**res, "computed_now": False}
    c = p["teacher_cfg"]
    _say(args, f"teacher: {c['model']} on {c['dataset']}, {c['epochs']} epochs ...")
    res = _timed(p["teacher_dir"] + ".bench.json", lambda: squeeze.run(squeeze.SqueezeConfig(
        out=p["teacher_dir"], dataset=c["dataset"], data_root=args.data_root, model=c["model"], epochs=c["epochs"],
        seed=c["seed"], resume=True, threads=args.threads * args.jobs, progress=False)).to_dict())
    _say(args, f"teacher: top-1 {res['final']['top1']:.2f}% in {res['wall_time_s']:.0f} s")
    return {**res, "computed_now": True}


def _timed(sidecar: str, fn):
    """Run ``fn`` and add its CPU and wall seconds to ``sidecar`` (summed over resumed sessions)."""
    t0, c0 = time.perf_counter(), time.process_time()
    res = fn()
    rec = _read_json(sidecar) or {"cpu_s": 0.0, "wall_s": 0.0, "sessions": 0}
    rec = {"cpu_s": rec["cpu_s"] + time.process_time() - c0, "wall_s": rec["wall_s"] + time.perf_counter() - t0,
           "sessions": rec["sessions"] + 1}
    from ..evaluate.checkpoint import write_json_atomic

    write_json_atomic(rec, sidecar)
    return res


def _cpu(sidecar: str):
    rec = _read_json(sidecar)
    return rec["cpu_s"] if rec else None


def run_chain(task: dict) -> dict:
    """One method: recover -> relabel -> one student per seed (``task["upto"]``: stop after "images" or
    "labels"). Runs in a worker process or in-process."""
    import torch

    from ..evaluate import recover, relabel, student

    args = types.SimpleNamespace(**task["args"])
    m, teacher_pt = task["method"], task["teacher_pt"]
    torch.set_num_threads(args.threads)
    out = {"method": m["method"], "computed": []}  # the steps this call computed (not reused)
    # 1. images
    manifest = _read_json(os.path.join(m["images"], "manifest.json"))
    if not (manifest and manifest.get("status") == "complete"):
        rc = m["recover"]
        _say(args, f"{m['method']}: recover {m['recipe']} ...")
        _timed(m["images"] + ".bench.json", lambda: recover.run(recover.RecoverRunConfig(
            out=m["images"], method=rc["method"], teacher=(teacher_pt,), ipc=rc["ipc"], seed=rc["seed"],
            dataset=rc["dataset"], data_root=args.data_root, dm_model=args.dm_model,
            iterations=rc.get("iterations"), round_iterations=rc.get("round_iterations"),
            threads=args.threads, progress=False)))
        manifest = _read_json(os.path.join(m["images"], "manifest.json"))
        out["computed"].append("images")
        _say(args, f"{m['method']}: images in {manifest['wall_time_s']:.1f} s")
    out["manifest"] = {k: manifest.get(k) for k in ("recipe", "wall_time_s", "notes", "losses", "runs", "counts")}
    out["manifest"]["cpu_s"] = _cpu(m["images"] + ".bench.json")
    if task.get("upto") == "images":
        return out
    # 2. labels
    rl = _read_json(relabel.results_path(m["store"]))
    if not rl:
        c = task["relabel"]
        _say(args, f"{m['method']}: relabel {c['epochs']} epochs ...")

        def do_relabel():
            return relabel.run(relabel.RelabelConfig(
                out=m["store"], images=m["images"], teacher=(teacher_pt,), epochs=c["epochs"],
                batch_size=c["batch_size"], topk=c["topk"], temperature=c["temperature"], min_scale=c["min_scale"],
                seed=c["seed"], workers=0, resume=True, threads=args.threads, progress=False)).to_dict()

        rl = _timed(m["store"] + ".bench.json", do_relabel)
        out["computed"].append("labels")
        _say(args, f"{m['method']}: labels in {rl['wall_time_s']:.1f} s")
    out["relabel"] = {k: rl.get(k) for k in ("store", "units", "wall_time_s", "image_set_hash")}
    out["relabel"]["cpu_s"] = _cpu(m["store"] + ".bench.json")
    if task.get("upto") == "labels":
        return out
    # 3. students
    out["students"] = {}
    for seed, folder in m["students"].items():
        res = _read_json(os.path.join(folder, "results.json"))
        if not (res and res.get("status") == "complete"):
            _say(args, f"{m['method']}: student seed {seed} ...")
            res = _timed(folder + ".bench.json", lambda: student.run(student.TrainConfig(
                out=folder, images=m["images"], labels=m["store"], dataset=args.dataset, data_root=args.data_root,
                model=task["student"]["model"], seed=int(seed), workers=0, threads=args.threads,
                val_every=args.epochs, resume=True, progress=False)).to_dict())
            out["computed"].append(f"student seed {seed}")
            _say(args, f"{m['method']}: student seed {seed}: top-1 {res['final']['top1']:.2f}% "
                       f"in {res['wall_time_s']:.0f} s")
        out["students"][str(seed)] = {"top1": res["final"]["top1"], "top5": res["final"]["top5"],
                                      "wall_time_s": res["wall_time_s"], "cpu_s": _cpu(folder + ".bench.json"),
                                      "out": folder}
    return out


# --- table -----------------------------------------------------------------------------------------
def _row(m: dict, chain: dict) -> dict:
    top1 = [s["top1"] for s in chain["students"].values()]
    cfg = m["config"]
    return {
        "method": m["method"], "recipe": m["recipe"],
        "init": None if cfg.get("select") else cfg["init"],
        "iterations": None if cfg.get("select") else cfg["iterations"],
        "loss": cfg["loss"] or None, "lr": None if cfg.get("select") else cfg["lr"],
        "images_wall_s": chain["manifest"]["wall_time_s"], "images_cpu_s": chain["manifest"]["cpu_s"],
        "relabel_wall_s": chain["relabel"]["wall_time_s"], "relabel_cpu_s": chain["relabel"]["cpu_s"],
        "student_wall_s": sum(s["wall_time_s"] for s in chain["students"].values()),
        "student_cpu_s": _sum_or_none(s["cpu_s"] for s in chain["students"].values()),
        "top1_by_seed": {k: s["top1"] for k, s in chain["students"].items()},
        "top5_by_seed": {k: s["top5"] for k, s in chain["students"].items()},
        "top1_mean": statistics.fmean(top1), "top1_std": statistics.stdev(top1) if len(top1) > 1 else 0.0,
        "top5_mean": statistics.fmean(s["top5"] for s in chain["students"].values()),
        "images": m["images"], "store": m["store"], "image_set_hash": chain["relabel"]["image_set_hash"],
        "recover_notes": chain["manifest"].get("notes"), "computed_now": chain["computed"],
    }


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


def _finish_rows(rows: list[dict]) -> None:
    base = next(r for r in rows if r["method"] == BASELINE)
    for r in rows:
        r["top1_text"] = f"{r['top1_mean']:.2f} +- {r['top1_std']:.2f}"
        if r["method"] == BASELINE:
            r["delta_vs_random"], r["beats_random"], r["delta_text"], r["welch_t"] = 0.0, None, "-", None
        else:
            r["delta_vs_random"] = r["top1_mean"] - base["top1_mean"]
            r["welch_t"] = welch_t(list(r["top1_by_seed"].values()), list(base["top1_by_seed"].values()))
            r["beats_random"] = bool(r["top1_mean"] > base["top1_mean"])
            r["delta_text"] = f"{r['delta_vs_random']:+.2f}"


# --- run --------------------------------------------------------------------------------------------
def run(config: Config) -> int:
    t_start = time.time()
    args = _resolve(config)
    out = common.table_stream(args.json)
    os.makedirs(args.workdir, exist_ok=True)
    p = plan(args)
    _say(args, f"work dir {args.workdir}; methods {', '.join(args.methods)}; recipes {args.recipes}; "
               f"{len(args.seeds)} student seed(s); {args.jobs} process(es) x {args.threads} thread(s)")
    teacher = train_teacher(args, p)
    teacher_pt = os.path.join(p["teacher_dir"], "teacher.pt")
    shared = dict(vars(args))
    tasks = [dict(method=p["methods"][m], teacher_pt=teacher_pt, relabel=p["relabel"], student=p["student"], args=shared)
             for m in sorted(args.methods, key=lambda m: -_COST.get(m, 1))]
    chains: dict[str, dict] = {}
    if args.jobs == 1:
        for t in tasks:
            chains[t["method"]["method"]] = run_chain(t)
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(args.jobs, maxtasksperchild=1) as pool:
            for res in pool.imap_unordered(run_chain, tasks):
                chains[res["method"]] = res
    rows = [_row(p["methods"][m], chains[m]) for m in args.methods]
    _finish_rows(rows)
    wall = time.time() - t_start
    payload = {
        "benchmark": "recover", "dataset": args.dataset, "ipc": args.ipc, "recipes": args.recipes,
        "question": "does each method's image set beat random real images under one fixed relabel + student recipe?",
        "teacher": {"model": args.teacher_model, "epochs": args.teacher_epochs, "top1": teacher["final"]["top1"],
                    "top5": teacher["final"]["top5"], "wall_time_s": teacher.get("wall_time_s"),
                    "teacher_hash": teacher.get("teacher_hash"), "dir": p["teacher_dir"],
                    "cpu_s": _cpu(p["teacher_dir"] + ".bench.json"), "computed_now": teacher["computed_now"]},
        "fixed_recipe": {
            "relabel": {**p["relabel"], "schedule": "sre2l (RandomResizedCrop(min_scale..1) + flip + CutMix)",
                        "codec": "fp16"},
            "student": {**p["student"], "seeds": args.seeds, "optimizer": "AdamW lr 1e-3 wd 0.01, cosine",
                        "loss": "KL(store soft labels || softmax(student / T))", "validation": "real test set"},
        },
        "image_seed": args.image_seed, "iterations_scale": args.iterations_scale,
        "recover_configs": {m: p["methods"][m]["config"] for m in args.methods},
        "rows": rows,
        "std": "sample standard deviation over the student seeds (0 with one seed)",
        "beats_random": "the method's mean student top-1 is higher than random real images' mean",
        "welch_t": "(mean - random mean) / sqrt(var/n + var_random/n) over the student seeds; |t| above "
                   "about 2.3 with 5 + 5 seeds (2.8 with 3 + 3) is unlikely from student-seed noise alone (two-sided 5%)",
        "wall_time_s": wall,
        "timing_note": "wall_time_s: this invocation (steps reused from earlier runs take none); steps_wall_s / "
                       "steps_cpu_s: the steps' own wall and process CPU seconds summed over every session that "
                       "computed them (CPU time is what the work costs when other processes share the machine)",
        "steps_wall_s": (teacher.get("wall_time_s") or 0.0) + sum(
            r["images_wall_s"] + r["relabel_wall_s"] + r["student_wall_s"] for r in rows),
        "steps_cpu_s": _sum_or_none([_cpu(p["teacher_dir"] + ".bench.json")] + [
            r[k] for r in rows for k in ("images_cpu_s", "relabel_cpu_s", "student_cpu_s")]),
        "machine": common.machine_info(), "loadavg": os.getloadavg(),
        "args": shared,
    }
    print(f"\nddpipe bench recover: {args.dataset}, IPC {args.ipc}, recipes '{args.recipes}', teacher "
          f"{args.teacher_model} {teacher['final']['top1']:.2f}%; relabel + student fixed: {args.epochs} epochs, "
          f"batch {args.batch_size}, top-{args.topk}, T={args.temperature:g}, min-scale {args.min_scale:g}, "
          f"{args.student_model}, seeds {','.join(map(str, args.seeds))}", file=out)
    print(common.format_table(rows, COLUMNS), file=out)
    wins = [r["method"] for r in rows if r["beats_random"]]
    losers = [r["method"] for r in rows if r["beats_random"] is False]
    print(f"beat random: {', '.join(wins) or 'none'}; do not: {', '.join(losers) or 'none'}. "
          f"Wall time {wall / 60:.1f} min (steps reused from earlier runs take none).", file=out)
    path = common.write_results("recover", payload, args.results_dir)
    print(f"wrote {path}", file=out, flush=True)
    if args.json:
        sys.stdout.write(json.dumps(payload, default=common.json_default) + "\n")
    return 0
