"""One loader interface, two backends (``torch`` = reference, ``dali``), for relabel and training.

A loader is an image source, a feed (the store, or a schedule at relabel time) and the per-field
stages; the backend turns units into normalised image batches and runs the one ``mix`` stage on
them (cutout and CutMix/Mixup, in the torch workers or on DALI's output). The soft targets and the
meta are built here for both backends, so no caller branches on the backend::

    loader = make_loader(source, "labels.zarr", LoaderConfig(backend="dali"))
    for epoch in range(loader.epochs):
        for images, targets, meta in loader.epoch(epoch):
            ...

Relabel mode (:func:`make_relabel_loader`) yields the same triple with ``targets = None`` and the
generated schedule in ``meta``. ``state_dict()`` / ``load_state_dict()`` resume mid-epoch.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np
import torch

from ddpipe.pipeline.errors import LoaderSpecError
from ddpipe.pipeline.feed import Feed, ScheduleFeed, StoreFeed, check_source_fits
from ddpipe.pipeline.mix import MixStage
from ddpipe.pipeline.schedule import Schedule, ScheduleConfig, UnitParams, constant_fill
from ddpipe.pipeline.sources import ImageSource, open_source
from ddpipe.pipeline.stages import IMAGENET_MEAN, IMAGENET_STD, declare_image, image_stages, run_targets, target_stages

BACKENDS = ("torch", "dali")


@dataclass(frozen=True)
class LoaderConfig:
    """How images are produced. ``None`` fields take the store's (or schedule's) values."""

    backend: str = "torch"  # torch (reference) | dali
    output_size: tuple[int, int] | None = None  # default: the schedule's output_size
    channels: int = 3  # 1 = grayscale, 3 = RGB
    mean: Sequence[float] | None = IMAGENET_MEAN  # None: no mean subtraction
    std: Sequence[float] | None = IMAGENET_STD  # None: no division
    num_workers: int = 2  # torch DataLoader workers / DALI parallel external_source workers
    threads: int = 2  # DALI operator threads
    prefetch: int = 2  # batches prepared ahead per worker (torch) / queue depth (DALI)
    cache_shards: int = 2  # label memory: store shards held decoded at once
    targets: str = "dense"  # dense [b, C] float32 | topk (indices, values)
    mix: bool = True  # apply the stored CutMix/Mixup (False: the caller does, e.g. SRe2L's loop)
    device: str = "auto"  # DALI: auto (GPU when CUDA is present) | cpu | gpu
    batch_size: int | None = None  # if given, must equal the store's batch size
    start_method: str | None = None  # torch workers' start method (None: the platform default)
    dali_start_method: str | None = None  # DALI workers: fork | spawn; None = fork, or spawn inside a process group
    dali_parallel: bool = True  # parallel external_source (False: callback in the main process)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise LoaderSpecError(f"unknown loader backend {self.backend!r}; choose one of {BACKENDS}")
        if self.targets not in ("dense", "topk"):
            raise LoaderSpecError(f"targets must be 'dense' or 'topk', got {self.targets!r}")
        if self.device not in ("auto", "cpu", "gpu"):
            raise LoaderSpecError(f"device must be auto, cpu or gpu, got {self.device!r}")
        if self.channels not in (1, 3):
            raise LoaderSpecError(f"channels must be 1 or 3, got {self.channels!r}")

    def replace(self, **kw: Any) -> "LoaderConfig":
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


@dataclass
class BatchMeta:
    """What a batch is: its unit and the schedule that produced it (tensors on the CPU)."""

    epoch: int  # training epoch (relabel: the store epoch)
    position: int  # index of this batch within the epoch, for this rank
    unit: int  # position in the store (-1 at relabel time)
    store_epoch: int  # (epoch, batch) the unit was generated for
    batch: int
    sample_ids: torch.Tensor  # int64 [b]
    labels: torch.Tensor  # int64 [b] class labels of the source images
    crops: torch.Tensor  # float32 [b, 4] (top, left, height, width) fractions
    flips: torch.Tensor  # bool [b]
    cutout: torch.Tensor  # int32 [b, 4] (y0, x0, y1, x1) output pixels; empty = none
    cutout_fill: torch.Tensor  # uint8 [b, 3] each sample's cutout colour (RGB 0..255, before normalisation)
    mix_kind: str
    mix_perm: torch.Tensor  # int64 [b]
    mix_lambda: float
    mix_box: torch.Tensor  # int32 [4] (y0, x0, y1, x1)
    params: UnitParams = field(repr=False)  # the raw unit (numpy), e.g. for writing it back


class Batch(NamedTuple):
    images: torch.Tensor  # float32 [b, C, H, W]
    targets: Any  # float32 [b, num_classes] | (indices, values) | None at relabel time
    meta: BatchMeta


def _meta(unit: UnitParams, epoch: int, position: int, source: ImageSource, fill: np.ndarray) -> BatchMeta:
    ids = np.asarray(unit.sample_ids, dtype=np.int64)
    perm = np.arange(len(ids)) if unit.mix_perm is None else unit.mix_perm
    colours = np.tile(fill, (len(ids), 1)) if unit.cutout_fill is None else unit.cutout_fill
    return BatchMeta(
        epoch=epoch, position=position, unit=int(unit.unit), store_epoch=int(unit.epoch), batch=int(unit.batch),
        sample_ids=torch.from_numpy(ids.copy()), labels=torch.from_numpy(source.labels[ids].copy()),
        crops=torch.from_numpy(np.asarray(unit.crops, np.float32).copy()),
        flips=torch.from_numpy(np.asarray(unit.flips, bool).copy()),
        cutout=torch.from_numpy(np.asarray(unit.cutout, np.int32).copy()),
        cutout_fill=torch.from_numpy(np.asarray(colours, np.uint8).copy()), mix_kind=unit.mix_kind,
        mix_perm=torch.from_numpy(np.asarray(perm, np.int64).copy()), mix_lambda=float(unit.mix_lambda),
        mix_box=torch.from_numpy(np.asarray(unit.mix_box, np.int32).copy()), params=unit,
    )


class Loader:
    """Yields :class:`Batch` ``(images, targets, meta)`` per unit. Build with :func:`make_loader`."""

    def __init__(self, source: ImageSource, feed: Feed, config: LoaderConfig, schedule: ScheduleConfig):
        check_source_fits(feed, source)
        self.source, self.feed, self.config, self.schedule_config = source, feed, config, schedule
        size = tuple(config.output_size or schedule.output_size)
        self.image_stages = image_stages(size, config.channels, config.mean, config.std)
        self.image_state = declare_image(self.image_stages)
        num_classes = feed.spec.num_classes if feed.with_labels else None
        self.target_stages = target_stages(num_classes, config.targets == "dense") if feed.with_labels else []
        self.mix_stage = MixStage(schedule.fill, config.mean, config.std, config.mix)
        self._fill = constant_fill(schedule.fill)  # meta of units without colours of their own
        self.backend = _make_backend(config, source, feed, self.image_stages, self.mix_stage)
        self._epoch: int | None = None
        self._position = 0
        self._resume: dict | None = None
        self._target_seconds = 0.0

    # --- shape ------------------------------------------------------------------------------------
    @property
    def epochs(self) -> int:
        return self.feed.num_epochs()

    def batches_in_epoch(self, epoch: int) -> int:
        return len(self.feed.keys(epoch))

    # --- iteration ------------------------------------------------------------------------------
    def epoch(self, epoch: int, start: int | None = None) -> Iterator[Batch]:
        """This rank's batches of ``epoch``, from batch ``start`` (default: 0, or where a loaded state stopped)."""
        resume = self._resume if (self._resume and self._resume["epoch"] == epoch and start is None) else None
        if resume:
            self._resume = None
        begin = int(resume["position"]) if resume else int(start or 0)
        if resume:
            self.backend.restore(resume.get("backend") or {})
        self._epoch, self._position = epoch, begin
        pos = begin
        for images, unit in self.backend.batches(epoch, begin):  # cutout and mix already applied
            t0 = time.perf_counter()
            targets = self._targets(unit)
            self._target_seconds += time.perf_counter() - t0
            meta = _meta(unit, epoch, pos, self.source, self._fill)
            pos += 1
            self._position = pos
            yield Batch(images, targets, meta)

    def __iter__(self) -> Iterator[Batch]:
        """Every epoch in order (relabel: the one pass)."""
        for e in range(self.epochs):
            yield from self.epoch(e)

    def _targets(self, unit: UnitParams):
        if not self.target_stages:
            return None
        t = run_targets(self.target_stages, unit)
        if isinstance(t, tuple):
            return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in t)
        return torch.from_numpy(t)

    # --- resume -----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Where the last yielded batch left off: ``{epoch, position, backend}`` (JSON-serialisable)."""
        return {"epoch": self._epoch, "position": self._position, "backend": self.backend.state()}

    def load_state_dict(self, state: dict) -> None:
        """The next ``epoch(state['epoch'])`` call continues after the last batch of that state."""
        if not isinstance(state, dict) or "epoch" not in state or "position" not in state:
            raise LoaderSpecError(f"not a loader state: {state!r}")
        self._resume = dict(state)

    @property
    def label_seconds(self) -> float:
        """Time this process spent on labels: reading units from the store and building targets."""
        return float(getattr(self.feed, "read_seconds", 0.0)) + self._target_seconds

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "Loader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _make_backend(config: LoaderConfig, source, feed, stages, mix):
    """The backend turns units into image batches with the ``mix`` stage applied: in the torch
    workers (parallel), or on DALI's output in this process. Same stage, same code, either way."""
    if config.backend == "torch":
        from ddpipe.pipeline.torch_backend import TorchBackend

        return TorchBackend(source, feed, stages, mix, num_workers=config.num_workers, prefetch=config.prefetch,
                            start_method=config.start_method)
    from ddpipe.pipeline.dali_backend import DaliBackend

    return DaliBackend(source, feed, stages, config, mix)


# --- front doors -----------------------------------------------------------------------------------
def make_loader(
    source: ImageSource | str | os.PathLike,
    store: str | os.PathLike | Any,
    config: LoaderConfig | None = None,
    *,
    rank: int = 0,
    world_size: int = 1,
    replay_seed: int | None = None,
    store_backend: str = "auto",
    **overrides: Any,
) -> Loader:
    """A training loader over ``store`` (a path or an open reader) and the images it was built from.

    Checks, each with one clear error: the source holds the store's number of images and the same
    content hash (:class:`ImageSetMismatchError`), and ``batch_size`` (if given) is the store's.
    ``rank``/``world_size`` shard each epoch's units (every ``world_size``-th unit from ``rank``).
    """
    config = replace(config or LoaderConfig(), **overrides)
    source = open_source(source)
    reader = store if hasattr(store, "read_slab") else None
    path = reader.path if reader is not None else os.fspath(store)
    feed = StoreFeed(path, backend=store_backend, rank=rank, world_size=world_size, replay_seed=replay_seed,
                     cache_shards=config.cache_shards, reader=reader)
    spec = feed.spec
    if config.batch_size is not None and config.batch_size != spec.batch_size:
        raise LoaderSpecError(
            f"batch size {config.batch_size} does not match the store's {spec.batch_size}: replay batches are the "
            "relabel batches (CutMix mixed inside them), so train with batch_size "
            f"{spec.batch_size} (use gradient accumulation for smaller steps)"
        )
    try:
        sched = ScheduleConfig.from_dict(spec.augmentation) if spec.augmentation else ScheduleConfig()
    except LoaderSpecError as e:
        raise LoaderSpecError(f"{path}: the store's augmentation record is not a ddpipe schedule: {e}") from None
    return Loader(source, feed, config, sched)


def make_relabel_loader(
    source: ImageSource | str | os.PathLike,
    schedule: Schedule,
    rows: np.ndarray | None = None,
    config: LoaderConfig | None = None,
    **overrides: Any,
) -> Loader:
    """A relabel loader: the images of ``rows`` ((epoch, batch) pairs; default every unit) exactly as
    training will replay them, with their schedule in ``meta`` and ``targets = None``."""
    config = replace(config or LoaderConfig(), **overrides)
    source = open_source(source)
    if rows is None:
        e, b = np.divmod(np.arange(schedule.epochs * schedule.batches_per_epoch), schedule.batches_per_epoch)
        rows = np.stack([e, b], axis=1)
    return Loader(source, ScheduleFeed(schedule, rows), config, schedule.config)


__all__ = ["Batch", "BatchMeta", "Loader", "LoaderConfig", "make_loader", "make_relabel_loader"]
