"""``ddpipe squeeze``: train a teacher on real data, or wrap local weights as a teacher.

The library call is ``run(SqueezeConfig(...)) -> SqueezeResult``; ``ddpipe squeeze`` builds the
config from its flags. A run writes into ``out``: ``checkpoint.pth`` (one dict, replaced atomically
after every epoch), ``results.json`` (the result: full config, per-epoch metrics, wall time;
rewritten every epoch) and, at the end, ``teacher.pt`` (state dict, model config, dataset facts and
a sha256 ``teacher_hash``; the format is :mod:`ddpipe.evaluate.teacher`'s), which recover and
relabel read back.
``resume`` continues a killed run at the epoch after its last checkpoint and reaches bit-identical
weights (every epoch's randomness is a pure function of ``seed`` and the epoch); it is refused, in
one line naming the flags, when an option that changes the weights differs from the checkpoint's
(every field but those declared ``option(changes_result=False)``: :func:`ddpipe.config.result_fields`). ``init`` starts
from a torchvision, timm or ddpipe state dict; with ``epochs=0`` it only validates and writes
``teacher.pt``. The epoch loop is :class:`ddpipe.evaluate.loop.TrainingRun`, shared with ``train``.

The module imports no torch at import time, so ``ddpipe --help`` stays fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ddpipe.config import Result, check_int, check_out_path, check_range, config_to_dict, option, \
    parse_key_values
from ._phase import ResumeOption, RunOptions
from .errors import SqueezeError
# the teacher file format, loading and writing have one owner: ddpipe.evaluate.teacher (re-exported here)
from .teacher import TEACHER_FORMAT, load_init_weights, load_teacher, write_teacher

__all__ = ["SqueezeConfig", "SqueezeResult", "run", "summary_text", "load_teacher", "load_init_weights",
           "write_teacher", "TEACHER_FORMAT", "DEFAULT_MODEL"]

DEFAULT_MODEL = "convnet_d3_w32_bn"


@dataclass(frozen=True, kw_only=True)
class SqueezeConfig(RunOptions, ResumeOption):
    """Everything ``ddpipe squeeze`` does, as one value. Bad values raise :class:`SqueezeError` here."""

    error = SqueezeError

    # a resumed run must share every field that changes the weights (all but those marked changes_result=False)
    out: str = option(help="output directory (teacher.pt, checkpoint.pth, results.json)", group="run",
                      changes_result=False)
    # data
    dataset: str = option("fashion-mnist", group="data",
                          help="fashion-mnist, digits, imagefolder:<path> or an ImageFolder path (default fashion-mnist)")
    data_root: str | None = option(None, group="data", changes_result=False,  # where the same dataset lies
                                   help="directory holding the dataset's files (default: the Debian package's location)")
    download: bool = option(False, group="data", help="fetch a missing dataset with torchvision (needs network)",
                            changes_result=False)
    max_train_samples: int | None = option(None, group="data",
                                           help="train on a seeded random subset of this many images (default: all)")
    aug: str = option("standard", choices=("standard", "none"), group="data",
                      help="standard: random crop with padding (<=32 px) or RandomResizedCrop, plus flip (default)")
    crop_padding: int | None = option(None, group="data",
                                      help="zero padding of the standard random crop (default: 4 at 32 px, 2 at 28 px, 1 at 8 px)")
    # counts: a DataLoader's workers draw the augmentation from per-worker seeds (ImageFolder data)
    workers: int = option(0, flags=("-j",), group="data", help="DataLoader worker processes (default 0)")
    # model
    model: str = option(DEFAULT_MODEL, group="model",
                        help="a registered model (ddpipe.evaluate.models.list_models()) or timm:<name> "
                             f"(default {DEFAULT_MODEL})")
    model_args: tuple[str, ...] = option((), flags=("--model-arg",), metavar="KEY=VALUE", group="model",
                                         help="extra model keyword argument, repeatable, e.g. --model-arg width=48 "
                                              "(values parsed as JSON; the API also takes a dict)")
    init: str | None = option(None, metavar="FILE", group="model",
                              help="start from this local state dict (torchvision, timm or ddpipe teacher/checkpoint)")
    reset_head: bool = option(False, group="model",
                              help="with --init: drop a classifier whose class count differs and train a new one")
    classwise_bn: str = option("none", choices=("none", "ema", "exact"), group="model",
                               help="after training, one eval pass over the augmented train set recording per-class BN "
                                    "statistics (LPLD's forward_once): ema = LPLD's momentum 0.1, exact = pooled "
                                    "(default none)")
    # optimisation
    epochs: int = option(4, group="optimisation", help="training epochs; 0 only validates --init weights (default 4)")
    batch_size: int = option(128, flags=("-b",), group="optimisation", help="batch size per process (default 128)")
    opt: str = option("sgd", choices=("sgd", "adamw"), group="optimisation",
                      help="optimizer (default sgd, Nesterov momentum)")
    lr: float | None = option(None, group="optimisation",
                              help="peak learning rate (default: sgd 0.2 x batch/256 x world size, adamw 1e-3)")
    momentum: float = option(0.9, group="optimisation", help="SGD momentum (default 0.9)")
    weight_decay: float | None = option(None, flags=("--wd",), group="optimisation",
                                        help="weight decay on conv/linear kernels only (default: sgd 5e-4, adamw 0.01)")
    warmup_epochs: int = option(0, group="optimisation", help="linear warm-up epochs before the cosine decay (default 0)")
    label_smoothing: float = option(0.0, group="optimisation", help="cross-entropy label smoothing (default 0)")
    # run
    overwrite: bool = option(False, group="run", help="start afresh even if OUT holds a run", changes_result=False)
    seed: int = option(0, group="run", help="seed of initialisation, order and augmentation (default 0)")
    val_every: int = option(1, group="run", help="validate every N epochs and after the last (default 1)",
                            changes_result=False)
    stop_after_epoch: int | None = option(None, metavar="E", group="run", changes_result=False,
                                          help="stop as if killed once epoch E (0-based) is checkpointed; for testing resume")
    deterministic: bool = option(True, group="run", changes_result=False,  # a kernel choice, like --device
                                 help="allow non-deterministic kernels (deterministic=False: faster on GPU, breaks bit-identical resume)")

    def validate(self) -> None:
        super().validate()
        e = self.error
        check_out_path(e, "out", self.out)
        check_int(e, "epochs", self.epochs, min=0)
        check_int(e, "batch_size", self.batch_size, min=1)
        check_int(e, "workers", self.workers, min=0)
        check_int(e, "seed", self.seed, min=0)
        check_int(e, "val_every", self.val_every, min=1)
        check_int(e, "warmup_epochs", self.warmup_epochs, min=0)
        check_int(e, "max_train_samples", self.max_train_samples, min=1, allow_none=True)
        check_int(e, "crop_padding", self.crop_padding, min=0, allow_none=True)
        check_int(e, "stop_after_epoch", self.stop_after_epoch, min=0, allow_none=True)
        check_range(e, "lr", self.lr, min=0, min_exclusive=True, allow_none=True)
        check_range(e, "momentum", self.momentum, min=0)
        check_range(e, "weight_decay", self.weight_decay, min=0, allow_none=True)
        check_range(e, "label_smoothing", self.label_smoothing, min=0, max=1)
        fixed = sorted(set(parse_key_values(e, "model_args", self.model_args)) & {"num_classes", "in_chans", "input_size"})
        if fixed:
            raise e(f"model_args: {fixed[0]} is the dataset's (its images and classes), not a model argument; "
                    "drop --model-arg " + fixed[0] + "=...")
        if self.init is not None and not os.path.isfile(os.path.expanduser(self.init)):
            what = "a directory" if os.path.isdir(os.path.expanduser(self.init)) else "not found"
            raise e(f"init {self.init}: {what}; give the path of a state-dict file")

    def model_kwargs(self) -> dict:
        """``model_args`` as keyword arguments of the model."""
        return parse_key_values(self.error, "model_args", self.model_args)


@dataclass(frozen=True)
class SqueezeResult(Result):
    """What a squeeze run wrote to ``results.json`` (``status``: complete, stopped or running)."""

    phase: str
    status: str
    out: str
    epochs_done: int
    epochs: int
    final: dict | None
    best_top1: float | None
    wall_time_s: float
    teacher: str | None
    teacher_hash: str | None
    model: dict
    num_params: int
    dataset: dict
    init: dict | None
    history: list
    config: dict
    world_size: int
    versions: dict
    classwise_bn: dict | None = None


def _resolved_config(config: SqueezeConfig, world_size: int) -> dict:
    """The full, JSON-safe config of a run, with the learning rate and weight decay resolved."""
    cfg = config_to_dict(config)
    cfg["model_args"] = config.model_kwargs()
    if cfg["lr"] is None:
        cfg["lr"] = 0.2 * config.batch_size * world_size / 256 if config.opt == "sgd" else 1e-3
    if cfg["weight_decay"] is None:
        cfg["weight_decay"] = 5e-4 if config.opt == "sgd" else 0.01
    for k in ("init", "data_root", "out"):
        if cfg.get(k):
            cfg[k] = os.path.abspath(os.path.expanduser(cfg[k]))
    return cfg


# --- the run --------------------------------------------------------------------------------------
def run(config: SqueezeConfig) -> SqueezeResult:
    """Train (or resume) a teacher as ``config`` says; returns the result also written to results.json."""
    from ddpipe.phase import run_phase

    return run_phase(config, SqueezeConfig, _run, "squeeze")


def _run(config: SqueezeConfig) -> SqueezeResult:
    import torch

    from ._phase import versions
    from .checkpoint import unwrap_model
    from .datasets import load_dataset
    from .distributed import barrier, get_world_size, init_distributed
    from .loop import TrainingRun
    from .teacher import build_model  # create_model with bad arguments as one error
    from .train import build_loaders, build_optimizer, build_scheduler, seed_epoch, seed_everything, validate

    # 1. distributed mode, config, output directory, the checkpoint to resume
    init_distributed(config.device, announce=False)  # the world size resolves the default lr
    cfg = _resolved_config(config, get_world_size())
    out = cfg["out"]
    tr = TrainingRun("squeeze", out, cfg, SqueezeConfig, resume=config.resume, overwrite=config.overwrite,
                     device=config.device, progress=config.progress, final_file="teacher.pt")
    teacher_path = tr.final_path

    # 2. data
    dataset = load_dataset(config.dataset, data_root=config.data_root, download=config.download)
    train_split = None
    if config.max_train_samples and config.max_train_samples < len(dataset.train):
        import numpy as np

        pick = np.random.Generator(np.random.PCG64(config.seed)).permutation(len(dataset.train))
        train_split = dataset.train.subset(np.sort(pick[: config.max_train_samples]))
    n_train = len(train_split) if train_split is not None else len(dataset.train)
    tr.log(f"squeeze: {config.model} on {dataset.name} ({n_train} train / {len(dataset.test)} test images, "
           f"{dataset.num_classes} classes, {dataset.input_size} px), {config.epochs} epochs, out {out}")

    # 3. model, criterion, optimiser, schedule; a resumed run's state
    seed_everything(config.seed)
    model = build_model(config.model, dataset.num_classes, dataset.in_chans, dataset.input_size, cfg["model_args"])
    init_info = None
    if config.init and not tr.resumed:
        init_info = load_init_weights(model, cfg["init"], dataset.num_classes, config.reset_head, what=dataset.name)
    model.to(tr.device)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    optimizer = build_optimizer(model, config.opt, cfg["lr"], config.momentum, cfg["weight_decay"])
    scheduler = build_scheduler(optimizer, config.epochs, config.warmup_epochs)
    model = tr.attach(model, optimizer, scheduler)
    if tr.resumed:
        init_info = tr.ckpt.get("init_info")
    train_loader, val_loader = build_loaders(dataset, config.batch_size, config.workers, config.aug, config.seed,
                                             train_split, crop_padding=config.crop_padding)
    describe = {k: v for k, v in dataset.describe().items() if k != "classes"}
    num_params = sum(p.numel() for p in tr.model_without_ddp.parameters())

    def results(status: str, teacher_hash: str | None = None, classwise_bn: dict | None = None) -> SqueezeResult:
        return SqueezeResult(
            phase="squeeze", status=status, out=out, epochs_done=len(tr.history), epochs=config.epochs,
            final=tr.last_val(), best_top1=max((h["val"]["top1"] for h in tr.history if "val" in h), default=None),
            wall_time_s=tr.elapsed(), teacher=teacher_path if status == "complete" else None,
            teacher_hash=teacher_hash, model=unwrap_model(model).model_cfg, num_params=num_params, dataset=describe,
            init=init_info, history=list(tr.history), config=cfg, world_size=tr.dist.world_size, versions=versions(),
            classwise_bn=classwise_bn)

    # 4. the epoch loop (shared with train)
    def batches(epoch: int):
        seed_epoch(train_loader, config.seed, epoch)
        return train_loader

    status = tr.fit(config.epochs, batches, criterion, val_loader, val_every=config.val_every,
                    deterministic=config.deterministic, results=results, stop_after_epoch=config.stop_after_epoch,
                    extra_state={"init_info": init_info})
    if status == "stopped":
        return results("stopped")

    # 5. LPLD's class-wise BN statistics (one eval pass over the augmented training data)
    class_bn = None
    if config.classwise_bn != "none":
        from .models import collect_class_stats, convert_to_classwise_bn

        convert_to_classwise_bn(tr.model_without_ddp, dataset.num_classes, 0.1 if config.classwise_bn == "ema" else None)
        seed_epoch(train_loader, config.seed, config.epochs)
        seen = collect_class_stats(tr.model_without_ddp, train_loader, tr.device, progress=config.progress)
        class_bn = {"mode": config.classwise_bn, "images": seen}
        tr.log(f"squeeze: class-wise BN statistics ({config.classwise_bn}) from {seen} images")

    # 6. the teacher
    if not tr.history or "val" not in tr.history[-1]:  # epochs=0 (or a resumed, finished run without one)
        tr.history.append({"epoch": config.epochs - 1 if tr.history else -1,
                           "val": validate(model, val_loader, tr.device, progress=config.progress)})
    digest = None
    if tr.main:
        digest = write_teacher(tr.model_without_ddp, teacher_path, dataset, tr.last_val(), cfg)
    res = results("complete", digest, class_bn)
    tr.write_results(res)
    barrier()
    tr.log(f"squeeze: top-1 {res.final['top1']:.2f}%  top-5 {res.final['top5']:.2f}%  "
           f"in {res.wall_time_s:.1f} s -> {teacher_path}")
    return res


def summary_text(res: SqueezeResult) -> str:
    """The human-readable result line(s) of a run."""
    if isinstance(res, dict):  # a results.json read back
        res = SqueezeResult.from_dict(res)
    final = res.final or {}
    lines = [f"squeeze {res.status}: {res.model['name']} on {res.dataset['name']}, "
             f"{res.epochs_done}/{res.epochs} epochs in {res.wall_time_s:.1f} s"]
    if final:
        lines.append(f"  top-1 {final['top1']:.2f}%  top-5 {final['top5']:.2f}%  loss {final['loss']:.4f}")
    if res.teacher:
        lines.append(f"  teacher {res.teacher} (sha256 {(res.teacher_hash or '')[:16]}…)")
    lines.append(f"  results {os.path.join(res.out, 'results.json')}")
    return "\n".join(lines)
