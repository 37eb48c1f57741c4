"""``ddpipe squeeze``: train a teacher on real data, or wrap local weights as a teacher.

A run writes into ``--out``: ``checkpoint.pth`` (one dict, replaced atomically after every epoch),
``results.json`` (full config, per-epoch metrics, wall time; rewritten every epoch) and, at the end,
``teacher.pt`` (state dict, model config, dataset facts and a sha256 ``teacher_hash``), which
:func:`load_teacher` reads back for recover and relabel. ``--resume`` continues a killed run at the
epoch after its last checkpoint and reaches bit-identical weights (every epoch's randomness is a
pure function of ``--seed`` and the epoch). ``--init FILE`` starts from a torchvision, timm or
ddpipe state dict; with ``--epochs 0`` it only validates and writes ``teacher.pt``.

The module imports no torch at import time, so ``ddpipe --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

__all__ = ["add_arguments", "run", "make_args", "load_teacher", "load_init_weights", "summary_text",
           "TEACHER_FORMAT", "DEFAULT_MODEL"]

TEACHER_FORMAT = "ddpipe-teacher-v1"
DEFAULT_MODEL = "convnet_d3_w32_bn"
# flags that change the weights: a resumed run must use the same values
_RESUME_KEYS = ("dataset", "data_root", "model", "model_args", "epochs", "batch_size", "opt", "lr", "momentum",
                "weight_decay", "warmup_epochs", "label_smoothing", "aug", "crop_padding", "seed", "max_train_samples",
                "init", "reset_head", "classwise_bn")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The squeeze flags (kebab-case, every default stated); returns ``parser`` for chaining."""
    d = parser.add_argument_group("data")
    d.add_argument("--dataset", default="fashion-mnist",
                   help="fashion-mnist, digits, imagefolder:<path> or an ImageFolder path (default fashion-mnist)")
    d.add_argument("--data-root", default=None,
                   help="directory holding the dataset's files (default: the Debian package's location)")
    d.add_argument("--download", action="store_true", help="fetch a missing dataset with torchvision (needs network)")
    d.add_argument("--max-train-samples", type=int, default=None,
                   help="train on a seeded random subset of this many images (default: all)")
    d.add_argument("--aug", choices=["standard", "none"], default="standard",
                   help="standard: random crop with padding (<=32 px) or RandomResizedCrop, plus flip (default)")
    d.add_argument("--crop-padding", type=int, default=None,
                   help="zero padding of the standard random crop (default: 4 at 32 px, 2 at 28 px, 1 at 8 px)")
    d.add_argument("-j", "--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    m = parser.add_argument_group("model")
    m.add_argument("--model", default=DEFAULT_MODEL,
                   help="a registered model (ddpipe.evaluate.models.list_models()) or timm:<name> "
                   f"(default {DEFAULT_MODEL})")
    m.add_argument("--model-arg", dest="model_args", action="append", default=[], metavar="KEY=VALUE",
                   help="extra model keyword argument, repeatable, e.g. --model-arg width=48 (values parsed as JSON)")
    m.add_argument("--init", default=None, metavar="FILE",
                   help="start from this local state dict (torchvision, timm or ddpipe teacher/checkpoint)")
    m.add_argument("--reset-head", action="store_true",
                   help="with --init: drop a classifier whose class count differs and train a new one")
    m.add_argument("--classwise-bn", choices=["none", "ema", "exact"], default="none",
                   help="after training, one eval pass over the augmented train set recording per-class BN "
                   "statistics (LPLD's forward_once): ema = LPLD's momentum 0.1, exact = pooled (default none)")
    o = parser.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, default=4, help="training epochs; 0 only validates --init weights (default 4)")
    o.add_argument("-b", "--batch-size", type=int, default=128, help="batch size per process (default 128)")
    o.add_argument("--opt", choices=["sgd", "adamw"], default="sgd", help="optimizer (default sgd, Nesterov momentum)")
    o.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default: sgd 0.2 x batch/256 x world size, adamw 1e-3)")
    o.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    o.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float, default=None,
                   help="weight decay on conv/linear kernels only (default: sgd 5e-4, adamw 0.01)")
    o.add_argument("--warmup-epochs", type=int, default=0, help="linear warm-up epochs before the cosine decay (default 0)")
    o.add_argument("--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing (default 0)")
    r = parser.add_argument_group("run")
    r.add_argument("--out", required=True, help="output directory (teacher.pt, checkpoint.pth, results.json)")
    r.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pth if it exists")
    r.add_argument("--overwrite", action="store_true", help="start afresh even if OUT holds a run")
    r.add_argument("--seed", type=int, default=0, help="seed of initialisation, order and augmentation (default 0)")
    r.add_argument("--val-every", type=int, default=1, help="validate every N epochs and after the last (default 1)")
    r.add_argument("--stop-after-epoch", type=int, default=None, metavar="E",
                   help="stop as if killed once epoch E (0-based) is checkpointed; for testing --resume")
    r.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda (default auto)")
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    r.add_argument("--no-deterministic", dest="deterministic", action="store_false",
                   help="allow non-deterministic kernels (faster on GPU; breaks bit-identical resume)")
    r.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars on stderr")
    r.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return parser


def make_args(out: str, **overrides) -> argparse.Namespace:
    """The parsed defaults with ``overrides`` applied: the library entry point (``run(make_args(...))``)."""
    from ddpipe.evaluate._phase import parse_with_overrides

    return parse_with_overrides(add_arguments, ["--out", os.fspath(out)], overrides, "squeeze")


def _parse_model_args(items: list[str]) -> dict:
    from ddpipe.evaluate.errors import ModelConfigError

    out = {}
    for item in items or []:
        if "=" not in item:
            raise ModelConfigError(f"--model-arg expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip().replace("-", "_")] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip().replace("-", "_")] = v
    return out


def _config(args: argparse.Namespace, world_size: int) -> dict:
    """The full, JSON-safe config of a run, with the learning rate and weight decay resolved."""
    cfg = {k: v for k, v in vars(args).items() if k not in ("func", "command") and not callable(v)}
    cfg["model_args"] = _parse_model_args(args.model_args)
    if cfg["lr"] is None:
        cfg["lr"] = 0.2 * args.batch_size * world_size / 256 if args.opt == "sgd" else 1e-3
    if cfg["weight_decay"] is None:
        cfg["weight_decay"] = 5e-4 if args.opt == "sgd" else 0.01
    for k in ("init", "data_root", "out"):
        if cfg.get(k):
            cfg[k] = os.path.abspath(os.path.expanduser(cfg[k]))
    return cfg


def _log(enabled: bool, text: str) -> None:
    if enabled:
        print(text, file=sys.stderr, flush=True)


# --- weights in and out ---------------------------------------------------------------------------
def _classifier_names(model) -> list[str]:
    """State-dict keys of the final classifier (timm's ``get_classifier``, else the last Linear)."""
    from torch import nn

    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, nn.Linear):
        head = None
        for mod in model.modules():
            if isinstance(mod, nn.Linear):
                head = mod
    if head is None:
        return []
    name = next(n for n, mod in model.named_modules() if mod is head)
    return [f"{name}.{p}" if name else p for p, _ in head.named_parameters(recurse=False)]


def load_init_weights(model, path: str, num_classes: int, reset_head: bool = False, what: str = "the dataset") -> dict:
    """Load a torchvision / timm / ddpipe state dict from ``path`` into ``model``.

    A classifier with another class count is :class:`ClassCountMismatchError` (unless ``reset_head``
    keeps the new, randomly initialised classifier); any other missing, unexpected or mis-shaped
    key is one :class:`CheckpointError`. Returns ``{"loaded": n, "reset": [keys]}``.
    """
    from ddpipe.evaluate.checkpoint import extract_state_dict, load_checkpoint
    from ddpipe.evaluate.errors import CheckpointError, ClassCountMismatchError
    from ddpipe.evaluate.models import convert_to_classwise_bn, has_classwise_bn

    sd = extract_state_dict(load_checkpoint(path), path)
    if any(k.endswith("class_running_mean") for k in sd) and not has_classwise_bn(model):
        convert_to_classwise_bn(model, num_classes)
    target = model.state_dict()
    reset = []
    for key in _classifier_names(model):
        if key in sd and sd[key].shape != target[key].shape:
            if not reset_head and sd[key].shape[0] != target[key].shape[0]:
                raise ClassCountMismatchError(
                    f"{path} has a {sd[key].shape[0]}-class classifier ({key}) but {what} has {num_classes} classes; "
                    "pass --reset-head to train a new classifier on its features, or pick the matching dataset"
                )
            if reset_head:
                del sd[key]
                reset.append(key)
    missing = [k for k in target if k not in sd and k not in reset]
    unexpected = [k for k in sd if k not in target]
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(target[k].shape)}" for k in sd
             if k in target and sd[k].shape != target[k].shape]
    if missing or unexpected or wrong:
        parts = [f"{len(v)} {n} (e.g. {', '.join(v[:3])})" for n, v in
                 (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", wrong)) if v]
        cfg = getattr(model, "model_cfg", {})
        built = f" built for {cfg['in_chans']}-channel {cfg['input_size']} px inputs" if cfg else ""
        name = cfg.get("name", type(model).__name__)
        raise CheckpointError(f"{path} does not fit model {name}{built}: {'; '.join(parts)}")
    model.load_state_dict(sd, strict=not reset)
    return {"loaded": len(sd), "reset": reset}


def load_teacher(path: str, device: str = "cpu", num_classes: int | None = None):
    """Rebuild a teacher written by squeeze: ``(model in eval mode, meta)``.

    ``meta`` is the file without its weights (model config, dataset facts, mean/std, metrics,
    ``teacher_hash``). The weights are checked against the hash; ``num_classes``, if given, must match.
    """
    from ddpipe.evaluate.checkpoint import load_checkpoint, state_dict_hash
    from ddpipe.evaluate.errors import CheckpointError, ClassCountMismatchError
    from ddpipe.evaluate.models import convert_to_classwise_bn, create_model

    obj = load_checkpoint(path)
    if obj.get("format") != TEACHER_FORMAT:
        raise CheckpointError(
            f"{path} is not a ddpipe teacher (format {obj.get('format')!r}, expected {TEACHER_FORMAT!r}); "
            "wrap torchvision or timm weights with `ddpipe squeeze --init FILE --epochs 0 --out DIR`"
        )
    sd = obj["model"]
    if state_dict_hash(sd) != obj["teacher_hash"]:
        raise CheckpointError(f"{path}: weights do not match the recorded teacher_hash; the file is damaged")
    cfg = obj["model_cfg"]
    if num_classes is not None and cfg["num_classes"] != num_classes:
        raise ClassCountMismatchError(
            f"teacher {path} predicts {cfg['num_classes']} classes but the data has {num_classes}; "
            "use a teacher squeezed on the same dataset"
        )
    model = create_model(cfg["name"], cfg["num_classes"], cfg["in_chans"], cfg["input_size"], **cfg["kwargs"])
    if obj.get("classwise_bn"):
        convert_to_classwise_bn(model, cfg["num_classes"], obj.get("class_momentum", 0.1))
    model.load_state_dict(sd)
    model.to(device).eval()
    meta = {k: v for k, v in obj.items() if k != "model"}
    meta["path"] = os.path.abspath(path)
    return model, meta


def write_teacher(model, path: str, dataset, metrics: dict | None, config: dict | None = None) -> str:
    """Save ``model`` as a ddpipe teacher file (atomically); returns its ``teacher_hash``."""
    import torch

    from ddpipe.evaluate.checkpoint import save_atomic, state_dict_hash, unwrap_model
    from ddpipe.evaluate.models import has_classwise_bn, model_config

    inner = unwrap_model(model)
    sd = {k: v.detach().cpu() for k, v in inner.state_dict().items()}
    digest = state_dict_hash(sd)
    classwise = has_classwise_bn(inner)
    momentum = next((m.class_momentum for m in inner.modules() if hasattr(m, "class_momentum")), None)
    save_atomic({
        "format": TEACHER_FORMAT, "model": sd, "model_cfg": model_config(inner), "teacher_hash": digest,
        "num_classes": dataset.num_classes, "in_chans": dataset.in_chans, "input_size": dataset.input_size,
        "mean": list(dataset.mean), "std": list(dataset.std), "dataset": dataset.describe(),
        "classwise_bn": classwise, **({"class_momentum": momentum} if classwise else {}),
        "metrics": metrics or {}, "config": config or {}, "torch_version": str(torch.__version__),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }, path)
    return digest


# --- the run --------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict:
    """Train (or resume) a teacher as the flags say; returns the results dict also written to results.json."""
    from ddpipe.evaluate._phase import torch_threads

    with torch_threads(args.threads):
        return _run(args)


def _run(args: argparse.Namespace) -> dict:
    import torch

    from ddpipe import __version__
    from ddpipe.evaluate.checkpoint import (resume_checkpoint, rng_state, set_rng_state, unwrap_model,
                                            write_json_atomic)
    from ddpipe.evaluate.datasets import load_dataset
    from ddpipe.evaluate.distributed import barrier, init_distributed, is_main_process, save_on_main
    from ddpipe.evaluate.errors import EvaluateError
    from ddpipe.evaluate.models import create_model
    from ddpipe.evaluate.train import (build_loaders, build_optimizer, build_scheduler, deterministic, seed_epoch,
                                       seed_everything, train_one_epoch, validate)

    t_start = time.perf_counter()
    # 1. output directory, distributed mode, config
    dist = init_distributed(args.device, announce=args.progress)
    main = is_main_process()
    say = args.progress and main
    cfg = _config(args, dist.world_size)
    out = cfg["out"]
    ckpt_path, results_path, teacher_path = (os.path.join(out, f) for f in ("checkpoint.pth", "results.json", "teacher.pt"))
    if args.epochs < 0 or args.batch_size < 1 or args.val_every < 1:
        raise EvaluateError("--epochs must be >= 0, --batch-size and --val-every >= 1")
    ckpt = resume_checkpoint(ckpt_path, cfg, _RESUME_KEYS, resume=args.resume, overwrite=args.overwrite,
                             phase="squeeze")
    if ckpt is None and args.resume:
        _log(say, f"squeeze: no checkpoint in {out}, starting afresh")
    if main:
        os.makedirs(out, exist_ok=True)
        if args.overwrite:  # no stale teacher or results from the run being replaced
            for path in (ckpt_path, results_path, teacher_path):
                if os.path.exists(path):
                    os.unlink(path)
    barrier()
    device = torch.device(dist.device)

    # 2. data
    dataset = load_dataset(args.dataset, data_root=args.data_root, download=args.download)
    train_split = None
    if args.max_train_samples and args.max_train_samples < len(dataset.train):
        import numpy as np

        pick = np.random.Generator(np.random.PCG64(args.seed)).permutation(len(dataset.train))[: args.max_train_samples]
        train_split = dataset.train.subset(np.sort(pick))
    n_train = len(train_split) if train_split is not None else len(dataset.train)
    _log(say, f"squeeze: {args.model} on {dataset.name} ({n_train} train / {len(dataset.test)} test images, "
              f"{dataset.num_classes} classes, {dataset.input_size} px), {args.epochs} epochs, out {out}")

    # 3. model, criterion, optimiser, schedule
    seed_everything(args.seed)
    model = create_model(args.model, dataset.num_classes, dataset.in_chans, dataset.input_size, **cfg["model_args"])
    init_info = None
    if args.init and ckpt is None:
        init_info = load_init_weights(model, cfg["init"], dataset.num_classes, args.reset_head, what=dataset.name)
    model.to(device)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    optimizer = build_optimizer(model, args.opt, cfg["lr"], args.momentum, cfg["weight_decay"])
    scheduler = build_scheduler(optimizer, args.epochs, args.warmup_epochs)
    model_without_ddp = model
    if dist.distributed:
        ids = [dist.local_rank] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    # 4. resume
    start_epoch, history, elapsed_before = 0, [], 0.0
    if ckpt is not None:
        model_without_ddp.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["lr_scheduler"])
        set_rng_state(ckpt["rng"])
        start_epoch, history, elapsed_before = ckpt["epoch"] + 1, list(ckpt["history"]), float(ckpt["elapsed_s"])
        init_info = ckpt.get("init_info")
        _log(say, f"squeeze: resumed from {ckpt_path} at epoch {start_epoch}")
    train_loader, val_loader = build_loaders(dataset, args.batch_size, args.workers, args.aug, args.seed, train_split,
                                             crop_padding=args.crop_padding)

    def results(status: str) -> dict:
        last_val = next((h["val"] for h in reversed(history) if "val" in h), None)
        return {
            "phase": "squeeze", "status": status, "out": out, "epochs_done": len(history), "epochs": args.epochs,
            "final": last_val, "best_top1": max((h["val"]["top1"] for h in history if "val" in h), default=None),
            "wall_time_s": elapsed_before + time.perf_counter() - t_start,
            "teacher": teacher_path if status == "complete" else None, "teacher_hash": None,
            "model": unwrap_model(model).model_cfg, "num_params": sum(p.numel() for p in model_without_ddp.parameters()),
            "dataset": {k: v for k, v in dataset.describe().items() if k != "classes"}, "init": init_info,
            "history": history, "config": cfg, "world_size": dist.world_size,
            "versions": {"ddpipe": __version__, "torch": str(torch.__version__), "python": sys.version.split()[0]},
        }

    # 5. the epoch loop
    with deterministic(args.deterministic):
        for epoch in range(start_epoch, args.epochs):
            seed_epoch(train_loader, args.seed, epoch)
            stats = train_one_epoch(model, train_loader, criterion, optimizer, device, epoch, progress=args.progress,
                                    header=f"epoch {epoch + 1}/{args.epochs}")
            scheduler.step()
            if (epoch + 1) % args.val_every == 0 or epoch + 1 == args.epochs:
                stats["val"] = validate(model, val_loader, device, progress=args.progress)
            history.append(stats)
            val = stats.get("val")
            _log(say, f"epoch {epoch + 1}/{args.epochs}: loss {stats['train_loss']:.4f}  train {stats['train_top1']:.2f}%"
                      + (f"  val top-1 {val['top1']:.2f}% top-5 {val['top5']:.2f}%" if val else "")
                      + f"  ({stats['time_s']:.1f} s)")
            state = {
                "model": model_without_ddp.state_dict(), "optimizer": optimizer.state_dict(),
                "lr_scheduler": scheduler.state_dict(), "epoch": epoch, "config": cfg, "history": history,
                "rng": rng_state(), "init_info": init_info,
                "elapsed_s": elapsed_before + time.perf_counter() - t_start,
            }
            save_on_main(state, ckpt_path)
            if main:
                write_json_atomic(results("running"), results_path)
            barrier()
            if args.stop_after_epoch is not None and epoch >= args.stop_after_epoch and epoch + 1 < args.epochs:
                res = results("stopped")
                if main:
                    write_json_atomic(res, results_path)
                return res

    # 6. LPLD's class-wise BN statistics (one eval pass over the augmented training data)
    class_bn = None
    if args.classwise_bn != "none":
        from ddpipe.evaluate.models import collect_class_stats, convert_to_classwise_bn

        convert_to_classwise_bn(model_without_ddp, dataset.num_classes, 0.1 if args.classwise_bn == "ema" else None)
        seed_epoch(train_loader, args.seed, args.epochs)
        seen = collect_class_stats(model_without_ddp, train_loader, device, progress=args.progress)
        class_bn = {"mode": args.classwise_bn, "images": seen}
        _log(say, f"squeeze: class-wise BN statistics ({args.classwise_bn}) from {seen} images")

    # 7. the teacher
    if not history or "val" not in history[-1]:  # --epochs 0 (or a resumed, finished run without one)
        history.append({"epoch": args.epochs - 1 if history else -1,
                        "val": validate(model, val_loader, device, progress=args.progress)})
    res = results("complete")
    res["classwise_bn"] = class_bn
    if main:
        res["teacher_hash"] = write_teacher(model_without_ddp, teacher_path, dataset, res["final"], cfg)
        write_json_atomic(res, results_path)
    barrier()
    _log(say, f"squeeze: top-1 {res['final']['top1']:.2f}%  top-5 {res['final']['top5']:.2f}%  "
              f"in {res['wall_time_s']:.1f} s -> {teacher_path}")
    return res


def summary_text(res: dict) -> str:
    """The human-readable result line(s) of a run."""
    final = res.get("final") or {}
    lines = [f"squeeze {res['status']}: {res['model']['name']} on {res['dataset']['name']}, "
             f"{res['epochs_done']}/{res['epochs']} epochs in {res['wall_time_s']:.1f} s"]
    if final:
        lines.append(f"  top-1 {final['top1']:.2f}%  top-5 {final['top5']:.2f}%  loss {final['loss']:.4f}")
    if res.get("teacher"):
        lines.append(f"  teacher {res['teacher']} (sha256 {res['teacher_hash'][:16]}…)")
    lines.append(f"  results {os.path.join(res['out'], 'results.json')}")
    return "\n".join(lines)
