"""A seeded model of teacher logits, standing in for an ImageNet teacher the bench machine lacks.

Benchmarks of the label store need labels whose statistics resemble a real teacher's (compression
depends on them), for tens of millions of sample-epochs. This module generates them directly.
Every number the store benchmark reports was produced from this model, not from a real network.

The model, for sample ``s`` of a synthetic set with ``ipc`` images per class, seen in one
(epoch, batch) of a relabel run:

- **Class.** ``y = s // ipc`` (the ImageFolder order SRe2L's recover writes).
- **Confusion sets.** Classes are shuffled (seeded) into groups of ``group_size`` (a stand-in for
  WordNet neighbourhoods such as the dog breeds); each class has a fixed list of ``confusion``
  similar classes from its group, with affinities ``a_j = affinity * exp(-j / affinity_decay)``
  times a per-class factor in [0.6, 1.4]. Groups too small are filled from random classes.
- **Evidence of one crop.** Own class: margin ``M = margin + margin_per_log_area * log(area)
  + margin_noise * N(0, 1)``, so small RandomResizedCrops are less confident; the confusion
  classes get their affinities. This is the "heavy head".
- **CutMix.** ResNets end in global average pooling and a linear layer, so the logits of a
  pasted image are close to the area-weighted mean of its parts: the evidence of the own crop is
  scaled by the own area fraction ``lam`` and the partner's by ``1 - lam``.
- **Crop noise / long tail.** Every class, evidence or not, gets ``tail_sigma * N(0, 1)`` fresh
  per (sample, epoch). The ~C other classes form the long low tail.
- **Labels.** ``softmax(logits / T)`` at the store temperature, top-k in descending order.

Fast top-k path (:meth:`TeacherModel.topk`): it never materialises ``C`` logits. It draws the
evidence classes' logits, then the ``r = k + 4`` largest of the ``n`` remaining tail logits
exactly (top order statistics of ``n`` normals: exponential spacings, a Gamma remainder and the
inverse normal CDF) at distinct random tail classes (rejection sampling; below 500 classes the
``r`` smallest of uniform keys over the free classes), and adds the remaining ``n - r`` tail terms
to the softmax denominator by their conditional expectation ``E[exp(Z/T) | Z < t]`` (closed form).
:meth:`TeacherModel.dense_logits` draws the very same values and fills the remaining classes with
real draws below ``t``; its softmax has exactly the same top-k classes, and values that differ
from the fast path only by the tail-sum fluctuation (a few percent of the tail mass).

**Calibration.** ``ddpipe bench logits`` (:mod:`ddpipe.bench.logit_profile`) compares the model with a
trained Fashion-MNIST teacher's soft labels on the same replay units and fits ``margin``,
``margin_per_log_area``, ``margin_noise``, ``tail_sigma`` and ``affinity`` at 10 classes;
:meth:`TeacherModel.calibrated` builds the model with those values (:data:`FASHION_MNIST_FIT`). The
dataclass defaults stay as they are: every number the store benchmark recorded was made with them.

The units themselves (order, crops, flips, CutMix) come from ddpipe's own replay schedule
(:class:`ddpipe.pipeline.schedule.Schedule`, built by :func:`square_schedule`), exactly as a relabel
run generates them. Only numpy is needed (no scipy, no torch): the normal CDF and its inverse are
computed here (:func:`normal_cdf`, :func:`normal_isf`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..labelstore import Unit
from ..pipeline.schedule import Schedule, recipe

__all__ = ["TeacherModel", "square_schedule", "normal_cdf", "normal_isf", "MODEL_NOTE", "FASHION_MNIST_FIT"]

MODEL_NOTE = (
    "labels come from bench/teacher_model.py, a seeded model of teacher logits (class = id // ipc, "
    "fixed confusion sets of similar classes, crop-area dependent margin, CutMix as area-weighted "
    "logits, N(0,1) per-(sample, epoch) noise over all classes), not from a real ImageNet teacher"
)

FASHION_MNIST_FIT = {"margin": 11.0, "margin_per_log_area": 2.0, "margin_noise": 1.5, "tail_sigma": 2.0, "affinity": 8.0}
"""The parameters ``ddpipe bench logits`` fitted to a trained teacher's soft labels (convnet_d3_w32_bn,
2 epochs on Fashion-MNIST; 10 real training images per class, 100 epochs of the ``sre2l`` schedule,
T = 1; ``bench/results/logits-20261208T010733Z.json``). :class:`TeacherModel`'s defaults are not
these: the store benchmark's recorded numbers were made with the defaults."""


def square_schedule(num_samples: int, image_size: int, batch_size: int, epochs: int, seed: int = 0,
                    schedule: str = "sre2l", **overrides) -> Schedule:
    """ddpipe's replay schedule (recipe ``schedule`` with ``overrides``, e.g. ``output_size`` or
    ``mix``) over ``num_samples`` square source images of ``image_size`` pixels."""
    sizes = np.full((int(num_samples), 2), int(image_size), dtype=np.int64)
    return Schedule(recipe(schedule, **overrides), seed, sizes, batch_size, epochs)


# --- the standard normal distribution in numpy ------------------------------------------------------
def _erfc(x: np.ndarray) -> np.ndarray:
    """The complementary error function, relative error below 1.2e-7 everywhere (the Chebyshev
    fit of Numerical Recipes' ``erfcc``)."""
    x = np.asarray(x, dtype=np.float64)
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 + t * (
        0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))))
    r = t * np.exp(-z * z + poly)
    return np.where(x >= 0, r, 2.0 - r)


def normal_cdf(x) -> np.ndarray:
    """``P(Z <= x)`` for a standard normal ``Z`` (relative error below 1.2e-7)."""
    return 0.5 * _erfc(-np.asarray(x, dtype=np.float64) / math.sqrt(2.0))


def normal_isf(u) -> np.ndarray:
    """The ``x`` with ``P(Z > x) = u`` for ``u`` in (0, 1), absolute error about 1e-7: Abramowitz &
    Stegun 26.2.23 as the start (error < 4.5e-4), then one Newton step on ``log P(Z > x)`` (a second
    one gains nothing: the step is as exact as :func:`normal_cdf`)."""
    u = np.asarray(u, dtype=np.float64)
    upper = u <= 0.5
    q = np.where(upper, u, 1.0 - u)  # in (0, 0.5]: the upper tail
    t = np.sqrt(-2.0 * np.log(q))
    x = t - (2.515517 + t * (0.802853 + t * 0.010328)) / (1.0 + t * (1.432788 + t * (0.189269 + t * 0.001308)))
    sf = normal_cdf(-x)
    pdf = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    x = x + (np.log(sf) - np.log(q)) * sf / pdf
    return np.where(upper, x, -x)


@dataclass
class TeacherModel:
    """Seeded teacher-logit model (see the module docstring). Deterministic per (seed, epoch, batch)."""

    num_classes: int
    ipc: int  # images per class: class of sample s is s // ipc
    seed: int = 0
    temperature: float = 1.0
    confusion: int = 12  # similar classes per class
    group_size: int = 40  # classes per similarity group
    affinity: float = 5.0  # logit of the most similar class
    affinity_decay: float = 4.0
    margin: float = 11.0  # own-class logit for a whole-image crop
    margin_per_log_area: float = 1.5  # smaller crops, smaller margin
    margin_noise: float = 1.5
    tail_sigma: float = 1.0
    extra_tail: int = 4  # exact tail order statistics beyond k

    @classmethod
    def calibrated(cls, num_classes: int, ipc: int, seed: int = 0, **overrides) -> "TeacherModel":
        """The model with the parameters fitted to a real teacher (:data:`FASHION_MNIST_FIT`; ``overrides``
        win). They were fitted at 10 classes: at ImageNet's class counts they are an extrapolation (the
        fit never saw confusion groups smaller than the class count, nor a tail of ~C classes)."""
        return cls(num_classes, ipc, seed, **{**FASHION_MNIST_FIT, **overrides})

    def __post_init__(self) -> None:
        c = self.num_classes
        self.confusion = max(0, min(self.confusion, c - 1))
        rng = np.random.default_rng([self.seed, 3])
        shuffled = rng.permutation(c)
        group_of = np.empty(c, np.int64)
        group_of[shuffled] = np.arange(c) // self.group_size
        starts = np.arange(0, c, self.group_size)
        conf = np.empty((c, self.confusion), np.int64)
        for cls in range(c):
            g = group_of[cls]
            members = shuffled[starts[g] : starts[g] + self.group_size]
            members = members[members != cls]
            pick = rng.permutation(members)[: self.confusion]
            if len(pick) < self.confusion:  # a small last group: fill from other classes
                others = np.setdiff1d(np.arange(c), np.concatenate([pick, [cls]]))
                pick = np.concatenate([pick, rng.choice(others, self.confusion - len(pick), replace=False)])
            conf[cls] = pick
        self.confusion_sets = conf  # [C, confusion] most similar first
        decay = self.affinity * np.exp(-np.arange(self.confusion) / self.affinity_decay)
        self.affinities = decay[None, :] * rng.uniform(0.6, 1.4, (c, 1))  # [C, confusion]

    # --- evidence ---------------------------------------------------------------------------
    def _evidence(self, unit: Unit, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Candidate classes ``[b, m]`` (duplicates marked negative) and their noiseless logits."""
        ids = np.asarray(unit.sample_ids, np.int64)
        y = np.minimum(ids // self.ipc, self.num_classes - 1)
        area = np.clip(unit.crops[:, 2] * unit.crops[:, 3], 1e-4, 1.0)
        margin = self.margin + self.margin_per_log_area * np.log(area) + self.margin_noise * rng.standard_normal(len(ids))
        cls = np.concatenate([y[:, None], self.confusion_sets[y]], axis=1)
        val = np.concatenate([margin[:, None], self.affinities[y]], axis=1)
        lam = float(unit.mix_lambda)  # CutMix: the own crop's share of the output (the box's true area)
        if unit.mix_kind == "none" or lam >= 1.0:
            return cls, val
        perm = np.asarray(unit.mix_perm, np.int64)
        m = cls.shape[1]
        cls = np.concatenate([cls, cls[perm]], axis=1)
        val = np.concatenate([lam * val, (1.0 - lam) * val[perm]], axis=1)
        # The same class may carry evidence from both images: add the partner's into the own slot
        # and mark the partner's slot with a unique negative number (not a class).
        same = cls[:, :m, None] == cls[:, None, m:]  # [b, own, partner]
        rows, own, part = np.nonzero(same)
        val[rows, own] += val[rows, m + part]
        val[rows, m + part] = 0.0
        cls[rows, m + part] = -1 - part
        return cls, val

    def _draw(self, unit: Unit, k: int):
        """Everything both paths share: candidate classes/logits and the top tail order statistics."""
        c = self.num_classes
        rng = np.random.default_rng([self.seed, 5, unit.epoch, unit.batch])
        cls, val = self._evidence(unit, rng)
        b, m = cls.shape
        valid = cls >= 0
        logits = val + self.tail_sigma * rng.standard_normal((b, m), dtype=np.float32)
        logits[~valid] = -np.inf
        n = c - valid.sum(axis=1)  # tail classes per row
        r = int(min(k + self.extra_tail, n.min()))
        tail_cls = np.zeros((b, 0), np.int64)
        tail_val = np.zeros((b, 0))
        thresh = np.full(b, np.inf)
        if r > 0:
            # The r largest of n iid N(0, s): survival probs G_i / (G_r + Gamma(n + 1 - r)).
            g = np.cumsum(rng.standard_exponential((b, r)), axis=1)
            total = g[:, -1] + rng.standard_gamma((n + 1 - r).astype(np.float64))
            tail_val = self.tail_sigma * normal_isf(g / total[:, None])
            thresh = tail_val[:, -1]
            tail_cls = self._distinct_tail(rng, cls, r)
        return cls, logits, tail_cls, tail_val, thresh, n, r

    def _distinct_tail(self, rng: np.random.Generator, cls: np.ndarray, r: int) -> np.ndarray:
        """``r`` distinct random classes per row outside the row's candidates."""
        b = cls.shape[0]
        if self.num_classes < 500:  # few classes: the r smallest of uniform keys over the free classes
            keys = rng.random((b, self.num_classes))
            rows, cols = np.nonzero(cls >= 0)
            keys[rows, cls[rows, cols]] = 2.0
            return np.argpartition(keys, r - 1, axis=1)[:, :r].astype(np.int64)
        out = rng.integers(0, self.num_classes, (b, r))
        bad = np.arange(b)
        upper = np.triu(np.ones((r, r), bool), 1)
        for _ in range(50):  # redraw clashing rows; cheap while the candidates are a small share of C
            t = out[bad]
            clash = (t[:, :, None] == cls[bad][:, None, :]).any(axis=(1, 2))
            clash |= ((t[:, :, None] == t[:, None, :]) & upper).any(axis=(1, 2))
            bad = bad[clash]
            if not len(bad):
                return out
            out[bad] = rng.integers(0, self.num_classes, (len(bad), r))
        everything = np.arange(self.num_classes)
        for i in bad:  # few classes: draw without replacement from the row's free classes
            out[i] = rng.choice(np.setdiff1d(everything, cls[i]), r, replace=False)
        return out

    # --- outputs ----------------------------------------------------------------------------
    def topk(self, unit: Unit, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k ``(indices int64 [b, k], probabilities float32 [b, k])``, descending."""
        cls, logits, tail_cls, tail_val, thresh, n, r = self._draw(unit, k)
        t = self.temperature
        allc = np.concatenate([cls, tail_cls], axis=1)
        allz = np.concatenate([logits, tail_val], axis=1) / t
        top = allz.max(axis=1, keepdims=True)
        ex = np.exp(allz - top)
        s = self.tail_sigma
        if np.isfinite(thresh).all():
            # E[exp(Z/T) | Z < t] for Z ~ N(0, s^2), times the n - r tail classes not drawn.
            cond = np.exp(0.5 * (s / t) ** 2) * normal_cdf(thresh / s - s / t) / np.maximum(normal_cdf(thresh / s), 1e-300)
        else:
            cond = np.zeros(len(n))
        denom = ex.sum(axis=1) + (n - r) * cond * np.exp(-top[:, 0])
        pos = np.argpartition(-allz, k - 1, axis=1)[:, :k]
        z = np.take_along_axis(allz, pos, axis=1)
        c = np.take_along_axis(allc, pos, axis=1)
        order = np.lexsort((c, -z), axis=1)  # descending value, lower class first on ties
        idx = np.take_along_axis(c, order, axis=1)
        probs = np.exp(np.take_along_axis(z, order, axis=1) - top) / denom[:, None]
        return idx.astype(np.int64), probs.astype(np.float32)

    def dense_logits(self, unit: Unit, k: int) -> np.ndarray:
        """All ``C`` logits ``float32 [b, C]`` (for SRe2L-format baselines); same top-k as :meth:`topk`."""
        cls, logits, tail_cls, tail_val, thresh, _n, _r = self._draw(unit, k)
        b = cls.shape[0]
        rng = np.random.default_rng([self.seed, 9, unit.epoch, unit.batch])
        out = self.tail_sigma * rng.standard_normal((b, self.num_classes))
        for _ in range(1000):  # the untouched tail lies below the r-th order statistic
            over = out >= thresh[:, None]
            if not over.any():
                break
            out[over] = self.tail_sigma * rng.standard_normal(int(over.sum()))
        rows = np.arange(b)[:, None]
        valid = cls >= 0
        out[np.broadcast_to(rows, cls.shape)[valid], cls[valid]] = logits[valid]
        out[np.broadcast_to(rows, tail_cls.shape), tail_cls] = tail_val
        return out.astype(np.float32)
