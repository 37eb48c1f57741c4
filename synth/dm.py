"""DM: Dataset Condensation with Distribution Matching (Zhao & Bilen, WACV 2023).

Origin: VICO-UoE/DatasetCondensation, ``main_DM.py``, ``utils.py`` (DSA), ``networks.py``. No
teacher: every iteration draws a freshly initialised network (frozen, train mode) and, for each
class, matches the mean embedding of ``batch_real`` random real images to that of the class's
synthetic images, both passed through the *same* DSA draw; the summed squared distances take one
SGD step (momentum 0.5) on the pixels. Initialised from random real images, no clamping.
The network comes from ``model_fn``, which the caller must pass: synth defines no network of its
own (``ddpipe recover`` passes DM's ConvNet from ``ddpipe.evaluate.models``, ``--dm-model``,
default ``convnet``: width 128, depth 3, instance norm, average pooling).
"""

from ._registry import register_method
from .config import RecoverConfig

__all__ = ["dm_cfg", "DSA_STRATEGY"]

DSA_STRATEGY = "color_crop_cutout_flip_scale_rotate"  # main_DM.py --dsa_strategy default


def dm_cfg(**kwargs) -> RecoverConfig:
    kwargs.setdefault("dsa", DSA_STRATEGY)
    return RecoverConfig(method="dm", loss={"dm_mean": 1.0}, optimizer="sgd", momentum=0.5, lr_schedule="constant",
                         batching="all", init="real", clamp=False, random_crop=False, flip=False, jitter=0, **kwargs)


@register_method("dm.cifar10")
def dm_cifar10():
    """main_DM.py defaults: 20000 iterations, lr_img 1.0 (README: 10 for IPC >= 100), batch_real 256, real init."""
    return dm_cfg(lr=1.0, iterations=20000, batch_real=256)


@register_method("dm.fmnist")
def dm_fmnist():
    """Fashion-MNIST, 28 px on a CPU budget (ours): DM's SGD lr 1, momentum 0.5, real init and DSA, but
    500 iterations with 64 real images per class; ``ddpipe bench recover`` pairs it with ``--dm-model
    convnet_d3_w32`` (DM's ConvNet at width 32). DM's 20,000 width-128 iterations would take ~2 CPU-days here;
    on held-out images width 128, 256 real images per class or lr 10 were no better (within noise) and
    2000 iterations worse (docs/synth.md), so this is the cheapest of them."""
    return dm_cfg(lr=1.0, iterations=500, batch_real=64)


@register_method("dm.test")
def dm_test():
    return dm_cfg(lr=1.0, iterations=2, batch_real=32)
