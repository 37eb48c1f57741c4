"""Loss terms, registered by name; a method's loss is ``sum(weight * term)`` over its config's ``loss`` dict.

A term sees one :class:`Step` per iteration: the augmented images the teacher saw, their labels,
the teacher's logits and the recorded BN / conv inputs of that forward pass. Terms that need data
prepared once per run (class-wise BN statistics, conv statistics) ask the engine for it in
:meth:`LossTerm.prepare`; the engine computes it once and caches it.

=================  =====================================================================  ==============
term               value                                                                  methods
=================  =====================================================================  ==============
``ce``             cross-entropy of the teacher's logits and the target classes           SRe2L family
``bn_stats``       sum_l r_l (||var_l - var_b||_2 + ||mean_l - mean_b||_2), BN inputs     SRe2L, CDA, DELT
``class_bn_stats`` the same against each class's own BN statistics, averaged over classes LPLD
``bn_stats_ema``   ``bn_stats`` against an EMA of the batch statistics (G-VBSM)           G-VBSM
``conv_stats``     channel and patch mean/var of conv inputs vs. real-data targets (EMA)  G-VBSM
``densify``        KL(softmax(eig/tau) || softmax(eig)) of each class's Gram matrix       G-VBSM
``dm_mean``        sum_c ||mean embed(real_c) - mean embed(syn_c)||^2, fresh random net   DM
=================  =====================================================================  ==============
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import register_loss
from .errors import TeacherError
from .stats import Recorder, bn_layers, channel_stats, patch_stats

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["Step", "LossTerm", "CrossEntropy", "BNStats", "ClassBNStats", "BNStatsEMA", "ConvStats", "Densify",
           "DMMean", "densify_loss", "dm_mean_loss"]


@dataclass
class Step:
    """What the terms see in one iteration."""

    engine: "Engine"
    it: int  # iteration within the batch
    iterations: int  # iterations of the batch
    x: torch.Tensor  # the augmented synthetic images the teacher saw [B, C, H, W]
    x_syn: torch.Tensor  # the same images before augmentation
    labels: torch.Tensor  # their classes [B]
    gen: torch.Generator  # the batch's random stream
    teacher_index: int = 0
    teacher: nn.Module | None = None
    logits: torch.Tensor | None = None
    recorder: Recorder | None = None


class LossTerm:
    """A loss term: ``prepare`` once per run, ``start_batch`` per batch, ``__call__`` per iteration."""

    name = ""
    uses_teacher = True  # the engine runs the teacher forward only if some term needs it
    needs_conv = False  # record conv inputs as well as BN inputs

    def prepare(self, engine: "Engine") -> None:
        pass

    def start_batch(self, engine: "Engine") -> None:
        pass

    def __call__(self, step: Step) -> torch.Tensor:
        raise NotImplementedError


def _stat_distance(t_mean, t_var, mean, var) -> torch.Tensor:
    """SRe2L's ``r_feature``: L2 norms, not squared."""
    return torch.linalg.vector_norm(t_var - var) + torch.linalg.vector_norm(t_mean - mean)


def _require_bn(engine: "Engine", term: str) -> None:
    for i, t in enumerate(engine.teachers):
        if not bn_layers(t):
            raise TeacherError(f"teacher {i} ({type(t).__name__}) has no BatchNorm2d layer, so {term!r} has nothing "
                               "to match; use a BN teacher (e.g. convnet_bn, resnet18) or another method")


def _rescale(names: list[str], first_multiplier: float) -> dict[str, float]:
    return {n: (first_multiplier if i == 0 else 1.0) for i, n in enumerate(names)}


@register_loss
class CrossEntropy(LossTerm):
    """Cross-entropy of the teacher's logits on the synthetic batch and its target classes (SRe2L)."""

    name = "ce"

    def __call__(self, step: Step) -> torch.Tensor:
        return F.cross_entropy(step.logits, step.labels)


@register_loss
class BNStats(LossTerm):
    """SRe2L's BN matching: every BN layer's input statistics vs. its running statistics, first layer x r_1."""

    name = "bn_stats"

    def prepare(self, engine: "Engine") -> None:
        _require_bn(engine, self.name)

    def __call__(self, step: Step) -> torch.Tensor:
        mods = step.recorder.bn_modules
        scale = _rescale(list(mods), step.engine.cfg.first_bn_multiplier)
        total = step.x.new_zeros(())
        for name, x in step.recorder.bn.items():
            m = mods[name]
            mean, var = channel_stats(x)
            total = total + scale[name] * _stat_distance(m.running_mean, m.running_var, mean, var)
        return total


@register_loss
class ClassBNStats(LossTerm):
    """LPLD's class-wise BN matching: each class's batch statistics vs. that class's BN statistics.

    Targets are the teacher's ``class_running_mean`` / ``class_running_var`` buffers when present,
    else exact per-class statistics the engine collects in one pass over the real data.
    With one class per batch (LPLD) the average over classes is LPLD's loss itself.
    """

    name = "class_bn_stats"

    def prepare(self, engine: "Engine") -> None:
        for i in range(len(engine.teachers)):
            engine.class_bn_targets(i)

    def __call__(self, step: Step) -> torch.Tensor:
        targets = step.engine.class_bn_targets(step.teacher_index)
        scale = _rescale(list(step.recorder.bn_modules), step.engine.cfg.first_bn_multiplier)
        classes = step.labels.unique()
        total = step.x.new_zeros(())
        for name, x in step.recorder.bn.items():
            t_mean, t_var = targets[name]
            for c in classes:
                mean, var = channel_stats(x[step.labels == c])
                total = total + scale[name] * _stat_distance(t_mean[c], t_var[c], mean, var)
        return total / len(classes)


class _EMATarget:
    """G-VBSM's trick: the matched value is ``ema + stat - stat.detach()`` (value of the EMA, gradient
    of the current batch), with ``ema = alpha * ema + (1 - alpha) * stat`` starting from 0, as their hooks
    do (``dd_var = 0.`` is a float, so their "first call" branch ``isinstance(self.dd_var, int)`` never
    runs): the first matched value is ``(1 - alpha) * stat``, not ``stat``."""

    def __init__(self):
        self.state: dict[Any, torch.Tensor] = {}

    def reset(self) -> None:
        self.state.clear()

    def __call__(self, key, stat: torch.Tensor, alpha: float) -> torch.Tensor:
        d = stat.detach()
        prev = self.state.get(key)
        ema = (1 - alpha) * d if prev is None else alpha * prev + (1 - alpha) * d
        self.state[key] = ema
        return ema + stat - d


def _first_layer(model: nn.Module) -> str | None:
    """The first BN or conv layer in ``named_modules`` order (G-VBSM multiplies its statistic)."""
    for n, m in model.named_modules():
        if isinstance(m, (nn.BatchNorm2d, nn.Conv2d)):
            return n
    return None


@register_loss
class BNStatsEMA(LossTerm):
    """G-VBSM's BN statistic: ``bn_stats`` against the EMA-smoothed batch statistics (alpha = ema_momentum)."""

    name = "bn_stats_ema"

    def __init__(self):
        self.ema = _EMATarget()

    def prepare(self, engine: "Engine") -> None:
        _require_bn(engine, self.name)

    def start_batch(self, engine: "Engine") -> None:
        self.ema.reset()

    def __call__(self, step: Step) -> torch.Tensor:
        cfg = step.engine.cfg
        first = _first_layer(step.teacher)
        total = step.x.new_zeros(())
        for name, x in step.recorder.bn.items():
            m = step.recorder.bn_modules[name]
            mean, var = channel_stats(x)
            key = (step.teacher_index, name)
            mean = self.ema(key + ("mean",), mean, cfg.ema_momentum)
            var = self.ema(key + ("var",), var, cfg.ema_momentum)
            r = cfg.first_bn_multiplier if name == first else 1.0
            total = total + r * _stat_distance(m.running_mean, m.running_var, mean, var)
        return total


@register_loss
class ConvStats(LossTerm):
    """G-VBSM's generalised statistics: channel mean/var and patch mean/var of every conv layer's input
    against targets precomputed once from real data (four L2 norms per layer, EMA trick as above)."""

    name = "conv_stats"
    needs_conv = True

    def __init__(self):
        self.ema = _EMATarget()

    def prepare(self, engine: "Engine") -> None:
        for i in range(len(engine.teachers)):
            engine.conv_targets(i)

    def start_batch(self, engine: "Engine") -> None:
        self.ema.reset()

    def __call__(self, step: Step) -> torch.Tensor:
        cfg = step.engine.cfg
        targets = step.engine.conv_targets(step.teacher_index)
        first = _first_layer(step.teacher)
        total = step.x.new_zeros(())
        for name, x in step.recorder.conv.items():
            if cfg.conv_drop_rate and torch.rand((), generator=step.gen).item() < cfg.conv_drop_rate:
                continue
            t = targets[name]
            mean, var = channel_stats(x)
            pm, pv = patch_stats(x, cfg.patch_size)
            key = (step.teacher_index, name)
            mean, var = self.ema(key + ("m",), mean, cfg.ema_momentum), self.ema(key + ("v",), var, cfg.ema_momentum)
            pm, pv = self.ema(key + ("pm",), pm, cfg.ema_momentum), self.ema(key + ("pv",), pv, cfg.ema_momentum)
            r = cfg.first_bn_multiplier if name == first else 1.0
            total = total + r * (_stat_distance(t["mean"], t["var"], mean, var)
                                 + _stat_distance(t["patch_mean"], t["patch_var"], pm, pv))
        return total


def densify_loss(x: torch.Tensor, labels: torch.Tensor, tau: float = 4.0, pool: int = 32) -> torch.Tensor:
    """G-VBSM's data densification: per class, images pooled to ``pool`` px and flattened (X_c),
    ``G = X_c X_c^T``, eigenvalues ``lam``; the term is ``sum_c KL(softmax(lam / tau) || softmax(lam))``
    with the target detached, which pulls the spectrum flatter (more diverse images within a class).
    Classes with one image contribute nothing."""
    side = min(pool, x.shape[-1])
    feats = F.adaptive_avg_pool2d(x, side).flatten(1)
    total = x.new_zeros(())
    for c in labels.unique():
        xc = feats[labels == c]
        if len(xc) < 2:
            continue
        lam = torch.linalg.eigvalsh(xc @ xc.t())
        total = total + F.kl_div(F.log_softmax(lam, dim=0), F.softmax(lam / tau, dim=0).detach(), reduction="sum")
    return total


@register_loss
class Densify(LossTerm):
    """G-VBSM's data densification on the augmented batch the teacher sees (their ``inputs_jit``: crop, flip,
    jitter), per class; see :func:`densify_loss`."""

    name = "densify"
    uses_teacher = False

    def __call__(self, step: Step) -> torch.Tensor:
        cfg = step.engine.cfg
        return densify_loss(step.x, step.labels, cfg.tau, cfg.dd_pool)


def dm_mean_loss(embed, real_by_class: dict[int, torch.Tensor], syn: torch.Tensor, labels: torch.Tensor,
                 augment=None) -> torch.Tensor:
    """DM: ``sum_c sum((mean(embed(real_c)) - mean(embed(syn_c)))^2)``; ``augment(c)`` returns one Siamese
    augmentation for class ``c`` applied to both batches (None: no augmentation)."""
    total = syn.new_zeros(())
    for c in labels.unique().tolist():
        real, s = real_by_class[c], syn[labels == c]
        if augment is not None:
            aug = augment(c)
            real, s = aug(real), aug(s)
        total = total + ((embed(real).mean(0) - embed(s).mean(0)) ** 2).sum()
    return total


@register_loss
class DMMean(LossTerm):
    """DM's per-class mean-embedding matching with a freshly initialised network every iteration."""

    name = "dm_mean"
    uses_teacher = False

    def __call__(self, step: Step) -> torch.Tensor:
        engine = step.engine
        net = engine.new_embedding_net(step.gen)
        embed = getattr(net, "embed", net)
        classes = step.labels.unique().tolist()
        real = {c: engine.real_batch(c, engine.cfg.batch_real, step.gen) for c in classes}
        augment = (lambda c: engine.dsa(step.gen)) if engine.cfg.dsa else None
        return dm_mean_loss(embed, real, step.x_syn, step.labels, augment)
