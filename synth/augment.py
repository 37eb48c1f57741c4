"""Per-iteration augmentation of the synthetic batch, with every draw from one ``torch.Generator``.

- :func:`sre2l_augment`: SRe2L's ``RandomResizedCrop(size, scale=(s, 1))`` + ``RandomHorizontalFlip``
  applied to the whole batch tensor (one crop for every image), then ``torch.roll`` jitter.
- :func:`cda_min_scale`: CDA's crop-scale curriculum (VILA-Lab/SRe2L ``CDA/recover_cda_*.py``).
- :class:`DSA`: DM's differentiable Siamese augmentation (VICO-UoE/DatasetCondensation
  ``utils.py`` ``DiffAugment``, ``aug_mode='S'``): one group of the strategy is drawn per call,
  and its parameters are shared by every image, so the same :class:`DSA` draw applied to the real
  and to the synthetic batch transforms both identically.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["cda_min_scale", "crop_params", "sre2l_augment", "DSA"]


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=gen).item()


def _randint(gen: torch.Generator, lo: int, hi: int) -> int:
    """An integer in [lo, hi] (both ends included, like ``random.randint``)."""
    return int(torch.randint(lo, hi + 1, (), generator=gen).item())


def cda_min_scale(it: int, iterations: int, min_scale: float, milestone: float = 1.0) -> float:
    """CDA's curriculum: cosine from 1.0 down to ``min_scale`` over ``milestone * iterations``, then flat."""
    span = milestone * iterations
    if span <= 0 or it >= span:
        return min_scale
    return min_scale + (1.0 - min_scale) * 0.5 * (1.0 + math.cos(math.pi * it / span))


def crop_params(gen: torch.Generator, height: int, width: int, scale: tuple[float, float],
                ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """``RandomResizedCrop.get_params`` drawn from ``gen``: (top, left, h, w)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _uniform(gen, scale[0], scale[1])
        aspect = math.exp(_uniform(gen, *log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return _randint(gen, 0, height - h), _randint(gen, 0, width - w), h, w
    in_ratio = width / height  # fallback: the central crop, as torchvision does
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def sre2l_augment(x: torch.Tensor, gen: torch.Generator, *, random_crop: bool = True, min_scale: float = 0.08,
                  flip: bool = True, jitter: int = 0, two_sided: bool = False) -> torch.Tensor:
    """One SRe2L augmentation draw for the whole batch ``x`` [B, C, H, W] (differentiable in ``x``)."""
    _, _, height, width = x.shape
    if random_crop:
        top, left, h, w = crop_params(gen, height, width, (min_scale, 1.0))
        x = F.interpolate(x[:, :, top:top + h, left:left + w], size=(height, width), mode="bilinear",
                          align_corners=False)
    if flip and torch.rand((), generator=gen).item() < 0.5:
        x = x.flip(3)
    if jitter:
        lo = -jitter if two_sided else 0
        off1, off2 = _randint(gen, lo, jitter), _randint(gen, lo, jitter)
        x = torch.roll(x, shifts=(off1, off2), dims=(2, 3))
    return x


class DSA:
    """One draw of DM's Siamese augmentation: call it on any number of batches to apply the same transform.

    Parameters (DSA's ``ParamDiffAug``): brightness +-0.5, saturation x[0, 2], contrast x[0.5, 1.5],
    crop (integer translation up to 0.125 of the side, zero fill), cutout 0.5, flip 0.5, scale
    [1/1.2, 1.2], rotate +-15 degrees (scale and rotate by ``affine_grid`` with ``align_corners=True``).
    """

    GROUPS = ("color", "crop", "cutout", "flip", "scale", "rotate")

    def __init__(self, strategy: str, gen: torch.Generator):
        groups = [g for g in strategy.split("_") if g]
        bad = [g for g in groups if g not in self.GROUPS]
        if bad:
            from .errors import SynthConfigError

            raise SynthConfigError(f"unknown DSA group(s) {bad}; groups: {', '.join(self.GROUPS)}")
        self.group = groups[_randint(gen, 0, len(groups) - 1)] if groups else None
        u = lambda: torch.rand((), generator=gen).item()  # noqa: E731
        if self.group == "color":
            self.params = dict(brightness=u() - 0.5, saturation=u() * 2.0, contrast=u() + 0.5)
        elif self.group == "crop":
            self.params = dict(tx=(u() * 2 - 1) * 0.125, ty=(u() * 2 - 1) * 0.125)
        elif self.group == "cutout":
            self.params = dict(cx=u(), cy=u(), size=0.5)
        elif self.group == "flip":
            self.params = dict(flip=u() < 0.5)
        elif self.group == "scale":
            self.params = dict(sx=_uniform(gen, 1 / 1.2, 1.2), sy=_uniform(gen, 1 / 1.2, 1.2))
        elif self.group == "rotate":
            self.params = dict(theta=(u() - 0.5) * 2 * 15 / 180 * math.pi)
        else:
            self.params = {}

    def _affine(self, x: torch.Tensor, m: list[list[float]]) -> torch.Tensor:
        theta = torch.tensor(m, dtype=x.dtype, device=x.device).unsqueeze(0).expand(x.shape[0], 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=True)
        return F.grid_sample(x, grid, align_corners=True)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        p, g = self.params, self.group
        if g == "color":
            x = x + p["brightness"]
            m = x.mean(dim=1, keepdim=True)
            x = (x - m) * p["saturation"] + m
            m = x.mean(dim=(1, 2, 3), keepdim=True)
            return (x - m) * p["contrast"] + m
        if g == "crop":  # DSA's rand_crop: an integer translation, zeros shifted in
            _, _, h, w = x.shape
            dy, dx = int(round(p["ty"] * h)), int(round(p["tx"] * w))
            s = max(abs(dx), abs(dy))
            if s == 0:
                return x
            padded = F.pad(x, (s, s, s, s))
            return padded[:, :, s - dy:s - dy + h, s - dx:s - dx + w]
        if g == "cutout":
            _, _, h, w = x.shape
            ch, cw = max(1, int(h * p["size"] + 0.5)), max(1, int(w * p["size"] + 0.5))
            top = int(p["cy"] * (h + 1 - ch % 2)) - ch // 2
            left = int(p["cx"] * (w + 1 - cw % 2)) - cw // 2
            mask = torch.ones(1, 1, h, w, dtype=x.dtype, device=x.device)
            mask[:, :, max(0, top):max(0, top + ch), max(0, left):max(0, left + cw)] = 0
            return x * mask
        if g == "flip":
            return x.flip(3) if p["flip"] else x
        if g == "scale":
            return self._affine(x, [[p["sx"], 0.0, 0.0], [0.0, p["sy"], 0.0]])
        if g == "rotate":
            c, s = math.cos(p["theta"]), math.sin(p["theta"])
            return self._affine(x, [[c, s, 0.0], [-s, c, 0.0]])
        return x
