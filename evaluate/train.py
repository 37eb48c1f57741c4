"""The training steps every phase shares, in the order of a run (torchvision references' ``train.py``).

``train_one_epoch`` and ``validate`` are the steps of the one epoch loop,
:class:`ddpipe.evaluate.loop.TrainingRun` (squeeze and train); the helpers above them log progress,
seed and pick the optimiser and schedule; ``build_loaders`` turns a
:class:`ddpipe.evaluate.datasets.Dataset` into loaders. Progress goes to stderr.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from contextlib import contextmanager
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from ddpipe._progress import progress_bar
from .distributed import all_reduce_sum, get_rank, get_world_size, is_main_process
from .errors import EvaluateError

__all__ = [
    "SmoothedValue", "MetricLogger", "accuracy", "epoch_seed", "seed_everything", "seed_epoch", "deterministic",
    "build_optimizer", "build_scheduler", "cosine_factor", "build_loaders", "ArrayLoader", "train_one_epoch", "validate",
    "OPTIMIZERS",
]

OPTIMIZERS = ("sgd", "adamw")


# --- logging ------------------------------------------------------------------------------------------
class SmoothedValue:
    """A window median/average plus the global average of a series of values."""

    def __init__(self, window: int = 20):
        self.values: deque[float] = deque(maxlen=window)
        self.total = 0.0
        self.count = 0

    def update(self, value: float, n: int = 1) -> None:
        self.values.append(value)
        self.total += value * n
        self.count += n

    @property
    def avg(self) -> float:
        return sum(self.values) / max(len(self.values), 1)

    @property
    def global_avg(self) -> float:
        return self.total / max(self.count, 1)


class MetricLogger:
    """Meters plus ``log_every``: wraps an iterable in a progress bar on stderr (:func:`ddpipe._progress.progress_bar`)
    showing the smoothed meters."""

    def __init__(self, enabled: bool = True, print_freq: int = 10):
        self.meters: dict[str, SmoothedValue] = {}
        self.enabled = enabled and is_main_process()
        self.print_freq = print_freq

    def update(self, n: int = 1, **values: float) -> None:
        for k, v in values.items():
            self.meters.setdefault(k, SmoothedValue()).update(float(v), n)

    def __str__(self) -> str:
        return "  ".join(f"{k} {m.avg:.4g}" for k, m in self.meters.items())

    def log_every(self, iterable: Iterable, header: str, total: int | None = None):
        if total is None:
            total = len(iterable) if hasattr(iterable, "__len__") else None
        bar = progress_bar(iterable, total=total, desc=header, enabled=self.enabled)
        for i, obj in enumerate(bar):
            yield obj
            if self.enabled and (i % self.print_freq == 0 or i + 1 == total):
                bar.set_postfix_str(str(self), refresh=False)
        bar.close()


def accuracy(output: torch.Tensor, target: torch.Tensor, topk: tuple[int, ...] = (1,)) -> list[float]:
    """Number of samples whose target is in the top-k predictions, for each k (soft targets: their argmax)."""
    if target.ndim == 2:
        target = target.argmax(1)
    maxk = min(max(topk), output.shape[1])
    pred = output.topk(maxk, 1).indices
    hit = pred.eq(target.view(-1, 1))
    return [float(hit[:, : min(k, maxk)].any(1).sum().item()) for k in topk]


# --- determinism --------------------------------------------------------------------------------------
def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of one epoch: a pure function of (seed, epoch, rank), so a resumed run draws the same numbers."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1, np.uint32)[0])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_epoch(loader, seed: int, epoch: int) -> None:
    """Reseed for ``epoch``: the global RNGs (augmentation, dropout) per rank, and the loader's
    order with a seed shared by all ranks (so their shards of one permutation do not overlap)."""
    seed_everything(epoch_seed(seed, epoch, get_rank()))
    gen = getattr(loader, "generator", None)
    if gen is not None:
        gen.manual_seed(epoch_seed(seed, epoch))
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


@contextmanager
def deterministic(enabled: bool = True):
    """Within the block, ask torch for deterministic algorithms (restored afterwards)."""
    before = torch.are_deterministic_algorithms_enabled()
    warn_before = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn_before = torch.backends.cudnn.benchmark
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_before)
        torch.backends.cudnn.benchmark = cudnn_before


# --- optimiser and schedule ---------------------------------------------------------------------------
def build_optimizer(model: nn.Module, name: str = "sgd", lr: float = 0.1, momentum: float = 0.9,
                    weight_decay: float = 5e-4) -> torch.optim.Optimizer:
    """SGD (Nesterov momentum) or AdamW; weight decay only on weights with more than one dimension
    (conv and linear kernels, not biases or norm parameters), as SRe2L's ``get_parameters``."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    name = name.lower()
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise EvaluateError(f"invalid optimizer {name!r}; only {', '.join(OPTIMIZERS)} are supported")


def cosine_factor(epoch: int, epochs: int, warmup_epochs: int = 0) -> float:
    """LR multiplier of ``epoch``: linear warm-up from 1/(warmup+1), then ``0.5 * (1 + cos(pi * t))``."""
    if epoch < warmup_epochs:
        return (epoch + 1) / (warmup_epochs + 1)
    t = (epoch - warmup_epochs) / max(epochs - warmup_epochs, 1)
    return 0.5 * (1.0 + math.cos(math.pi * t))


def build_scheduler(optimizer: torch.optim.Optimizer, epochs: int, warmup_epochs: int = 0):
    """A per-epoch ``LambdaLR`` with the cosine factor (call ``step()`` once after each epoch)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: cosine_factor(e, epochs, warmup_epochs))


# --- data ---------------------------------------------------------------------------------------------
class ShardSampler:
    """Indices ``rank, rank + world, ...`` of a dataset, in order: an exact validation shard (no padding)."""

    def __init__(self, n: int, rank: int, world: int):
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class ArrayLoader:
    """Batches of an in-memory uint8 split with batched augmentation: no per-sample Python work.

    Training order is ``torch.randperm`` from ``self.generator`` (reseeded per epoch by
    :func:`seed_epoch`), sharded ``rank::world`` after padding to a multiple of the world size, as
    ``DistributedSampler`` does. Augmentation draws from the same generator: a random crop with
    ``padding`` zero pixels per side and a horizontal flip with probability 0.5. Yields
    normalised float ``[B, C, H, W]`` images and int64 labels.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, *, mean, std, train: bool = False,
                 padding: int = 0, hflip: bool = False, seed: int = 0, rank: int = 0, world: int = 1):
        self.x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
        self.y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.batch_size, self.train, self.padding, self.hflip = batch_size, train, padding, hflip
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        self.rank, self.world = rank, world
        self.generator = torch.Generator()
        self.generator.manual_seed(seed)

    def _order(self) -> torch.Tensor:
        n = len(self.y)
        if not self.train:
            return torch.arange(self.rank, n, self.world)
        perm = torch.randperm(n, generator=self.generator)
        if self.world > 1:
            total = -(-n // self.world) * self.world
            perm = torch.cat([perm, perm[: total - n]])[self.rank :: self.world]
        return perm

    def __len__(self) -> int:
        n = len(self.y)
        local = -(-n // self.world) if self.train else len(range(self.rank, n, self.world))
        return -(-local // self.batch_size)

    def _augment(self, xb: torch.Tensor) -> torch.Tensor:
        b, _, h, w = xb.shape
        g = self.generator
        if self.padding:
            p = self.padding
            xp = nn.functional.pad(xb, (p, p, p, p)).permute(0, 2, 3, 1)  # [B, H+2p, W+2p, C]
            oy = torch.randint(0, 2 * p + 1, (b,), generator=g)
            ox = torch.randint(0, 2 * p + 1, (b,), generator=g)
            rows = (oy[:, None] + torch.arange(h))[:, :, None]
            cols = (ox[:, None] + torch.arange(w))[:, None, :]
            xb = xp[torch.arange(b)[:, None, None], rows, cols].permute(0, 3, 1, 2)
        if self.hflip:
            flip = (torch.rand(b, generator=g) < 0.5).view(b, 1, 1, 1)
            xb = torch.where(flip, xb.flip(3), xb)
        return xb

    def __iter__(self):
        order = self._order()
        for i in range(0, len(order), self.batch_size):
            idx = order[i : i + self.batch_size]
            xb = self.x[idx]
            if self.train:
                xb = self._augment(xb)
            yield (xb.float() - self.mean) / self.std, self.y[idx]


def build_loaders(dataset, batch_size: int, workers: int = 0, aug: str = "standard", seed: int = 0,
                  train_split=None, val_batch_size: int | None = None, crop_padding: int | None = None):
    """Training and validation loaders for a :class:`~ddpipe.evaluate.datasets.Dataset`.

    In-memory sets already at the model's input size (Fashion-MNIST, digits) with ``standard``
    (random crop with padding, flip) or ``none`` augmentation use :class:`ArrayLoader`, which
    augments whole batches. Everything else (ImageFolder trees, RandomResizedCrop) goes through a
    ``DataLoader`` over :class:`~ddpipe.evaluate.datasets.SplitDataset` with torchvision transforms;
    its order comes from a ``torch.Generator`` (single process) or a ``DistributedSampler``
    (torchrun). Both are reseeded per epoch by :func:`seed_epoch`. ``train_split`` replaces the
    train split (e.g. a ``real_subset``).
    """
    from torch.utils.data import DataLoader, DistributedSampler

    from .datasets import SplitDataset, eval_transform, train_transform
    from .datasets import crop_padding as default_padding

    split = train_split if train_split is not None else dataset.train
    world, rank = get_world_size(), get_rank()
    size = dataset.input_size
    padding = default_padding(size) if crop_padding is None else crop_padding
    native = split.in_memory and split.images.shape[1:3] == (size, size) and dataset.test.in_memory
    if native and (aug == "none" or (aug == "standard" and size <= 32)):
        common = dict(mean=dataset.mean, std=dataset.std, seed=seed, rank=rank, world=world)
        train = ArrayLoader(split.images, split.labels, batch_size, train=True, hflip=aug == "standard" and dataset.hflip,
                            padding=padding if aug == "standard" else 0, **common)
        val = ArrayLoader(dataset.test.images, dataset.test.labels, val_batch_size or 2 * batch_size, **common)
        return train, val
    train_ds = SplitDataset(split, train_transform(dataset, aug, padding))
    val_ds = SplitDataset(dataset.test, eval_transform(dataset))
    common = dict(num_workers=workers, pin_memory=torch.cuda.is_available(), persistent_workers=False)
    if world > 1:
        sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=seed)
        train = DataLoader(train_ds, batch_size=batch_size, sampler=sampler, drop_last=False, **common)
    else:
        gen = torch.Generator()
        gen.manual_seed(seed)
        train = DataLoader(train_ds, batch_size=batch_size, shuffle=True, generator=gen, drop_last=False, **common)
    val = DataLoader(val_ds, batch_size=val_batch_size or 2 * batch_size, shuffle=False,
                     sampler=ShardSampler(len(val_ds), rank, world), **common)
    return train, val


# --- one epoch of training ----------------------------------------------------------------------------
def train_one_epoch(model: nn.Module, loader: Iterable, criterion: Callable, optimizer: torch.optim.Optimizer,
                    device: torch.device | str, epoch: int, *, progress: bool = True, grad_clip: float | None = None,
                    header: str | None = None) -> dict:
    """One pass over ``loader`` (batches ``(images, targets[, meta])``; targets hard or soft).

    Returns the sample-averaged loss and top-1 (against the targets' argmax when soft), the learning
    rate, the image count and the throughput, summed over ranks.
    """
    model.train()
    logger = MetricLogger(enabled=progress)
    loss_sum = correct = seen = 0.0
    start = time.perf_counter()
    for batch in logger.log_every(loader, header or f"epoch {epoch}"):
        images, targets = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        output = model(images)
        loss = criterion(output, targets)
        if not torch.isfinite(loss):
            raise EvaluateError(f"loss is {loss.item()} at epoch {epoch}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        n = images.shape[0]
        (top1,) = accuracy(output.detach(), targets, (1,))
        loss_sum += loss.item() * n
        correct += top1
        seen += n
        logger.update(n=n, loss=loss.item(), acc1=100.0 * top1 / n)
    loss_sum, correct, seen = all_reduce_sum([loss_sum, correct, seen])
    elapsed = time.perf_counter() - start
    return {
        "epoch": epoch, "train_loss": loss_sum / max(seen, 1), "train_top1": 100.0 * correct / max(seen, 1),
        "lr": optimizer.param_groups[0]["lr"], "images": int(seen), "time_s": elapsed,
        "images_per_s": seen / elapsed if elapsed > 0 else None,
    }


@torch.no_grad()
def validate(model: nn.Module, loader: Iterable, device: torch.device | str = "cpu", *, progress: bool = True,
             header: str = "validate") -> dict:
    """Top-1 / top-5 accuracy (percent) and mean cross-entropy on ``loader``, summed over ranks."""
    model.eval()
    logger = MetricLogger(enabled=progress)
    loss_sum = c1 = c5 = seen = 0.0
    for batch in logger.log_every(loader, header):
        images, targets = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        output = model(images)
        hard = targets.argmax(1) if targets.ndim == 2 else targets
        loss_sum += nn.functional.cross_entropy(output, hard, reduction="sum").item()
        a1, a5 = accuracy(output, hard, (1, 5))
        c1, c5, seen = c1 + a1, c5 + a5, seen + images.shape[0]
    loss_sum, c1, c5, seen = all_reduce_sum([loss_sum, c1, c5, seen])
    n = max(seen, 1)
    return {"top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "loss": loss_sum / n, "count": int(seen)}
