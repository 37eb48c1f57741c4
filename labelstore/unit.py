"""The unit: one relabel batch, the one record of its parameters and labels across the packages.

Kept apart from the writer and the reader (both use it, and so do the schedule, the loaders,
relabel and the importers) so that it depends on nothing but the top-k helpers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .errors import SpecError
from .topk import densify

__all__ = ["Unit"]


@dataclass
class Unit:
    """One unit (a relabel batch): the one record of its parameters and labels, everywhere.

    The replay schedule produces it (``ddpipe.pipeline.schedule.Schedule.unit``), relabel writes it
    with the teacher's labels added (``dataclasses.replace(unit, logits=...)``), the reader returns
    it (labels as ``topk``, ``unit`` = its position in the store) and the loaders carry it in each
    batch's meta. Boxes are ``(top, left, height, width)`` fractions of the source image for crops
    (torchvision's RandomResizedCrop coordinates, as SRe2L stores them), and ``(y0, x0, y1, x1)``
    pixels of the output image for the CutMix box and cutout boxes (half-open). A writer takes
    exactly one of ``logits`` (softmax at the store's temperature is applied), ``probs`` (already at
    that temperature) or ``topk = (indices, values)`` (already selected probabilities, e.g. from an
    importer or a reader). ``cutout_fill`` is each sample's cutout colour, 0..255 per RGB channel
    (LPLD draws one per sample); ``None`` stores the constant ``fill`` of the spec's augmentation
    record, or zeros. A unit read back holds every array (None fields filled in) in the dtypes below.
    """

    epoch: int
    batch: int
    sample_ids: Sequence[int]  # int64 [b]
    crops: Any  # float32 [b, 4] fractions (top, left, height, width)
    flips: Any = None  # bool [b]; None = no flips
    mix_kind: str = "none"  # none | cutmix | mixup
    mix_perm: Any = None  # int64 [b] in-batch partner of each slot; None = identity
    mix_lambda: float = 1.0  # weight of the slot's own image (SRe2L's lam)
    mix_box: Any = None  # int32 (y0, x0, y1, x1) output pixels of the pasted region (cutmix)
    cutout: Any = None  # int32 [b, 4] (y0, x0, y1, x1) output pixels per sample; None = no cutout
    logits: Any = None
    probs: Any = None
    topk: Any = None  # (indices int64 [b, k], values float32 [b, k]) probabilities at the store's temperature
    cutout_fill: Any = None  # uint8 [b, 3] integers 0..255, each sample's cutout colour; None = the spec's constant
    unit: int = -1  # position in the store (training order); -1 for a unit not read from a store
    # Logit stores (spec.value_kind = "logits"): the top-k logits themselves and each row's
    # logsumexp(logits / temperature) over the full row. Written: give ``logits`` (full rows), or
    # ``topk_logits = (indices, logits)`` with ``lse`` (None = over the k given: LPQLD's MR-k, no
    # tail). Read back: both are filled in, and ``topk`` holds the probabilities at the store's temperature.
    topk_logits: Any = None  # (indices int64 [b, k], logits float32 [b, k])
    lse: Any = None  # float64 [b]
    aux: Any = None  # float64 [b, len(spec.aux_fields)]: per-sample values named by the spec (importers)

    @property
    def count(self) -> int:
        """Samples in the unit (a short last batch has fewer than the batch size)."""
        return len(self.sample_ids)

    @property
    def indices(self):
        """The top-k class indices ``[b, k]`` (None without ``topk``)."""
        return None if self.topk is None else self.topk[0]

    @property
    def values(self):
        """The top-k probabilities ``[b, k]`` (None without ``topk``)."""
        return None if self.topk is None else self.topk[1]

    def dense(self, num_classes: int) -> np.ndarray:
        """Dense targets ``[b, num_classes]`` from ``topk`` by marginal smoothing (``docs/format.md``)."""
        if self.topk is None:
            raise SpecError(f"unit (epoch {self.epoch}, batch {self.batch}) carries no top-k labels")
        return densify(self.topk[0], self.topk[1], num_classes)
