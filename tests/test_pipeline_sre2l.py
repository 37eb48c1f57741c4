"""The SRe2L adapter: a training loop written for SRe2L's patched loader runs unchanged on stock torch."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from dist_pipeline_data import ToyTeacher, digits
from ddpipe.pipeline import ArraySource, recipe
from ddpipe.pipeline.loader import LoaderConfig, make_loader
from ddpipe.pipeline.relabel import relabel, relabel_spec
from ddpipe.pipeline.sre2l_adapter import SRe2LBatches

KW = dict(channels=1, mean=(0.5,), std=(0.5,))


# --- the loop, in the shape SRe2L's train_FKD.py has it (written here, not copied) -----------------
def mix_aug(images, mix_type, rand_index=None, lam=None, bbox=None):
    if mix_type == "mixup":
        return lam * images + (1 - lam) * images[rand_index]
    if mix_type == "cutmix":
        bbx1, bby1, bbx2, bby2 = bbox
        images[:, :, bbx1:bbx2, bby1:bby2] = images[rand_index, :, bbx1:bbx2, bby1:bby2]
    return images


def train_one_epoch(model, train_loader, optimizer, epoch, temperature, mix_type, accumulation=2):
    train_loader.dataset.set_epoch(epoch)
    loss_fn = nn.KLDivLoss(reduction="batchmean")
    seen = []
    for batch_idx, batch_data in enumerate(train_loader):
        images, target, flip_status, coords_status = batch_data[0]
        mix_index, mix_lam, mix_bbox, soft_label = batch_data[1:]
        soft_label = soft_label.float()
        images = mix_aug(images, mix_type, mix_index, mix_lam, mix_bbox)
        optimizer.zero_grad()
        small = max(1, images.shape[0] // accumulation)
        for i in range(0, images.shape[0], small):
            out = model(images[i : i + small])
            loss = loss_fn(F.log_softmax(out / temperature, dim=1), F.softmax(soft_label[i : i + small] / temperature, dim=1))
            (loss / accumulation).backward()
        optimizer.step()
        seen.append((images.detach().clone(), soft_label, target, flip_status, coords_status))
        assert batch_idx < len(train_loader)
    return seen


def test_sre2l_loop_runs_unchanged_on_stock_torch(tmp_path):
    from torch.utils.data._utils import fetch

    unpatched = fetch._MapDatasetFetcher.fetch
    images, labels = digits()
    src = ArraySource(images[:240], labels[:240])
    T = 4.0
    relabel(str(tmp_path / "s"), src, ToyTeacher(10),
            *relabel_spec(src, recipe("sre2l", output_size=(8, 8)), epochs=2, batch_size=48, num_classes=10, k=10,
                          value_codec="fp32", temperature=T),
            loader=LoaderConfig(num_workers=0, **KW), teacher_input="numpy")
    train_loader = SRe2LBatches(src, str(tmp_path / "s"), num_workers=0, **KW)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ref = make_loader(src, str(tmp_path / "s"), num_workers=0, **KW)  # ddpipe's own mixed batches
    for epoch in range(2):
        seen = train_one_epoch(model, train_loader, opt, epoch, T, "cutmix")
        mine = list(ref.epoch(epoch))
        assert len(seen) == len(mine) == len(train_loader) == 5
        for (img, soft, target, flips, coords), (x, dense, meta) in zip(seen, mine):
            torch.testing.assert_close(img, x, rtol=0, atol=0)  # the loop's mix_aug == ddpipe's mix
            # softmax(soft_label / T_store) is the stored distribution
            torch.testing.assert_close(F.softmax(soft / T, dim=1), dense, rtol=1e-4, atol=1e-6)
            np.testing.assert_array_equal(target.numpy(), labels[meta.sample_ids.numpy()])
            assert flips.dtype == torch.bool and coords.shape == (len(target), 4)
    assert fetch._MapDatasetFetcher.fetch is unpatched


def test_lossless_store_gives_the_teachers_softmax_at_any_temperature(tmp_path):
    images, labels = digits()
    src = ArraySource(images[:64], labels[:64])
    teacher = ToyTeacher(10)
    relabel(str(tmp_path / "s"), src, teacher,
            *relabel_spec(src, recipe("sre2l-mixup", output_size=(8, 8)), epochs=1, batch_size=32, num_classes=10, k=10,
                          value_codec="fp32", temperature=1.0),
            loader=LoaderConfig(num_workers=0, **KW), teacher_input="numpy")
    batches = SRe2LBatches(src, str(tmp_path / "s"), num_workers=0, **KW)
    for (imgs, *_), mix_index, lam, bbox, soft in batches:
        assert bbox is None and 0 <= lam <= 1 and len(mix_index) == len(imgs)
        mixed = mix_aug(imgs, "mixup", mix_index, lam, bbox)
        logits = torch.from_numpy(teacher(mixed.numpy())).float()
        for t in (1.0, 5.0, 20.0):
            torch.testing.assert_close(F.softmax(soft / t, 1), F.softmax(logits / t, 1), rtol=1e-3, atol=1e-5)


def _small_store(tmp_path, epochs=2, batch_size=32, n=96):
    images, labels = digits()
    src = ArraySource(images[:n], labels[:n])
    relabel(str(tmp_path / "s"), src, ToyTeacher(10),
            *relabel_spec(src, recipe("sre2l", output_size=(8, 8)), epochs=epochs, batch_size=batch_size,
                          num_classes=10, k=10, value_codec="fp32", temperature=4.0),
            loader=LoaderConfig(num_workers=0, **KW), teacher_input="numpy")
    return src, str(tmp_path / "s")


def test_batch_size_and_epochs_are_checked_at_construction(tmp_path):
    import pytest

    from ddpipe.pipeline import LoaderSpecError

    src, store = _small_store(tmp_path)
    with pytest.raises(LoaderSpecError, match="batch size 64 does not match the store's 32"):
        SRe2LBatches(src, store, num_workers=0, batch_size=64, **KW)
    with pytest.raises(LoaderSpecError, match="--epochs 3 but the store holds labels for 2 epochs"):
        SRe2LBatches(src, store, num_workers=0, batch_size=32, epochs=3, **KW)
    ok = SRe2LBatches(src, store, num_workers=0, batch_size=32, epochs=2, pin_memory=True, **KW)
    batches = list(ok)
    assert len(batches) == len(ok) == 3
    if not torch.cuda.is_available():  # pin_memory is a no-op without CUDA, as DataLoader's
        assert not batches[0][0][0].is_pinned()


def test_logit_store_through_the_adapter_at_the_loops_temperature(tmp_path):
    """A logit store (value_kind = logits, k = C): the loop's softmax(soft_label / T) is the teacher's
    softmax(logits / T) at every T, whatever temperature the store was written with."""
    from dataclasses import replace

    from ddpipe.labelstore import create_store
    from ddpipe.pipeline import Schedule

    images, labels = digits()
    src = ArraySource(images[:64], labels[:64])
    teacher = ToyTeacher(10)
    sched = Schedule(recipe("sre2l-mixup", output_size=(8, 8)), 0, src.sizes, 32, 1)
    spec = sched.store_spec(10, 10, value_codec="fp32", value_kind="logits", temperature=20.0)
    ref = {}
    with create_store(str(tmp_path / "l"), spec) as w:
        for b in range(sched.batches_per_epoch):
            u = sched.unit(0, b)
            logits = np.random.default_rng(b).normal(scale=6.0, size=(u.count, 10)).astype(np.float32)
            ref[b] = logits
            w.write(replace(u, logits=logits))
    batches = SRe2LBatches(src, str(tmp_path / "l"), num_workers=0, **KW)
    for b, (_, _, _, _, soft) in enumerate(batches):
        for t in (1.0, 4.0, 20.0):
            torch.testing.assert_close(F.softmax(soft / t, 1), F.softmax(torch.from_numpy(ref[b]).double() / t, 1).float(),
                                       rtol=1e-4, atol=1e-6)
