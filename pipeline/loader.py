"""One loader interface, three backends (``torch`` = reference, ``dali``, ``batched``), for relabel and training.

A loader is an image source, a feed (the store, or a schedule at relabel time) and the per-field
stages; the backend turns units into normalised image batches and runs the one ``mix`` stage on
them (cutout and CutMix/Mixup, in the torch workers or on DALI's output). The soft targets and the
meta are built here for both backends, so no caller branches on the backend::

    loader = make_loader(source, "labels.zarr", LoaderConfig(backend="dali"))
    for epoch in range(loader.epochs):
        for images, targets, meta in loader.epoch(epoch):
            ...

``batched`` (:mod:`ddpipe.pipeline.batched`) crops and resizes decoded uint8 with torch kernels a
batch at a time, on the CPU or (resident, batched matmuls) on a GPU; ``LoaderConfig(cache=...)``
gives any backend the decoded uint8 cache (:mod:`ddpipe.pipeline.cache`) instead of the encoded images.

Relabel mode (:func:`make_relabel_loader`) yields the same triple with ``targets = None`` and the
generated schedule in ``meta``. ``state_dict()`` / ``load_state_dict()`` resume mid-epoch.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np
import torch

from ..labelstore import Unit
from .backends import BACKENDS, KERNELS
from .device import parse_device
from .errors import LoaderSpecError
from .feed import Feed, ScheduleFeed, StoreFeed, check_source_fits
from .mix import MixStage
from .schedule import Schedule, ScheduleConfig
from .sources import ImageSource
from .stages import IMAGENET_MEAN, IMAGENET_STD, declare_image, image_stages, run_targets, target_stages


@dataclass(frozen=True)
class LoaderConfig:
    """How images are produced. ``None`` fields take the store's (or schedule's) values."""

    backend: str = "torch"  # torch (reference) | dali | batched (uint8 torch kernels, CPU or GPU: pipeline/batched.py)
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
    device: str = "auto"  # DALI and batched: auto (GPU if present) | cpu | cuda | cuda:N (gpu = cuda; device.py)
    batch_size: int | None = None  # if given, must equal the store's batch size
    start_method: str | None = None  # torch workers' start method (None: the platform default)
    dali_start_method: str | None = None  # DALI workers: fork | spawn; None = fork, or spawn inside a process group
    dali_parallel: bool = True  # parallel external_source (False: callback in the main process)
    cache: str | None = None  # decoded uint8 cache: None | "memory" | a directory (built on first use; pipeline/cache.py)
    kernel: str = "auto"  # batched: auto (per-sample on the CPU, matmul on a GPU) | per-sample | matmul
    # Training temperature of a logit store's targets (value_kind "logits"): the probabilities are
    # softmax(row / temperature) of each stored row (labelstore.logit_probs: exact for k = C and at the
    # store's temperature). None = the store's temperature. A probability store was fixed at its
    # temperature when written, so any other value is refused there.
    temperature: float | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise LoaderSpecError(f"unknown loader backend {self.backend!r}; choose one of {BACKENDS}")
        if self.targets not in ("dense", "topk"):
            raise LoaderSpecError(f"targets must be 'dense' or 'topk', got {self.targets!r}")
        parse_device(LoaderSpecError, "device", self.device)
        if self.channels not in (1, 3):
            raise LoaderSpecError(f"channels must be 1 or 3, got {self.channels!r}")
        if self.kernel not in KERNELS:
            raise LoaderSpecError(f"kernel must be one of {KERNELS}, got {self.kernel!r}")
        if self.temperature is not None:
            t = self.temperature
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not np.isfinite(t) or t <= 0:
                raise LoaderSpecError(f"temperature must be a positive number, got {t!r}")

    def replace(self, **kw: Any) -> "LoaderConfig":
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


def torch_view(unit: Unit) -> Unit:
    """The torch view of a unit: the same record with every array field as a CPU tensor (copied;
    ``topk`` as a pair of tensors), the other fields as they are."""

    def tensor(v):
        if isinstance(v, np.ndarray):
            return torch.from_numpy(np.array(v))
        if isinstance(v, tuple):
            return tuple(tensor(x) for x in v)
        return v

    return replace(unit, **{f.name: tensor(getattr(unit, f.name)) for f in fields(unit)})


@dataclass
class BatchMeta:
    """What a batch is: where the loader stands, the source images' class labels, and the unit.

    ``params`` is the unit's record (:class:`ddpipe.labelstore.Unit`, numpy) exactly as the store
    holds it or the schedule generated it: relabel writes it back with the teacher's labels added.
    Every field of the unit can also be read on the meta itself, from its torch view
    (:func:`torch_view`): ``meta.mix_perm`` (int64 tensor), ``meta.crops``, ``meta.flips``,
    ``meta.cutout_fill``, ``meta.mix_kind``, ``meta.unit`` (the store position, -1 at relabel time),
    ``meta.batch`` (the unit's batch in its store epoch ``params.epoch``).
    """

    epoch: int  # training epoch (relabel: 0, the one pass)
    position: int  # index of this batch within the epoch, for this rank
    labels: torch.Tensor  # int64 [b] class labels of the source images
    params: Unit = field(repr=False)  # the unit's record (numpy)

    @cached_property
    def tensors(self) -> Unit:
        """The unit as torch tensors (CPU)."""
        return torch_view(self.params)

    def __getattr__(self, name: str):
        if name.startswith("_") or "params" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.tensors, name)


class Batch(NamedTuple):
    images: torch.Tensor  # float32 [b, C, H, W]
    targets: Any  # float32 [b, num_classes] | (indices, values) | None at relabel time
    meta: BatchMeta


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
        self._retemper = _target_temperature(feed, config.temperature) if feed.with_labels else None
        self.mix_stage = MixStage(schedule.fill, config.mean, config.std, config.mix)
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
            meta = BatchMeta(epoch, pos, torch.from_numpy(self.source.labels[np.asarray(unit.sample_ids)]), unit)
            pos += 1
            self._position = pos
            yield Batch(images, targets, meta)

    def __iter__(self) -> Iterator[Batch]:
        """Every epoch in order (relabel: the one pass)."""
        for e in range(self.epochs):
            yield from self.epoch(e)

    def _targets(self, unit: Unit):
        if not self.target_stages:
            return None
        if self._retemper is not None:
            unit = _at_temperature(unit, self.feed.spec, self._retemper)
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

    def stage_seconds(self) -> dict[str, float]:
        """Seconds spent per stage so far (``decode``, ``crop_resize``, ``collate``, ``mix``, summed over
        worker threads or processes; ``labels``: :attr:`label_seconds`). Backends that cannot see
        inside their graph (DALI) report ``labels`` only."""
        get = getattr(self.backend, "stage_seconds", None)
        out = dict(get()) if get is not None else {}
        out["labels"] = self.label_seconds
        return out

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


def _target_temperature(feed, temperature: float | None) -> float | None:
    """The temperature the targets must be re-taken at (None: the stored probabilities as they are)."""
    spec = feed.spec
    if temperature is None or float(temperature) == float(spec.temperature):
        return None
    if spec.value_kind != "logits":
        raise LoaderSpecError(
            f"temperature {temperature} asked of a probability store written at temperature {spec.temperature}: "
            "its probabilities are fixed; a logit store (value_kind logits) takes the temperature at training time"
        )
    return float(temperature)


def _at_temperature(unit: Unit, spec, temperature: float) -> Unit:
    """``unit`` with its top-k probabilities taken at ``temperature`` from its stored logits and log-sum-exp."""
    from ..labelstore import logit_probs

    if unit.topk_logits is None or unit.lse is None:
        raise LoaderSpecError(f"unit (epoch {unit.epoch}, batch {unit.batch}) carries no logits to re-temper")
    idx, logits = unit.topk_logits
    probs = logit_probs(logits, unit.lse, spec.num_classes, spec.temperature, temperature)
    return replace(unit, topk=(np.asarray(idx), probs))


def _make_backend(config: LoaderConfig, source, feed, stages, mix):
    """The backend turns units into image batches with the ``mix`` stage applied: in the torch
    workers (parallel), or on DALI's output in this process. Same stage, same code, either way."""
    if config.backend == "torch":
        from .torch_backend import TorchBackend

        return TorchBackend(source, feed, stages, mix, num_workers=config.num_workers, prefetch=config.prefetch,
                            start_method=config.start_method)
    if config.backend == "batched":
        from .batched import BatchedBackend

        return BatchedBackend(source, feed, stages, config, mix)
    from .dali_backend import DaliBackend

    return DaliBackend(source, feed, stages, config, mix)


# --- front doors -----------------------------------------------------------------------------------
def _source(source, config: LoaderConfig) -> ImageSource:
    """The source, or its decoded cache when ``config.cache`` asks for one (built on first use)."""
    from .cache import with_cache

    return with_cache(source, config.cache, channels=config.channels, workers=max(1, config.num_workers))


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
    source = _source(source, config)
    reader = store if hasattr(store, "read_slab") else None
    path = reader.path if reader is not None else os.fspath(store)
    feed = StoreFeed(path, backend=store_backend, rank=rank, world_size=world_size, replay_seed=replay_seed,
                     cache_shards=config.cache_shards, reader=reader, sizes=source.sizes)
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
    source = _source(source, config)
    if rows is None:
        e, b = np.divmod(np.arange(schedule.epochs * schedule.batches_per_epoch), schedule.batches_per_epoch)
        rows = np.stack([e, b], axis=1)
    return Loader(source, ScheduleFeed(schedule, rows), config, schedule.config)


__all__ = ["Batch", "BatchMeta", "Loader", "LoaderConfig", "make_loader", "make_relabel_loader", "torch_view"]
