"""SRe2L: Squeeze, Recover and Relabel (Yin, Xing & Shen, NeurIPS 2023).

Origin: VILA-Lab/SRe2L, ``SRe2L/recover/data_synthesis.py`` (+ ``recover.sh``, ``recover_tiny.sh``,
``recover_cifar.sh``). Noise images in normalised space; each batch holds one image of many
classes; loss ``CE + r_bn * sum_l r_l (||var_l - var_b||_2 + ||mean_l - mean_b||_2)`` on the BN
inputs with ``r_1 = first_bn_multiplier``; Adam(0.5, 0.9), cosine lr without warm-up; per
iteration one RandomResizedCrop(scale 0.08..1) + flip for the whole batch, then a roll jitter;
clamp to the valid pixel range. The last iterate is saved. (tv_l2 and l2_scale are 0 in every
released script, so they are left out.)
"""

from ._registry import register_method
from .config import FMNIST_28PX, FMNIST_STAT_WEIGHT, RecoverConfig

__all__ = ["sre2l_cfg"]


def sre2l_cfg(r_bn: float = 0.01, **kwargs) -> RecoverConfig:
    """SRe2L's family defaults (``data_synthesis.py`` argparse) with ``r_bn`` as bn_stats' weight."""
    kwargs.setdefault("method", "sre2l")
    return RecoverConfig(loss={"ce": 1.0, "bn_stats": r_bn}, **kwargs)


@register_method("sre2l.in1k")
def sre2l_in1k():
    """ImageNet-1K, ResNet-18 teacher, 224 px (recover.sh / README)."""
    return sre2l_cfg(
        r_bn=0.01,  # --r-bn 0.01 (recover.sh)
        lr=0.25,  # --lr 0.25 (recover.sh)
        iterations=4000,  # --iteration 4000 (recover.sh)
        batch_size=100,  # --batch-size 100: 100 classes, one image each
        jitter=32,  # argparse default, one-sided randint(0, 32)
        first_bn_multiplier=10.0,  # argparse default
    )


@register_method("sre2l.tiny")
def sre2l_tiny():
    """Tiny-ImageNet, 64 px, ResNet-18 with a 3x3 stem (recover_tiny.sh)."""
    return sre2l_cfg(r_bn=1.0, lr=0.1, iterations=4000, batch_size=100, jitter=4, jitter_two_sided=True)


@register_method("sre2l.cifar100")
def sre2l_cifar100():
    """CIFAR-100, 32 px (recover_cifar.sh): lr 0.25, 1000 iterations, r_bn 0.01, jitter 4 one-sided."""
    return sre2l_cfg(r_bn=0.01, lr=0.25, iterations=1000, batch_size=100, jitter=4)


@register_method("sre2l.fmnist")
def sre2l_fmnist():
    """Fashion-MNIST, 28 px (ours): the shared 28 px budget (``config.FMNIST_28PX``: random real init,
    1000 iterations, lr 0.01, min scale 0.25, jitter 4), r_bn 1, batches of one image per class."""
    return sre2l_cfg(r_bn=FMNIST_STAT_WEIGHT, batch_size=100, **FMNIST_28PX)


@register_method("sre2l.test")
def sre2l_test():
    """Tiny scale for tests: two iterations, small batches, 1 px jitter."""
    return sre2l_cfg(r_bn=0.01, lr=0.25, iterations=2, batch_size=10, jitter=1)
