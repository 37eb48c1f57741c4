"""Replay schedules: sample order, RandomResizedCrop boxes, flips, cutout and CutMix/Mixup.

Every draw comes from numpy's ``Generator`` seeded by a fixed tuple, never from torch's RNG, so
a schedule is a pure function of ``(seed, epoch)`` for the order and ``(seed, epoch, batch)`` for
a batch's parameters: any unit can be generated alone, in any order, in any process. Relabel
writes the result into the store; training reads it back and never re-derives it.

Pixel semantics (used identically by relabel, the torch backend and DALI): a stored crop
``(top, left, height, width)`` in fractions of the source image of ``H x W`` pixels is the pixel
box ``y = round(top*H), x = round(left*W), h = round(height*H), w = round(width*W)`` (round half
up, then clamped inside the image with ``h, w >= 1``). Crops are generated as integer boxes with
torchvision's ``RandomResizedCrop`` semantics and quantised exactly as the store keeps them
(uint16, ``fraction * 65535``), so the pixel box survives the round trip unchanged for images
under 65,535 pixels a side.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from typing import Any, Mapping

import numpy as np

from ..labelstore import MIX_KINDS, StoreSpec, Unit
from ..labelstore.layout import CROP_SCALE, FILL_CHANNELS, augmentation_fill
from .errors import LoaderSpecError

SCHEDULE_VERSION = 1

# Streams of the seed tuple: one generator per purpose, so adding draws to one never moves another.
_ORDER, _BATCH, _REPLAY = 0, 1, 2


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


def _pair(name: str, value: Any, cast=float) -> tuple:
    try:
        a, b = value if not isinstance(value, (int, float)) else (value, value)
        a, b = cast(a), cast(b)
    except (TypeError, ValueError):
        raise LoaderSpecError(f"{name} must be a pair of numbers, got {value!r}") from None
    return (a, b)


DDPIPE_ORDER = "ddpipe"
TORCH_SAMPLER_ORDER = "torch-sampler"
ORDERS = (DDPIPE_ORDER, TORCH_SAMPLER_ORDER)
"""Sample orders of an epoch. ``ddpipe``: numpy's permutation of the stream ``(seed, 0, epoch)``.
``torch-sampler``: the order SRe2L's relabel and ``train_FKD.py`` take from
``RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))`` iterated once per epoch
(:func:`torch_sampler_orders`), so a store in this order exports to their label folders."""

RANDOM_FILL = "random"
"""``ScheduleConfig.fill`` for a per-sample cutout colour, uniform in 0..255 per channel (LPLD's
``CutoutPILWithCoords``: ``random.randint(0, 255)`` for R, G and B of each image)."""


def _parse_fill(value: Any) -> tuple[int, ...] | str:
    """``"random"``, or a constant colour: one value or three, each an integer 0..255."""
    if isinstance(value, str):
        if value != RANDOM_FILL:
            raise LoaderSpecError(f"fill must be 0..255 per channel or {RANDOM_FILL!r}, got {value!r}")
        return value
    vals = value if not isinstance(value, (int, float, np.integer, np.floating)) else (value,)
    try:
        fill = tuple(int(v) for v in vals)
    except (TypeError, ValueError):
        raise LoaderSpecError(f"fill must be 0..255 per channel or {RANDOM_FILL!r}, got {value!r}") from None
    if len(fill) not in (1, FILL_CHANNELS) or any(not 0 <= v <= 255 for v in fill):
        raise LoaderSpecError(f"fill must be one or three values 0..255 or {RANDOM_FILL!r}, got {value!r}")
    return fill


def constant_fill(fill: tuple[int, ...] | str) -> np.ndarray:
    """A constant fill as an RGB triple, uint8 ``[3]`` (zeros for ``"random"``, which has none):
    the store's rule for its augmentation record (:func:`ddpipe.labelstore.layout.augmentation_fill`)."""
    return augmentation_fill({"fill": fill})


@dataclass(frozen=True)
class ScheduleConfig:
    """What a replay schedule draws. Stored in the store spec's ``augmentation`` record."""

    output_size: tuple[int, int] = (224, 224)  # (height, width) of the images the model sees
    scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area range (fraction of the image)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # RandomResizedCrop aspect-ratio range (w / h)
    flip: float = 0.5  # probability of a horizontal flip
    mix: str = "none"  # none | cutmix | mixup (one draw per batch, SRe2L)
    mix_alpha: float = 1.0  # Beta(alpha, alpha) for lambda (SRe2L: cutmix 1.0, mixup 0.8)
    cutout: float = 0.0  # cutout box side as a fraction of the output (LPLD 21K: 0.5); 0 = none
    fill: tuple[int, ...] | str = (0, 0, 0)  # cutout colour, 0..255 (1 or 3 values), or "random": one per sample
    order: str = DDPIPE_ORDER  # "ddpipe" (numpy permutation per (seed, epoch)) | "torch-sampler" (SRe2L's RandomSampler)

    def __post_init__(self) -> None:
        s = object.__setattr__
        if self.order not in ORDERS:
            raise LoaderSpecError(f"order must be one of {ORDERS}, got {self.order!r}")
        oh, ow = _pair("output_size", self.output_size, int)
        if oh <= 0 or ow <= 0:
            raise LoaderSpecError(f"output_size must be positive, got {self.output_size!r}")
        s(self, "output_size", (oh, ow))
        lo, hi = _pair("scale", self.scale)
        if not 0 < lo <= hi <= 1:
            raise LoaderSpecError(f"scale must satisfy 0 < min <= max <= 1, got {self.scale!r}")
        s(self, "scale", (lo, hi))
        r0, r1 = _pair("ratio", self.ratio)
        if not 0 < r0 <= r1:
            raise LoaderSpecError(f"ratio must satisfy 0 < min <= max, got {self.ratio!r}")
        s(self, "ratio", (r0, r1))
        if not 0 <= float(self.flip) <= 1:
            raise LoaderSpecError(f"flip must be a probability in [0, 1], got {self.flip!r}")
        s(self, "flip", float(self.flip))
        if self.mix not in MIX_KINDS:
            raise LoaderSpecError(f"mix must be one of {MIX_KINDS}, got {self.mix!r}")
        if not float(self.mix_alpha) > 0:
            raise LoaderSpecError(f"mix_alpha must be positive, got {self.mix_alpha!r}")
        s(self, "mix_alpha", float(self.mix_alpha))
        if not 0 <= float(self.cutout) <= 1:
            raise LoaderSpecError(f"cutout must be a fraction in [0, 1], got {self.cutout!r}")
        s(self, "cutout", float(self.cutout))
        s(self, "fill", _parse_fill(self.fill))

    @property
    def random_fill(self) -> bool:
        """Each sample gets its own cutout colour, drawn by the schedule (LPLD)."""
        return self.fill == RANDOM_FILL

    def to_dict(self) -> dict:
        d = asdict(self)
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
        if d["order"] == DDPIPE_ORDER:
            del d["order"]  # ddpipe's own order is the default: records written before `order` existed stay equal
        d["schedule_version"] = SCHEDULE_VERSION
        return d

    @classmethod
    def from_dict(cls, data: Mapping) -> "ScheduleConfig":
        if not isinstance(data, Mapping):
            raise LoaderSpecError(f"a schedule config must be a mapping, got {type(data).__name__}")
        d = dict(data)
        version = d.pop("schedule_version", SCHEDULE_VERSION)
        if version != SCHEDULE_VERSION:
            raise LoaderSpecError(f"schedule_version {version!r} is not one this ddpipe knows ({SCHEDULE_VERSION})")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise LoaderSpecError(f"unknown schedule fields {unknown}; known fields are {sorted(known)}")
        return cls(**d)


RECIPES: dict[str, dict] = {
    # SRe2L / CDA relabel (relabel.sh): RRC(224, scale 0.08-1) + flip + CutMix(1.0) per batch.
    "sre2l": dict(output_size=(224, 224), scale=(0.08, 1.0), flip=0.5, mix="cutmix", mix_alpha=1.0),
    # SRe2L's released mixup labels: Mixup with alpha 0.8.
    "sre2l-mixup": dict(output_size=(224, 224), scale=(0.08, 1.0), flip=0.5, mix="mixup", mix_alpha=0.8),
    # LPLD ImageNet-21K: RRC + cutout (factor 0.5) in a random colour per image, no flip, no mix
    # (and no normalisation: loader side).
    "lpld-in21k": dict(output_size=(224, 224), scale=(0.08, 1.0), flip=0.0, mix="none", cutout=0.5, fill=RANDOM_FILL),
    # LPLD Tiny-ImageNet: 64 px, cutmix-free.
    "lpld-tiny": dict(output_size=(64, 64), scale=(0.08, 1.0), flip=0.5, mix="none"),
    # SRe2L's relabel in SRe2L's own batch order (torch's RandomSampler, seeded): exportable with
    # `ddpipe export sre2l` to a folder their unmodified train_FKD.py reads.
    "sre2l-torch": dict(output_size=(224, 224), scale=(0.08, 1.0), flip=0.5, mix="cutmix", mix_alpha=1.0,
                        order=TORCH_SAMPLER_ORDER),
}


def recipe(name: str, **overrides: Any) -> ScheduleConfig:
    """A named schedule recipe, with fields overridden where the override is not ``None``."""
    if name not in RECIPES:
        raise LoaderSpecError(f"unknown schedule recipe {name!r}; choose one of {sorted(RECIPES)}")
    return ScheduleConfig(**{**RECIPES[name], **{k: v for k, v in overrides.items() if v is not None}})


# --- pixel semantics --------------------------------------------------------------------------
def quantise_crops(crops: np.ndarray) -> np.ndarray:
    """Fractions as the store returns them: ``float32(round(f * 65535)) / 65535``."""
    q = np.rint(np.asarray(crops, dtype=np.float64) * CROP_SCALE).astype(np.uint16)
    return q.astype(np.float32) / np.float32(CROP_SCALE)


def crop_pixels(crops: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Pixel boxes ``int64 [b, 4] (y, x, h, w)`` of fractional crops on images of ``sizes [b, 2] (H, W)``."""
    c = np.asarray(crops, dtype=np.float64).reshape(-1, 4)
    hw = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
    H, W = hw[:, 0], hw[:, 1]
    h = np.clip(np.floor(c[:, 2] * H + 0.5).astype(np.int64), 1, H)
    w = np.clip(np.floor(c[:, 3] * W + 0.5).astype(np.int64), 1, W)
    y = np.clip(np.floor(c[:, 0] * H + 0.5).astype(np.int64), 0, H - h)
    x = np.clip(np.floor(c[:, 1] * W + 0.5).astype(np.int64), 0, W - w)
    return np.stack([y, x, h, w], axis=1)


def random_resized_crops(
    rng: np.random.Generator, sizes: np.ndarray, scale: tuple[float, float], ratio: tuple[float, float]
) -> np.ndarray:
    """Integer boxes ``[b, 4] (y, x, h, w)`` with torchvision's RandomResizedCrop semantics.

    Up to 10 attempts of (area uniform in ``scale``, log aspect uniform in ``log(ratio)``); the
    first box that fits is placed uniformly; if none fits, the centred crop clamped to ``ratio``.
    All ten attempts are drawn for every sample, so the stream does not depend on the outcome.
    """
    hw = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
    b = len(hw)
    H, W = hw[:, 0].astype(np.float64), hw[:, 1].astype(np.float64)
    area = H * W
    u_area = rng.uniform(scale[0], scale[1], size=(b, 10))
    u_ratio = rng.uniform(math.log(ratio[0]), math.log(ratio[1]), size=(b, 10))
    target = area[:, None] * u_area
    aspect = np.exp(u_ratio)
    w = np.rint(np.sqrt(target * aspect)).astype(np.int64)  # rint: half to even, like round()
    h = np.rint(np.sqrt(target / aspect)).astype(np.int64)
    fits = (w > 0) & (w <= hw[:, 1:2]) & (h > 0) & (h <= hw[:, 0:1])
    first = np.argmax(fits, axis=1)
    found = fits[np.arange(b), first]
    bh = h[np.arange(b), first]
    bw = w[np.arange(b), first]
    # Centre fallback (computed for every sample, used where no attempt fitted).
    in_ratio = W / H
    rmin, rmax = min(ratio), max(ratio)
    fw = np.where(in_ratio < rmin, W, np.where(in_ratio > rmax, np.rint(H * rmax), W)).astype(np.int64)
    fh = np.where(in_ratio < rmin, np.rint(W / rmin), H).astype(np.int64)
    bh = np.where(found, bh, fh)
    bw = np.where(found, bw, fw)
    u_y = rng.random(b)
    u_x = rng.random(b)
    y = np.where(found, np.floor(u_y * (hw[:, 0] - bh + 1)).astype(np.int64), (hw[:, 0] - bh) // 2)
    x = np.where(found, np.floor(u_x * (hw[:, 1] - bw + 1)).astype(np.int64), (hw[:, 1] - bw) // 2)
    return np.stack([y, x, bh, bw], axis=1)


def cutmix_box(rng: np.random.Generator, out_hw: tuple[int, int], alpha: float) -> tuple[np.ndarray, float]:
    """A CutMix box ``(y0, x0, y1, x1)`` (half-open output pixels) and lambda = 1 - box area / image area."""
    oh, ow = out_hw
    lam = float(rng.beta(alpha, alpha))
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(oh * cut), int(ow * cut)
    cy, cx = int(rng.integers(oh)), int(rng.integers(ow))
    y0, y1 = min(max(cy - ch // 2, 0), oh), min(max(cy + ch // 2, 0), oh)
    x0, x1 = min(max(cx - cw // 2, 0), ow), min(max(cx + cw // 2, 0), ow)
    lam = 1.0 - (y1 - y0) * (x1 - x0) / float(oh * ow)  # corrected to the box's true area
    return np.array([y0, x0, y1, x1], dtype=np.int32), lam


def cutout_boxes(rng: np.random.Generator, b: int, out_hw: tuple[int, int], factor: float) -> np.ndarray:
    """Per-sample cutout boxes ``[b, 4] (y0, x0, y1, x1)``, half-open output pixels, LPLD's geometry:
    side ``c = int(factor * size + 0.5)``, uniform centre, and the rectangle ``centre ± c // 2``
    *inclusive* (PIL's ``ImageDraw.rectangle``), clipped to the image: 113 px at 224 with factor 0.5."""
    oh, ow = out_hw
    ch, cw = int(factor * oh + 0.5), int(factor * ow + 0.5)
    cy = rng.integers(oh, size=b)
    cx = rng.integers(ow, size=b)
    y0 = np.clip(cy - ch // 2, 0, oh)
    y1 = np.minimum(np.clip(cy + ch // 2, 0, oh) + 1, oh)
    x0 = np.clip(cx - cw // 2, 0, ow)
    x1 = np.minimum(np.clip(cx + cw // 2, 0, ow) + 1, ow)
    return np.stack([y0, x0, y1, x1], axis=1).astype(np.int32)


# --- the schedule of one unit ---------------------------------------------------------------------
class Schedule:
    """The replay schedule of ``epochs`` epochs over ``num_samples`` images in batches of ``batch_size``.

    ``sizes [N, 2]`` are the source images' ``(height, width)``; crops depend on them. Every method
    is a pure function of its arguments and the constructor's.
    """

    def __init__(self, config: ScheduleConfig, seed: int, sizes: np.ndarray, batch_size: int, epochs: int):
        self.config = config
        self.seed = int(seed)
        self.sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
        if len(self.sizes) == 0 or (self.sizes <= 0).any():
            raise LoaderSpecError("a schedule needs at least one image and positive image sizes")
        self.num_samples = len(self.sizes)
        if int(batch_size) <= 0 or int(epochs) <= 0:
            raise LoaderSpecError(f"batch_size and epochs must be positive, got {batch_size}, {epochs}")
        self.batch_size = int(batch_size)
        self.epochs = int(epochs)
        self.batches_per_epoch = -(-self.num_samples // self.batch_size)
        self._order = lru_cache(maxsize=2)(self._epoch_order)
        self._sampler: SamplerReplay | None = None  # torch-sampler order: its replay, made on first use

    def __getstate__(self):
        d = dict(self.__dict__)
        d.pop("_order")
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self._order = lru_cache(maxsize=2)(self._epoch_order)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self.config.order == TORCH_SAMPLER_ORDER:
            if self._sampler is None:
                self._sampler = SamplerReplay(self.num_samples, self.seed)
            return self._sampler.order(epoch)
        return _rng(self.seed, _ORDER, epoch).permutation(self.num_samples).astype(np.int64)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The sample ids of ``epoch`` in training order (a permutation)."""
        self._check(epoch, 0)
        return self._order(int(epoch))

    def batch_ids(self, epoch: int, batch: int) -> np.ndarray:
        self._check(epoch, batch)
        return self.epoch_order(epoch)[batch * self.batch_size : (batch + 1) * self.batch_size]

    def _check(self, epoch: int, batch: int) -> None:
        if not (0 <= int(epoch) < self.epochs and 0 <= int(batch) < self.batches_per_epoch):
            raise LoaderSpecError(
                f"(epoch {epoch}, batch {batch}) is outside the schedule's {self.epochs} epochs x {self.batches_per_epoch} batches"
            )

    def unit(self, epoch: int, batch: int) -> Unit:
        """The crops, flips, cutout (boxes and colours) and mix of one batch, as the store's unit record
        (no labels yet); a pure function of (seed, epoch, batch)."""
        cfg = self.config
        ids = self.batch_ids(epoch, batch)
        b = len(ids)
        rng = _rng(self.seed, _BATCH, epoch, batch)
        boxes = random_resized_crops(rng, self.sizes[ids], cfg.scale, cfg.ratio)
        hw = self.sizes[ids].astype(np.float64)
        frac = np.stack([boxes[:, 0] / hw[:, 0], boxes[:, 1] / hw[:, 1], boxes[:, 2] / hw[:, 0], boxes[:, 3] / hw[:, 1]], 1)
        flips = rng.random(b) < cfg.flip
        cut = cutout_boxes(rng, b, cfg.output_size, cfg.cutout) if cfg.cutout > 0 else np.zeros((b, 4), np.int32)
        kind, perm, lam, box = "none", np.arange(b, dtype=np.int64), 1.0, np.zeros(4, np.int32)
        if cfg.mix == "cutmix":
            perm = rng.permutation(b).astype(np.int64)
            box, lam = cutmix_box(rng, cfg.output_size, cfg.mix_alpha)
            kind = "cutmix"
        elif cfg.mix == "mixup":
            perm = rng.permutation(b).astype(np.int64)
            lam = float(rng.beta(cfg.mix_alpha, cfg.mix_alpha))
            kind = "mixup"
        # lambda as the store keeps it (float32), so relabel and replay use the same number
        lam = float(np.float32(lam))
        # The cutout colours come last, so adding them moved no earlier draw: schedules with a
        # constant fill are what they were before per-sample colours existed.
        if cfg.random_fill:
            colours = rng.integers(0, 256, size=(b, FILL_CHANNELS)).astype(np.uint8)
        else:
            colours = np.tile(constant_fill(cfg.fill), (b, 1))
        return Unit(
            epoch=int(epoch), batch=int(batch), sample_ids=ids, crops=quantise_crops(frac), flips=flips,
            cutout=cut, mix_kind=kind, mix_perm=perm, mix_lambda=lam, mix_box=box, cutout_fill=colours,
        )

    @classmethod
    def of_store(cls, spec: StoreSpec, sizes: np.ndarray) -> "Schedule":
        """The schedule a store was relabelled with, rebuilt from its spec (augmentation record, seed, batch
        size, epochs) and the source images' ``sizes``: what a ``derived_fields`` store is read with
        (``open_store(path, fields=Schedule.of_store(spec, sizes).unit)``)."""
        try:
            config = ScheduleConfig.from_dict(spec.augmentation) if spec.augmentation else ScheduleConfig()
        except LoaderSpecError as e:
            raise LoaderSpecError(f"the store's augmentation record is not a ddpipe schedule: {e}") from None
        sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
        if len(sizes) != spec.num_samples:
            raise LoaderSpecError(f"the store holds labels of {spec.num_samples} images, the image sizes given are {len(sizes)}")
        return cls(config, spec.seed, sizes, spec.batch_size, spec.epochs)

    def store_spec(self, num_classes: int, k: int, **kw: Any) -> StoreSpec:
        """A :class:`StoreSpec` for this schedule (``kw``: value_codec, temperature, hashes …)."""
        return StoreSpec(
            num_samples=self.num_samples, num_classes=num_classes, epochs=self.epochs,
            batch_size=self.batch_size, k=k, seed=self.seed, augmentation=self.config.to_dict(), **kw,
        )


# --- torch's RandomSampler, replayed -------------------------------------------------------------
class SamplerReplay:
    """``RandomSampler(range(num_samples), generator=torch.Generator().manual_seed(seed))`` iterated
    once per epoch on one generator, as SRe2L's relabel and ``train_FKD.py`` (and LPLD's and
    G-VBSM's copies) consume it: :meth:`order` gives an epoch's int64 sample ids.

    ``RandomSampler.__iter__`` (``replacement=False``, ``num_samples = n``) yields
    ``torch.randperm(n, generator)`` and then evaluates ``torch.randperm(n, generator)[:0]`` once the
    first is exhausted, which a ``BatchSampler`` (with or without ``drop_last``) and the
    ``DataLoader`` always reach: each epoch draws two permutations and uses the first. Epoch ``e``
    is therefore permutation ``2e`` of the stream. Needs torch (imported here only); the permutations
    are those of the installed torch's CPU ``randperm``, stable across the torch 2.x releases.
    The object keeps generator states (at most ``KEEP`` of them, about 5 KB each), so consecutive
    epochs cost one pair of draws each; the states live and die with the object, never in the module.
    """

    KEEP = 64

    def __init__(self, num_samples: int, seed: int):
        self.num_samples, self.seed = int(num_samples), int(seed)
        if self.num_samples <= 0:
            raise LoaderSpecError(f"bad sampler replay: {self.num_samples} samples")
        self._states: dict[int, Any] = {}  # epoch -> generator state before it

    def orders(self, epochs: int, start: int = 0) -> list[np.ndarray]:
        """Epochs ``start .. epochs-1``."""
        import torch

        if epochs < 0 or not 0 <= start <= epochs:
            raise LoaderSpecError(f"bad sampler replay request: epochs {start}..{epochs}")
        known = [e for e in self._states if e <= start]
        g = torch.Generator()
        if known:
            e0 = max(known)
            g.set_state(self._states[e0])
        else:
            e0 = 0
            g.manual_seed(self.seed)
        out = []
        n = self.num_samples
        for e in range(e0, epochs):
            if e not in self._states and (len(self._states) < self.KEEP or e % 16 == 0):
                self._states[e] = g.get_state()
            perm = torch.randperm(n, generator=g)
            torch.randperm(n, generator=g)  # RandomSampler's discarded draw
            if e >= start:
                out.append(perm.numpy().astype(np.int64))
        return out

    def order(self, epoch: int) -> np.ndarray:
        return self.orders(int(epoch) + 1, start=int(epoch))[0]


def torch_sampler_orders(num_samples: int, seed: int, epochs: int, start: int = 0) -> list[np.ndarray]:
    """Epochs ``start .. epochs-1`` of :class:`SamplerReplay` ``(num_samples, seed)``."""
    return SamplerReplay(num_samples, seed).orders(epochs, start)


# --- which stored units an epoch replays --------------------------------------------------------
def replay_units(plan: np.ndarray, spec: StoreSpec, epoch: int, seed: int | None = None) -> np.ndarray:
    """Store positions (unit indices) that training epoch ``epoch`` replays, in order.

    An unpruned store replays epoch ``e``'s own units. A pruned store replays LPLD's way: with
    batch granularity each epoch draws ``batches_per_epoch`` units uniformly with replacement from
    the kept pool; with epoch granularity it replays one kept epoch drawn uniformly. The draw is a
    pure function of ``(seed, epoch)`` (default seed: the store's schedule seed).
    """
    plan = np.asarray(plan, dtype=np.int64)
    seed = spec.seed if seed is None else int(seed)
    epoch = int(epoch)
    if epoch < 0:
        raise LoaderSpecError(f"epoch must be non-negative, got {epoch}")
    if spec.pruning is None and len(plan) == spec.full_units:
        if epoch >= spec.epochs:
            raise LoaderSpecError(f"the store covers epochs 0..{spec.epochs - 1}; epoch {epoch} has no labels")
        bpe = spec.batches_per_epoch
        return np.arange(epoch * bpe, (epoch + 1) * bpe, dtype=np.int64)
    rng = _rng(seed, _REPLAY, epoch)
    granularity = (spec.pruning or {}).get("granularity", "batch")
    if granularity == "epoch":
        kept = np.unique(plan[:, 0])
        chosen = kept[int(rng.integers(len(kept)))]
        return np.flatnonzero(plan[:, 0] == chosen).astype(np.int64)
    return rng.integers(0, len(plan), size=spec.batches_per_epoch).astype(np.int64)


def shard_for_rank(units: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This rank's share of an epoch's units: every ``world_size``-th unit from ``rank`` (no overlap, no gaps)."""
    if world_size <= 0 or not 0 <= rank < world_size:
        raise LoaderSpecError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
    return np.asarray(units)[rank::world_size]
