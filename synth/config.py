"""The record every recover method is: one frozen dataclass, overridden sparsely by recipes.

Defaults are SRe2L's (``VILA-Lab/SRe2L``, ``recover/data_synthesis.py``); a family's ``_cfg()``
changes only what differs, and a recipe (``method.tag``) only what its paper's script sets.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .errors import SynthConfigError

__all__ = ["RecoverConfig", "BATCHINGS", "INITS", "OPTIMIZERS", "SELECTIONS", "FMNIST_28PX", "FMNIST_STAT_WEIGHT"]

RDED_FIELDS = ("factor", "num_crop", "mipc")
"""RecoverConfig fields only RDED reads; ``to_dict`` leaves them out of other recipes' records (fingerprints)."""

BATCHINGS = ("mixed", "class", "all")
INITS = ("noise", "real", "top", "min", "medium")
OPTIMIZERS = ("adam", "sgd")
SELECTIONS = ("random", "herding", "rded")

# The one fixed budget of every SRe2L-family ``*.fmnist`` recipe (Fashion-MNIST: 28 px grey images, a
# 3-layer 32-channel BN ConvNet teacher). Ours, not a paper's, and the same for sre2l, cda, lpld,
# gvbsm and delt: start from seeded random real images (the very images the ``random`` baseline
# selects; DELT keeps its own ranked real images), take 1000 Adam steps at lr 0.01, with crops down to a
# quarter of the area (the relabel's crop range at 28 px) and 4 px jitter (SRe2L's 32 px value). The lr was
# chosen once for all of them on held-out training images, never the test set (docs/synth.md): the papers'
# 0.25 rewrites a 28 px image and its students trail random real images.
FMNIST_28PX = dict(init="real", iterations=1000, lr=0.01, jitter=4, min_scale=0.25)
# Weight of every statistic-matching term (SRe2L's r_bn, G-VBSM's r_loss) in the ``*.fmnist`` recipes:
# SRe2L's own small-image value (recover_tiny.sh). With the ImageNet value 0.01, a three-BN-layer
# teacher's statistic term is ~1% of the cross-entropy and the images drift off the BN statistics.
FMNIST_STAT_WEIGHT = 1.0


@dataclass(frozen=True)
class RecoverConfig:
    method: str = "sre2l"  # family name (registry key without the tag)
    recipe: str = ""  # family.tag this config came from (filled by create_method)
    # --- the loss: a weighted sum of registered terms -------------------------------------------
    loss: dict = field(default_factory=lambda: {"ce": 1.0, "bn_stats": 0.01})  # term -> weight (r_bn is bn_stats' weight)
    first_bn_multiplier: float = 10.0  # SRe2L: the first hooked layer's statistic counts x10
    # --- optimiser -------------------------------------------------------------------------------
    optimizer: str = "adam"  # adam (SRe2L family) | sgd (DM)
    lr: float = 0.25
    betas: tuple = (0.5, 0.9)  # SRe2L's Adam betas
    eps: float = 1e-8
    momentum: float = 0.5  # SGD only (DM: 0.5)
    lr_schedule: str = "cosine"  # cosine: 0.5 * (1 + cos(pi * it / iterations)) * lr, no warm-up | constant
    iterations: int = 1000
    # --- batches -----------------------------------------------------------------------------------
    batching: str = "mixed"  # mixed: one image of many classes (SRe2L) | class: whole classes (LPLD, G-VBSM, DELT) | all (DM)
    batch_size: int = 100
    classes_per_batch: int | None = None  # class batching: whole classes per batch (LPLD: 1); None = batch_size // ipc
    # --- initialisation ----------------------------------------------------------------------------
    init: str = "noise"  # noise (randn, normalised space) | real (random real) | top | min | medium (DELT ranking)
    # --- per-iteration augmentation of the synthetic batch ----------------------------------------
    random_crop: bool = True  # RandomResizedCrop to the input size, one crop for the whole batch
    min_scale: float = 0.08  # RandomResizedCrop scale (min_scale, 1)
    crop_curriculum: str | None = None  # "cosine": CDA, min scale 1.0 -> min_scale over milestone * iterations
    milestone: float = 1.0
    flip: bool = True  # random horizontal flip (set False for digits)
    jitter: int = 32  # torch.roll by randint(0, jitter) (one-sided, SRe2L) per spatial axis
    jitter_two_sided: bool = False  # randint(-jitter, jitter) (SRe2L's Tiny-ImageNet script)
    dsa: str | None = None  # DM: DSA strategy, e.g. "color_crop_cutout_flip_scale_rotate"; None or "" = none
    clamp: bool = True  # clamp each channel to the valid pixel range after every step
    # --- early-late rounds (DELT) ----------------------------------------------------------------
    round_iterations: int | None = None  # ROUND_ITR; None = every image gets all iterations
    # --- G-VBSM ----------------------------------------------------------------------------------------
    ema_momentum: float = 0.4  # alpha of the EMA target of batch statistics
    tau: float = 4.0  # densification temperature
    dd_pool: int = 32  # images pooled to this side before the Gram matrix
    patch_size: int = 16  # side of the patches of the patch statistics
    conv_drop_rate: float = 0.0  # probability of dropping a conv layer's statistic in an iteration
    stats_batch_size: int = 256  # batch of the one pass over the real data (class BN, conv statistics)
    # --- DM ------------------------------------------------------------------------------------------
    batch_real: int = 256  # real images per class per iteration
    # --- RDED (synth/rded.py): stitched teacher-scored patches of real images ------------------------
    factor: int = 2  # each synthetic image is factor x factor patches
    num_crop: int = 5  # random crops scored per real image
    mipc: int = 300  # real images per class the patches come from
    # --- selection baselines ---------------------------------------------------------------------------
    select: str | None = None  # random | herding | rded: real images (rded: patches of them) instead of optimising
    seed: int = 0

    def __post_init__(self) -> None:
        def check(name, value, allowed):
            if value not in allowed:
                raise SynthConfigError(f"{name} must be one of {', '.join(map(str, allowed))}, got {value!r}")

        check("batching", self.batching, BATCHINGS)
        check("init", self.init, INITS)
        check("optimizer", self.optimizer, OPTIMIZERS)
        check("lr_schedule", self.lr_schedule, ("cosine", "constant"))
        check("crop_curriculum", self.crop_curriculum, (None, "cosine"))
        if self.select is not None:
            check("select", self.select, SELECTIONS)
        if self.iterations < 0 or self.batch_size < 1:
            raise SynthConfigError(f"iterations must be >= 0 and batch_size >= 1, got {self.iterations}, {self.batch_size}")
        if self.round_iterations is not None and not 0 < self.round_iterations <= max(1, self.iterations):
            raise SynthConfigError(
                f"round_iterations must lie in (0, iterations={self.iterations}], got {self.round_iterations}")
        if min(self.factor, self.num_crop, self.mipc) < 1:
            raise SynthConfigError(f"factor, num_crop and mipc must be >= 1, got {self.factor}, {self.num_crop}, {self.mipc}")
        if not 0.0 < self.min_scale <= 1.0:
            raise SynthConfigError(f"min_scale must lie in (0, 1], got {self.min_scale}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        if self.select != "rded":  # RDED's fields only where they matter: other recipes' records stay as they were
            for name in RDED_FIELDS:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RecoverConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)
