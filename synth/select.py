"""Selection baselines: real images instead of synthetic ones.

- ``random``: ``ipc`` seeded random real images per class (the "random real" row of every
  dataset-distillation table).
- ``herding``: Welling's herding (ICML 2009) in the teacher's penultimate feature space, the
  coreset baseline of Dataset Condensation (VICO-UoE/DatasetCondensation) and iCaRL: greedily add
  the image that brings the running mean of the chosen features closest to the class mean.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ._registry import register_method
from .config import RecoverConfig
from .errors import SynthConfigError
from .rded import rded_batch
from .stats import penultimate_features

if TYPE_CHECKING:
    from .engine import Batch, Engine

__all__ = ["class_order", "herding_order", "select_batch"]


def herding_order(features: torch.Tensor, k: int) -> list[int]:
    """The first ``k`` rows chosen by herding: at step t pick ``argmin_i ||mu - (S + f_i) / t||`` over unchosen i."""
    f = features.double()
    mu = f.mean(dim=0)
    chosen: list[int] = []
    running = torch.zeros_like(mu)
    available = torch.ones(len(f), dtype=torch.bool)
    for t in range(1, min(k, len(f)) + 1):
        dist = ((mu - (running + f) / t) ** 2).sum(dim=1)
        dist[~available] = float("inf")
        i = int(dist.argmin())
        chosen.append(i)
        available[i] = False
        running += f[i]
    return chosen


@torch.no_grad()
def _herding_class(engine: "Engine", c: int) -> np.ndarray:
    idx = engine.real.class_indices(c)
    feats = []
    for s in range(0, len(idx), engine.cfg.stats_batch_size):
        x = engine.normalise(engine.real.get(idx[s:s + engine.cfg.stats_batch_size]))
        feats.append(penultimate_features(engine.teachers[0], x).cpu())
    return idx[herding_order(torch.cat(feats), engine.ipc)]


def class_order(engine: "Engine", c: int) -> np.ndarray:
    """Real images of class ``c`` in the order the engine's selection takes them: herding's, or the
    engine's seeded random order (:meth:`Engine.class_order`)."""
    if engine.cfg.select == "herding":
        return _herding_class(engine, c)
    return engine.class_order(c)


def select_batch(engine: "Engine", batch: "Batch", orders: dict[int, np.ndarray] | None = None) -> np.ndarray:
    """uint8 [B, H, W, C] real images for the batch's (class, index) pairs (RDED: its stitched patches,
    :func:`ddpipe.synth.rded.rded_batch`). ``orders`` caches each class's :func:`class_order` (RDED: its
    images) across the batches of one run (the caller keeps it)."""
    orders = {} if orders is None else orders
    if engine.cfg.select == "rded":  # patches of real images, stitched (synth/rded.py); orders keeps each class's set
        return rded_batch(engine, batch, orders)
    picks = []
    for c, i in zip(batch.classes, batch.indices):
        if c not in orders:
            orders[c] = class_order(engine, c)
        order = orders[c]
        if i >= len(order):
            raise SynthConfigError(f"class {c} has {len(order)} real images, fewer than ipc={engine.ipc}")
        picks.append(order[i])
    return np.asarray(engine.real.get(np.asarray(picks)), dtype=np.uint8)


def _cfg(**kwargs) -> RecoverConfig:
    kwargs.setdefault("init", "real")
    return RecoverConfig(loss={}, iterations=0, batching="class", classes_per_batch=1, **kwargs)


@register_method("random.default")
def random_default():
    """ipc seeded random real images per class."""
    return _cfg(method="random", select="random")


@register_method("random.test")
def random_test():
    return _cfg(method="random", select="random")


@register_method("herding.default")
def herding_default():
    """ipc real images per class chosen by herding on the first teacher's penultimate features."""
    return _cfg(method="herding", select="herding", init="noise")


@register_method("herding.test")
def herding_test():
    return _cfg(method="herding", select="herding", init="noise")
