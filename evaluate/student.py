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

Each mode's batches are a :class:`ddpipe.evaluate.train_batches.TrainBatches` (the one protocol the
loop consumes; :func:`~ddpipe.evaluate.train_batches.make_batches` picks the mode's class).

Checkpoints are written atomically every epoch; ``resume`` continues at the next epoch and gives
the same final weights as an uninterrupted run on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..pipeline.backends import BACKENDS as LOADERS
from ddpipe.config import Result, check_int, check_out_path, check_range, config_to_dict, option, \
    parse_key_values
from ._phase import ResumeOption, RunOptions
from .errors import TrainError
from .train_batches import TrainBatches, kd_loss, soft_cross_entropy  # the label modes' batches and losses
from ..labelstore.spec import MIX_KINDS

__all__ = ["TrainConfig", "TrainResult", "run", "summary_text", "kd_loss", "soft_cross_entropy", "LabelBytesRead"]


@dataclass(frozen=True, kw_only=True)
class TrainConfig(RunOptions, ResumeOption):
    """Everything ``ddpipe train`` does, as one value. Give exactly one of ``labels``,
    ``online_teacher`` and ``hard_labels``. Bad values raise :class:`TrainError` here. A ``resume``
    must keep every field that changes the result (all but those marked ``changes_result=False``)."""

    error = TrainError

    images: str = option(help="the distilled image set (ImageFolder, .npz, .tar shards)", group="data")
    out: str = option(help="output directory (checkpoint.pth, results.json, student.pt)", group="run",
                      changes_result=False)
    dataset: str = option("fashion-mnist", group="data",
                          help="the real dataset to validate on: fashion-mnist, digits, imagefolder:<path> "
                               "(default fashion-mnist)")
    data_root: str | None = option(None, group="data", changes_result=False,  # where the same dataset lies
                                   help="where the dataset's files are (default: the Debian package's location)")
    # labels: exactly one
    labels: str | None = option(None, metavar="STORE", group="labels (choose one)", help="replay this label store")
    online_teacher: tuple[str, ...] = option((), metavar="CKPT", group="labels (choose one)",
                                             help="label every batch live with this teacher (repeat for an ensemble)")
    hard_labels: bool = option(False, group="labels (choose one)", help="one-hot labels of the images (mixed by lambda)")
    check_teacher: tuple[str, ...] = option((), metavar="CKPT", group="teacher check (stores only)", changes_result=False,
                                            help="before training, re-run this teacher (the store's; repeat for an "
                                                 "ensemble) on the first units the student replays and stop unless "
                                                 "the stored labels match (ddpipe.evaluate.check_teacher)")
    check_units: int = option(4, group="teacher check (stores only)", changes_result=False,
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
    k: int | None = option(None, flags=("--topk",), group="schedule",
                           help="online teacher: keep top-k like a store (the store's k; default: all classes)")
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
    overwrite: bool = option(False, group="run", help="start afresh even if OUT holds a run", changes_result=False)
    seed: int = option(0, group="run", help="seed of the student's initialisation (default 0)")
    val_every: int = option(10, group="run", help="validate every N epochs and after the last (default 10)",
                            changes_result=False)
    stop_after_epoch: int | None = option(None, metavar="E", group="run", help="stop after epoch E (testing resume)",
                                          changes_result=False)
    # the backends replay the same crops, flips, mixes and labels (pixels within 1/255, docs/pipeline.md), like
    # --device; the replay's randomness is the schedule's, whatever the worker count
    loader: str = option("torch", choices=LOADERS, group="run", changes_result=False,
                         help="image backend: torch (the reference; default), batched (the fastest on the CPU: no worker "
                              "processes, -j threads, each image decoded once) or dali (docs/pipeline.md)")
    workers: int = option(2, flags=("-j",), group="run", help="loader workers (default 2)", changes_result=False)
    deterministic: bool = option(True, group="run", changes_result=False,  # a kernel choice, like --device
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
        check_int(e, "k", self.k, min=1, allow_none=True)
        check_range(e, "temperature", self.temperature, min=0, min_exclusive=True, allow_none=True)
        check_range(e, "lr", self.lr, min=0, min_exclusive=True)
        check_range(e, "weight_decay", self.weight_decay, min=0)
        check_range(e, "momentum", self.momentum, min=0)
        check_int(e, "seed", self.seed, min=0)
        check_int(e, "val_every", self.val_every, min=1)
        check_int(e, "stop_after_epoch", self.stop_after_epoch, min=0, allow_none=True)
        check_int(e, "workers", self.workers, min=0)
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


# --- the run --------------------------------------------------------------------------------------------
def run(config: TrainConfig) -> TrainResult:
    """Train (or resume) a student as ``config`` says; returns the result also written to results.json."""
    from ddpipe.phase import run_phase

    return run_phase(config, TrainConfig, _run, "train")


def _run(config: TrainConfig) -> TrainResult:
    from ._phase import versions
    from .checkpoint import unwrap_model
    from .datasets import load_dataset
    from .loop import TrainingRun
    from .teacher import build_model  # create_model with bad arguments as one error
    from .train import build_loaders, build_optimizer, build_scheduler, seed_everything
    from .train_batches import make_batches

    # 1. output directory, distributed mode, config, the checkpoint to resume
    cfg = config_to_dict(config)
    cfg["model_args"] = config.model_kwargs()
    for key in ("online_teacher", "check_teacher"):  # Python callers may pass Teacher / nn.Module objects
        cfg[key] = [os.fspath(t) if isinstance(t, (str, os.PathLike)) else f"<{type(t).__name__}>"
                    for t in getattr(config, key)]
    cfg["out"] = out = os.path.abspath(os.path.expanduser(config.out))
    tr = TrainingRun("train", out, cfg, TrainConfig, resume=config.resume, overwrite=config.overwrite,
                     device=config.device, progress=config.progress, final_file="student.pt")

    # 2. data: the distilled images with their labels, and the real test set
    dataset = load_dataset(config.dataset, data_root=config.data_root)
    batches = make_batches(config, dataset, tr.dist, tr.device)  # a TrainBatches of the config's label mode
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
                label_seconds=batches.label_seconds,
                model=unwrap_model(model).model_cfg, history=list(tr.history), config=cfg,
                world_size=tr.dist.world_size, versions=versions(),
                student=tr.final_path if status == "complete" else None, teacher_check=teacher_check)

        # 4. the epoch loop (shared with squeeze)
        status = tr.fit(batches.epochs, batches.epoch, criterion, val_loader, val_every=config.val_every,
                        deterministic=config.deterministic, results=results, stop_after_epoch=config.stop_after_epoch,
                        after_epoch=label_bytes.add_epoch if label_bytes is not None else None, wait=False)
    finally:
        batches.close()
    try:
        if status == "stopped":
            return results("stopped")
        if not tr.history:
            raise TrainError(f"nothing to train: epochs {batches.epochs}")
        res = results("complete")
        # student.pt is serialised while the last checkpoint is synced; results.json follows both
        tr.save({"model": tr.model_without_ddp.state_dict(), "model_cfg": unwrap_model(model).model_cfg}, tr.final_path)
        tr.write_results(res, defer=True)
    finally:
        tr.finish()
    return res


def _check_teacher(config: TrainConfig, batches: TrainBatches, tr) -> dict:
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

    The feed fetches whole writer shards (``StoreReader.read_slab``). Replaying epoch ``e`` reads the
    units ``ddpipe.pipeline.schedule.replay_units(plan, spec, e)`` (an unpruned store: epoch ``e``'s
    own units; a pruned one: LPLD's draws from the kept pool), so the objects a run needs are those
    of the shards holding a replayed unit (replayed with the feed's default seed, as ``make_loader``
    does here), each counted as the store sizes it (:meth:`ddpipe.labelstore.StoreReader.shard_bytes`:
    every data object, not the metadata or commit records). Each shard counts once, however many
    ranks share an epoch and however often a loader's cache or worker processes re-read it, so the
    count is exact, identical on every rank and unchanged by ``--resume``.
    """

    def __init__(self, reader):
        self.reader = reader
        self.shards: set[int] = set()
        self.bytes = 0

    def add_epoch(self, epoch: int) -> None:
        """Count the shards that epoch ``epoch``'s replay reads (new ones only)."""
        import numpy as np

        from ..pipeline.schedule import replay_units

        units = replay_units(self.reader.plan, self.reader.spec, epoch)
        for s in np.unique(units // self.reader.spec.units_per_shard).tolist():
            if s not in self.shards:
                self.shards.add(s)
                self.bytes += self.reader.shard_bytes(s)


def summary_text(res: TrainResult) -> str:
    if isinstance(res, dict):  # a results.json read back
        res = TrainResult.from_dict(res)
    f = res.final or {}
    top = f"top-1 {f['top1']:.2f}%  top-5 {f['top5']:.2f}%" if f else "not validated"
    return (f"train {res.status} ({res.mode}): {res.epochs_done}/{res.epochs} epochs in "
            f"{res.wall_time_s:.1f} s, {top}, label bytes read {res.label_bytes:,}\n"
            f"  results {os.path.join(res.out, 'results.json')}")
