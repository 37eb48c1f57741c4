"""``ddpipe recover``: synthesise (or select) an image set from teacher(s) with a ``ddpipe.synth`` method.

Loads the teacher file(s) written by ``ddpipe squeeze`` (:func:`ddpipe.evaluate.squeeze.load_teacher`)
and the real training split (:func:`ddpipe.evaluate.datasets.load_dataset`), then calls
:func:`ddpipe.synth.recover`, which writes ``--out`` as an ImageFolder plus ``manifest.json`` and
resumes a killed run from its last finished batch. DM's random networks are DM's ConvNet from
``ddpipe.evaluate.models`` (``--dm-model``). The module imports no torch at import time.
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["add_arguments", "run", "make_args", "summary_text", "MATCH_TERMS"]

# the loss terms whose weight --r-bn sets (SRe2L's r_bn, G-VBSM's r_loss)
MATCH_TERMS = ("bn_stats", "class_bn_stats", "bn_stats_ema", "conv_stats")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The recover flags (kebab-case; None means 'the recipe's value'); returns ``parser``."""
    m = parser.add_argument_group("method")
    m.add_argument("--method", default="sre2l",
                   help="sre2l, cda, lpld, gvbsm, delt, dm, random, herding, or a recipe such as sre2l.in1k "
                        "(ddpipe.synth.list_methods()); default sre2l (= sre2l.in1k)")
    m.add_argument("--teacher", action="append", default=[], metavar="CKPT",
                   help="teacher.pt from `ddpipe squeeze`; repeat for several (G-VBSM uses them round-robin)")
    m.add_argument("--ipc", type=int, default=10, help="images per class (default 10)")
    m.add_argument("--iterations", type=int, default=None, help="optimisation steps per batch (default: recipe)")
    m.add_argument("--lr", type=float, default=None, help="learning rate on the pixels (default: recipe)")
    m.add_argument("-b", "--batch-size", type=int, default=None, help="images per batch (default: recipe)")
    m.add_argument("--r-bn", type=float, default=None,
                   help="weight of the statistic-matching terms (SRe2L r_bn, G-VBSM r_loss; default: recipe)")
    m.add_argument("--first-bn-multiplier", type=float, default=None, help="first layer's statistic weight (default: recipe)")
    m.add_argument("--init", choices=["noise", "real", "top", "min", "medium"], default=None,
                   help="initialisation: noise, random real, or DELT's ranked real images (default: recipe)")
    m.add_argument("--jitter", type=int, default=None, help="roll jitter in pixels (default: recipe)")
    m.add_argument("--min-scale", type=float, default=None, help="RandomResizedCrop minimum scale (default: recipe, 0.08)")
    m.add_argument("--flip", dest="flip", action="store_true", default=None, help="random horizontal flips")
    m.add_argument("--no-flip", dest="flip", action="store_false", help="no flips (default for datasets whose flips "
                   "change the label, e.g. digits)")
    m.add_argument("--round-iterations", type=int, default=None, help="DELT's ROUND_ITR (default: recipe)")
    m.add_argument("--dm-model", default="convnet", help="DM: the random network's registered model (default convnet)")
    m.add_argument("--stats-cache", default=None,
                   help="G-VBSM: .pt file caching the real-data conv statistics (default OUT/gvbsm_stats.pt)")
    d = parser.add_argument_group("data")
    d.add_argument("--dataset", default=None,
                   help="real data: fashion-mnist, digits, imagefolder:<path> (default: the teacher's dataset)")
    d.add_argument("--data-root", default=None, help="directory holding the dataset's files")
    o = parser.add_argument_group("output")
    o.add_argument("--out", required=True, help="output folder (ImageFolder new000/... plus manifest.json)")
    o.add_argument("--format", dest="image_format", choices=["png", "jpeg"], default="png",
                   help="image files: png (lossless, default) or jpeg (SRe2L wrote PIL's default quality 75)")
    o.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality (default 95)")
    o.add_argument("--overwrite", action="store_true", help="replace a different earlier run in --out")
    r = parser.add_argument_group("run")
    r.add_argument("--seed", type=int, default=None, help="seed of initialisation and augmentation (default: recipe, 0)")
    r.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda (default auto)")
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    r.add_argument("--stop-after-batches", type=int, default=None, metavar="N",
                   help="stop after N batches as if killed; for testing resume")
    r.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars on stderr")
    r.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return parser


def make_args(out: str, **overrides) -> argparse.Namespace:
    """The parsed defaults with ``overrides`` applied: the library entry point (``run(make_args(...))``)."""
    from ddpipe.evaluate._phase import parse_with_overrides

    return parse_with_overrides(add_arguments, ["--out", os.fspath(out)], overrides, "recover")


def _real_data(split, input_size: int, in_chans: int):
    """``synth.RealData`` over a split: the array itself, or lazily decoded files resized and centre-cropped."""
    import numpy as np

    from ddpipe.synth import RealData

    if split.in_memory:
        return RealData(split.labels, images=split.images)

    def fetch(indices):
        from PIL import Image

        out = []
        for i in indices:
            with Image.open(split.paths[int(i)]) as img:
                img = img.convert("L" if in_chans == 1 else "RGB")
                w, h = img.size
                s = input_size / min(w, h)
                img = img.resize((max(input_size, round(w * s)), max(input_size, round(h * s))), Image.BILINEAR)
                w, h = img.size
                left, top = (w - input_size) // 2, (h - input_size) // 2
                arr = np.asarray(img.crop((left, top, left + input_size, top + input_size)), dtype=np.uint8)
            out.append(arr[..., None] if arr.ndim == 2 else arr)
        return np.stack(out)

    return RealData(split.labels, fetch=fetch)


def run(args: argparse.Namespace) -> dict:
    """Run recover as the flags say; returns the manifest (also in ``OUT/manifest.json``)."""
    import torch

    from ddpipe.evaluate.datasets import load_dataset
    from ddpipe.evaluate.errors import EvaluateError
    from ddpipe.evaluate.models import create_model
    from ddpipe.evaluate.squeeze import load_teacher
    from ddpipe.synth import create_method, recover

    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = "cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device)
        teachers, metas = [], []
        for path in args.teacher:
            model, meta = load_teacher(path, device=device)
            teachers.append(model)
            metas.append(meta)
        dataset_name = args.dataset or (metas[0]["dataset"]["name"] if metas else None)
        if dataset_name is None:
            raise EvaluateError("recover needs --dataset (or a --teacher whose dataset it can read)")
        dataset = load_dataset(dataset_name, data_root=args.data_root)
        for meta in metas:
            if meta["num_classes"] != dataset.num_classes:
                raise EvaluateError(f"teacher {meta['path']} predicts {meta['num_classes']} classes but {dataset.name} "
                                    f"has {dataset.num_classes}; use teachers squeezed on {dataset.name}")
        if len({(m["input_size"], m["in_chans"]) for m in metas}) > 1:
            raise EvaluateError("the teachers disagree on input size or channels; use teachers squeezed on one dataset")
        input_size = metas[0]["input_size"] if metas else dataset.input_size
        in_chans = metas[0]["in_chans"] if metas else dataset.in_chans
        mean = metas[0]["mean"] if metas else list(dataset.mean)
        std = metas[0]["std"] if metas else list(dataset.std)

        cfg = create_method(args.method)
        overrides = dict(iterations=args.iterations, lr=args.lr, batch_size=args.batch_size, init=args.init,
                         jitter=args.jitter, min_scale=args.min_scale, round_iterations=args.round_iterations,
                         first_bn_multiplier=args.first_bn_multiplier, seed=args.seed,
                         flip=dataset.hflip and cfg.flip if args.flip is None else args.flip)
        if args.r_bn is not None:
            overrides["loss"] = {k: (args.r_bn if k in MATCH_TERMS else w) for k, w in cfg.loss.items()}
        cfg = create_method(args.method, **overrides)

        def model_fn():
            return create_model(args.dm_model, dataset.num_classes, in_chans, input_size)

        res = recover(
            cfg, teachers=teachers, real=_real_data(dataset.train, input_size, in_chans),
            num_classes=dataset.num_classes, ipc=args.ipc, mean=mean, std=std, out=args.out, input_size=input_size,
            in_chans=in_chans, model_fn=model_fn if cfg.method == "dm" else None,
            teacher_ids=[m["teacher_hash"] for m in metas] or None, device=device, image_format=args.image_format,
            jpeg_quality=args.jpeg_quality, overwrite=args.overwrite, progress=args.progress,
            stop_after_batches=args.stop_after_batches, stats_cache=args.stats_cache,
            extra={"dataset": dataset.name, "classes": list(dataset.classes),
                   "teachers": [m["path"] for m in metas], "dm_model": args.dm_model if cfg.method == "dm" else None},
        )
        return res
    finally:
        torch.set_num_threads(threads)


def summary_text(res: dict) -> str:
    """The human-readable result lines of a run."""
    n = sum(res["counts"])
    lines = [f"recover {res['status']}: {res['recipe']} wrote {n} images ({res['num_classes']} classes x ipc "
             f"{res['ipc']}) in {res['wall_time_s']:.1f} s -> {res['out']}"]
    if res.get("resumed_batches"):
        lines.append(f"  resumed: {res['resumed_batches']} of {res['batches_total']} batches were already done")
    ends = [v for v in res.get("losses", {}).values() if v]
    if ends:
        last = ends[-1]
        lines.append("  last batch loss: " + ", ".join(f"{k} {v['start']:.4g} -> {v['end']:.4g}" for k, v in last.items()))
    lines.append(f"  manifest {os.path.join(res['out'], 'manifest.json')}")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    _args = add_arguments(argparse.ArgumentParser(prog="ddpipe recover")).parse_args()
    print(summary_text(run(_args)), file=sys.stderr)
