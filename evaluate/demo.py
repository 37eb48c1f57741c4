"""``ddpipe demo``: the whole chain on Fashion-MNIST, small enough for 2 CPU cores.

teacher (squeeze) -> distilled images -> relabel into a store -> prune 40x -> train students ->
validate on the real test set, then one table: the teacher's accuracy, and the student's with the
full soft labels, the 40x-pruned labels, hard labels, and (as the reference for synthesis methods)
random real images with full soft labels; with the label bytes each student read. Until a synthesis
method is chosen (``--method``, once ``ddpipe.synth`` provides them) the distilled images *are* a
random real selection, and the table says so. Every step resumes: rerunning continues where it stopped.

The three students share one recipe (model, optimiser, epochs, the schedule of crops, flips and
CutMix); only the labels differ. With ``--seeds N`` each student is trained N times (student seeds
``seed .. seed + N - 1``; the pruned store is drawn anew with the same seed, so the mean also covers
which units LPLD's random pruning keeps) and the table reports the mean.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

__all__ = ["add_arguments", "run", "summary_text", "LABEL_BYTES_NOTE"]

LABEL_BYTES_NOTE = ("label bytes read: compressed bytes of the label-store objects holding the units the student "
                    "replayed, each counted once (metadata not counted)")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--out", default="demo_out", help="working directory (default ./demo_out)")
    parser.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist or digits (default fashion-mnist)")
    parser.add_argument("--data-root", default=None, help="where the dataset's files are (default: Debian's location)")
    parser.add_argument("--ipc", type=int, default=10, help="images per class (default 10)")
    parser.add_argument("--teacher-model", default="convnet_d3_w32_bn", help="teacher (default convnet_d3_w32_bn)")
    parser.add_argument("--teacher-epochs", type=int, default=4, help="teacher training epochs (default 4)")
    parser.add_argument("--student-model", default="convnet_d3_w32_bn", help="student (default convnet_d3_w32_bn)")
    parser.add_argument("--epochs", type=int, default=300, help="student epochs = relabel epochs (default 300)")
    parser.add_argument("-b", "--batch-size", type=int, default=10,
                        help="relabel = replay batch = the unit LPLD prunes (default 10: 10 units per epoch at IPC 10)")
    parser.add_argument("--topk", type=int, default=5, help="soft-label entries per sample (default 5)")
    parser.add_argument("-T", "--temperature", type=float, default=4.0, help="distillation temperature (default 4)")
    parser.add_argument("--keep", type=float, default=1 / 40, help="fraction of units the pruned store keeps (default 1/40)")
    parser.add_argument("--min-scale", type=float, default=0.25,
                        help="smallest RandomResizedCrop area for 28 px images (default 0.25; ImageNet uses 0.08)")
    parser.add_argument("--seeds", type=int, default=2,
                        help="train each student with this many seeds and report the mean (default 2)")
    parser.add_argument("--loader", choices=["torch", "dali"], default="torch", help="image backend (default torch)")
    parser.add_argument("-j", "--workers", type=int, default=0,
                        help="loader worker processes (default 0: an epoch of 100 images costs less than starting workers)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="students trained at once, each in its own process with one torch thread (default 2; "
                             "1: one at a time in this process)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads of the teacher (and of the students with --jobs 1; default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0, help="seed of teacher, selection and students (default 0)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars on stderr")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return parser


def _say(enabled: bool, text: str) -> None:
    if enabled:
        print(f"[demo] {text}", file=sys.stderr, flush=True)


def _keep_text(keep: float) -> str:
    n = 1 / keep
    return f"{n:.0f}x-pruned" if abs(n - round(n)) < 1e-9 else f"pruned (keep {keep:.3g})"


def run(args: argparse.Namespace) -> dict:
    import numpy as np

    from ddpipe.evaluate import relabel, squeeze
    from ddpipe.evaluate.datasets import load_dataset, real_subset
    from ddpipe.labelstore import prune_store, store_info

    if args.seeds < 1:
        from ddpipe.evaluate.errors import EvaluateError

        raise EvaluateError(f"--seeds must be at least 1, got {args.seeds}")
    t0 = time.perf_counter()
    seconds = {}
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    say = args.progress
    quiet = dict(progress=False)
    seeds = [args.seed + i for i in range(args.seeds)]

    # 1. teacher
    _say(say, f"1/5 squeeze: {args.teacher_model} on {args.dataset}, {args.teacher_epochs} epochs")
    teacher_dir = os.path.join(out, "teacher")
    teacher = squeeze.run(squeeze.make_args(
        teacher_dir, dataset=args.dataset, data_root=args.data_root, model=args.teacher_model,
        epochs=args.teacher_epochs, seed=args.seed, threads=args.threads, resume=True, **quiet))
    teacher_pt = os.path.join(teacher_dir, "teacher.pt")
    seconds["teacher"] = time.perf_counter() - t0

    # 2. the distilled images: a random real selection (no synthesis method chosen)
    dataset = load_dataset(args.dataset, data_root=args.data_root)
    n_images = args.ipc * dataset.num_classes
    images = os.path.join(out, f"images-random-ipc{args.ipc}.npz")
    if not os.path.exists(images):
        sub = real_subset(dataset, args.ipc, seed=args.seed)
        np.savez(images, images=sub.images, labels=sub.labels)
    _say(say, f"2/5 images: random real selection, {args.ipc} per class ({n_images} images)")

    # 3. relabel, then 4. prune (one pruned store per seed: which units LPLD keeps is random)
    t = time.perf_counter()
    store = os.path.join(out, "labels.zarr")
    schedule = dict(epochs=args.epochs, batch_size=args.batch_size, min_scale=args.min_scale)
    _say(say, f"3/5 relabel: {args.epochs} epochs x {-(-n_images // args.batch_size)} batches of {args.batch_size}, "
              f"top-{args.topk}, T={args.temperature}")
    rl = relabel.run(relabel.make_args(
        store, images, [teacher_pt], topk=args.topk, temperature=args.temperature, seed=args.seed + 42,
        loader=args.loader, workers=args.workers, resume=True, **schedule, **quiet))
    seconds["relabel"] = time.perf_counter() - t
    pruned = {}
    for s in seeds:
        pruned[s] = os.path.join(out, f"labels-pruned-seed{s}.zarr")
        if not os.path.exists(os.path.join(pruned[s], "zarr.json")):
            prune_store(store, pruned[s], args.keep, seed=s)
    kept = store_info(pruned[seeds[0]])["units"]
    _say(say, f"4/5 prune: kept {kept:,} of {rl['units']:,} units" + (f" (seed {seeds[0]})" if len(seeds) > 1 else ""))

    # 5. students: one recipe, three kinds of labels
    t = time.perf_counter()
    kinds = {
        "full": ("full soft labels", lambda s: dict(labels=store)),
        "pruned": (f"{_keep_text(args.keep)} labels ({kept:,} of {rl['units']:,} units)", lambda s: dict(labels=pruned[s])),
        "hard": ("hard labels", lambda s: dict(hard_labels=True, epochs=args.epochs, batch_size=args.batch_size,
                                               min_scale=args.min_scale, schedule_seed=args.seed + 42)),
    }
    rows = [{"run": f"teacher ({len(dataset.train):,} real images)", "kind": "teacher", "top1": teacher["final"]["top1"],
             "top5": teacher["final"]["top5"], "label_bytes": None, "images": len(dataset.train)}]
    jobs = [(kind, name, s, dict(out=os.path.join(out, f"student-{kind}-seed{s}"), images=images, dataset=args.dataset,
                                 data_root=args.data_root, model=args.student_model, seed=s, loader=args.loader,
                                 workers=args.workers, val_every=args.epochs, resume=True, **labels(s), **quiet))
            for kind, (name, labels) in kinds.items() for s in seeds]
    results = _train_students(jobs, args, say)
    for kind, (name, _) in kinds.items():
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
    rows.append({**by["full"], "kind": "random-real", "run": "student: random real images, full soft labels *"})
    full_info, pruned_info = store_info(store), store_info(pruned[seeds[0]])
    result = {
        "demo": "chain", "dataset": args.dataset, "ipc": args.ipc, "images": "random real selection",
        "epochs": args.epochs, "batch_size": args.batch_size, "units": rl["units"], "kept_units": kept,
        "seeds": seeds, "rows": rows, "label_bytes_note": LABEL_BYTES_NOTE,
        "teacher_hash": teacher.get("teacher_hash"), "store": store, "pruned_stores": [pruned[s] for s in seeds],
        "store_info": {k: full_info[k] for k in ("bytes_on_disk", "sre2l_equivalent_bytes", "compression_vs_sre2l")},
        "pruned_store_bytes_on_disk": pruned_info["bytes_on_disk"],
        "soft_minus_hard": by["full"]["top1"] - by["hard"]["top1"],
        "full_minus_pruned": by["full"]["top1"] - by["pruned"]["top1"],
        "phase_seconds": seconds, "wall_time_s": time.perf_counter() - t0,
        "config": {k: v for k, v in vars(args).items() if not callable(v)},
    }
    from ddpipe.evaluate.checkpoint import write_json_atomic

    write_json_atomic(result, os.path.join(out, "results.json"))
    return result


def _train_student(kw: dict) -> dict:
    from ddpipe.evaluate import student

    kw = dict(kw)
    return student.run(student.make_args(kw.pop("out"), kw.pop("images"), **kw))


def _train_students(jobs: list, args: argparse.Namespace, say: bool) -> dict:
    """``{(kind, seed): train result}``: in this process (``--jobs 1``), else ``--jobs`` spawned processes at a time.

    One torch thread per process, so two cores train two small students at once instead of sharing
    intra-op threads over batches of 10 images. Every student resumes, so a killed demo loses at
    most the epoch each process was in.
    """
    total = len(jobs)
    if args.jobs <= 1 or total == 1:
        results = {}
        for i, (kind, name, s, kw) in enumerate(jobs):
            _say(say, f"5/5 train {i + 1}/{total}: {name}, seed {s}")
            results[(kind, s)] = _train_student({**kw, "threads": args.threads})
        return results
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    _say(say, f"5/5 train {total} students, {min(args.jobs, total)} at a time (one process and one thread each)")
    # spawn, not fork: this process has run torch's thread pools already (the teacher, relabel)
    with ProcessPoolExecutor(min(args.jobs, total), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_train_student, {**kw, "threads": 1}): (kind, name, s) for kind, name, s, kw in jobs}
        results = {}
        for done, fut in enumerate(as_completed(futures), 1):
            kind, name, s = futures[fut]
            results[(kind, s)] = res = fut.result()
            _say(say, f"5/5 trained {done}/{total}: {name}, seed {s}: top-1 {res['final']['top1']:.2f}% "
                      f"({res['wall_time_s']:.0f} s)")
    return results


def summary_text(res: dict) -> str:
    seeds = res.get("seeds") or [None]
    many = len(seeds) > 1
    head = (f"ddpipe demo: {res['dataset']}, IPC {res['ipc']} ({res['images']}), {res.get('epochs')} epochs of batch "
            f"{res.get('batch_size')}, {res['wall_time_s'] / 60:.1f} min this run (finished steps are reused)")
    if many:
        head += f"; students: mean over seeds {', '.join(map(str, seeds))}"
    lines = [head, f"{'run':<62} {'top-1':>7} {'top-5':>7} {'label bytes read':>17}" + ("  top-1 per seed" if many else "")]
    for r in res["rows"]:
        lb = "-" if r["label_bytes"] is None else f"{r['label_bytes']:,}"
        line = f"{r['run'][:62]:<62} {r['top1']:>6.2f}% {r['top5']:>6.2f}% {lb:>17}"
        if many and "per_seed" in r:
            line += "  " + " ".join(f"{p['top1']:.2f}" for p in r["per_seed"])
        lines.append(line)
    lines.append(f"soft - hard labels: {res['soft_minus_hard']:+.2f} points; full - pruned labels: "
                 f"{res['full_minus_pruned']:+.2f} points")
    lines.append("* the distilled images are a random real selection until a synthesis method is chosen: "
                 "the same run as full soft labels")
    lines.append(res.get("label_bytes_note", ""))
    return "\n".join(lines)
