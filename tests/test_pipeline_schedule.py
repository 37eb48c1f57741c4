"""Schedules: determinism, torchvision RandomResizedCrop semantics, flip rate, CutMix lambda, replay draws."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from ddpipe.labelstore import StoreSpec
from ddpipe.pipeline import LoaderSpecError, Schedule, ScheduleConfig, crop_pixels, recipe, replay_units, shard_for_rank
from ddpipe.pipeline.schedule import RECIPES, cutmix_box, quantise_crops, random_resized_crops


def _sched(cfg=None, n=300, bs=32, epochs=4, seed=7, sizes=None):
    sizes = np.tile([[48, 64]], (n, 1)) if sizes is None else sizes
    return Schedule(cfg or recipe("sre2l", output_size=(32, 32)), seed, sizes, bs, epochs)


def test_same_seed_same_schedule_any_call_order():
    a, b = _sched(), _sched()
    units_a = [a.unit(e, bt) for e in range(4) for bt in range(a.batches_per_epoch)]
    # b generated backwards: every unit is a pure function of (seed, epoch, batch)
    units_b = [b.unit(e, bt) for e in reversed(range(4)) for bt in reversed(range(b.batches_per_epoch))][::-1]
    for ua, ub in zip(units_a, units_b):
        for f in ("sample_ids", "crops", "flips", "cutout", "cutout_fill", "mix_perm", "mix_box"):
            np.testing.assert_array_equal(getattr(ua, f), getattr(ub, f))
        assert ua.mix_lambda == ub.mix_lambda and ua.mix_kind == ub.mix_kind


def test_other_seed_other_schedule():
    a, b = _sched(seed=1), _sched(seed=2)
    assert not np.array_equal(a.epoch_order(0), b.epoch_order(0))
    assert not np.array_equal(a.unit(0, 0).crops, b.unit(0, 0).crops)


def test_each_epoch_is_a_permutation_and_batches_cover_it():
    s = _sched(n=100, bs=32)
    for e in range(4):
        ids = np.concatenate([s.unit(e, b).sample_ids for b in range(s.batches_per_epoch)])
        np.testing.assert_array_equal(np.sort(ids), np.arange(100))
    assert s.unit(0, 3).count == 100 - 3 * 32  # the short last batch
    assert not np.array_equal(s.epoch_order(0), s.epoch_order(1))


def test_crop_statistics_match_torchvision_semantics():
    cfg = ScheduleConfig(output_size=(32, 32), scale=(0.25, 0.75), ratio=(0.5, 2.0), flip=0.3)
    H, W = 120, 160
    s = _sched(cfg, n=4000, bs=500, epochs=1, sizes=np.tile([[H, W]], (4000, 1)))
    units = [s.unit(0, b) for b in range(s.batches_per_epoch)]
    boxes = np.concatenate([crop_pixels(u.crops, s.sizes[u.sample_ids]) for u in units])
    y, x, h, w = boxes.T
    assert (y >= 0).all() and (x >= 0).all() and (y + h <= H).all() and (x + w <= W).all()
    area = h * w / (H * W)
    # integer rounding of h and w moves the area by at most ~(h + w + 1) pixels
    slack = (h + w + 1) / (H * W)
    assert (area >= 0.25 - slack).all() and (area <= 0.75 + slack).all()
    ratio = w / h
    assert (ratio >= 0.5 * (1 - 1 / h.min()) - 1e-9).all() and (ratio <= 2.0 * (1 + 1 / h.min())).all()
    # the same distribution as torchvision's own RandomResizedCrop.get_params (rejections included)
    import torch
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(0)
    ref = np.array([RandomResizedCrop.get_params(torch.empty(3, H, W), [0.25, 0.75], [0.5, 2.0]) for _ in range(4000)])
    ref_area = ref[:, 2] * ref[:, 3] / (H * W)
    ref_ratio = ref[:, 3] / ref[:, 2]
    assert abs((ratio > 1).mean() - (ref_ratio > 1).mean()) < 0.04
    assert abs(area.mean() - ref_area.mean()) < 0.015
    assert abs(np.log(ratio).std() - np.log(ref_ratio).std()) < 0.03
    flips = np.concatenate([u.flips for u in units])
    assert abs(flips.mean() - 0.3) < 0.03
    # placement is uniform: the box centres cover the image
    assert (x + w / 2).std() > 10 and (y + h / 2).std() > 8


def test_crop_fallback_is_the_centre_crop():
    rng = np.random.default_rng(0)
    # a 1000x10 image cannot hold any box of ratio 3/4..4/3 with >= 8% of its area: centre fallback
    boxes = random_resized_crops(rng, np.array([[1000, 10]] * 5), (0.08, 1.0), (3 / 4, 4 / 3))
    h = round(10 / (3 / 4))
    np.testing.assert_array_equal(boxes, [[(1000 - h) // 2, 0, h, 10]] * 5)
    # a square image never needs it and stays inside
    boxes = random_resized_crops(rng, np.array([[50, 50]] * 200), (0.08, 1.0), (3 / 4, 4 / 3))
    assert (boxes[:, 2] <= 50).all() and (boxes[:, 0] + boxes[:, 2] <= 50).all()


def test_quantised_crops_give_back_the_integer_boxes():
    rng = np.random.default_rng(3)
    for H, W in [(28, 28), (224, 224), (375, 500), (4000, 3000), (65000, 17)]:
        sizes = np.array([[H, W]] * 500)
        boxes = random_resized_crops(rng, sizes, (0.08, 1.0), (3 / 4, 4 / 3))
        frac = np.stack([boxes[:, 0] / H, boxes[:, 1] / W, boxes[:, 2] / H, boxes[:, 3] / W], 1)
        np.testing.assert_array_equal(crop_pixels(quantise_crops(frac), sizes), boxes)


def test_cutmix_lambda_is_the_true_box_area():
    s = _sched(recipe("sre2l", output_size=(40, 56)), n=64, bs=16, epochs=30)
    lams = []
    for e in range(30):
        u = s.unit(e, 0)
        y0, x0, y1, x1 = u.mix_box
        assert 0 <= y0 <= y1 <= 40 and 0 <= x0 <= x1 <= 56
        assert u.mix_lambda == pytest.approx(1 - (y1 - y0) * (x1 - x0) / (40 * 56), abs=1e-6)
        assert sorted(u.mix_perm) == list(range(16))
        lams.append(u.mix_lambda)
    assert 0.2 < np.mean(lams) < 0.9  # Beta(1, 1) corrected upwards by clipping at the border
    box, lam = cutmix_box(np.random.default_rng(0), (10, 10), 1.0)
    assert lam == pytest.approx(1 - (box[2] - box[0]) * (box[3] - box[1]) / 100)


def test_mixup_and_cutout_recipes():
    mix = _sched(recipe("sre2l-mixup", output_size=(32, 32)), n=64, bs=16).unit(0, 0)
    assert mix.mix_kind == "mixup" and 0 <= mix.mix_lambda <= 1 and not mix.mix_box.any()
    lpld = _sched(recipe("lpld-in21k", output_size=(32, 32)), n=64, bs=16).unit(0, 0)
    assert lpld.mix_kind == "none" and not lpld.flips.any()
    np.testing.assert_array_equal(lpld.mix_perm, np.arange(16))
    c = lpld.cutout
    # LPLD's geometry: centre ± int(0.5 * 32 + 0.5) // 2, drawn inclusive -> at most 17 px, clipped
    assert ((c[:, 2] - c[:, 0]) <= 17).all() and ((c[:, 3] - c[:, 1]) <= 17).all() and (c[:, 2] > c[:, 0]).all()
    big = _sched(recipe("lpld-in21k"), n=256, bs=64).unit(0, 0).cutout  # 224 px
    inside = (big[:, 0] > 0) & (big[:, 2] < 224) & (big[:, 1] > 0) & (big[:, 3] < 224)
    assert inside.any() and ((big[inside, 2] - big[inside, 0]) == 113).all() and ((big[inside, 3] - big[inside, 1]) == 113).all()


def test_config_round_trips_and_rejects_nonsense():
    cfg = recipe("lpld-in21k", fill=(1, 2, 3))
    assert ScheduleConfig.from_dict(cfg.to_dict()) == cfg
    cfg = recipe("lpld-in21k")
    assert cfg.fill == "random" and cfg.to_dict()["fill"] == "random"
    assert ScheduleConfig.from_dict(cfg.to_dict()) == cfg
    assert ScheduleConfig(fill=[200]).fill == (200,) and ScheduleConfig(fill=7).fill == (7,)
    for bad in (dict(scale=(0.5, 0.1)), dict(mix="cutout"), dict(flip=2), dict(fill=(300,)), dict(output_size=(0, 4)),
                dict(fill="rand"), dict(fill=(1, 2)), dict(fill=(1, 2, 3, 4)), dict(fill=()), dict(fill=("a",))):
        with pytest.raises(LoaderSpecError):
            ScheduleConfig(**bad)
    with pytest.raises(LoaderSpecError, match="unknown schedule recipe"):
        recipe("nope")
    with pytest.raises(LoaderSpecError, match="unknown schedule fields"):
        ScheduleConfig.from_dict({"scale": [0.1, 1], "bogus": 1})


def test_replay_units_unpruned_pruned_and_epoch_granularity():
    spec = StoreSpec(num_samples=100, num_classes=10, epochs=5, batch_size=32, k=3)
    full = np.stack(np.divmod(np.arange(20), 4), 1)
    np.testing.assert_array_equal(replay_units(full, spec, 2), [8, 9, 10, 11])
    with pytest.raises(LoaderSpecError, match="epoch 5"):
        replay_units(full, spec, 5)
    kept = full[[1, 6, 7, 13, 19]]
    pspec = spec.replace(pruning={"keep": 0.25, "granularity": "batch", "seed": 0, "source_units": 20})
    draws = [replay_units(kept, pspec, e) for e in range(50)]
    assert all(len(d) == 4 and d.min() >= 0 and d.max() < 5 for d in draws)
    np.testing.assert_array_equal(replay_units(kept, pspec, 3), draws[3])  # pure function of (seed, epoch)
    assert len({tuple(d) for d in draws}) > 40  # with replacement, differs per epoch
    assert set(np.concatenate(draws)) == set(range(5))
    kept_e = full[full[:, 0] % 2 == 0]
    espec = spec.replace(pruning={"keep": 0.6, "granularity": "epoch", "seed": 0, "source_units": 20})
    for e in range(10):
        u = replay_units(kept_e, espec, e)
        assert len(u) == 4 and len(set(kept_e[u, 0])) == 1


def test_shard_for_rank_partitions():
    units = np.arange(11)
    parts = [shard_for_rank(units, r, 3) for r in range(3)]
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), units)
    with pytest.raises(LoaderSpecError):
        shard_for_rank(units, 3, 3)


def test_schedule_rejects_units_outside_it():
    s = _sched(n=10, bs=4, epochs=2)
    with pytest.raises(LoaderSpecError, match="outside the schedule"):
        s.unit(2, 0)
    with pytest.raises(LoaderSpecError, match="outside the schedule"):
        s.unit(0, 3)
    assert math.isclose(s.unit(1, 2).count, 2)


# --- per-sample cutout colours ----------------------------------------------------------------
# SHA-256 (first 16 hex digits) of every field of every unit of a small schedule per recipe, and a
# few of its values, as computed before per-sample cutout colours were added: adding the colour
# draws (after every other draw of a unit) must not move anything an existing recipe draws.
RECIPE_DIGESTS = {
    "sre2l": "7eaa6addb552cfba",
    "sre2l-mixup": "32adbe33a6de9dad",
    "lpld-in21k": "52ca4bbbe2a8de52",  # re-recorded: cutout boxes now follow LPLD's inclusive rectangle
    "lpld-tiny": "20f0a9510d7f95c2",
    "sre2l-torch": "50c5f19975b90f83",  # sre2l's draws in torch's RandomSampler order (recorded when added)
}
DIGEST_SIZES = np.stack([np.arange(50) % 7 * 9 + 40, np.arange(50) % 5 * 11 + 48], 1)


def _digest(cfg):
    s = Schedule(cfg, 5, DIGEST_SIZES, 16, 3)
    h = hashlib.sha256()
    for e in range(3):
        for b in range(s.batches_per_epoch):
            u = s.unit(e, b)
            for a in (u.sample_ids, u.crops, u.flips, u.cutout, u.mix_perm, u.mix_box):
                h.update(np.ascontiguousarray(a).tobytes())
            h.update(np.float64(u.mix_lambda).tobytes())
            h.update(u.mix_kind.encode())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("name", sorted(RECIPE_DIGESTS))
def test_existing_recipes_draw_what_they_drew_before_cutout_colours(name):
    assert set(RECIPE_DIGESTS) == set(RECIPES)
    assert _digest(recipe(name, output_size=(32, 40))) == RECIPE_DIGESTS[name]
    # LPLD's boxes do not depend on whether its colours are drawn
    assert _digest(recipe(name, output_size=(32, 40), fill=(0, 0, 0))) == RECIPE_DIGESTS[name]


def test_hard_coded_units_are_unchanged():
    lpld = Schedule(recipe("lpld-in21k", output_size=(32, 40)), 5, DIGEST_SIZES, 16, 3).unit(1, 2)
    assert lpld.sample_ids[:4].tolist() == [24, 7, 42, 38]
    assert lpld.cutout[:3].tolist() == [[11, 17, 28, 38], [10, 2, 27, 23], [6, 3, 23, 24]]
    sre2l = Schedule(recipe("sre2l", output_size=(32, 40)), 5, DIGEST_SIZES, 16, 3).unit(1, 2)
    assert (sre2l.crops[:2] * 65535).round().astype(int).tolist() == [[0, 712, 60644, 33480], [0, 3745, 65535, 29023]]
    assert sre2l.mix_box.tolist() == [19, 18, 32, 40] and sre2l.mix_lambda == np.float32(0.7765625)


def test_constant_fill_is_repeated_per_sample():
    for fill, rgb in (((0, 0, 0), [0, 0, 0]), ((200,), [200, 200, 200]), ((1, 2, 3), [1, 2, 3])):
        u = _sched(recipe("lpld-in21k", output_size=(32, 32), fill=fill), n=40, bs=16).unit(0, 2)
        assert u.cutout_fill.dtype == np.uint8 and u.cutout_fill.shape == (8, 3)
        assert (u.cutout_fill == rgb).all()
    # sre2l has no cutout: its colours are the default constant, black
    assert not _sched().unit(0, 0).cutout_fill.any()


def test_random_fill_is_deterministic_uniform_and_per_sample():
    cfg = recipe("lpld-in21k", output_size=(32, 32))
    a, b = _sched(cfg, n=4000, bs=500, epochs=2, seed=3), _sched(cfg, n=4000, bs=500, epochs=2, seed=3)
    units = [a.unit(e, bt) for e in range(2) for bt in range(a.batches_per_epoch)]
    again = [b.unit(e, bt) for e in reversed(range(2)) for bt in reversed(range(b.batches_per_epoch))][::-1]
    for u, v in zip(units, again):  # a pure function of (seed, epoch, batch), in any call order
        np.testing.assert_array_equal(u.cutout_fill, v.cutout_fill)
        assert u.cutout_fill.dtype == np.uint8 and u.cutout_fill.shape == (500, 3)
    other = _sched(cfg, n=4000, bs=500, epochs=2, seed=4).unit(0, 0)
    assert (other.cutout_fill != units[0].cutout_fill).any(axis=1).mean() > 0.9
    c = np.concatenate([u.cutout_fill for u in units]).astype(np.float64)  # 8,000 samples x RGB
    assert c.min() == 0 and c.max() == 255
    for ch in range(3):  # uniform on 0..255, every value drawn (LPLD: random.randint(0, 255))
        assert len(np.unique(c[:, ch])) == 256
        assert abs(c[:, ch].mean() - 127.5) < 3 and abs(c[:, ch].std() - 73.9) < 2
        counts = np.bincount(c[:, ch].astype(int), minlength=256)
        assert ((counts - 31.25) ** 2 / 31.25).sum() < 330  # chi-square, 255 dof: p ~ 0.001
    corr = np.corrcoef(c.T)
    assert np.abs(corr[np.triu_indices(3, 1)]).max() < 0.05  # channels drawn independently
    assert len({tuple(x) for x in c[:500]}) > 495  # a colour per sample, not per batch
    # the colours are the last draws: boxes and everything else match the constant-fill schedule
    const = _sched(recipe("lpld-in21k", output_size=(32, 32), fill=(0, 0, 0)), n=4000, bs=500, epochs=2, seed=3)
    for u in units[:3]:
        k = const.unit(u.epoch, u.batch)
        for f in ("sample_ids", "crops", "flips", "cutout", "mix_perm", "mix_box"):
            np.testing.assert_array_equal(getattr(u, f), getattr(k, f))


# --- the torch-sampler order (SRe2L's RandomSampler replay) -------------------------------------------
def test_torch_sampler_order_reproduces_random_sampler_batches():
    """n = 100, B = 32, seed 42, three epochs: the batches SRe2L's DataLoader yields, one generator
    reused across epochs (its discarded second permutation per epoch included), with and without drop_last."""
    import torch

    from ddpipe.pipeline.schedule import TORCH_SAMPLER_ORDER, torch_sampler_orders

    n, B = 100, 32
    s = Schedule(recipe("sre2l", output_size=(16, 16), order=TORCH_SAMPLER_ORDER), 42, np.tile([[20, 24]], (n, 1)), B, 3)
    for drop_last in (False, True):
        g = torch.Generator()
        g.manual_seed(42)
        sampler = torch.utils.data.RandomSampler(range(n), generator=g)
        loader = torch.utils.data.DataLoader(range(n), batch_size=B, sampler=sampler, drop_last=drop_last)
        for e in range(3):
            batches = [b.numpy() for b in loader]
            assert len(batches) == (3 if drop_last else 4)
            for b, want in enumerate(batches):
                np.testing.assert_array_equal(s.unit(e, b).sample_ids, want)
    # epochs asked out of order, or alone, give the same permutations
    later = torch_sampler_orders(n, 42, 3, start=2)[0]
    np.testing.assert_array_equal(later, s.epoch_order(2))
    np.testing.assert_array_equal(torch_sampler_orders(n, 42, 1)[0], s.epoch_order(0))
    # one permutation per epoch would match epoch 0 only (what a replay without the extra draw gets wrong)
    g = torch.Generator()
    g.manual_seed(42)
    naive = [torch.randperm(n, generator=g).numpy() for _ in range(3)]
    assert np.array_equal(naive[0], s.epoch_order(0)) and not np.array_equal(naive[1], s.epoch_order(1))


def test_torch_sampler_order_keeps_every_other_draw_and_the_default_record():
    from ddpipe.pipeline.schedule import TORCH_SAMPLER_ORDER

    a = _sched(recipe("sre2l", output_size=(32, 32)))
    b = _sched(recipe("sre2l", output_size=(32, 32), order=TORCH_SAMPLER_ORDER))
    assert not np.array_equal(a.epoch_order(1), b.epoch_order(1))
    ua, ub = a.unit(1, 2), b.unit(1, 2)
    np.testing.assert_array_equal(ua.mix_perm, ub.mix_perm)
    assert ua.mix_lambda == ub.mix_lambda
    # ddpipe's order is the default and is not written into the record (older stores' records stay equal)
    assert "order" not in a.config.to_dict() and b.config.to_dict()["order"] == TORCH_SAMPLER_ORDER
    assert ScheduleConfig.from_dict(b.config.to_dict()) == b.config
    with pytest.raises(LoaderSpecError, match="order must be one of"):
        ScheduleConfig(order="numpy")
