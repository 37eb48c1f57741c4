"""DELT: Diversity-driven Early-Late Training (Shen, Wang, Yin & Liu, CVPR 2025).

Origin: VILA-Lab/DELT, ``recover/recover.py`` and ``data_selection.py``. What differs from SRe2L
(with CDA's curriculum): images start from real images ranked by the teacher's probability of
their class (``medium`` by default: nearest the class median first), and early-late rounds:
``R = ITR // ROUND_ITR``; a class's images split into R subsets, subset k joins at round k and is
optimised for ``(R - k) * ROUND_ITR`` iterations (see :func:`ddpipe.synth.engine.delt_schedule`).
Batches hold whole classes (bs 100 with IPC 50 is two classes), jitter is off, the cosine lr
spans all ITR iterations.
"""

from ._registry import register_method
from .config import FMNIST_28PX, FMNIST_STAT_WEIGHT, RecoverConfig

__all__ = ["delt_cfg"]


def delt_cfg(r_bn: float = 0.01, **kwargs) -> RecoverConfig:
    kwargs.setdefault("init", "medium")
    return RecoverConfig(method="delt", loss={"ce": 1.0, "bn_stats": r_bn}, batching="class",
                         crop_curriculum="cosine", milestone=1.0, jitter=0, **kwargs)


@register_method("delt.in1k")
def delt_in1k():
    """ImageNet-1K ResNet-18 (scripts): lr 0.25, r_bn 0.01, bs 100, ITR 4000, ROUND_ITR 500, medium init."""
    return delt_cfg(r_bn=0.01, lr=0.25, batch_size=100, iterations=4000, round_iterations=500)


@register_method("delt.fmnist")
def delt_fmnist():
    """Fashion-MNIST, 28 px (ours): the shared 28 px budget with DELT's own parts: medium-ranked real init,
    ITR 1000 with ROUND_ITR 125 (the 8 rounds of 4000 / 500), no jitter, crop curriculum down to 0.25."""
    budget = {k: v for k, v in FMNIST_28PX.items() if k not in ("init", "jitter")}
    return delt_cfg(r_bn=FMNIST_STAT_WEIGHT, batch_size=100, round_iterations=125, **budget)


@register_method("delt.test")
def delt_test():
    return delt_cfg(r_bn=0.01, lr=0.25, batch_size=10, iterations=4, round_iterations=2)
