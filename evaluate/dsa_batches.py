"""The DC / DSA evaluation protocol's batches: hard labels, DSA augmentation per image.

``ddpipe train --augment dsa --hard-labels`` trains a student the way DC, DSA and DM evaluate their
synthetic sets (VICO-UoE/DatasetCondensation ``evaluate_synset``): every epoch shuffles the whole
image set into batches, every image of a batch gets its own DSA draw (strategy
``color_crop_cutout_flip_scale_rotate``: one group per image, as in their evaluation, where the
Siamese sharing is off), and the loss is cross-entropy on the class labels. Their optimiser (SGD
lr 0.01, momentum 0.9, weight decay 5e-4, batch 256, 1000 epochs) is what the flags give; the
learning-rate schedule is ddpipe's cosine, not their one step at half the epochs.

Every draw comes from a generator seeded by ``(seed, epoch)``, so a resumed run sees the same
batches as an uninterrupted one.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DSA_STRATEGY", "DSABatches"]

DSA_STRATEGY = "color_crop_cutout_flip_scale_rotate"


class DSABatches:
    """One epoch of ``(images, class labels)`` with per-image DSA: a
    :class:`~ddpipe.evaluate.train_batches.TrainBatches` for :class:`~ddpipe.evaluate.loop.TrainingRun`."""

    store = None  # the labels are the images' classes: no label store is read
    label_seconds = None

    def __init__(self, args, dataset, dist):
        import torch

        from ..pipeline import open_source

        self.args, self.dist = args, dist
        self.source = open_source(args.images)
        self.epochs = args.epochs or 1000
        self.batch_size = args.batch_size or 256
        self.temperature = 1.0
        self.num_classes = dataset.num_classes
        size = dataset.input_size
        arrays = []
        for i in range(len(self.source)):
            a = self.source.array(i, dataset.in_chans)
            if a.shape[:2] != (size, size):
                from PIL import Image

                img = Image.fromarray(a[..., 0] if a.shape[2] == 1 else a).resize((size, size), Image.BILINEAR)
                a = np.asarray(img).reshape(size, size, dataset.in_chans)
            arrays.append(a)
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(dataset.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(dataset.std, dtype=torch.float32).view(1, -1, 1, 1)
        self.images = (x - mean) / std
        self.labels = torch.from_numpy(np.asarray(self.source.labels, dtype=np.int64))
        bad = (self.labels < 0) | (self.labels >= self.num_classes)
        if bool(bad.any()):
            from .errors import ClassCountMismatchError

            raise ClassCountMismatchError(
                f"{args.images} has class index {int(self.labels[bad][0])} but {dataset.name} has "
                f"{self.num_classes} classes")

    def epoch(self, epoch: int):
        import torch

        from ..synth.augment import DSA

        gen = torch.Generator().manual_seed(int(self.args.seed) * 1_000_003 + int(epoch))
        order = torch.randperm(len(self.labels), generator=gen)
        for start in range(self.dist.rank * self.batch_size, len(order), self.batch_size * self.dist.world_size):
            idx = order[start:start + self.batch_size]
            batch = torch.cat([DSA(DSA_STRATEGY, gen)(self.images[i:i + 1]) for i in idx.tolist()])
            yield batch, self.labels[idx]

    def criterion(self):
        import torch.nn.functional as F

        return F.cross_entropy

    def close(self) -> None:
        pass
