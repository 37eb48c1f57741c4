"""The batch-level ``mix`` field: cutout and CutMix / Mixup applied in torch from stored parameters.

Both are read once from the unit (never re-derived from a shared seed) and applied to the images
only: the teacher labelled the mixed batch, so the stored soft labels already describe it.
Boxes are half-open output pixels ``(y0, x0, y1, x1)``. Cutout paints each sample's stored colour
(``unit.cutout_fill``, 0..255 per channel, normalised with the loader's mean and std like the
image) and comes before the mix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..labelstore import MIX_KINDS
from .errors import LoaderSpecError


def apply_cutout(images: torch.Tensor, boxes: np.ndarray, fill_normalised: torch.Tensor) -> torch.Tensor:
    """Paint each sample's colour into its box (in place; empty boxes are no-ops). ``fill_normalised``
    is one colour ``[C]`` for every sample or one per sample ``[b, C]``, already normalised."""
    boxes = np.asarray(boxes)
    per_sample = fill_normalised.dim() == 2
    for i in np.flatnonzero((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])):
        y0, x0, y1, x1 = (int(v) for v in boxes[i])
        colour = fill_normalised[i] if per_sample else fill_normalised
        images[i, :, y0:y1, x0:x1] = colour.view(-1, 1, 1)
    return images


def apply_mix(images: torch.Tensor, kind: str, perm, lam: float, box) -> torch.Tensor:
    """SRe2L's ``mix_aug`` from stored parameters: CutMix pastes ``images[perm]`` into ``box``;
    Mixup blends ``lam * x + (1 - lam) * x[perm]``; ``none`` returns the images unchanged."""
    if kind == "none":
        return images
    perm_t = torch.as_tensor(np.asarray(perm), dtype=torch.long, device=images.device)
    if kind == "cutmix":
        y0, x0, y1, x1 = (int(v) for v in np.asarray(box))
        if y1 > y0 and x1 > x0:
            images[:, :, y0:y1, x0:x1] = images[perm_t, :, y0:y1, x0:x1]
        return images
    if kind == "mixup":
        return images.mul(lam).add_(images[perm_t], alpha=1.0 - lam)
    raise LoaderSpecError(f"unknown mix kind {kind!r}; expected one of {MIX_KINDS}")


@dataclass(frozen=True)
class MixStage:
    """The ``mix`` field: cutout (each sample's stored colour), then the unit's CutMix/Mixup when
    ``mix`` is on. ``fill`` (the schedule's) colours units that carry no ``cutout_fill``."""

    fill: Sequence[int] | str = (0, 0, 0)
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    mix: bool = True  # False: leave mixing to the caller (the SRe2L adapter does)

    def normalise(self, colours: np.ndarray, channels: int) -> torch.Tensor:
        """Colours ``[..., >= 1]`` in 0..255 as the loader's normalised pixels ``[..., channels]``
        (a single value is grey: it fills every channel)."""
        c = np.asarray(colours, dtype=np.float64)
        c = np.repeat(c, channels, axis=-1) if c.shape[-1] == 1 else c[..., :channels]
        if c.shape[-1] != channels:
            raise LoaderSpecError(f"cutout colours have {c.shape[-1]} channels, the images {channels}")
        mean = np.zeros(channels) if self.mean is None else np.broadcast_to(np.asarray(self.mean, float), (channels,))
        std = np.ones(channels) if self.std is None else np.broadcast_to(np.asarray(self.std, float), (channels,))
        return torch.tensor((c / 255.0 - mean) / std, dtype=torch.float32)

    def fill_value(self, channels: int) -> torch.Tensor:
        """The schedule's constant ``fill``, normalised: ``[channels]``."""
        if isinstance(self.fill, str):
            raise LoaderSpecError(
                f"fill {self.fill!r} has no constant colour: the unit must carry its cutout colours (cutout_fill)"
            )
        return self.normalise(np.asarray(self.fill).reshape(-1), channels)

    def __call__(self, images: torch.Tensor, unit) -> torch.Tensor:
        cut = np.asarray(unit.cutout)
        if cut.size and cut.any():
            colours = getattr(unit, "cutout_fill", None)
            c = images.shape[1]
            fill = self.fill_value(c) if colours is None else self.normalise(colours, c)
            images = apply_cutout(images, cut, fill.to(images.device))
        if self.mix:
            images = apply_mix(images, unit.mix_kind, unit.mix_perm, unit.mix_lambda, unit.mix_box)
        return images
