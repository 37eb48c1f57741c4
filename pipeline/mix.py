"""The batch-level ``mix`` field: cutout and CutMix / Mixup applied in torch from stored parameters.

Both are read once from the unit (never re-derived from a shared seed) and applied to the images
only: the teacher labelled the mixed batch, so the stored soft labels already describe it.
Boxes are half-open output pixels ``(y0, x0, y1, x1)``. Cutout paints ``fill`` (0..255, before
normalisation) and comes before the mix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ddpipe.pipeline.errors import LoaderSpecError


def apply_cutout(images: torch.Tensor, boxes: np.ndarray, fill_normalised: torch.Tensor) -> torch.Tensor:
    """Paint ``fill_normalised [C]`` into each sample's box (in place; all-zero boxes are no-ops)."""
    boxes = np.asarray(boxes)
    for i in np.flatnonzero((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])):
        y0, x0, y1, x1 = (int(v) for v in boxes[i])
        images[i, :, y0:y1, x0:x1] = fill_normalised.view(-1, 1, 1)
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
    raise LoaderSpecError(f"unknown mix kind {kind!r}; expected none, cutmix or mixup")


@dataclass(frozen=True)
class MixStage:
    """The ``mix`` field: cutout (with ``fill``), then the unit's CutMix/Mixup when ``mix`` is on."""

    fill: Sequence[int] = (0, 0, 0)
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    mix: bool = True  # False: leave mixing to the caller (the SRe2L adapter does)

    def fill_value(self, channels: int) -> torch.Tensor:
        fill = np.asarray(self.fill, dtype=np.float64).reshape(-1)
        if len(fill) == 1:
            fill = np.repeat(fill, channels)
        fill = fill[:channels]
        mean = np.zeros(channels) if self.mean is None else np.broadcast_to(np.asarray(self.mean, float), (channels,))
        std = np.ones(channels) if self.std is None else np.broadcast_to(np.asarray(self.std, float), (channels,))
        return torch.tensor((fill / 255.0 - mean) / std, dtype=torch.float32)

    def __call__(self, images: torch.Tensor, unit) -> torch.Tensor:
        cut = np.asarray(unit.cutout)
        if cut.size and cut.any():
            images = apply_cutout(images, cut, self.fill_value(images.shape[1]).to(images.device))
        if self.mix:
            images = apply_mix(images, unit.mix_kind, unit.mix_perm, unit.mix_lambda, unit.mix_box)
        return images
