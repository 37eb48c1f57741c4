"""RDED: realistic, diverse patches of real images (Sun, Zhu, Shen, Liu & Wang, CVPR 2024).

Origin: LINs-lab/RDED, ``synthesize/main.py`` (``init_images``) and ``synthesize/utils.py``
(``MultiRandomCrop``, ``selector``, ``mix_images``), settings from ``scripts/*.sh``. No optimisation:
for each class c,

1. ``mipc`` real images of the class (theirs: a shuffled listing of the class folder; ours: the
   engine's seeded random order, :meth:`~ddpipe.synth.engine.Engine.class_order`);
2. from each, ``num_crop`` square random resized crops of side ``input_size // factor``
   (torchvision's ``RandomResizedCrop`` draw: area scale uniform in ``(min_scale, 1)``, ratio 1;
   bilinear resize with antialias, on pixels in [0, 1], then normalised);
3. each patch zero-padded (in normalised space, centred) to ``input_size`` and scored by the first
   teacher: ``-log softmax(logits)[c]`` computed as they do (softmax, then log), forwarded in chunks
   of ``mipc`` patches, one crop index per chunk, as their ``batched_forward``;
4. per real image the crop with the lowest score; the images ranked by that score (ascending) and the
   first ``ipc * factor**2`` patches kept;
5. stitched: ranked patch ``q * ipc + t`` fills cell q (row-major) of synthetic image t, resized
   (nearest) to the cell; cells are ``input_size // factor`` pixels, the first ``input_size % factor``
   rows / columns one pixel larger.

Their relabelling (soft labels of the teacher on each training crop, ``validation/main.py``) is
``ddpipe relabel``'s job. Deliberate differences: the crops come from the real images as ddpipe's
data gives them (resized and centre-cropped to ``input_size``; theirs crop the full-resolution JPEG),
and the set is written by :func:`~ddpipe.synth.writer.to_uint8` (rounded; theirs truncate and save
JPEG). The draws come from a per-class seeded generator, not the global RNG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from ._registry import register_method
from .config import RecoverConfig
from .errors import SynthConfigError

if TYPE_CHECKING:
    from .engine import Batch, Engine

__all__ = ["RdedClass", "rded_cfg", "square_crop_box", "draw_boxes", "crop_patches", "patch_scores",
           "select_patches", "cell_grid", "stitch", "rded_class", "rded_batch"]


def rded_cfg(**kwargs) -> RecoverConfig:
    kwargs.setdefault("min_scale", 0.08)  # RandomResizedCrop's default scale, as MultiRandomCrop leaves it
    return RecoverConfig(method="rded", select="rded", loss={}, iterations=0, batching="class", classes_per_batch=1,
                         init="real", flip=False, jitter=0, **kwargs)


@register_method("rded.in1k")
def rded_in1k():
    """ImageNet-1K, ResNet-18 (imagenet-1k_10ipc_resnet-18_to_resnet-18_cr5.sh): factor 2 (2x2 patches of
    112 px), 5 crops per image, 300 real images per class; run with ``--ipc 10``."""
    return rded_cfg(factor=2, num_crop=5, mipc=300)


@register_method("rded.in1k_cr1")
def rded_in1k_cr1():
    """ImageNet-1K, one crop per image (imagenet-1k_10ipc_resnet-18_to_resnet-18_cr1.sh)."""
    return rded_cfg(factor=2, num_crop=1, mipc=300)


@register_method("rded.cifar10")
def rded_cifar10():
    """CIFAR-10/100 and Tiny-ImageNet (their 32 / 64 px scripts): factor 1 (one whole patch per image),
    5 crops per image, 300 real images per class."""
    return rded_cfg(factor=1, num_crop=5, mipc=300)


@register_method("rded.fmnist")
def rded_fmnist():
    """Fashion-MNIST, 28 px: their low-resolution setting (factor 1, 5 crops, 300 real images per class)."""
    return rded_cfg(factor=1, num_crop=5, mipc=300)


@register_method("rded.fmnist_f2")
def rded_fmnist_f2():
    """Fashion-MNIST, 28 px, with their ImageNet stitching (ours): 2x2 patches of 14 px, 5 crops, 300 images."""
    return rded_cfg(factor=2, num_crop=5, mipc=300)


@register_method("rded.test")
def rded_test():
    """Tiny scale for tests: 2x2 patches, 3 crops from each of 16 real images per class."""
    return rded_cfg(factor=2, num_crop=3, mipc=16)


# --- the draw ---------------------------------------------------------------------------------------------
def square_crop_box(gen: torch.Generator, height: int, width: int, scale: tuple[float, float],
                    ratio: tuple[float, float] = (1.0, 1.0)) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` as torchvision's ``RandomResizedCrop.get_params`` draws it (ten tries, then
    the central crop clamped to ``ratio``), from ``gen``."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target = area * torch.empty(1).uniform_(scale[0], scale[1], generator=gen).item()
        aspect = math.exp(torch.empty(1).uniform_(float(log_ratio[0]), float(log_ratio[1]), generator=gen).item())
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=gen).item())
            left = int(torch.randint(0, width - w + 1, (1,), generator=gen).item())
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def draw_boxes(gen: torch.Generator, n: int, num_crop: int, height: int, width: int, min_scale: float) -> np.ndarray:
    """int64 ``[n, num_crop, 4]`` crop boxes, drawn image by image, crop by crop (their loader's order)."""
    return np.asarray([[square_crop_box(gen, height, width, (min_scale, 1.0)) for _ in range(num_crop)]
                       for _ in range(n)], dtype=np.int64).reshape(n, num_crop, 4)


def crop_patches(x01: torch.Tensor, boxes: np.ndarray, side: int) -> torch.Tensor:
    """Crops of ``x01`` (``[n, C, H, W]`` in [0, 1]) resized to ``side`` (bilinear, antialias; a crop
    already ``side`` square is kept as is): ``[num_crop, n, C, side, side]``, crop index first."""
    n, m = boxes.shape[:2]
    out = x01.new_empty(m, n, x01.shape[1], side, side)
    for i in range(n):
        for k in range(m):
            top, left, h, w = (int(v) for v in boxes[i, k])
            crop = x01[i:i + 1, :, top:top + h, left:left + w]
            if (h, w) != (side, side):
                crop = F.interpolate(crop, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
            out[k, i] = crop[0]
    return out


def pad_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad ``[B, C, h, w]`` to ``size`` square, the odd pixel at the bottom / right."""
    dv, dh = size - x.shape[2], size - x.shape[3]
    return F.pad(x, (dh // 2, dh - dh // 2, dv // 2, dv - dv // 2))


@torch.no_grad()
def patch_scores(teacher: torch.nn.Module, patches: torch.Tensor, label: int, size: int) -> torch.Tensor:
    """``[m, n]`` cross-entropy of each normalised patch (``[m, n, C, s, s]``) for class ``label``, padded to
    ``size``; softmax then ``-log`` of the class's probability, one crop index (n patches) per forward."""
    rows = []
    for k in range(patches.shape[0]):
        logits = teacher(pad_to(patches[k], size)).float()
        prob = F.softmax(logits, dim=1)[:, label]
        rows.append(-torch.log(prob))
    return torch.stack(rows).cpu()


def select_patches(scores: torch.Tensor, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """From ``[m, n]`` scores: each image's best crop (lowest score, first on ties), the images ranked by it
    (ascending, stable), the first ``keep``. Returns (image positions, their crop indices)."""
    best = torch.argmin(scores, dim=0)
    dist = scores[best, torch.arange(scores.shape[1])]
    order = torch.argsort(dist, stable=True)[:keep]
    return order.numpy(), best[order].numpy()


def cell_grid(size: int, factor: int) -> list[tuple[int, int, int, int]]:
    """The ``factor x factor`` cells ``(top, left, h, w)`` of a ``size`` square, row-major; the first
    ``size % factor`` rows and columns are one pixel larger."""
    s, extra = divmod(size, factor)
    sides = [s + 1 if i < extra else s for i in range(factor)]
    starts = np.cumsum([0] + sides[:-1]).tolist()
    return [(starts[i], starts[j], sides[i], sides[j]) for i in range(factor) for j in range(factor)]


def stitch(patches: torch.Tensor, size: int, factor: int, ipc: int) -> torch.Tensor:
    """``[ipc * factor**2, C, s, s]`` ranked patches -> ``[ipc, C, size, size]``: patch ``q * ipc + t`` fills
    cell q of image t (nearest resize to the cell)."""
    out = patches.new_zeros(ipc, patches.shape[1], size, size)
    for q, (top, left, h, w) in enumerate(cell_grid(size, factor)):
        part = patches[q * ipc:(q + 1) * ipc]
        out[:, :, top:top + h, left:left + w] = F.interpolate(part, size=(h, w))  # mode "nearest"
    return out


# --- one class ----------------------------------------------------------------------------------------------
@dataclass
class RdedClass:
    """One class's synthetic images and where every patch came from."""

    images: torch.Tensor  # normalised [ipc, C, H, W]
    sources: np.ndarray  # the real images' indices (into RealData), the mipc candidates in draw order
    boxes: np.ndarray  # [mipc, num_crop, 4] crop boxes (top, left, h, w) in the real images
    scores: torch.Tensor  # [num_crop, mipc] the teacher's score of every candidate patch
    picked: np.ndarray  # [ipc * factor**2] position (into sources) of each kept patch, in rank order
    crops: np.ndarray  # [ipc * factor**2] which crop of that image was kept
    kept: torch.Tensor  # [ipc * factor**2, C, s, s] the kept patches (normalised), in rank order

    def provenance(self, t: int, q: int) -> tuple[int, tuple[int, int, int, int]]:
        """(real index, crop box) of cell ``q`` of synthetic image ``t``."""
        r = q * len(self.images) + t
        p = int(self.picked[r])
        return int(self.sources[p]), tuple(int(v) for v in self.boxes[p, int(self.crops[r])])


def class_generator(cfg: RecoverConfig, c: int) -> torch.Generator:
    return torch.Generator().manual_seed(cfg.seed * 1_000_003 + 7919 * c + 31)


def rded_class(engine: "Engine", c: int, boxes: np.ndarray | None = None) -> RdedClass:
    """Build class ``c``'s ``engine.ipc`` images; ``boxes`` replaces the seeded draw (``[n, num_crop, 4]``)."""
    cfg, ipc, size = engine.cfg, engine.ipc, engine.input_size
    if not engine.teachers:
        raise SynthConfigError(f"{cfg.recipe or cfg.method} scores patches with a teacher: give one")
    keep = ipc * cfg.factor ** 2
    sources = np.asarray(engine.class_order(c))[:cfg.mipc]
    if len(sources) < keep:
        raise SynthConfigError(f"class {c} has {len(sources)} real images (mipc {cfg.mipc}); RDED keeps one patch per "
                               f"image and needs ipc * factor**2 = {keep}")
    real = torch.from_numpy(np.ascontiguousarray(engine.real.get(sources))).permute(0, 3, 1, 2).float() / 255.0
    if boxes is None:
        boxes = draw_boxes(class_generator(cfg, c), len(sources), cfg.num_crop, real.shape[2], real.shape[3],
                           cfg.min_scale)
    patches = crop_patches(real, boxes, size // cfg.factor).to(engine.device)
    patches = (patches - engine.mean.unsqueeze(0)) / engine.std.unsqueeze(0)
    scores = patch_scores(engine.teachers[0], patches, c, size)
    picked, crops = select_patches(scores, keep)
    kept = patches[torch.from_numpy(crops), torch.from_numpy(picked)]
    images = stitch(kept, size, cfg.factor, ipc)
    return RdedClass(images=images, sources=sources, boxes=boxes, scores=scores, picked=picked, crops=crops,
                     kept=kept)


def rded_batch(engine: "Engine", batch: "Batch", cache: dict) -> np.ndarray:
    """uint8 ``[B, H, W, C]`` for a batch's (class, index) pairs; ``cache`` keeps each class's images."""
    from .writer import to_uint8

    out = []
    for c, i in zip(batch.classes, batch.indices):
        if c not in cache:
            cache[c] = to_uint8(rded_class(engine, c).images, engine.mean.flatten().tolist(),
                                engine.std.flatten().tolist())
        out.append(cache[c][i])
    return np.stack(out)
