"""LPLD: Label Pruning for Large-scale Distillation (Xiao & He, NeurIPS 2024), class-wise BN recover.

Origin: he-y/soft-label-pruning-for-dataset-distillation, ``recover/data_synthesis_class.py`` and
``recover/utils_recover.py``. What differs from SRe2L: one class per batch (``--batch-size $ipc``),
and each BN layer's input statistics are matched against that *class's* statistics
(``class_running_mean[c]``, ``class_running_var[c]``) rather than the global running ones.
Targets come from the teacher's class buffers when it has them (LPLD's ``forward_once`` pass, e.g.
``ddpipe.evaluate.models.collect_class_stats``); otherwise the engine collects exact per-class
statistics in one pass over the real data. Everything else is SRe2L's.
"""

from ._registry import register_method
from .config import FMNIST_28PX, FMNIST_STAT_WEIGHT, RecoverConfig

__all__ = ["lpld_cfg"]


def lpld_cfg(r_bn: float = 0.01, **kwargs) -> RecoverConfig:
    return RecoverConfig(method="lpld", loss={"ce": 1.0, "class_bn_stats": r_bn}, batching="class",
                         classes_per_batch=1, **kwargs)


@register_method("lpld.in1k")
def lpld_in1k():
    """ImageNet-1K (scripts/imagenet1k_recover.sh): lr 0.25, 4000 iterations, r_bn 0.01, one class per batch."""
    return lpld_cfg(r_bn=0.01, lr=0.25, iterations=4000, jitter=32, first_bn_multiplier=10.0)


@register_method("lpld.tiny")
def lpld_tiny():
    """Tiny-ImageNet (scripts/tiny_recover.sh): lr 0.1, r_bn 0.05, 4000 iterations, two-sided jitter 4."""
    return lpld_cfg(r_bn=0.05, lr=0.1, iterations=4000, jitter=4, jitter_two_sided=True)


@register_method("lpld.in21k")
def lpld_in21k():
    """ImageNet-21K-P (scripts/in21k_recover.sh): lr 0.05, r_bn 0.25, 2000 iterations, CDA crop curriculum,
    no normalisation (pass mean 0, std 1)."""
    return lpld_cfg(r_bn=0.25, lr=0.05, iterations=2000, jitter=32, crop_curriculum="cosine", milestone=1.0)


@register_method("lpld.fmnist")
def lpld_fmnist():
    """Fashion-MNIST, 28 px (ours): the shared 28 px budget, class-wise BN matching at weight 1, one class per batch."""
    return lpld_cfg(r_bn=FMNIST_STAT_WEIGHT, **FMNIST_28PX)


@register_method("lpld.test")
def lpld_test():
    return lpld_cfg(r_bn=0.01, lr=0.25, iterations=2, jitter=1)
