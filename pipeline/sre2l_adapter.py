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
  For a logit store (``value_kind = logits``) they are the teacher's logits up to a per-row constant,
  the classes outside the top-k sharing the tail logit, so the loop's own ``-T`` is the training
  temperature: exact at every ``T`` when ``k = C``.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch

from .errors import LoaderSpecError
from .loader import LoaderConfig, make_loader

_TINY = 1e-30


class SRe2LBatches:
    """An iterable over one epoch of SRe2L-style batches; ``set_epoch(e)`` picks the epoch.

    ``.dataset`` is the object itself, so ``train_loader.dataset.set_epoch(epoch)`` works, and
    ``len()`` is the number of batches in the current epoch (SRe2L's gradient-accumulation code uses it).

    Checked at construction, not when a batch is reached: ``batch_size`` (SRe2L's ``--batch-size``)
    must equal the store's; ``epochs`` (its ``--epochs``) must be covered by the store (a pruned store
    replays any epoch). ``pin_memory=True`` pins the images where CUDA is present (as a DataLoader's
    ``pin_memory``; without CUDA it does nothing). Labels are decoded per shard and images are held
    in memory, so a batch costs no file open and no pickle (SRe2L's loader opens one per batch).
    """

    def __init__(self, source: Any, store: Any, config: LoaderConfig | None = None, *, epoch: int = 0,
                 rank: int = 0, world_size: int = 1, batch_size: int | None = None, epochs: int | None = None,
                 pin_memory: bool = False, **overrides: Any):
        overrides["mix"] = False  # the SRe2L loop mixes with its own mix_aug
        if batch_size is not None:
            overrides["batch_size"] = int(batch_size)
        self.loader = make_loader(source, store, config, rank=rank, world_size=world_size, **overrides)
        spec = self.loader.feed.spec
        if epochs is not None:
            have = self.loader.epochs
            if spec.pruning is None and int(epochs) > have:
                raise LoaderSpecError(
                    f"{store}: --epochs {int(epochs)} but the store holds labels for {have} epochs "
                    f"(0..{have - 1}); train for at most {have} epochs or relabel more"
                )
        self.temperature = float(spec.temperature)
        self.pin_memory = bool(pin_memory) and torch.cuda.is_available()
        self.epoch = int(epoch)

    @property
    def dataset(self) -> "SRe2LBatches":
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.loader.batches_in_epoch(self.epoch)

    def __iter__(self) -> Iterator[tuple]:
        t = self.temperature
        for images, targets, meta in self.loader.epoch(self.epoch):
            if meta.mix_kind == "none":
                mix_index = mix_lam = mix_bbox = None
            else:
                mix_index, mix_lam = meta.mix_perm, float(meta.mix_lambda)
                mix_bbox = [int(v) for v in meta.mix_box] if meta.mix_kind == "cutmix" else None
            soft = torch.log(targets.clamp_min(_TINY)).mul_(t)
            if self.pin_memory:
                images = images.pin_memory()
            yield (images, meta.labels, meta.flips, meta.crops), mix_index, mix_lam, mix_bbox, soft
