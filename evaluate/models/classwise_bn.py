"""Class-wise batch-norm statistics, the teacher LPLD recovers against (He et al., NeurIPS 2024).

Origin: he-y/soft-label-pruning-for-dataset-distillation, ``recover/models/resnet_class.py``.
LPLD's ``ClassAwareBatchNorm2d`` keeps, beside the usual running statistics, buffers
``class_running_mean`` and ``class_running_var`` of shape ``[num_classes, C]`` (zeros / ones), and
when called in eval mode with labels it updates, for every class present in the batch, an EMA of
that batch's within-class channel mean and (biased) variance of the BN *input*:
``stat = (1 - m) * stat + m * batch_stat`` with ``m = 0.1``. The normal BN output is unchanged.

Here no architecture is rewritten: :func:`convert_to_classwise_bn` changes the class of every
``BatchNorm2d`` (subclasses too, e.g. timm's ``BatchNormAct2d``) in place to a class-aware
version, and :func:`class_labels` hands the labels to those modules for one forward pass.
``momentum=None`` replaces the EMA by exact pooled statistics over everything seen (Chan's parallel
update with a per-class count), which equals the per-class statistics of the whole data set up to
float rounding, whatever the batching.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable

import torch
from torch import nn

from ..errors import EvaluateError

__all__ = [
    "ClassAwareBatchNorm2d", "convert_to_classwise_bn", "class_labels", "collect_class_stats", "class_stats",
    "reset_class_stats", "has_classwise_bn",
]


class _ClassAwareMixin:
    """Adds per-class running statistics to a BatchNorm2d (or subclass); see the module docstring."""

    class_labels: torch.Tensor | None = None

    def _init_class_stats(self, num_classes: int, momentum: float | None) -> None:
        c = self.num_features
        dev = self.weight.device if self.weight is not None else None
        self.num_classes = int(num_classes)
        self.class_momentum = momentum
        self.register_buffer("class_running_mean", torch.zeros(num_classes, c, device=dev))
        self.register_buffer("class_running_var", torch.ones(num_classes, c, device=dev))
        # values per class folded in so far (samples x H x W); drives momentum=None pooling
        self.register_buffer("class_num_samples", torch.zeros(num_classes, dtype=torch.float64, device=dev))
        self.class_labels = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.class_labels is not None and not self.training:
            self.update_class_stats(x, self.class_labels)
        return super().forward(x)

    @torch.no_grad()
    def update_class_stats(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        """Fold the within-class statistics of ``x`` (the BN input) into the class buffers."""
        labels = torch.as_tensor(labels, device=x.device).long().reshape(-1)
        if labels.numel() != x.shape[0]:
            raise EvaluateError(f"class-wise BN got {labels.numel()} labels for a batch of {x.shape[0]}")
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise EvaluateError(f"class-wise BN labels must lie in [0, {self.num_classes}), "
                                f"got {labels.min().item()}..{labels.max().item()}")
        # per-class sums over (samples, H, W) in float64, for the classes present only
        classes, slot = labels.unique(return_inverse=True)
        xd = x.detach().double()
        n_b = torch.zeros(len(classes), dtype=torch.float64, device=x.device)
        n_b.index_add_(0, slot, torch.full((len(labels),), float(x[0, 0].numel()), dtype=torch.float64, device=x.device))
        total = torch.zeros(len(classes), x.shape[1], dtype=torch.float64, device=x.device)
        total.index_add_(0, slot, xd.sum((2, 3)))
        squares = torch.zeros_like(total).index_add_(0, slot, (xd * xd).sum((2, 3)))
        mean_b = total / n_b[:, None]
        var_b = (squares / n_b[:, None] - mean_b * mean_b).clamp_min(0.0)  # biased, as LPLD's var(unbiased=False)
        mean_a = self.class_running_mean[classes].double()
        var_a = self.class_running_var[classes].double()
        if self.class_momentum is None:  # exact pooled statistics (Chan et al.'s parallel update)
            n_a = self.class_num_samples[classes][:, None]
            n = n_a + n_b[:, None]
            delta = mean_b - mean_a
            mean = mean_a + delta * (n_b[:, None] / n)
            var = (var_a * n_a + var_b * n_b[:, None] + delta * delta * (n_a * n_b[:, None] / n)) / n
        else:  # LPLD: EMA of per-batch within-class statistics
            m = self.class_momentum
            mean = (1 - m) * mean_a + m * mean_b
            var = (1 - m) * var_a + m * var_b
        self.class_running_mean[classes] = mean.to(self.class_running_mean.dtype)
        self.class_running_var[classes] = var.to(self.class_running_var.dtype)
        self.class_num_samples[classes] += n_b

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "class_num_samples"
        if key not in state_dict and prefix + "class_running_mean" in state_dict:
            state_dict[key] = torch.zeros_like(self.class_num_samples)  # LPLD checkpoints carry no counts
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_classes={self.num_classes}, class_momentum={self.class_momentum}"


class ClassAwareBatchNorm2d(_ClassAwareMixin, nn.BatchNorm2d):
    """LPLD's class-aware BN as a standalone module (a plain BatchNorm2d plus class buffers)."""

    def __init__(self, num_features: int, num_classes: int, class_momentum: float | None = 0.1, **bn_kwargs):
        nn.BatchNorm2d.__init__(self, num_features, **bn_kwargs)
        self._init_class_stats(num_classes, class_momentum)


_TYPES: dict[type, type] = {nn.BatchNorm2d: ClassAwareBatchNorm2d}


def _class_aware_type(cls: type) -> type:
    """The class-aware twin of a BatchNorm2d subclass (created once per class)."""
    if cls not in _TYPES:
        _TYPES[cls] = type(f"ClassAware{cls.__name__}", (_ClassAwareMixin, cls), {"__module__": __name__})
    return _TYPES[cls]


def convert_to_classwise_bn(model: nn.Module, num_classes: int, momentum: float | None = 0.1) -> nn.Module:
    """Make every BatchNorm2d of ``model`` class-aware, in place; returns ``model``.

    ``momentum`` 0.1 is LPLD's EMA; ``None`` keeps exact pooled per-class statistics.
    Parameters, running statistics, device and hooks are untouched; a model with no BatchNorm2d is an error.
    """
    count = 0
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and not isinstance(m, _ClassAwareMixin):
            m.__class__ = _class_aware_type(type(m))
            m._init_class_stats(num_classes, momentum)
            count += 1
        elif isinstance(m, _ClassAwareMixin):
            count += 1
    if count == 0:
        raise EvaluateError(f"{type(model).__name__} has no BatchNorm2d layer, so it cannot keep class-wise BN statistics")
    return model


def has_classwise_bn(model: nn.Module) -> bool:
    return any(isinstance(m, _ClassAwareMixin) for m in model.modules())


def _class_modules(model: nn.Module) -> list[nn.Module]:
    mods = [m for m in model.modules() if isinstance(m, _ClassAwareMixin)]
    if not mods:
        raise EvaluateError("the model has no class-aware BN layers; call convert_to_classwise_bn(model, num_classes) first")
    return mods


@contextmanager
def class_labels(model: nn.Module, labels: torch.Tensor):
    """Within the block, eval-mode forward passes of ``model`` update class statistics for ``labels``."""
    mods = _class_modules(model)
    for m in mods:
        m.class_labels = labels
    try:
        yield model
    finally:
        for m in mods:
            m.class_labels = None


def reset_class_stats(model: nn.Module) -> None:
    for m in _class_modules(model):
        m.class_running_mean.zero_()
        m.class_running_var.fill_(1.0)
        m.class_num_samples.zero_()


@torch.no_grad()
def collect_class_stats(model: nn.Module, loader: Iterable, device: str | torch.device = "cpu",
                        progress: bool = False) -> int:
    """One eval-mode pass over ``loader`` (``(images, labels)`` batches) updating the class statistics.

    Returns the number of images seen. This is LPLD's ``forward_once`` step.
    """
    from ..train import MetricLogger

    model.eval()
    seen = 0
    for images, labels in MetricLogger(enabled=progress).log_every(loader, "class BN stats"):
        with class_labels(model, labels.to(device)):
            model(images.to(device))
        seen += len(labels)
    return seen


def class_stats(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{module name: (class_running_mean, class_running_var)}`` for every class-aware BN."""
    return {n: (m.class_running_mean, m.class_running_var) for n, m in model.named_modules()
            if isinstance(m, _ClassAwareMixin)}
