"""``ddpipe demo``: the whole chain on Fashion-MNIST, small enough for 2 CPU cores.

teacher (squeeze) -> synthesised images (recover ``method``, default ``sre2l``: the dataset's own
recipe, ``sre2l.fmnist``) -> relabel into a store -> prune 40x -> train students -> validate on the
real test set, then one table: the teacher's accuracy, and the students' on the synthesised images
with the full soft labels, the 40x-pruned labels and hard labels, and on a random real selection
of the same size with full soft labels (the reference every synthesis method must beat); with the
label bytes each student read. Every step is a phase's ``run(config)`` and resumes: rerunning
continues where it stopped. Progress goes to stderr (``progress=False``: none).

The students share one recipe (model, optimiser, epochs, the schedule of crops, flips and CutMix);
only the images and labels differ. With ``seeds=N`` each student is trained N times (student seeds
``seed .. seed + N - 1``; the pruned store is drawn anew with the same seed, so the mean also covers
which units LPLD's random pruning keeps) and the table reports the mean.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from ..pipeline.backends import BACKENDS as LOADERS
from ddpipe._format import keep_fraction
from ddpipe._progress import say
from ddpipe.config import Result, check_int, check_out_path, check_range, config_to_dict, option
from ._phase import RunOptions
from .errors import DemoError

__all__ = ["DemoConfig", "DemoResult", "run", "summary_text", "LABEL_BYTES_NOTE"]

LABEL_BYTES_NOTE = ("label bytes read: compressed bytes of the label-store objects holding the units the student "
                    "replayed, each counted once (metadata not counted)")


@dataclass(frozen=True, kw_only=True)
class DemoConfig(RunOptions):
    """The demo's settings; the defaults are the documented run (roughly a quarter of an hour on 2 cores:
    the random-real chain measured 8 minutes, and ``sre2l.fmnist``'s images took 3-5 more in ``ddpipe
    bench recover``)."""

    error = DemoError

    out: str = option("demo_out", help="working directory (default ./demo_out)")
    dataset: str = option("fashion-mnist", help="fashion-mnist or digits (default fashion-mnist)")
    data_root: str | None = option(None, help="where the dataset's files are (default: Debian's location)")
    method: str = option("sre2l", help="the synthesis method (a family runs the dataset's recipe, e.g. sre2l.fmnist; "
                                       "random: no synthesis, the random real images only) (default sre2l)")
    iterations: int | None = option(None, help="the method's optimisation steps per batch (default: its recipe's)")
    ipc: int = option(10, help="images per class (default 10)")
    teacher_model: str = option("convnet_d3_w32_bn", help="teacher (default convnet_d3_w32_bn)")
    teacher_epochs: int = option(4, help="teacher training epochs (default 4)")
    student_model: str = option("convnet_d3_w32_bn", help="student (default convnet_d3_w32_bn)")
    epochs: int = option(300, help="student epochs = relabel epochs (default 300)")
    batch_size: int = option(10, flags=("-b",),
                             help="relabel = replay batch = the unit LPLD prunes (default 10: 10 units per epoch at IPC 10)")
    k: int = option(5, flags=("--topk",), help="soft-label entries per sample, the store's k (default 5)")
    temperature: float = option(4.0, flags=("-T",), help="distillation temperature (default 4)")
    keep: float = option(1 / 40, parse=keep_fraction, help="fraction of units the pruned store keeps: 0.025, 1/40 or "
                                                            "40x (default 1/40)")
    min_scale: float = option(0.25, help="smallest RandomResizedCrop area for 28 px images (default 0.25; ImageNet "
                                         "uses 0.08)")
    seeds: int = option(2, help="train each student with this many seeds and report the mean (default 2)")
    loader: str = option("torch", choices=LOADERS, help="image backend: torch (the reference), dali or batched (docs/pipeline.md; default torch)")
    workers: int = option(0, flags=("-j",),
                          help="loader worker processes (default 0: an epoch of 100 images costs less than starting "
                               "workers)")
    jobs: int = option(2, help="students trained at once, each in its own process with one torch thread (default 2; "
                               "1: one at a time in this process)")
    seed: int = option(0, help="seed of teacher, images and students (default 0)")

    def validate(self) -> None:
        super().validate()
        e = self.error
        check_out_path(e, "out", self.out)
        for name in ("ipc", "teacher_epochs", "epochs", "batch_size", "k", "seeds", "jobs"):
            check_int(e, name, getattr(self, name), min=1)
        check_int(e, "iterations", self.iterations, min=1, allow_none=True)
        check_int(e, "workers", self.workers, min=0)
        check_int(e, "seed", self.seed, min=0)
        check_range(e, "temperature", self.temperature, min=0, min_exclusive=True)
        check_range(e, "min_scale", self.min_scale, min=0, max=1, min_exclusive=True)
        try:
            object.__setattr__(self, "keep", keep_fraction(self.keep))
        except ValueError as err:
            raise e(f"keep: {err}") from None


@dataclass(frozen=True)
class DemoResult(Result):
    """The demo's table (``rows``) and where everything is; also ``out/results.json``."""

    demo: str
    dataset: str
    ipc: int
    method: str
    recipe: str
    images: str
    epochs: int
    batch_size: int
    units: int
    kept_units: int
    seeds: list
    rows: list
    label_bytes_note: str
    teacher_hash: str | None
    store: str
    pruned_stores: list
    store_info: dict
    pruned_store_bytes_on_disk: int
    soft_minus_hard: float
    full_minus_pruned: float
    synthesised_minus_random: float | None
    phase_seconds: dict
    wall_time_s: float
    config: dict


def _keep_text(keep: float) -> str:
    n = 1 / keep
    return f"{n:.0f}x-pruned" if abs(n - round(n)) < 1e-9 else f"pruned (keep {keep:.3g})"


def run(config: DemoConfig) -> DemoResult:
    """Run (or resume) the whole chain as ``config`` says; returns the table."""
    from ddpipe.phase import run_phase

    return run_phase(config, DemoConfig, _run, "demo")


def _run(config: DemoConfig) -> DemoResult:
    import numpy as np

    from . import prune, recover, relabel, squeeze
    from ._phase import RESULTS, write_json
    from .datasets import load_dataset
    from ..labelstore import store_info

    t0 = time.perf_counter()
    seconds = {}
    out = os.path.abspath(os.path.expanduser(config.out))
    os.makedirs(out, exist_ok=True)
    verbose, progress = config.progress, config.progress
    seeds = [config.seed + i for i in range(config.seeds)]
    dataset = load_dataset(config.dataset, data_root=config.data_root)
    n_images = config.ipc * dataset.num_classes
    recipe, note = recover.resolve_recipe(config.method, dataset.name)
    synthesised = not recipe.startswith(("random.", "herding."))

    # 1. teacher
    say(verbose, f"1/5 squeeze: {config.teacher_model} on {config.dataset}, {config.teacher_epochs} epochs", "demo")
    teacher_dir = os.path.join(out, "teacher")
    teacher = squeeze.run(squeeze.SqueezeConfig(
        out=teacher_dir, dataset=config.dataset, data_root=config.data_root, model=config.teacher_model,
        epochs=config.teacher_epochs, seed=config.seed, threads=config.threads, device=config.device, resume=True,
        progress=progress))
    teacher_pt = os.path.join(teacher_dir, "teacher.pt")
    seconds["teacher"] = time.perf_counter() - t0

    # 2. images: the method's, and a random real selection of the same size (the reference)
    t = time.perf_counter()
    if note:
        say(verbose, f"2/5 {note}", "demo")
    sets = {"random": os.path.join(out, f"images-random-ipc{config.ipc}")}
    if synthesised:
        sets["synth"] = os.path.join(out, f"images-{recipe}-ipc{config.ipc}")
    for kind, folder in sets.items():
        method = "random" if kind == "random" else recipe
        say(verbose, f"2/5 recover: {method}, {config.ipc} images per class ({n_images} images) -> {folder}", "demo")
        recover.run(recover.RecoverRunConfig(
            out=folder, method=method, teacher=(teacher_pt,), dataset=config.dataset, data_root=config.data_root,
            ipc=config.ipc, seed=config.seed, iterations=config.iterations if kind == "synth" else None,
            threads=config.threads, device=config.device, progress=progress))
    seconds["images"] = time.perf_counter() - t
    images = sets.get("synth", sets["random"])

    # 3. relabel, then 4. prune (one pruned store per seed: which units LPLD keeps is random)
    t = time.perf_counter()
    schedule = dict(epochs=config.epochs, batch_size=config.batch_size, min_scale=config.min_scale)
    stores = {kind: os.path.join(out, "labels.zarr" if kind != "random" or not synthesised else "labels-random.zarr")
              for kind in sets}
    rl = {}
    for kind in sets:
        say(verbose, f"3/5 relabel {kind} images: {config.epochs} epochs x {-(-n_images // config.batch_size)} batches "
                     f"of {config.batch_size}, top-{config.k}, T={config.temperature:g}", "demo")
        rl[kind] = relabel.run(relabel.RelabelConfig(
            out=stores[kind], images=sets[kind], teacher=(teacher_pt,), k=config.k,
            temperature=config.temperature, seed=config.seed + 42, loader=config.loader, workers=config.workers,
            resume=True, device=config.device, threads=config.threads, progress=progress, **schedule))
    main = "synth" if synthesised else "random"
    store = stores[main]
    units = rl[main].units
    seconds["relabel"] = time.perf_counter() - t
    pruned = {}
    for s in seeds:
        pruned[s] = os.path.join(out, f"labels-pruned-seed{s}.zarr")
        if not os.path.exists(os.path.join(pruned[s], "zarr.json")):
            prune.run(prune.PruneConfig(src=store, out=pruned[s], keep=config.keep, seed=s, progress=False))
    kept = store_info(pruned[seeds[0]])["units"]
    say(verbose, f"4/5 prune: kept {kept:,} of {units:,} units" + (f" (seed {seeds[0]})" if len(seeds) > 1 else ""), "demo")

    # 5. students: one recipe; the images and labels differ
    t = time.perf_counter()
    what = f"{recipe} images" if synthesised else "random real images"
    kinds = {
        "full": (f"{what}, full soft labels", images, lambda s: dict(labels=store)),
        "pruned": (f"{what}, {_keep_text(config.keep)} labels ({kept:,} of {units:,} units)", images,
                   lambda s: dict(labels=pruned[s])),
        "hard": (f"{what}, hard labels", images,
                 lambda s: dict(hard_labels=True, epochs=config.epochs, batch_size=config.batch_size,
                                min_scale=config.min_scale, schedule_seed=config.seed + 42)),
    }
    if synthesised:
        kinds["random-real"] = ("random real images, full soft labels", sets["random"],
                                lambda s: dict(labels=stores["random"]))
    rows = [{"run": f"teacher ({len(dataset.train):,} real images)", "kind": "teacher",
             "top1": teacher.final["top1"], "top5": teacher.final["top5"], "label_bytes": None,
             "images": len(dataset.train)}]
    jobs = [(kind, name, s, dict(out=os.path.join(out, f"student-{kind}-seed{s}"), images=imgs, dataset=config.dataset,
                                 data_root=config.data_root, model=config.student_model, seed=s, loader=config.loader,
                                 workers=config.workers, val_every=config.epochs, resume=True, device=config.device,
                                 progress=False, **labels(s)))
            for kind, (name, imgs, labels) in kinds.items() for s in seeds]
    results = _train_students(jobs, config, verbose)
    for kind, (name, _, _) in kinds.items():
        per_seed = []
        for s in seeds:
            res = results[(kind, s)]
            per_seed.append({"seed": s, "top1": res["final"]["top1"], "top5": res["final"]["top5"],
                             "label_bytes": res["label_bytes"], "wall_time_s": res["wall_time_s"]})
        rows.append({"run": f"student: {name}", "kind": kind, "images": n_images,
                     "top1": float(np.mean([p["top1"] for p in per_seed])),
                     "top5": float(np.mean([p["top5"] for p in per_seed])),
                     "label_bytes": int(round(np.mean([p["label_bytes"] for p in per_seed]))), "per_seed": per_seed})
    seconds["students"] = time.perf_counter() - t
    by = {r["kind"]: r for r in rows}
    if not synthesised:  # the random selection is the distilled set itself: the same run
        rows.append({**by["full"], "kind": "random-real", "run": "student: random real images, full soft labels *"})
        by["random-real"] = rows[-1]
    full_info, pruned_info = store_info(store), store_info(pruned[seeds[0]])
    result = DemoResult(
        demo="chain", dataset=config.dataset, ipc=config.ipc, method=config.method, recipe=recipe,
        images=f"{recipe} (synthesised)" if synthesised else "random real selection", epochs=config.epochs,
        batch_size=config.batch_size, units=units, kept_units=kept, seeds=seeds, rows=rows,
        label_bytes_note=LABEL_BYTES_NOTE, teacher_hash=teacher.teacher_hash, store=store,
        pruned_stores=[pruned[s] for s in seeds],
        store_info={k: full_info[k] for k in ("bytes_on_disk", "sre2l_equivalent_bytes", "compression_vs_sre2l")},
        pruned_store_bytes_on_disk=pruned_info["bytes_on_disk"],
        soft_minus_hard=by["full"]["top1"] - by["hard"]["top1"],
        full_minus_pruned=by["full"]["top1"] - by["pruned"]["top1"],
        synthesised_minus_random=by["full"]["top1"] - by["random-real"]["top1"] if synthesised else None,
        phase_seconds=seconds, wall_time_s=time.perf_counter() - t0, config=config_to_dict(config))
    write_json(result, os.path.join(out, RESULTS))
    return result


def _train_student(kw: dict) -> dict:
    from . import student

    return student.run(student.TrainConfig(**kw)).to_dict()


def _train_students(jobs: list, config: DemoConfig, verbose: bool) -> dict:
    """``{(kind, seed): train result}``: in this process (``jobs=1``), else ``jobs`` spawned processes at a time.

    One torch thread per process, so two cores train two small students at once instead of sharing
    intra-op threads over batches of 10 images. Every student resumes, so a killed demo loses at
    most the epoch each process was in. Each student's start and end is a line on stderr.
    """
    total = len(jobs)
    if config.jobs <= 1 or total == 1:
        results = {}
        for i, (kind, name, s, kw) in enumerate(jobs):
            say(verbose, f"5/5 train {i + 1}/{total}: {name}, seed {s}", "demo")
            results[(kind, s)] = res = _train_student({**kw, "threads": config.threads, "progress": verbose})
            say(verbose, f"5/5 trained {i + 1}/{total}: top-1 {res['final']['top1']:.2f}% ({res['wall_time_s']:.0f} s)", "demo")
        return results
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    say(verbose, f"5/5 train {total} students, {min(config.jobs, total)} at a time (one process and one thread each)", "demo")
    # spawn, not fork: this process has run torch's thread pools already (the teacher, relabel)
    with ProcessPoolExecutor(min(config.jobs, total), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_train_student, {**kw, "threads": 1}): (kind, name, s) for kind, name, s, kw in jobs}
        results = {}
        for done, fut in enumerate(as_completed(futures), 1):
            kind, name, s = futures[fut]
            results[(kind, s)] = res = fut.result()
            say(verbose, f"5/5 trained {done}/{total}: {name}, seed {s}: top-1 {res['final']['top1']:.2f}% "
                         f"({res['wall_time_s']:.0f} s)", "demo")
    return results


def summary_text(res: DemoResult) -> str:
    if isinstance(res, dict):  # a results.json read back
        res = DemoResult.from_dict(res)
    seeds = res.seeds or [None]
    many = len(seeds) > 1
    head = (f"ddpipe demo: {res.dataset}, IPC {res.ipc} ({res.images}), {res.epochs} epochs of batch "
            f"{res.batch_size}, {res.wall_time_s / 60:.1f} min this run (finished steps are reused)")
    if many:
        head += f"; students: mean over seeds {', '.join(map(str, seeds))}"
    lines = [head, f"{'run':<62} {'top-1':>7} {'top-5':>7} {'label bytes read':>17}" + ("  top-1 per seed" if many else "")]
    for r in res.rows:
        lb = "-" if r["label_bytes"] is None else f"{r['label_bytes']:,}"
        line = f"{r['run'][:62]:<62} {r['top1']:>6.2f}% {r['top5']:>6.2f}% {lb:>17}"
        if many and "per_seed" in r:
            line += "  " + " ".join(f"{p['top1']:.2f}" for p in r["per_seed"])
        lines.append(line)
    lines.append(f"soft - hard labels: {res.soft_minus_hard:+.2f} points; full - pruned labels: "
                 f"{res.full_minus_pruned:+.2f} points"
                 + (f"; {res.recipe} - random real images: {res.synthesised_minus_random:+.2f} points"
                    if res.synthesised_minus_random is not None else ""))
    if res.synthesised_minus_random is None:
        lines.append("* --method random: the distilled images are the random real selection, the same run as "
                     "full soft labels")
    lines.append(res.label_bytes_note)
    return "\n".join(lines)
