"""The batches ``ddpipe train`` consumes: one declared protocol, one class per label mode.

:class:`TrainBatches` is everything :func:`ddpipe.evaluate.student.run` asks of its batches, so the
epoch loop never branches on the label mode:

- :class:`StoreBatches` (``labels=STORE``): the store replayed by the torch, DALI or batched loader;
  a logit store's targets at the training temperature come from the loader
  (``LoaderConfig.temperature``, the one place a store is re-tempered);
- :class:`OnlineTeacherBatches` (``online_teacher=...``): the schedule generated from
  ``schedule_seed``, each mixed batch labelled live through the store's arithmetic;
- :class:`HardLabelBatches` (``hard_labels=True``): the same schedule with one-hot labels mixed by lambda;
- :class:`~ddpipe.evaluate.dsa_batches.DSABatches` (``hard_labels=True, augment="dsa"``): the DC/DSA protocol.

:func:`make_batches` picks one from the config. The losses the modes train with live here too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterator, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from ..labelstore import StoreReader
    from ..pipeline import ImageSource

__all__ = ["TrainBatches", "StoreBatches", "OnlineTeacherBatches", "HardLabelBatches", "make_batches", "kd_loss",
           "soft_cross_entropy", "online_targets", "mixed_one_hot"]


@runtime_checkable
class TrainBatches(Protocol):
    """What the student's epoch loop consumes, whatever the label mode."""

    source: ImageSource  # the distilled images
    epochs: int  # training epochs
    batch_size: int
    temperature: float  # the distillation temperature the run records (its criterion's, for soft targets)
    store: StoreReader | None  # the label store replayed (None: the labels are made batch by batch)

    def epoch(self, epoch: int) -> Iterator[tuple]:
        """This rank's batches of ``epoch``: ``(images, targets[, meta])``."""
        ...

    def criterion(self) -> Callable:
        """The loss, ``criterion(output, targets)``."""
        ...

    @property
    def label_seconds(self) -> float | None:
        """Seconds spent reading labels from the store so far (None: no store is read)."""
        ...

    def close(self) -> None:
        """Release the loader's workers and files."""
        ...


# --- losses and targets -------------------------------------------------------------------------------
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


def mixed_one_hot(meta, num_classes: int):
    """SRe2L's hard-label baseline under the same mix: lam * y + (1 - lam) * y[perm]."""
    import torch

    y = torch.nn.functional.one_hot(meta.labels, num_classes).float()
    if meta.mix_kind == "none":
        return y
    return meta.mix_lambda * y + (1.0 - meta.mix_lambda) * y[meta.mix_perm]


def _loader_config(args, dataset, temperature: float | None = None):
    """The loader settings of a train run: its backend and workers, the dataset's channels, statistics and size."""
    from ..pipeline import LoaderConfig

    return LoaderConfig(backend=args.loader, channels=dataset.in_chans, mean=tuple(dataset.mean),
                        std=tuple(dataset.std), num_workers=args.workers,
                        output_size=(dataset.input_size, dataset.input_size), temperature=temperature)


# --- the label modes ----------------------------------------------------------------------------------
class StoreBatches:
    """``labels=STORE``: the store's units replayed (crops, flips, mixes and soft labels read back).

    The batch size and default epochs and temperature are the store's. A logit store gives its
    targets at ``temperature`` (the loader re-tempers the stored logits); a probability store's
    targets are fixed at its own temperature, and ``temperature`` is then the loss's only.
    """

    def __init__(self, args, dataset, dist):
        from ..labelstore import open_store
        from ..pipeline import LoaderSpecError, make_loader, open_source
        from .errors import ClassCountMismatchError, TrainError

        self.source = open_source(args.images)
        self.store: StoreReader = open_store(args.labels)
        spec = self.store.spec
        self.epochs = args.epochs or spec.epochs
        self.batch_size = spec.batch_size
        self.temperature = args.temperature or spec.temperature
        if spec.num_classes != dataset.num_classes:
            raise ClassCountMismatchError(
                f"the store {args.labels} holds {spec.num_classes}-class labels but {dataset.name} has "
                f"{dataset.num_classes} classes")
        size = (spec.augmentation or {}).get("output_size")
        if size and tuple(size) != (dataset.input_size, dataset.input_size):
            raise TrainError(
                f"the store {args.labels} replays {size[0]}x{size[1]} px crops but {dataset.name} is "
                f"{dataset.input_size} px; train with the dataset the store was relabelled for")
        if args.batch_size not in (None, spec.batch_size):
            raise LoaderSpecError(f"--batch-size {args.batch_size} differs from the store's {spec.batch_size}; "
                                  "replay batches are the relabel batches")
        retemper = self.temperature if spec.value_kind == "logits" else None
        self.loader = make_loader(self.source, self.store, _loader_config(args, dataset, retemper),
                                  rank=dist.rank, world_size=dist.world_size)

    def epoch(self, epoch: int) -> Iterator[tuple]:
        return self.loader.epoch(epoch)

    def criterion(self) -> Callable:
        return kd_loss(self.temperature)

    @property
    def label_seconds(self) -> float:
        return self.loader.label_seconds

    def close(self) -> None:
        self.loader.close()


class _ScheduleBatches:
    """The modes without a store: the schedule generated from ``schedule_seed``, each epoch's rows of
    this rank rendered by a relabel loader, the targets made per batch by :meth:`targets`."""

    store = None  # labels are made batch by batch, not read
    label_seconds = None

    def __init__(self, args, dataset, dist):
        from ..pipeline import Schedule, open_source, recipe

        self.dist = dist
        self.source = open_source(args.images)
        self.config = _loader_config(args, dataset)
        self.epochs = args.epochs or 300
        self.batch_size = args.batch_size or 1024
        self.temperature = args.temperature or 20.0
        cfg = recipe(args.schedule, output_size=(dataset.input_size, dataset.input_size), mix=args.mix,
                     scale=(args.min_scale, 1.0) if args.min_scale is not None else None)
        self.schedule = Schedule(cfg, args.schedule_seed, self.source.sizes, self.batch_size, self.epochs)

    def targets(self, images, meta):
        raise NotImplementedError

    def epoch(self, epoch: int) -> Iterator[tuple]:
        from ..pipeline import make_relabel_loader

        nb = self.schedule.batches_per_epoch
        rows = np.stack([np.full(nb, epoch), np.arange(nb)], axis=1)[self.dist.rank :: self.dist.world_size]
        with make_relabel_loader(self.source, self.schedule, rows, self.config) as loader:
            for images, _, meta in loader.epoch(0):
                yield images, self.targets(images, meta), meta

    def close(self) -> None:
        pass


class OnlineTeacherBatches(_ScheduleBatches):
    """``online_teacher=(CKPT, ...)``: each mixed batch labelled live (RDED-style), through the store's
    arithmetic at ``temperature`` and top-``k``, so the targets equal what a store would replay."""

    def __init__(self, args, dataset, dist, device):
        from .errors import ClassCountMismatchError, TrainError
        from .teacher import Ensemble, open_teachers

        super().__init__(args, dataset, dist)
        self.k = args.k
        teachers = open_teachers(list(args.online_teacher), device=device)
        t = teachers[0]
        if t.num_classes != dataset.num_classes:
            raise ClassCountMismatchError(
                f"teacher {t.source} predicts {t.num_classes} classes but {dataset.name} has {dataset.num_classes}")
        if (t.input_size, t.in_chans) != (dataset.input_size, dataset.in_chans):
            raise TrainError(
                f"teacher {t.source} takes {t.in_chans}-channel {t.input_size} px images but {dataset.name} "
                f"is {dataset.in_chans}-channel {dataset.input_size} px; use a teacher of this dataset")
        self.teacher = Ensemble(teachers, device)

    def targets(self, images, meta):
        return online_targets(self.teacher(images), self.temperature, self.k)

    def criterion(self) -> Callable:
        return kd_loss(self.temperature)


class HardLabelBatches(_ScheduleBatches):
    """``hard_labels=True``: the schedule's crops, flips and mixes with one-hot labels mixed by lambda."""

    def __init__(self, args, dataset, dist):
        super().__init__(args, dataset, dist)
        self.num_classes = dataset.num_classes

    def targets(self, images, meta):
        return mixed_one_hot(meta, self.num_classes)

    def criterion(self) -> Callable:
        return soft_cross_entropy


def make_batches(config, dataset, dist, device) -> TrainBatches:
    """The batches of a :class:`~ddpipe.evaluate.student.TrainConfig`'s label mode, on ``dataset``
    (its classes, channels and size), for this rank of ``dist`` (a ``DistInfo``); an online
    teacher runs on ``device``."""
    if config.labels:
        return StoreBatches(config, dataset, dist)
    if config.online_teacher:
        return OnlineTeacherBatches(config, dataset, dist, device)
    if config.augment == "dsa":
        from .dsa_batches import DSABatches

        return DSABatches(config, dataset, dist)
    return HardLabelBatches(config, dataset, dist)
