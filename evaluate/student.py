"""``ddpipe train``: train a student on the distilled images and validate it on the real test set.

The library call is ``run(TrainConfig(...)) -> TrainResult``. Three label modes, one loop
(:class:`ddpipe.evaluate.loop.TrainingRun`, shared with squeeze):

- ``labels=STORE``: replay the store (crops, flips, mixes and top-k soft labels read back, never
  re-derived) through the torch or DALI loader; loss ``KL(softmax_T(teacher) || log_softmax(student / T))``
  with the store's temperature (SRe2L's recipe: AdamW 1e-3, weight decay 0.01 on weights only,
  cosine, batch = relabel batch).
- ``online_teacher=(CKPT, ...)``: no store; the same schedule is generated from ``schedule_seed`` and
  the teacher labels each mixed batch live (RDED-style). Targets go through the store's arithmetic
  (softmax at T, top-k, marginal smoothing), so they equal what a store would have replayed.
- ``hard_labels=True``: the same schedule with one-hot labels mixed by lambda (the baseline);
  with ``augment="dsa"`` instead the DC / DSA evaluation protocol (the whole image set shuffled
  every epoch, DSA per image, cross-entropy; :mod:`ddpipe.evaluate.dsa_batches`).

Checkpoints are written atomically every epoch; ``resume`` continues at the next epoch and gives
the same final weights as an uninterrupted run on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..pipeline.backends import BACKENDS as LOADERS
from ddpipe.config import Result, check_choice, check_int, check_out_path, check_range, config_to_dict, option, \
    parse_key_values
from ._phase import ResumeOption, RunOptions
from .errors import TrainError
from ..labelstore.spec import MIX_KINDS

__all__ = ["TrainConfig", "TrainResult", "run", "summary_text", "kd_loss", "soft_cross_entropy", "LabelBytesRead"]

_RESUME_KEYS = ("images", "labels", "online_teacher", "hard_labels", "dataset", "model", "model_args", "epochs",
                "batch_size", "schedule", "mix", "seed", "temperature", "topk", "opt", "lr", "weight_decay", "augment")


@dataclass(frozen=True, kw_only=True)
class TrainConfig(RunOptions, ResumeOption):
    """Everything ``ddpipe train`` does, as one value. Give exactly one of ``labels``,
    ``online_teacher`` and ``hard_labels``. Bad values raise :class:`TrainError` here."""

    error = TrainError

    images: str = option(help="the distilled image set (ImageFolder, .npz, .tar shards)", group="data")
    out: str = option(help="output directory (checkpoint.pth, results.json, student.pt)", group="run")
    dataset: str = option("fashion-mnist", group="data",
                          help="the real dataset to validate on: fashion-mnist, digits, imagefolder:<path> "
                               "(default fashion-mnist)")
    data_root: str | None = option(None, group="data",
                                   help="where the dataset's files are (default: the Debian package's location)")
    # labels: exactly one
    labels: str | None = option(None, metavar="STORE", group="labels (choose one)", help="replay this label store")
    online_teacher: tuple[str, ...] = option((), metavar="CKPT", group="labels (choose one)",
                                             help="label every batch live with this teacher (repeat for an ensemble)")
    hard_labels: bool = option(False, group="labels (choose one)", help="one-hot labels of the images (mixed by lambda)")
    check_teacher: tuple[str, ...] = option((), metavar="CKPT", group="teacher check (stores only)",
                                            help="before training, re-run this teacher (the store's; repeat for an "
                                                 "ensemble) on the first units the student replays and stop unless "
                                                 "the stored labels match (ddpipe.evaluate.check_teacher)")
    check_units: int = option(4, group="teacher check (stores only)",
                              help="how many of the first replayed units --check-teacher re-runs (default 4)")
    # schedule (online teacher and hard labels; a store carries its own)
    epochs: int | None = option(None, group="schedule", help="training epochs (default: the store's, else 300)")
    batch_size: int | None = option(None, flags=("-b",), group="schedule",
                                    help="batch size (default: the store's, else 1024)")
    schedule: str = option("sre2l", group="schedule", help="schedule recipe (default sre2l)")
    augment: str = option("schedule", choices=("schedule", "dsa"), group="schedule",
                          help="schedule: the schedule's crops, flips and mixes (default); dsa: the DC/DSA evaluation "
                               "protocol (hard labels only: whole set shuffled per epoch, DSA per image; defaults "
                               "1000 epochs, batch 256; DC's optimiser is --opt sgd --lr 0.01 --wd 5e-4)")
    mix: str | None = option(None, choices=MIX_KINDS, group="schedule",
                             help="override the recipe's mix")
    min_scale: float | None = option(None, group="schedule", help="override the recipe's smallest crop area")
    schedule_seed: int = option(42, group="schedule", help="schedule seed (default 42)")
    topk: int | None = option(None, group="schedule",
                              help="online teacher: keep top-k like a store (default: all classes)")
    temperature: float | None = option(None, flags=("-T",), group="schedule",
                                       help="distillation temperature (default: the store's; online teacher 20); "
                                            "a logit store's targets are taken at this temperature")
    # model and optimisation
    model: str = option("convnet_d3_w32_bn", group="model and optimisation",
                        help="student model (default convnet_d3_w32_bn)")
    model_args: tuple[str, ...] = option((), flags=("--model-arg",), metavar="KEY=VALUE", group="model and optimisation",
                                         help="extra model keyword argument, repeatable (the API also takes a dict)")
    opt: str = option("adamw", choices=("adamw", "sgd"), group="model and optimisation",
                      help="optimizer (default adamw, SRe2L)")
    lr: float = option(1e-3, group="model and optimisation", help="peak learning rate (default 1e-3)")
    weight_decay: float = option(0.01, flags=("--wd",), group="model and optimisation",
                                 help="weight decay on conv/linear kernels only (default 0.01)")
    momentum: float = option(0.9, group="model and optimisation", help="SGD momentum (default 0.9)")
    # run
    overwrite: bool = option(False, group="run", help="start afresh even if OUT holds a run")
    seed: int = option(0, group="run", help="seed of the student's initialisation (default 0)")
    val_every: int = option(10, group="run", help="validate every N epochs and after the last (default 10)")
    stop_after_epoch: int | None = option(None, metavar="E", group="run", help="stop after epoch E (testing resume)")
    loader: str = option("torch", choices=LOADERS, group="run", help="image backend: torch (the reference), dali or batched (docs/pipeline.md; default torch)")
    workers: int = option(2, flags=("-j",), group="run", help="loader workers (default 2)")
    deterministic: bool = option(True, group="run",
                                 help="allow non-deterministic kernels (deterministic=False: faster on GPU, breaks bit-identical resume)")

    def validate(self) -> None:
        super().validate()
        e = self.error
        check_out_path(e, "out", self.out)
        if not self.images:
            raise e("images is required")
        modes = [m for m, on in (("labels", self.labels), ("online_teacher", self.online_teacher),
                                 ("hard_labels", self.hard_labels)) if on]
        if len(modes) != 1:
            raise e("give exactly one of labels (--labels STORE), online_teacher (--online-teacher CKPT) and "
                    f"hard_labels (--hard-labels); got {', '.join(modes) if modes else 'none'}")
        check_choice(e, "augment", self.augment, ("schedule", "dsa"))
        if self.augment == "dsa" and not self.hard_labels:
            raise e("augment dsa (--augment dsa) is the hard-label protocol of DC/DSA/DM; give hard_labels "
                    "(--hard-labels) with it")
        if self.check_teacher and not self.labels:
            raise e("check_teacher (--check-teacher) checks a store's labels; give labels (--labels STORE) too")
        check_int(e, "check_units", self.check_units, min=1)
        check_int(e, "epochs", self.epochs, min=1, allow_none=True)
        check_int(e, "batch_size", self.batch_size, min=1, allow_none=True)
        check_range(e, "min_scale", self.min_scale, min=0, max=1, min_exclusive=True, allow_none=True)
        check_int(e, "schedule_seed", self.schedule_seed, min=0)
        check_int(e, "topk", self.topk, min=1, allow_none=True)
        check_range(e, "temperature", self.temperature, min=0, min_exclusive=True, allow_none=True)
        check_range(e, "lr", self.lr, min=0, min_exclusive=True)
        check_range(e, "weight_decay", self.weight_decay, min=0)
        check_range(e, "momentum", self.momentum, min=0)
        check_int(e, "seed", self.seed, min=0)
        check_int(e, "val_every", self.val_every, min=1)
        check_int(e, "stop_after_epoch", self.stop_after_epoch, min=0, allow_none=True)
        check_int(e, "workers", self.workers, min=0)
        check_choice(e, "opt", self.opt, ("adamw", "sgd"))
        check_choice(e, "loader", self.loader, LOADERS)
        check_choice(e, "mix", self.mix, (None, *MIX_KINDS))
        fixed = sorted(set(parse_key_values(e, "model_args", self.model_args)) & {"num_classes", "in_chans", "input_size"})
        if fixed:
            raise e(f"model_args: {fixed[0]} is the dataset's (its images and classes), not a model argument; "
                    "drop --model-arg " + fixed[0] + "=...")

    def model_kwargs(self) -> dict:
        return parse_key_values(self.error, "model_args", self.model_args)

    @property
    def mode(self) -> str:
        if self.labels:
            return "store"
        if self.online_teacher:
            return "online-teacher"
        return "hard-labels-dsa" if self.augment == "dsa" else "hard-labels"


@dataclass(frozen=True)
class TrainResult(Result):
    """What a train run wrote to ``results.json`` (``status``: complete, stopped or running)."""

    phase: str
    status: str
    mode: str
    out: str
    epochs_done: int
    epochs: int
    batch_size: int
    temperature: float
    final: dict | None
    wall_time_s: float
    label_bytes: int
    label_shards_read: int
    label_seconds: float | None
    model: dict
    history: list
    config: dict
    world_size: int
    versions: dict
    student: str | None = None
    teacher_check: dict | None = None  # --check-teacher's result (TeacherCheckResult.to_dict())


# --- losses -------------------------------------------------------------------------------------------
def kd_loss(temperature: float):
    """KL(targets || softmax(student / T)), batch mean; targets are probabilities at T (SRe2L)."""
    import torch.nn.functional as F

    def loss(output, targets):
        return F.kl_div(F.log_softmax(output / temperature, dim=1), targets, reduction="batchmean")

    return loss


def soft_cross_entropy(output, targets):
    import torch.nn.functional as F

    return -(targets * F.log_softmax(output, dim=1)).sum(1).mean()


def online_targets(logits, temperature: float, k: int | None):
    """A live teacher's targets through the store's arithmetic: softmax at T, top-k, marginal smoothing."""
    import torch

    from ..labelstore import densify, softmax_at, top_k

    probs = softmax_at(logits.detach().float().cpu().numpy(), temperature)
    c = probs.shape[1]
    if k is not None and k < c:
        idx, val = top_k(probs, k)
        probs = densify(idx, val, c)
    return torch.from_numpy(probs)


def retemper(targets, store_temperature: float, temperature: float):
    """A logit store's dense targets (probabilities at the store's temperature ``T_s``, the tail
    classes sharing one logit) at the training temperature ``T``: ``softmax(log(p) * T_s / T)``, which is
    ``softmax(row / T)`` of the stored logit row since ``log p = row / T_s - lse`` (docs/format.md §5)."""
    import torch

    z = torch.log(targets.double().clamp_min(1e-300)) * (float(store_temperature) / float(temperature))
    return torch.softmax(z, dim=1).to(targets.dtype)


def mixed_one_hot(meta, num_classes: int):
    """SRe2L's hard-label baseline under the same mix: lam * y + (1 - lam) * y[perm]."""
    import torch

    y = torch.nn.functional.one_hot(meta.labels, num_classes).float()
    if meta.mix_kind == "none":
        return y
    return meta.mix_lambda * y + (1.0 - meta.mix_lambda) * y[meta.mix_perm]


# --- batches ------------------------------------------------------------------------------------------
class _Batches:
    """One epoch of ``(images, targets, meta)`` for the chosen label mode (the loop never branches on it)."""

    def __init__(self, args: "TrainConfig", dataset, dist, device):
        from ..labelstore import open_store
        from ..pipeline import LoaderConfig, open_source

        self.args, self.dist = args, dist
        self.source = open_source(args.images)
        self.config = LoaderConfig(backend=args.loader, channels=dataset.in_chans, mean=tuple(dataset.mean),
                                   std=tuple(dataset.std), num_workers=args.workers,
                                   output_size=(dataset.input_size, dataset.input_size))
        self.num_classes = dataset.num_classes
        self.teacher = None
        self.store = open_store(args.labels) if args.labels else None
        if self.store is not None:
            spec = self.store.spec
            self.epochs = args.epochs or spec.epochs
            self.batch_size = spec.batch_size
            self.temperature = args.temperature or spec.temperature
            if spec.num_classes != dataset.num_classes:
                from .errors import ClassCountMismatchError

                raise ClassCountMismatchError(
                    f"the store {args.labels} holds {spec.num_classes}-class labels but {dataset.name} has "
                    f"{dataset.num_classes} classes")
            size = (spec.augmentation or {}).get("output_size")
            if size and tuple(size) != (dataset.input_size, dataset.input_size):
                from .errors import TrainError

                raise TrainError(
                    f"the store {args.labels} replays {size[0]}x{size[1]} px crops but {dataset.name} is "
                    f"{dataset.input_size} px; train with the dataset the store was relabelled for")
            if args.batch_size not in (None, spec.batch_size):
                from ..pipeline import LoaderSpecError

                raise LoaderSpecError(f"--batch-size {args.batch_size} differs from the store's {spec.batch_size}; "
                                      "replay batches are the relabel batches")
            self.loader = self._store_loader()
        else:
            from ..pipeline import Schedule, recipe

            self.epochs = args.epochs or 300
            self.batch_size = args.batch_size or 1024
            self.temperature = args.temperature or 20.0
            cfg = recipe(args.schedule, output_size=(dataset.input_size, dataset.input_size), mix=args.mix,
                         scale=(args.min_scale, 1.0) if args.min_scale is not None else None)
            self.schedule = Schedule(cfg, args.schedule_seed, self.source.sizes, self.batch_size, self.epochs)
            if args.online_teacher:
                from .errors import ClassCountMismatchError, TrainError
                from .teacher import Ensemble, open_teachers

                teachers = open_teachers(list(args.online_teacher), device=device)
                t = teachers[0]
                if t.num_classes != dataset.num_classes:
                    raise ClassCountMismatchError(
                        f"teacher {t.source} predicts {t.num_classes} classes but {dataset.name} has "
                        f"{dataset.num_classes}")
                if (t.input_size, t.in_chans) != (dataset.input_size, dataset.in_chans):
                    raise TrainError(
                        f"teacher {t.source} takes {t.in_chans}-channel {t.input_size} px images but {dataset.name} "
                        f"is {dataset.in_chans}-channel {dataset.input_size} px; use a teacher of this dataset")
                self.teacher = Ensemble(teachers, device)

    def _store_loader(self):
        from ..pipeline import make_loader

        return make_loader(self.source, self.store, self.config, rank=self.dist.rank, world_size=self.dist.world_size)

    def epoch(self, epoch: int):
        import numpy as np

        if self.store is not None:
            spec = self.store.spec
            if spec.value_kind == "logits" and self.temperature != spec.temperature:
                # a logit store: the targets at the training temperature, not the store's
                for images, targets, meta in self.loader.epoch(epoch):
                    yield images, retemper(targets, spec.temperature, self.temperature), meta
                return
            yield from self.loader.epoch(epoch)
            return
        from ..pipeline import make_relabel_loader

        nb = self.schedule.batches_per_epoch
        rows = np.stack([np.full(nb, epoch), np.arange(nb)], axis=1)[self.dist.rank :: self.dist.world_size]
        with make_relabel_loader(self.source, self.schedule, rows, self.config) as loader:
            for images, _, meta in loader.epoch(0):
                if self.teacher is not None:
                    targets = online_targets(self.teacher(images), self.temperature, self.args.topk)
                else:
                    targets = mixed_one_hot(meta, self.num_classes)
                yield images, targets, meta

    def criterion(self):
        return soft_cross_entropy if self.args.hard_labels else kd_loss(self.temperature)

    def close(self) -> None:
        if self.store is not None:
            self.loader.close()


# --- the run --------------------------------------------------------------------------------------------
def run(config: TrainConfig) -> TrainResult:
    """Train (or resume) a student as ``config`` says; returns the result also written to results.json."""
    from ._phase import run_phase

    return run_phase(config, TrainConfig, _run, "student")


def _run(config: TrainConfig) -> TrainResult:
    from ._phase import versions
    from .checkpoint import unwrap_model
    from .datasets import load_dataset
    from .loop import TrainingRun
    from .teacher import build_model  # create_model with bad arguments as one error
    from .train import build_loaders, build_optimizer, build_scheduler, seed_everything

    # 1. output directory, distributed mode, config, the checkpoint to resume
    cfg = config_to_dict(config)
    cfg["model_args"] = config.model_kwargs()
    for key in ("online_teacher", "check_teacher"):  # Python callers may pass Teacher / nn.Module objects
        cfg[key] = [os.fspath(t) if isinstance(t, (str, os.PathLike)) else f"<{type(t).__name__}>"
                    for t in getattr(config, key)]
    cfg["out"] = out = os.path.abspath(os.path.expanduser(config.out))
    tr = TrainingRun("train", out, cfg, _RESUME_KEYS, resume=config.resume, overwrite=config.overwrite,
                     device=config.device, progress=config.progress, final_file="student.pt")

    # 2. data: the distilled images with their labels, and the real test set
    dataset = load_dataset(config.dataset, data_root=config.data_root)
    if config.augment == "dsa":
        from .dsa_batches import DSABatches

        batches = DSABatches(config, dataset, tr.dist)
    else:
        batches = _Batches(config, dataset, tr.dist, tr.device)
    teacher_check = None
    try:
        if config.check_teacher:  # before any seeding: the check's randomness cannot reach the weights
            teacher_check = _check_teacher(config, batches, tr)
        _, val_loader = build_loaders(dataset, 256, 0, "none", config.seed)
        tr.log(f"train: {config.model} on {len(batches.source)} images ({config.mode}), {batches.epochs} epochs of "
               f"batch {batches.batch_size}, validating on {dataset.name} ({len(dataset.test)} images)")

        # 3. model, criterion, optimiser, schedule; a resumed run's state
        seed_everything(config.seed)
        model = build_model(config.model, dataset.num_classes, dataset.in_chans, dataset.input_size, cfg["model_args"])
        model.to(tr.device)
        criterion = batches.criterion()
        optimizer = build_optimizer(model, config.opt, config.lr, config.momentum, config.weight_decay)
        scheduler = build_scheduler(optimizer, batches.epochs)
        model = tr.attach(model, optimizer, scheduler)
        label_bytes = LabelBytesRead(batches.store) if batches.store is not None else None
        if label_bytes is not None:
            for epoch in range(tr.start_epoch):  # what the sessions before this one read
                label_bytes.add_epoch(epoch)

        def results(status: str) -> TrainResult:
            return TrainResult(
                phase="train", status=status, mode=config.mode, out=out, epochs_done=len(tr.history),
                epochs=batches.epochs, batch_size=batches.batch_size, temperature=batches.temperature,
                final=tr.last_val(), wall_time_s=tr.elapsed(),
                label_bytes=label_bytes.bytes if label_bytes is not None else 0,
                label_shards_read=len(label_bytes.shards) if label_bytes is not None else 0,
                label_seconds=batches.loader.label_seconds if batches.store is not None else None,
                model=unwrap_model(model).model_cfg, history=list(tr.history), config=cfg,
                world_size=tr.dist.world_size, versions=versions(),
                student=tr.final_path if status == "complete" else None, teacher_check=teacher_check)

        # 4. the epoch loop (shared with squeeze)
        status = tr.fit(batches.epochs, batches.epoch, criterion, val_loader, val_every=config.val_every,
                        deterministic=config.deterministic, results=results, stop_after_epoch=config.stop_after_epoch,
                        after_epoch=label_bytes.add_epoch if label_bytes is not None else None)
    finally:
        batches.close()
    if status == "stopped":
        return results("stopped")
    if not tr.history:
        raise TrainError(f"nothing to train: epochs {batches.epochs}")
    res = results("complete")
    if tr.main:
        from .checkpoint import save_atomic

        save_atomic({"model": tr.model_without_ddp.state_dict(), "model_cfg": unwrap_model(model).model_cfg},
                    tr.final_path)
    tr.write_results(res)
    return res


def _check_teacher(config: TrainConfig, batches: "_Batches", tr) -> dict:
    """``check_teacher``: re-run the given teacher on the first ``check_units`` units this run replays
    (:func:`ddpipe.evaluate.check_teacher.check_teacher`); a mismatch stops the run with one line."""
    from .check_teacher import check_teacher
    from ..pipeline.schedule import replay_units

    reader = batches.store
    first_epoch = tr.ckpt["epoch"] + 1 if tr.ckpt is not None else 0
    units = replay_units(reader.plan, reader.spec, min(first_epoch, reader.spec.epochs - 1))[: config.check_units]
    res = check_teacher(config.labels, list(config.check_teacher), config.images, units=units, device=tr.device,
                        loader=config.loader, workers=0)
    if not res.ok:
        bad = ", ".join(str(m["unit"]) for m in res.mismatches[:5])
        raise TrainError(f"--check-teacher: the store's labels of unit(s) {bad} do not match teacher "
                         f"{', '.join(config.check_teacher)} (worst by {res.max_excess:.3g} beyond the codec's "
                         "tolerance); relabel with this teacher or train on the right store")
    tr.log(f"train: --check-teacher: {len(res.checked_units)} unit(s) match the teacher")
    return res.to_dict()


class LabelBytesRead:
    """The label bytes a run read: the compressed size of every store object it fetched, each once.

    A store keeps one object per data array per writer shard (``docs/format.md`` §3), and the feed
    fetches whole shards (``StoreReader.read_slab``). Replaying epoch ``e`` reads the units
    ``ddpipe.pipeline.schedule.replay_units(plan, spec, e)`` (an unpruned store: epoch ``e``'s own
    units; a pruned one: LPLD's draws from the kept pool), so the objects a run needs are those of
    the shards holding a replayed unit, for every data array (replayed with the feed's default seed,
    as ``make_loader`` does here). Each object counts once, however many ranks share an epoch and
    however often a loader's cache or worker processes re-read it. The store's metadata (``zarr.json``)
    and the ``commit_shard`` flags are not labels and are not counted. Computed from the store's
    layout and object sizes, so it is exact, identical on every rank and unchanged by ``--resume``.
    (A byte counter inside ``labelstore``'s reader would also see re-reads; there is none yet.)
    """

    def __init__(self, reader):
        from ..labelstore.layout import array_defs, shard_key

        self.reader = reader
        read = set(reader.array_names)  # the arrays read_slab reads: this store's format's data arrays
        self._keys = [(d.name, 1 + len(d.trailing)) for d in array_defs(reader.spec) if d.name in read]
        self._shard_key = shard_key
        self.shards: set[int] = set()
        self.bytes = 0
        self._store = None

    def add_epoch(self, epoch: int) -> None:
        """Count the objects of the shards that epoch ``epoch``'s replay reads (new ones only)."""
        import numpy as np

        from ..pipeline.schedule import replay_units

        units = replay_units(self.reader.plan, self.reader.spec, epoch)
        for s in np.unique(units // self.reader.spec.units_per_shard).tolist():
            if s not in self.shards:
                self.shards.add(s)
                self.bytes += sum(self._size(self._shard_key(name, s, ndim)) for name, ndim in self._keys)

    def _size(self, key: str) -> int:
        from ..labelstore.metadata import is_local

        if is_local(self.reader.path):
            return os.path.getsize(os.path.join(self.reader.path, key))
        from zarr.core.sync import sync

        if self._store is None:
            from ..labelstore.metadata import open_group

            self._store = open_group(self.reader.path).store
        return int(sync(self._store.getsize(key)))


def summary_text(res: TrainResult) -> str:
    if isinstance(res, dict):  # a results.json read back
        res = TrainResult.from_dict(res)
    f = res.final or {}
    top = f"top-1 {f['top1']:.2f}%  top-5 {f['top5']:.2f}%" if f else "not validated"
    return (f"train {res.status} ({res.mode}): {res.epochs_done}/{res.epochs} epochs in "
            f"{res.wall_time_s:.1f} s, {top}, label bytes read {res.label_bytes:,}\n"
            f"  results {os.path.join(res.out, 'results.json')}")
