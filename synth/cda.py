"""CDA: Curriculum Data Augmentation (Yin & Shen, TMLR 2024), SRe2L with an easy-to-hard crop schedule.

Origin: VILA-Lab/SRe2L, ``CDA/recover_cda_*.py`` and ``CDA/README.md``. Identical to SRe2L except the
RandomResizedCrop scale: ``(min_crop, 1)`` with ``min_crop`` cosine-decayed from 1.0 to 0.08 over
``milestone * iterations`` (``--easy2hard-mode cosine --milestone 1``). ImageNet-21K runs without
normalisation (pass mean 0 and std 1; images are clamped to [0, 1]).
"""

from ._registry import register_method
from .config import FMNIST_28PX, FMNIST_STAT_WEIGHT
from .sre2l import sre2l_cfg

__all__ = ["cda_cfg"]


def cda_cfg(**kwargs):
    kwargs.setdefault("min_scale", 0.08)
    return sre2l_cfg(method="cda", crop_curriculum="cosine", milestone=1.0, **kwargs)


@register_method("cda.in1k")
def cda_in1k():
    """ImageNet-1K (CDA/README.md): bs 100, lr 0.25, r_bn 0.01, 4K iterations."""
    return cda_cfg(r_bn=0.01, lr=0.25, iterations=4000, batch_size=100, jitter=32)


@register_method("cda.in21k")
def cda_in21k():
    """ImageNet-21K-P (CDA/README.md): bs 100, lr 0.05, r_bn 0.25, 2K iterations, no normalisation."""
    return cda_cfg(r_bn=0.25, lr=0.05, iterations=2000, batch_size=100, jitter=32)


@register_method("cda.tiny")
def cda_tiny():
    """Tiny-ImageNet (CDA/README.md): lr 0.4, r_bn 0.05, 4K iterations; jitter 4 one-sided, ``randint(0, 4)``
    (``recover_cda_tiny.py``; SRe2L's own Tiny script draws two-sided)."""
    return cda_cfg(r_bn=0.05, lr=0.4, iterations=4000, batch_size=100, jitter=4)


@register_method("cda.fmnist")
def cda_fmnist():
    """Fashion-MNIST, 28 px (ours): SRe2L's ``sre2l.fmnist`` with the crop curriculum from 1 down to 0.25."""
    return cda_cfg(r_bn=FMNIST_STAT_WEIGHT, batch_size=100, **FMNIST_28PX)


@register_method("cda.test")
def cda_test():
    return cda_cfg(r_bn=0.01, lr=0.25, iterations=2, batch_size=10, jitter=1)
