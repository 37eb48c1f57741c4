"""G-VBSM: Generalized Various Backbone and Statistical Matching (Shao et al., CVPR 2024).

Origin: shaoshitong/G_VBSM_Dataset_Condensation, ``Branch_full_ImageNet_1k/recover/
data_synthesis_with_svd_with_db_with_all_statistic.py`` and ``utils.py``. What differs from SRe2L:
several teachers used round-robin, one per iteration (generalised backbone matching); BN
statistics matched against an EMA of the batch statistics, starting from 0 as their hooks do
(``bn_stats_ema``); the channel and 16x16-patch statistics of every convolution's input matched
against targets computed once from the real data (un-augmented; theirs crop and flip) and cached
(``conv_stats``); data densification, a KL term on the eigenvalue spectrum of each class's Gram
matrix of the augmented batch (``densify``); batches hold all IPC images of
``batch_size // ipc`` classes. The first hooked layer (the stem convolution) counts x10. Its
relabel uses the teacher ensemble: pass all teachers to ``ddpipe relabel``.
"""

from ._registry import register_method
from .config import FMNIST_28PX, FMNIST_STAT_WEIGHT, RecoverConfig

__all__ = ["gvbsm_cfg"]


def gvbsm_cfg(r_loss: float = 0.01, nuc_norm: float = 1.0, **kwargs) -> RecoverConfig:
    return RecoverConfig(method="gvbsm", loss={"ce": 1.0, "bn_stats_ema": r_loss, "conv_stats": r_loss,
                                               "densify": nuc_norm}, batching="class", **kwargs)


@register_method("gvbsm.in1k")
def gvbsm_in1k():
    """ImageNet-1K (recover.sh): bs 80 (8 classes at IPC 10), lr 0.1, 4000 iterations, r_loss 0.01, nuc_norm 1,
    tau 4, training momentum 0.4, drop rate 0, 16 px patches, 32 px densification pooling, jitter 32."""
    return gvbsm_cfg(r_loss=0.01, nuc_norm=1.0, batch_size=80, lr=0.1, iterations=4000, tau=4.0, ema_momentum=0.4,
                     conv_drop_rate=0.0, patch_size=16, dd_pool=32, jitter=32, first_bn_multiplier=10.0)


@register_method("gvbsm.cifar100")
def gvbsm_cifar100():
    """CIFAR-100 (scripts): bs 100, lr 0.05, 4000 iterations; jitter 4 and 4 px patches for 32 px images (ours)."""
    return gvbsm_cfg(r_loss=0.01, nuc_norm=1.0, batch_size=100, lr=0.05, iterations=4000, jitter=4, patch_size=4)


@register_method("gvbsm.fmnist")
def gvbsm_fmnist():
    """Fashion-MNIST, 28 px (ours): the shared 28 px budget, r_loss 1, nuc_norm 1, all ten classes in one
    batch, 4 px patches (as ``gvbsm.cifar100``), densification on the full 28 px images."""
    return gvbsm_cfg(r_loss=FMNIST_STAT_WEIGHT, nuc_norm=1.0, batch_size=100, patch_size=4, dd_pool=28, **FMNIST_28PX)


@register_method("gvbsm.test")
def gvbsm_test():
    return gvbsm_cfg(r_loss=0.01, nuc_norm=1.0, batch_size=10, lr=0.1, iterations=2, jitter=1, patch_size=4, dd_pool=8)
