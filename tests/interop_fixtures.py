"""Label folders written the way SRe2L, LPLD, LPQLD, G-VBSM and FKD write them (tests only).

We cannot run their relabel scripts here (GPU, ImageNet teachers), so each writer below follows the
published code line for line where it shapes the files (``/work/shared/research/seed_formats.md``;
SRe2L ``relabel/generate_soft_label.py`` + ``utils_fkd.py``; LPLD
``relabel_and_validate/generate_soft_label_pruning.py``; LPQLD
``relabel_and_validate/generate_soft_label_pruning_batch.py``; G-VBSM
``relabel/generate_soft_label_with_db.py``; FKD ``FKD_SLG/generate_soft_label.py``):

- the same ``DataLoader(dataset, batch_size, sampler=RandomSampler(generator=manual_seed(seed)),
  drop_last=...)`` reused across epochs, collating the dataset's per-image crop coordinates and
  flips (or cutout parameters, RandAugment triplets, indices) exactly as their datasets return them;
- ``mix_aug`` as theirs: ``torch.randperm(B)``, ``np.random.beta``, ``rand_bbox`` (numpy int64 box);
- the teacher is replaced by seeded random logits (the label values are not what is under test);
- the same ``torch.save`` lists, dtypes and file names.

Each writer returns the ground truth per stored batch (the image indices the loader gave), which
their files do not always contain.
"""

from __future__ import annotations

import json
import os
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler


def make_images(root: str, num_classes: int = 10, per_class: int = 10, size: int = 12) -> str:
    """An ImageFolder ``root/c<cc>/img<ii>.png`` of small images (sorted = sample order)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(num_classes):
        d = os.path.join(root, f"c{c:02d}")
        os.makedirs(d, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size + 2, 3), dtype=np.uint8)).save(os.path.join(d, f"img{i:02d}.png"))
    return root


class _CoordsDataset(Dataset):
    """What their ``ImageFolder_FKD_MIX`` yields per image in ``fkd_save`` mode, minus the pixels:
    RandomResizedCropWithCoords coordinates ``(i/H, j/W, h/H, w/W)`` as a FloatTensor, the flip as a
    Python bool, and (variants) cutout parameters, RandAugment triplets, the index."""

    def __init__(self, n: int, variant: str = "flip", layers: int = 2):
        self.n, self.variant, self.layers = n, variant, layers

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index):
        H, W = 12, 14
        area = H * W * random.uniform(0.08, 1.0)
        h = max(1, min(H, int(round(area ** 0.5))))
        w = max(1, min(W, int(round(area ** 0.5))))
        i, j = random.randint(0, H - h), random.randint(0, W - w)
        coords = torch.FloatTensor([i / H, j / W, h / H, w / W])
        if self.variant == "cutout":  # CutoutPILWithCoords on the 224 px crop
            hh = ww = 224
            h_cut, w_cut = int(0.5 * hh + 0.5), int(0.5 * ww + 0.5)
            y_c, x_c = np.random.randint(hh), np.random.randint(ww)
            fill = (random.randint(0, 255), random.randint(0, 255), random.randint(0, 255))
            params = torch.FloatTensor([y_c / hh, x_c / ww, h_cut / hh, w_cut / ww, *fill])
            return index, coords, params, index
        flip = random.random() < 0.5
        if self.variant == "randaug":  # (op_idx, apply_decision, exact_params) per layer
            trip = []
            for _ in range(self.layers):
                op = random.randint(0, 13)
                decision = random.random()
                param = random.uniform(-30, 30) if decision < 0.5 else -99
                trip.append((op, decision, param))
            return index, flip, coords, trip, index
        return index, flip, coords, index


def _rand_bbox(size, lam):
    """SRe2L's ``rand_bbox``: W = size[2], H = size[3]; numpy int64 corners."""
    W, H = size[2], size[3]
    cut_rat = np.sqrt(1.0 - lam)
    cut_w, cut_h = int(W * cut_rat), int(H * cut_rat)
    cx, cy = np.random.randint(W), np.random.randint(H)
    return (np.clip(cx - cut_w // 2, 0, W), np.clip(cy - cut_h // 2, 0, H),
            np.clip(cx + cut_w // 2, 0, W), np.clip(cy + cut_h // 2, 0, H))


def _mix_aug(b: int, mix: str):
    """SRe2L's ``mix_aug`` in ``fkd_save`` mode on a [b, 3, 224, 224] batch (images not needed)."""
    if mix == "cutmix":
        rand_index = torch.randperm(b)
        lam = np.random.beta(1.0, 1.0)
        bbx1, bby1, bbx2, bby2 = _rand_bbox((b, 3, 224, 224), lam)
        return rand_index.cpu(), lam, [bbx1, bby1, bbx2, bby2]
    if mix == "mixup":
        rand_index = torch.randperm(b)
        lam = np.random.beta(0.8, 0.8)
        return rand_index.cpu(), lam, None
    return None, None, None


def _loader(n: int, batch_size: int, seed: int, variant: str = "flip", drop_last: bool = False):
    generator = torch.Generator()
    generator.manual_seed(seed)
    ds = _CoordsDataset(n, variant)
    return DataLoader(ds, batch_size=batch_size, shuffle=False, sampler=RandomSampler(ds, generator=generator),
                      drop_last=drop_last, num_workers=0)


def _teacher(b: int, num_classes: int, gen: torch.Generator) -> torch.Tensor:
    return (torch.randn(b, num_classes, generator=gen) * 4.0)


def _seed_all(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    return torch.Generator().manual_seed(seed + 1)


def write_sre2l(root: str, n: int = 100, batch_size: int = 32, epochs: int = 3, num_classes: int = 10,
                mix: str = "cutmix", seed: int = 42) -> dict:
    """SRe2L ``generate_soft_label.py --mode fkd_save --use-fp16``: ``epoch_e/batch_b.tar`` lists of 6.
    Returns ``{(e, b): image indices}``."""
    gen = _seed_all(7)
    loader = _loader(n, batch_size, seed)
    truth = {}
    for epoch in range(epochs):
        d = os.path.join(root, f"epoch_{epoch}")
        os.makedirs(d, exist_ok=True)
        for batch_idx, (index, flip_status, coords_status, _i) in enumerate(loader):
            mix_index, mix_lam, mix_bbox = _mix_aug(len(index), mix)
            output = _teacher(len(index), num_classes, gen).half()
            torch.save([coords_status, flip_status, mix_index, mix_lam, mix_bbox, output],
                       os.path.join(d, f"batch_{batch_idx}.tar"))
            truth[(epoch, batch_idx)] = index.numpy().copy()
    return truth


def write_gvbsm(root: str, n: int = 100, batch_size: int = 32, epochs: int = 2, num_classes: int = 10,
                seed: int = 42) -> dict:
    """G-VBSM ``generate_soft_label_with_db.py``: SRe2L's list plus the image indices (7th element)."""
    gen = _seed_all(8)
    loader = _loader(n, batch_size, seed)
    truth = {}
    for epoch in range(epochs):
        d = os.path.join(root, f"epoch_{epoch}")
        os.makedirs(d, exist_ok=True)
        for batch_idx, (index, flip_status, coords_status, _i) in enumerate(loader):
            mix_index, mix_lam, mix_bbox = _mix_aug(len(index), "cutmix")
            output = _teacher(len(index), num_classes, gen).half()
            torch.save([coords_status, flip_status, mix_index, mix_lam, mix_bbox, output, index],
                       os.path.join(d, f"batch_{batch_idx}.tar"))
            truth[(epoch, batch_idx)] = index.numpy().copy()
    return truth


def write_lpld(root: str, n: int = 100, batch_size: int = 32, epochs: int = 3, num_classes: int = 10,
               mix: str = "cutmix", prune_ratio: float = 0.0, cutout: bool = False, seed: int = 42) -> dict:
    """LPLD ``generate_soft_label_pruning.py``: SRe2L's files (21K: cutout parameters in place of the
    flips, no mix), ``sampler_indices_epoch.json``, and with ``prune_ratio`` > 0 ``drop_last`` and a
    stop after ``int(epochs * batches * (1 - p))`` batches."""
    gen = _seed_all(9)
    loader = _loader(n, batch_size, seed, "cutout" if cutout else "flip", drop_last=prune_ratio > 0)
    num_batches = len(loader)
    total_steps = int(epochs * num_batches * (1 - prune_ratio))
    run_epochs = total_steps // num_batches + 1
    sampler_indices = {}
    truth = {}
    batch_counter = 0
    for epoch in range(run_epochs):
        d = os.path.join(root, f"epoch_{epoch}")
        os.makedirs(d, exist_ok=True)
        for batch_idx, batch_data in enumerate(loader):
            if cutout:
                index, coords_status, coords_cutout, _i = batch_data
            else:
                index, flip_status, coords_status, _i = batch_data
            mix_index, mix_lam, mix_bbox = _mix_aug(len(index), "none" if cutout else mix)
            output = _teacher(len(index), num_classes, gen).half()
            second = coords_cutout if cutout else flip_status
            torch.save([coords_status, second, mix_index, mix_lam, mix_bbox, output.cpu()],
                       os.path.join(d, f"batch_{batch_idx}.tar"))
            sampler_indices.setdefault(str(epoch), [])
            sampler_indices[str(epoch)] += index.tolist()
            truth[(epoch, batch_idx)] = index.numpy().copy()
            batch_counter += 1
            if batch_counter == total_steps:
                break
        if not os.listdir(d):
            os.rmdir(d)  # the loop made the folder before finding nothing left to write
    with open(os.path.join(root, "sampler_indices_epoch.json"), "w") as f:
        json.dump(sampler_indices, f)
    return truth


def write_lpqld(root: str, n: int = 100, batch_size: int = 32, epochs: int = 3, num_classes: int = 10,
                topk: int = 4, randaug: bool = False, prune_ratio: float = 0.0, seed: int = 42) -> dict:
    """LPQLD ``generate_soft_label_pruning_batch.py --label_quantization top-k``: flat ``batch_<g>.tar``
    with fp16 crops, uint8 mix index and box, top-k fp16 logits and int16 indices (and RandAugment
    parameters in fp16 with ``--use_rand_aug``), plus ``sampler_indices_batch.json``."""
    gen = _seed_all(10)
    os.makedirs(root, exist_ok=True)
    loader = _loader(n, batch_size, seed, "randaug" if randaug else "flip", drop_last=prune_ratio > 0)
    num_batches = len(loader)
    total_steps = int(epochs * num_batches * (1 - prune_ratio))
    run_epochs = total_steps // num_batches + 1
    sampler_indices, truth = {}, {}
    batch_counter = 0

    def half(obj):
        if isinstance(obj, torch.Tensor) and obj.is_floating_point():
            return obj.half()
        if isinstance(obj, list):
            return [half(x) for x in obj]
        if isinstance(obj, tuple):
            return tuple(half(x) for x in obj)
        return obj

    for _epoch in range(run_epochs):
        for batch_data in loader:
            if randaug:
                index, flip_status, coords_status, rand_params, _i = batch_data
                rand_params = half(rand_params)
            else:
                index, flip_status, coords_status, _i = batch_data
            mix_index, mix_lam, mix_bbox = _mix_aug(len(index), "cutmix")
            output = _teacher(len(index), num_classes, gen)
            top = torch.topk(output, topk, dim=1)
            output, indices = top.values.half(), top.indices.short()
            coords_status = coords_status.half()
            mix_index = mix_index.to(torch.uint8)
            mix_bbox = [torch.tensor(bbox, dtype=torch.uint8) for bbox in mix_bbox]
            if randaug:
                cfg = [coords_status, flip_status, rand_params, mix_index, mix_lam, mix_bbox, output.cpu(), indices.cpu()]
            else:
                cfg = [coords_status, flip_status, mix_index, mix_lam, mix_bbox, output.cpu(), indices.cpu()]
            torch.save(cfg, os.path.join(root, f"batch_{batch_counter}.tar"))
            sampler_indices[str(batch_counter)] = index.tolist()
            truth[batch_counter] = index.numpy().copy()
            batch_counter += 1
            if batch_counter == total_steps:
                break
        total_steps -= 1
    with open(os.path.join(root, "sampler_indices_batch.json"), "w") as f:
        json.dump(sampler_indices, f)
    return truth


def write_fkd(root: str, images: str, num_crops: int = 6, num_classes: int = 10, k: int = 5,
              fp16: bool = True) -> None:
    """FKD ``FKD_SLG/generate_soft_label.py`` with ``marginal_smoothing_k5``: one file per image,
    ``save_path/<3 parent dirs>/<stem>.tar`` = ``[coords [crops, 4], flips [crops], [crops, 2, k]]``
    (numpy; fp16 with ``--use_fp16``), probabilities = softmax(logits / 1)."""
    gen = _seed_all(11)
    ds = _CoordsDataset(1)
    for cls in sorted(os.listdir(images)):
        for f in sorted(os.listdir(os.path.join(images, cls))):
            path = os.path.join(images, cls, f)
            coords, flips = [], []
            for _ in range(num_crops):
                _i, flip, c, _j = ds[0]
                coords.append(c)
                flips.append(torch.tensor(flip))
            coords = torch.stack(coords)
            flip_status = torch.stack(flips)
            p = torch.softmax(_teacher(num_crops, num_classes, gen), dim=1)
            quant = []
            for row in p:
                order = torch.argsort(row, descending=True)
                quant.append(torch.stack([order[:k].float(), row[order[:k]]], dim=0))
            output_quan = torch.stack(quant, dim=0).numpy()
            save_path = os.path.join(root, "/".join(path.split("/")[-4:-1]))
            os.makedirs(save_path, exist_ok=True)
            name = os.path.join(save_path, path.split("/")[-1].split(".")[0] + ".tar")
            if fp16:
                state = [np.float16(coords.numpy()), flip_status.numpy(), np.float16(output_quan)]
            else:
                state = [coords.numpy(), flip_status.numpy(), output_quan]
            torch.save(state, name)
