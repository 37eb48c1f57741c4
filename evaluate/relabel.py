"""``ddpipe relabel``: run the teacher(s) over the replay schedule and write the label store.

The schedule (order, crops, flips, mixes) is generated from ``--seed`` by ``ddpipe.pipeline``;
the relabel loader shows the teacher exactly the images the student will see, and
:func:`ddpipe.pipeline.relabel` writes the top-k soft labels. Several ``--teacher`` flags form
G-VBSM's ensemble: each teacher's logits are scaled to the mean Frobenius norm of all of them,
then averaged. ``--keep F`` plans the kept units first, so the teacher only computes those.
Resuming is running the same command again with ``--resume``: committed shards are skipped.
Under ``torchrun`` rank 0 creates the store and every rank writes its own shards.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

__all__ = ["add_arguments", "run", "make_args", "Ensemble", "summary_text"]


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from ddpipe.labelstore import list_codecs

    d = parser.add_argument_group("inputs")
    d.add_argument("--images", required=True, help="the image set: an ImageFolder, a .npz of uint8 images, or .tar shards")
    d.add_argument("--teacher", action="append", required=True, metavar="CKPT",
                   help="a teacher written by `ddpipe squeeze`; repeat for a G-VBSM ensemble")
    s = parser.add_argument_group("schedule and labels")
    s.add_argument("--out", required=True, help="path of the label store to write")
    s.add_argument("--epochs", type=int, default=300, help="student epochs the labels cover (default 300, SRe2L)")
    s.add_argument("-b", "--batch-size", type=int, default=1024, help="relabel = replay batch size (default 1024, SRe2L)")
    s.add_argument("--schedule", default="sre2l", help="schedule recipe: sre2l, sre2l-mixup, lpld-in21k, ... (default sre2l)")
    s.add_argument("--mix", choices=["none", "cutmix", "mixup"], default=None, help="override the recipe's mix")
    s.add_argument("--min-scale", type=float, default=None, help="override the recipe's smallest crop area (e.g. 0.08)")
    s.add_argument("--topk", type=int, default=10, help="soft-label entries kept per sample (default 10)")
    s.add_argument("--codec", choices=list_codecs(), default="fp16", help="value codec (default fp16)")
    s.add_argument("-T", "--temperature", type=float, default=20.0,
                   help="stored values are softmax(logits / T); train with the same T (default 20, SRe2L)")
    s.add_argument("--seed", type=int, default=42, help="schedule seed (default 42, SRe2L's --fkd-seed)")
    p = parser.add_argument_group("pruning (LPLD)")
    p.add_argument("--keep", type=float, default=None, help="keep this fraction of units; the teacher computes only those")
    p.add_argument("--granularity", choices=["batch", "epoch"], default="batch", help="prune batches or whole epochs")
    p.add_argument("--prune-seed", type=int, default=0, help="seed of the random choice of kept units (default 0)")
    r = parser.add_argument_group("run")
    r.add_argument("--loader", choices=["torch", "dali"], default="torch", help="image backend (default torch)")
    r.add_argument("-j", "--workers", type=int, default=2, help="loader workers (default 2)")
    r.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    r.add_argument("--resume", action="store_true", help="continue a store that already exists at --out")
    r.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars on stderr")
    r.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return parser


def make_args(out: str, images: str, teachers: list[str], **overrides) -> argparse.Namespace:
    """Parsed defaults plus ``overrides``: the library entry point (``run(make_args(...))``)."""
    from ddpipe.evaluate._phase import parse_with_overrides

    argv = ["--out", os.fspath(out), "--images", os.fspath(images), *sum((["--teacher", t] for t in teachers), [])]
    return parse_with_overrides(add_arguments, argv, overrides, "relabel")


class Ensemble:
    """Teachers as one callable: G-VBSM's norm-equalised logit average (one teacher: its logits).

    Counts forward passes (``calls``) and images (``images``) so callers can show what was computed.
    """

    def __init__(self, models, device):
        self.models = list(models)
        self.device = device
        self.calls = 0
        self.images = 0

    def __call__(self, images):
        import torch

        with torch.no_grad():
            x = images.to(self.device)
            outs = torch.stack([m(x).float() for m in self.models])  # [T, b, C]
            if len(self.models) > 1:
                norms = outs.flatten(1).norm(dim=1)  # Frobenius norm per teacher
                outs = outs / norms[:, None, None] * norms.mean()
        self.calls += 1
        self.images += int(images.shape[0])
        return outs.mean(0).cpu()


def load_teachers(paths: list[str], device: str):
    """Teachers plus their shared facts (classes, channels, input size, mean/std); one error on a mismatch."""
    from ddpipe.evaluate.errors import ClassCountMismatchError
    from ddpipe.evaluate.squeeze import load_teacher

    models, metas = [], []
    for path in paths:
        model, meta = load_teacher(path, device)
        models.append(model)
        metas.append(meta)
    first = metas[0]
    for m in metas[1:]:
        for key in ("num_classes", "in_chans", "input_size"):
            if m[key] != first[key]:
                raise ClassCountMismatchError(
                    f"teachers disagree on {key}: {first['path']} has {first[key]}, {m['path']} has {m[key]}"
                )
    return models, metas


def teacher_hash(metas: list[dict]) -> str:
    import hashlib

    if len(metas) == 1:
        return metas[0]["teacher_hash"]
    return hashlib.sha256("+".join(m["teacher_hash"] for m in metas).encode()).hexdigest()


def run(args: argparse.Namespace) -> dict:
    import torch

    from ddpipe import __version__
    from ddpipe.evaluate.checkpoint import write_json_atomic
    from ddpipe.evaluate.distributed import barrier, init_distributed, is_main_process
    from ddpipe.evaluate.errors import ClassCountMismatchError, EvaluateError, RunStateError
    from ddpipe.labelstore import create_store, plan_units
    from ddpipe.labelstore.prune import pruned_spec
    from ddpipe.pipeline import LoaderConfig, open_source, recipe
    from ddpipe.pipeline.relabel import relabel, relabel_spec

    t0 = time.perf_counter()
    out = os.path.abspath(os.fspath(args.out))
    dist = init_distributed(args.device, announce=args.progress)
    exists = os.path.exists(os.path.join(out, "zarr.json"))
    if exists and not args.resume:
        raise RunStateError(f"{out} already holds a store; pass --resume to continue it (or choose another --out)")
    if args.epochs < 1 or args.batch_size < 1:
        raise EvaluateError("--epochs and --batch-size must be at least 1")

    # 1. teachers and images
    device = torch.device(dist.device)
    models, metas = load_teachers(args.teacher, device)
    t = metas[0]
    source = open_source(args.images)
    n_classes_seen = int(source.labels.max()) + 1 if len(source.labels) else 0
    if n_classes_seen > t["num_classes"]:
        raise ClassCountMismatchError(
            f"the images at {args.images} have labels up to class {n_classes_seen - 1} but the teacher predicts "
            f"{t['num_classes']} classes; relabel with a teacher of the same dataset"
        )

    # 2. schedule and store spec (the teacher's input size and normalisation)
    overrides = {"output_size": (t["input_size"], t["input_size"])}
    if args.mix:
        overrides["mix"] = args.mix
    if args.min_scale is not None:
        overrides["scale"] = (args.min_scale, 1.0)
    schedule = recipe(args.schedule, **overrides)
    thash = teacher_hash(metas)
    _sched, spec = relabel_spec(source, schedule, epochs=args.epochs, batch_size=args.batch_size,
                                num_classes=t["num_classes"], k=args.topk, seed=args.seed, value_codec=args.codec,
                                temperature=args.temperature, teacher_hash=thash)
    plan = None
    if args.keep is not None:
        plan = plan_units(spec, args.keep, args.granularity, args.prune_seed)
        spec = pruned_spec(spec, args.keep, args.granularity, args.prune_seed)
    if dist.rank == 0 and not exists:  # one process creates; the others open it after the barrier
        create_store(out, spec, plan, provenance={"teachers": [m["path"] for m in metas]})
    barrier()

    # 3. relabel this rank's shards
    teacher = Ensemble(models, device)
    loader = LoaderConfig(backend=args.loader, channels=t["in_chans"], mean=tuple(t["mean"]), std=tuple(t["std"]),
                          num_workers=args.workers, mix=True)
    summary = relabel(out, source, teacher, schedule=schedule, epochs=args.epochs, batch_size=args.batch_size,
                      num_classes=t["num_classes"], k=args.topk, seed=args.seed, value_codec=args.codec,
                      temperature=args.temperature, teacher_hash=thash, plan=plan,
                      granularity=args.granularity, prune_seed=args.prune_seed, loader=loader,
                      rank=dist.rank, world_size=dist.world_size, progress=args.progress and is_main_process())
    barrier()
    seconds = time.perf_counter() - t0
    result = {
        "phase": "relabel", "store": out, "units": summary["units"], "units_written": summary["units_written"],
        "teacher_forward_calls": teacher.calls, "images_labelled": teacher.images,
        "samples_per_s": teacher.images / summary["seconds"] if summary["seconds"] > 0 else None,
        "wall_time_s": seconds, "teachers": [m["path"] for m in metas], "teacher_hash": thash,
        "image_set_hash": summary["image_set_hash"], "spec": spec.to_dict(), "world_size": dist.world_size,
        "config": {k: v for k, v in vars(args).items() if not callable(v)},
        "versions": {"ddpipe": __version__, "torch": str(torch.__version__), "python": sys.version.split()[0]},
    }
    if is_main_process():
        write_json_atomic(result, out.rstrip("/") + ".results.json")
    return result


def summary_text(res: dict) -> str:
    rate = f"{res['samples_per_s']:.0f} samples/s" if res["samples_per_s"] else "-"
    return (f"relabel: {res['units_written']} of {res['units']} units computed by the teacher "
            f"({res['teacher_forward_calls']} forward passes, {res['images_labelled']} images, {rate}) "
            f"in {res['wall_time_s']:.1f} s\n  store {res['store']}\n  results {res['store'].rstrip('/')}.results.json")
