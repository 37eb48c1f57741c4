"""``ddpipe demo``: the whole chain on Fashion-MNIST, small enough for 2 CPU cores.

teacher (squeeze) -> distilled images -> relabel into a store -> prune 40x -> train students ->
validate on the real test set, then one table: the teacher's accuracy, and the student's with the
full soft labels, the 40x-pruned labels, hard labels, and (as the reference for synthesis methods)
random real images with full soft labels; with the label bytes of each. Until a synthesis method is
chosen (``--method``, once ``ddpipe.synth`` provides them) the distilled images *are* a random real
selection, and the table says so. Every step resumes: rerunning continues where it stopped.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

__all__ = ["add_arguments", "run", "summary_text"]


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--out", default="demo_out", help="working directory (default ./demo_out)")
    parser.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist or digits (default fashion-mnist)")
    parser.add_argument("--data-root", default=None, help="where the dataset's files are (default: Debian's location)")
    parser.add_argument("--ipc", type=int, default=10, help="images per class (default 10)")
    parser.add_argument("--teacher-model", default="convnet_d3_w32_bn", help="teacher (default convnet_d3_w32_bn)")
    parser.add_argument("--teacher-epochs", type=int, default=4, help="teacher training epochs (default 4)")
    parser.add_argument("--student-model", default="convnet_d3_w32_bn", help="student (default convnet_d3_w32_bn)")
    parser.add_argument("--epochs", type=int, default=300, help="student epochs = relabel epochs (default 300)")
    parser.add_argument("-b", "--batch-size", type=int, default=50, help="relabel = replay batch (default 50)")
    parser.add_argument("--topk", type=int, default=5, help="soft-label entries per sample (default 5)")
    parser.add_argument("-T", "--temperature", type=float, default=4.0, help="distillation temperature (default 4)")
    parser.add_argument("--keep", type=float, default=1 / 40, help="fraction of units the pruned store keeps (default 1/40)")
    parser.add_argument("--min-scale", type=float, default=0.25,
                        help="smallest RandomResizedCrop area for 28 px images (default 0.25; ImageNet uses 0.08)")
    parser.add_argument("--loader", choices=["torch", "dali"], default="torch", help="image backend (default torch)")
    parser.add_argument("-j", "--workers", type=int, default=2, help="loader workers (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of teacher, selection and students (default 0)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars on stderr")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return parser


def _say(enabled: bool, text: str) -> None:
    if enabled:
        print(f"[demo] {text}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> dict:
    import numpy as np

    from ddpipe.evaluate import relabel, squeeze, student
    from ddpipe.evaluate.datasets import load_dataset, real_subset
    from ddpipe.labelstore import prune_store, store_info

    t0 = time.perf_counter()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    say = args.progress
    quiet = dict(progress=False)

    # 1. teacher
    _say(say, f"1/5 squeeze: {args.teacher_model} on {args.dataset}, {args.teacher_epochs} epochs")
    teacher_dir = os.path.join(out, "teacher")
    teacher = squeeze.run(squeeze.make_args(
        teacher_dir, dataset=args.dataset, data_root=args.data_root, model=args.teacher_model,
        epochs=args.teacher_epochs, seed=args.seed, resume=True, **quiet))
    teacher_pt = os.path.join(teacher_dir, "teacher.pt")

    # 2. the distilled images: a random real selection (no synthesis method chosen)
    dataset = load_dataset(args.dataset, data_root=args.data_root)
    images = os.path.join(out, f"images-random-ipc{args.ipc}.npz")
    if not os.path.exists(images):
        sub = real_subset(dataset, args.ipc, seed=args.seed)
        np.savez(images, images=sub.images, labels=sub.labels)
    _say(say, f"2/5 images: random real selection, {args.ipc} per class ({args.ipc * dataset.num_classes} images)")

    # 3. relabel, then 4. prune
    store = os.path.join(out, "labels.zarr")
    schedule = dict(epochs=args.epochs, batch_size=args.batch_size, min_scale=args.min_scale)
    _say(say, f"3/5 relabel: {args.epochs} epochs x {args.ipc * dataset.num_classes // args.batch_size} batches, "
              f"top-{args.topk}, T={args.temperature}")
    rl = relabel.run(relabel.make_args(
        store, images, [teacher_pt], topk=args.topk, temperature=args.temperature, seed=args.seed + 42,
        loader=args.loader, workers=args.workers, resume=True, **schedule, **quiet))
    pruned = os.path.join(out, "labels-pruned.zarr")
    if not os.path.exists(os.path.join(pruned, "zarr.json")):
        prune_store(store, pruned, args.keep, seed=args.seed)
    _say(say, f"4/5 prune: kept {store_info(pruned)['units']} of {rl['units']} units")

    # 5. students
    runs = {
        "full soft labels": dict(labels=store),
        f"pruned labels (keep {args.keep:.3g})": dict(labels=pruned),
        "hard labels": dict(hard_labels=True, epochs=args.epochs, batch_size=args.batch_size,
                            min_scale=args.min_scale, schedule_seed=args.seed + 42),
    }
    rows = [{"run": "teacher (real data)", "top1": teacher["final"]["top1"], "top5": teacher["final"]["top5"],
             "label_bytes": None, "images": len(dataset.train)}]
    for i, (name, kw) in enumerate(runs.items()):
        _say(say, f"5/5 train {i + 1}/{len(runs)}: {name}")
        res = student.run(student.make_args(
            os.path.join(out, "student-" + name.split()[0]), images, dataset=args.dataset, data_root=args.data_root,
            model=args.student_model, seed=args.seed, loader=args.loader, workers=args.workers,
            val_every=max(1, args.epochs // 5), resume=True, **kw, **quiet))
        rows.append({"run": f"student: {name}", "top1": res["final"]["top1"], "top5": res["final"]["top5"],
                     "label_bytes": res["label_bytes"], "images": args.ipc * dataset.num_classes})
    rows.append({**rows[1], "run": "student: random real images, full soft labels (= the row above until a "
                                   "synthesis method is chosen)"})
    result = {
        "demo": "chain", "dataset": args.dataset, "ipc": args.ipc, "images": "random real selection",
        "rows": rows, "teacher_hash": teacher.get("teacher_hash"), "store": store, "pruned_store": pruned,
        "store_info": {k: store_info(store)[k] for k in ("bytes_on_disk", "sre2l_equivalent_bytes", "compression_vs_sre2l")},
        "soft_minus_hard": rows[1]["top1"] - rows[3]["top1"], "full_minus_pruned": rows[1]["top1"] - rows[2]["top1"],
        "wall_time_s": time.perf_counter() - t0, "config": {k: v for k, v in vars(args).items() if not callable(v)},
    }
    from ddpipe.evaluate.checkpoint import write_json_atomic

    write_json_atomic(result, os.path.join(out, "results.json"))
    return result


def summary_text(res: dict) -> str:
    lines = [f"ddpipe demo: {res['dataset']}, IPC {res['ipc']} ({res['images']}), {res['wall_time_s'] / 60:.1f} min",
             f"{'run':<58} {'top-1':>7} {'top-5':>7} {'label bytes':>12}"]
    for r in res["rows"]:
        lb = "-" if r["label_bytes"] is None else f"{r['label_bytes']:,}"
        lines.append(f"{r['run'][:58]:<58} {r['top1']:>6.2f}% {r['top5']:>6.2f}% {lb:>12}")
    lines.append(f"soft - hard labels: {res['soft_minus_hard']:+.2f} points; full - pruned labels: "
                 f"{res['full_minus_pruned']:+.2f} points")
    return "\n".join(lines)
