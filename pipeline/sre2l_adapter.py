"""Drop-in adapter: SRe2L's per-batch tuple from a ddpipe store, on stock torch.

SRe2L's training loop (``validate/train_FKD.py`` and its descendants in CDA, LPLD, G-VBSM)
reads, per batch::

    images, target, flip_status, coords_status = batch_data[0]
    mix_index, mix_lam, mix_bbox, soft_label = batch_data[1:]

which its fork of torch's ``_MapDatasetFetcher`` produces from one pickle per (epoch, batch).
:class:`SRe2LBatches` yields exactly that structure from a ddpipe store, so such a loop runs
unchanged with ``train_loader = SRe2LBatches(...)`` and no patch:

- ``images``: float32 ``[b, C, H, W]``, crops and flips replayed, normalised, **not** mixed (the
  loop's own ``mix_aug`` applies ``mix_index`` / ``mix_lam`` / ``mix_bbox``); a cutout store's
  boxes are already painted, each in its sample's stored colour (LPLD's ImageNet-21K loop reads its
  ``[b, 7]`` cutout parameters only inside its dataset, to paint them, so none are yielded here);
- ``target``: int64 class labels of the images; ``flip_status``: bool ``[b]``;
- ``coords_status``: float32 ``[b, 4]`` (top, left, height, width) fractions, SRe2L's layout;
- ``mix_index``: int64 ``[b]`` or ``None``; ``mix_lam``: float or ``None``;
- ``mix_bbox``: ``[bbx1, bby1, bbx2, bby2]`` with SRe2L's meaning (``images[:, :, bbx1:bbx2,
  bby1:bby2]``, i.e. rows first) = ddpipe's ``(y0, x0, y1, x1)``, or ``None``;
- ``soft_label``: float32 ``[b, C]`` pseudo-logits ``T_store * log(p)`` of the stored soft labels,
  so the loop's ``softmax(soft_label / T)`` gives back the stored distribution at ``T = T_store``
  (and, for a lossless store with ``k = C``, exactly the teacher's ``softmax(logits / T)`` at any ``T``).
"""

from __future__ import annotations

from typing import Any, Iterator

import torch

from ddpipe.pipeline.loader import LoaderConfig, make_loader

_TINY = 1e-30


class SRe2LBatches:
    """An iterable over one epoch of SRe2L-style batches; ``set_epoch(e)`` picks the epoch.

    ``.dataset`` is the object itself, so ``train_loader.dataset.set_epoch(epoch)`` works, and
    ``len()`` is the number of batches in the current epoch (SRe2L's gradient-accumulation code uses it).
    """

    def __init__(self, source: Any, store: Any, config: LoaderConfig | None = None, *, epoch: int = 0,
                 rank: int = 0, world_size: int = 1, **overrides: Any):
        overrides["mix"] = False  # the SRe2L loop mixes with its own mix_aug
        self.loader = make_loader(source, store, config, rank=rank, world_size=world_size, **overrides)
        self.temperature = float(self.loader.feed.spec.temperature)
        self.epoch = int(epoch)

    @property
    def dataset(self) -> "SRe2LBatches":
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.loader.batches_in_epoch(self.epoch)

    def __iter__(self) -> Iterator[tuple]:
        for images, targets, meta in self.loader.epoch(self.epoch):
            if meta.mix_kind == "none":
                mix_index = mix_lam = mix_bbox = None
            else:
                mix_index, mix_lam = meta.mix_perm, float(meta.mix_lambda)
                mix_bbox = [int(v) for v in meta.mix_box] if meta.mix_kind == "cutmix" else None
            soft = self.temperature * torch.log(targets.clamp_min(_TINY))
            yield (images, meta.labels, meta.flips, meta.crops), mix_index, mix_lam, mix_bbox, soft
