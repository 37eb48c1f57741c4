"""The torch loader (reference) and the relabel step: replay exactness, targets, mix, resume, pruning, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dist_pipeline_data import ToyTeacher, class_sorted, digits, fashion_mnist, pattern_images, write_image_folder
from ddpipe.labelstore import FORMAT_VERSION, open_store
from ddpipe.pipeline import (
    ArraySource,
    ImageSetMismatchError,
    LoaderSpecError,
    ScheduleConfig,
    crop_pixels,
    open_source,
    recipe,
)
from ddpipe.pipeline.loader import LoaderConfig, make_loader, make_relabel_loader
from ddpipe.pipeline.relabel import relabel, relabel_spec
from ddpipe.pipeline.stages import IMAGENET_MEAN, IMAGENET_STD
from labelstore_units import downgrade_to_format_1

RAW = dict(mean=None, std=None)  # images come out as pixel / 255


@pytest.fixture(scope="module")
def patterned(tmp_path_factory):
    """200 RGB 48x64 images whose pixels encode (x, y, id), relabelled with flips and no mix."""
    root = tmp_path_factory.mktemp("pat")
    src = ArraySource(pattern_images(200), np.arange(200) % 10)
    cfg = ScheduleConfig(output_size=(24, 32), scale=(0.1, 1.0), flip=0.5, mix="none")
    relabel(str(root / "s"), src, ToyTeacher(10),
            *relabel_spec(src, cfg, epochs=3, batch_size=32, num_classes=10, k=4, seed=11),
            loader=LoaderConfig(num_workers=0, **RAW), teacher_input="numpy")
    return src, str(root / "s")


@pytest.fixture(scope="module")
def digits_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("dig")
    images, labels = digits()
    src = ArraySource(images[:300], labels[:300])
    relabel(str(root / "s"), src, ToyTeacher(10),
            *relabel_spec(src, recipe("sre2l", output_size=(8, 8)), epochs=4, batch_size=40, num_classes=10, k=3),
            loader=LoaderConfig(num_workers=0, channels=1, mean=(0.5,), std=(0.5,)), teacher_input="numpy")
    return src, str(root / "s")


def test_replayed_crops_and_flips_are_the_stored_ones(patterned):
    src, path = patterned
    ld = make_loader(src, path, LoaderConfig(num_workers=2, **RAW))
    r = open_store(path)
    seen = 0
    for e in range(3):
        for images, targets, meta in ld.epoch(e):
            u = r.read_unit(meta.unit)
            np.testing.assert_array_equal(meta.sample_ids.numpy(), u.sample_ids)
            boxes = crop_pixels(u.crops, src.sizes[u.sample_ids])
            px = images.numpy() * 255
            for i, (y, x, h, w) in enumerate(boxes):
                R, G, B = px[i]
                assert np.all(np.abs(B - u.sample_ids[i]) < 0.01)  # the right image
                # a bilinear resize keeps a ramp's mean: the crop's mean x and y, times 4
                assert abs(R.mean() / 4 - (x + (w - 1) / 2)) < 0.3, (e, i, "x")
                assert abs(G.mean() / 4 - (y + (h - 1) / 2)) < 0.3, (e, i, "y")
                if w > 1:
                    assert (R[:, 0].mean() > R[:, -1].mean()) == bool(u.flips[i])  # flipped ramps run backwards
            seen += len(boxes)
    assert seen == 3 * 200


def test_teacher_saw_what_the_student_sees(digits_store):
    src, path = digits_store
    r = open_store(path)
    cfg = LoaderConfig(num_workers=0, channels=1, mean=(0.5,), std=(0.5,))
    sched, _ = relabel_spec(src, ScheduleConfig.from_dict(r.spec.augmentation), epochs=4, batch_size=40,
                            num_classes=10, k=3)
    rel = list(make_relabel_loader(src, sched, r.plan[:12], cfg).epoch(0))
    train = [b for e in range(2) for b in make_loader(src, path, cfg).epoch(e)][:12]
    for (xr, tr, mr), (xt, tt, mt) in zip(rel, train):
        assert tr is None
        torch.testing.assert_close(xr, xt, rtol=0, atol=0)
        np.testing.assert_array_equal(mr.sample_ids, mt.sample_ids)
        # the stored labels are the teacher's top-k of exactly these images
        u = r.read_unit(mt.unit)
        np.testing.assert_array_equal(tt.argmax(1).numpy(), u.indices[:, 0])


def test_one_unit_record_from_schedule_to_store_to_meta(digits_store):
    """The schedule's unit, the unit read back and the loader's meta are one record (labelstore's
    Unit): relabel added the labels to the schedule's unit; the meta carries the read unit and reads
    its fields from one torch view of it."""
    from dataclasses import fields

    from ddpipe.labelstore import Unit
    from ddpipe.pipeline.loader import torch_view

    src, path = digits_store
    r = open_store(path)
    sched, _ = relabel_spec(src, ScheduleConfig.from_dict(r.spec.augmentation), epochs=4, batch_size=40,
                            num_classes=10, k=3)
    ld = make_loader(src, path, channels=1, mean=(0.5,), std=(0.5,), num_workers=0)
    for images, targets, meta in ld.epoch(2):
        read, made = r.read_unit(meta.unit), sched.unit(2, meta.batch)
        assert type(meta.params) is type(read) is type(made) is Unit
        for f in fields(Unit):
            if f.name not in ("logits", "probs", "topk", "unit"):  # labels: the teacher's; unit: the store position
                np.testing.assert_array_equal(getattr(read, f.name), getattr(made, f.name), err_msg=f.name)
                np.testing.assert_array_equal(getattr(meta.params, f.name), getattr(read, f.name), err_msg=f.name)
        view = torch_view(meta.params)
        for name in ("sample_ids", "crops", "flips", "cutout", "cutout_fill", "mix_perm", "mix_box"):
            assert isinstance(getattr(meta, name), torch.Tensor) and torch.equal(getattr(meta, name), getattr(view, name))
            assert getattr(meta, name).numpy().dtype == np.asarray(getattr(read, name)).dtype
        assert meta.mix_kind == read.mix_kind and meta.mix_lambda == read.mix_lambda and meta.unit == read.unit
        assert meta.epoch == 2 and meta.params.epoch == 2
        np.testing.assert_array_equal(meta.labels.numpy(), src.labels[read.sample_ids])


def test_targets_are_the_stores_dense_labels(digits_store):
    src, path = digits_store
    r = open_store(path)
    ld = make_loader(src, path, channels=1, mean=(0.5,), std=(0.5,), num_workers=0)
    for images, targets, meta in ld.epoch(1):
        u = r.read_unit(meta.unit)
        np.testing.assert_array_equal(targets.numpy(), u.dense(10))
        assert images.shape == (u.count, 1, 8, 8)
    topk = make_loader(src, path, channels=1, mean=(0.5,), std=(0.5,), num_workers=0, targets="topk")
    (idx, val), meta = next(iter(topk.epoch(0)))[1:]
    np.testing.assert_array_equal(idx.numpy(), r.read_unit(meta.unit).indices)


def test_stored_cutmix_is_applied_from_the_store(digits_store):
    src, path = digits_store
    raw = make_loader(src, path, channels=1, mean=(0.5,), std=(0.5,), num_workers=0, mix=False)
    mixed = make_loader(src, path, channels=1, mean=(0.5,), std=(0.5,), num_workers=0)
    for (x0, _, m), (x1, _, _) in zip(raw.epoch(2), mixed.epoch(2)):
        assert m.mix_kind == "cutmix"
        y0, xa, y1, xb = m.mix_box.tolist()
        want = x0.clone()
        want[:, :, y0:y1, xa:xb] = x0[m.mix_perm][:, :, y0:y1, xa:xb]
        torch.testing.assert_close(x1, want, rtol=0, atol=0)
        assert m.mix_lambda == pytest.approx(1 - (y1 - y0) * (xb - xa) / 64, abs=1e-6)


def test_cutout_recipe_paints_the_fill_without_normalisation(tmp_path):
    images, labels = fashion_mnist(64)
    src = ArraySource(images, labels)
    cfg = recipe("lpld-in21k", output_size=(28, 28), fill=(200,))
    relabel(str(tmp_path / "s"), src, ToyTeacher(10),
            *relabel_spec(src, cfg, epochs=1, batch_size=16, num_classes=10, k=2),
            loader=LoaderConfig(num_workers=0, channels=1, **RAW), teacher_input="numpy")
    for x, _, m in make_loader(src, str(tmp_path / "s"), channels=1, num_workers=0, **RAW).epoch(0):
        assert not m.flips.any() and m.mix_kind == "none"
        assert (m.cutout_fill == 200).all()  # the grey constant, stored per sample as (200, 200, 200)
        for i, (y0, x0, y1, x1) in enumerate(m.cutout.tolist()):
            assert y1 > y0 and x1 > x0
            assert torch.all(x[i, 0, y0:y1, x0:x1] == 200 / 255)
    # the same store as format 1 wrote it (no colours stored) replays the same images
    want = [x for x, _, _ in make_loader(src, str(tmp_path / "s"), channels=1, num_workers=0, **RAW).epoch(0)]
    downgrade_to_format_1(str(tmp_path / "s"))
    assert open_store(str(tmp_path / "s")).format_version == 1
    got = list(make_loader(src, str(tmp_path / "s"), channels=1, num_workers=0, **RAW).epoch(0))
    for w, (x, _, m) in zip(want, got):
        assert (m.cutout_fill == 200).all()
        torch.testing.assert_close(x, w, rtol=0, atol=0)


@pytest.fixture(scope="module")
def lpld_store(tmp_path_factory):
    """LPLD's ImageNet-21K recipe (RRC + cutout 0.5 in a random colour per image, no flip, no mix,
    no normalisation) on patterned RGB images, so that no image pixel looks like a cutout."""
    root = tmp_path_factory.mktemp("lpld")
    src = ArraySource(pattern_images(60, 40, 56), np.arange(60) % 6)
    cfg = recipe("lpld-in21k", output_size=(24, 32))
    relabel(str(root / "s"), src, ToyTeacher(6),
            *relabel_spec(src, cfg, epochs=2, batch_size=16, num_classes=6, k=3, seed=5),
            loader=LoaderConfig(num_workers=0, **RAW), teacher_input="numpy")
    return src, str(root / "s"), cfg


def test_relabel_stores_the_schedules_cutout_colours(lpld_store):
    src, path, cfg = lpld_store
    r = open_store(path)
    assert r.format_version == FORMAT_VERSION and r.spec.augmentation["fill"] == "random"
    sched, _ = relabel_spec(src, cfg, epochs=2, batch_size=16, num_classes=6, k=3, seed=5)
    colours = []
    for u in r.iter_units():
        want = sched.unit(u.epoch, u.batch)
        np.testing.assert_array_equal(u.cutout, want.cutout)
        np.testing.assert_array_equal(u.cutout_fill, want.cutout_fill)  # written, never re-derived
        colours.append(u.cutout_fill)
    colours = np.concatenate(colours)
    assert len({tuple(c) for c in colours}) > 0.95 * len(colours)  # a colour per sample


@pytest.mark.parametrize("backend, normalised", [("torch", False), ("torch", True), ("dali", False)])
def test_each_cutout_is_painted_in_its_stored_colour(lpld_store, backend, normalised):
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    src, path, _ = lpld_store
    r = open_store(path)
    stats = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD) if normalised else RAW
    ld = make_loader(src, path, backend=backend, num_workers=0, **stats)
    mean = np.zeros(3) if stats["mean"] is None else np.asarray(stats["mean"], float)
    std = np.ones(3) if stats["std"] is None else np.asarray(stats["std"], float)
    painted = 0
    for e in range(2):
        for x, _, m in ld.epoch(e):
            u = r.read_unit(m.unit)
            assert m.cutout_fill.dtype == torch.uint8 and m.cutout_fill.shape == (u.count, 3)
            np.testing.assert_array_equal(m.cutout_fill.numpy(), u.cutout_fill)
            for i, (y0, x0, y1, x1) in enumerate(u.cutout.tolist()):
                assert y1 > y0 and x1 > x0
                colour = torch.tensor((u.cutout_fill[i] / 255.0 - mean) / std, dtype=torch.float32)
                box = x[i, :, y0:y1, x0:x1]
                assert torch.equal(box, colour.view(3, 1, 1).expand_as(box)), (backend, e, i)  # exactly
                # and only the box: the pattern's B channel (the image id) survives around it
                outside = torch.ones(x.shape[2:], dtype=torch.bool)
                outside[y0:y1, x0:x1] = False
                if outside.any():
                    blue = x[i, 2][outside] * std[2] + mean[2]
                    assert torch.allclose(blue, torch.full_like(blue, u.sample_ids[i] / 255), atol=1e-5)
                painted += 1
    ld.close()
    assert painted == 2 * 60


def test_resume_mid_epoch_gives_the_same_remaining_batches(digits_store):
    src, path = digits_store
    kw = dict(channels=1, mean=(0.5,), std=(0.5,), num_workers=2)
    full = list(make_loader(src, path, **kw).epoch(1))
    a = make_loader(src, path, **kw)
    it = a.epoch(1)
    for _ in range(3):
        next(it)
    state = a.state_dict()
    assert state["epoch"] == 1 and state["position"] == 3
    b = make_loader(src, path, **kw)
    b.load_state_dict(state)
    rest = list(b.epoch(1))
    assert len(rest) == len(full) - 3
    for (x0, t0, m0), (x1, t1, m1) in zip(full[3:], rest):
        torch.testing.assert_close(x0, x1, rtol=0, atol=0)
        torch.testing.assert_close(t0, t1, rtol=0, atol=0)
        assert m0.unit == m1.unit and m1.position == m0.position


def test_relabel_resume_writes_the_same_bytes(tmp_path):
    images, labels = digits()
    src = ArraySource(images[:200], labels[:200])
    spec = relabel_spec(src, recipe("sre2l", output_size=(8, 8)), epochs=3, batch_size=50, num_classes=10, k=3)
    kw = dict(loader=LoaderConfig(num_workers=0, channels=1, **RAW), teacher_input="numpy")
    relabel(str(tmp_path / "ref"), src, ToyTeacher(10), *spec, **kw)

    class Dies(ToyTeacher):
        calls = 0

        def __call__(self, x):
            Dies.calls += 1
            if Dies.calls == 7:
                raise KeyboardInterrupt
            return super().__call__(x)

    with pytest.raises(KeyboardInterrupt):
        relabel(str(tmp_path / "cut"), src, Dies(10), *spec, **kw)
    assert open_store(str(tmp_path / "cut")).complete_units == 4  # one whole epoch committed
    counted = []
    out = relabel(str(tmp_path / "cut"), src, lambda x: counted.append(1) or ToyTeacher(10)(x), *spec, **kw)
    assert out["units_written"] == 8 and len(counted) == 8 and out["units_skipped"] == 4
    a, b = open_store(str(tmp_path / "ref")), open_store(str(tmp_path / "cut"))
    sa, sb = a.read_slab(0, a.num_units), b.read_slab(0, b.num_units)
    for name in sa.arrays:
        np.testing.assert_array_equal(sa.arrays[name], sb.arrays[name], err_msg=name)


def test_pruned_relabel_never_computes_pruned_units_and_replays_lpld_style(tmp_path):
    images, labels = digits()
    src = ArraySource(images[:256], labels[:256])
    calls = []

    def teacher(x):
        calls.append(len(x))
        return ToyTeacher(10)(x)

    out = relabel(str(tmp_path / "p"), src, teacher,
                  *relabel_spec(src, recipe("sre2l", output_size=(8, 8)), epochs=10, batch_size=32, num_classes=10, k=3,
                                keep=0.25),
                  loader=LoaderConfig(num_workers=0, channels=1, **RAW), teacher_input="numpy")
    assert out["units"] == 20 and len(calls) == 20  # 25 % of 80 units, and nothing else
    r = open_store(str(tmp_path / "p"))
    assert r.spec.pruning["keep"] == 0.25
    ld = make_loader(src, str(tmp_path / "p"), channels=1, num_workers=0, **RAW)
    units = [m.unit for e in range(10) for _, _, m in ld.epoch(e)]
    assert len(units) == 80 and set(units) <= set(range(20)) and len(set(units)) > 15


def test_bad_input_gives_one_clear_error(tmp_path, digits_store):
    src, path = digits_store
    images, labels = digits()
    other = ArraySource(images[300:600], labels[300:600])
    with pytest.raises(ImageSetMismatchError, match="relabel the images you train on"):
        make_loader(other, path)
    with pytest.raises(LoaderSpecError, match="covers 300 images but the source has 290 .missing images"):
        make_loader(ArraySource(images[:290], labels[:290]), path)
    with pytest.raises(LoaderSpecError, match="batch size 64 does not match the store's 40"):
        make_loader(src, path, batch_size=64)
    with pytest.raises(LoaderSpecError, match="unknown loader backend"):
        make_loader(src, path, backend="ffcv")
    with pytest.raises(LoaderSpecError, match="mean/std need 1 values"):
        make_loader(src, path, channels=1, mean=(0.1, 0.2))
    with pytest.raises(LoaderSpecError, match="has no labels"):
        next(iter(make_loader(src, path, channels=1, mean=(0.5,), std=(0.5,)).epoch(4)))
    for bad in (dict(source=other), dict(batch_size=1), dict(source=ArraySource(images[:10], labels[:10]))):
        with pytest.raises((ImageSetMismatchError, LoaderSpecError)) as info:
            make_loader(bad.pop("source", src), path, **bad)
        assert "\n" not in str(info.value)  # one line, as the CLI prints it


def test_image_folder_relabel_and_train_with_workers(tmp_path):
    images, labels = class_sorted(*fashion_mnist(96))
    root = write_image_folder(str(tmp_path / "imgs"), images, labels, "jpg")
    relabel(str(tmp_path / "s"), root, ToyTeacher(10),
            *relabel_spec(root, recipe("sre2l", output_size=(28, 28)), epochs=2, batch_size=32, num_classes=10, k=5),
            loader=LoaderConfig(num_workers=2, channels=1, mean=(0.3,), std=(0.3,)), teacher_input="numpy")
    src = open_source(root)
    ld = make_loader(src, str(tmp_path / "s"), channels=1, mean=(0.3,), std=(0.3,), num_workers=2)
    ids = np.concatenate([m.sample_ids.numpy() for _, _, m in ld.epoch(1)])
    np.testing.assert_array_equal(np.sort(ids), np.arange(96))
    labels_seen = np.concatenate([m.labels.numpy() for _, _, m in ld.epoch(0)])
    assert set(labels_seen) == set(labels.tolist())


def test_webdataset_source_relabels_and_replays(tmp_path):
    import webdataset as wds

    images, labels = fashion_mnist(70)
    with wds.ShardWriter(str(tmp_path / "shard-%03d.tar"), maxcount=30) as sink:
        for i in range(70):
            sink.write({"__key__": f"s{i:04d}", "png": images[i], "cls": int(labels[i])})
    src = open_source(str(tmp_path / "shard-{000..002}.tar"))
    assert len(src) == 70
    relabel(str(tmp_path / "s"), src, ToyTeacher(10),
            *relabel_spec(src, recipe("sre2l", output_size=(20, 20)), epochs=1, batch_size=16, num_classes=10, k=2),
            loader=LoaderConfig(num_workers=0, channels=1, **RAW), teacher_input="numpy")
    r = open_store(str(tmp_path / "s"))
    assert r.spec.image_set_hash == src.content_hash()
    got = [m.sample_ids for _, _, m in make_loader(src, str(tmp_path / "s"), channels=1, num_workers=2, **RAW).epoch(0)]
    assert sorted(np.concatenate(got).tolist()) == list(range(70))


def test_relabel_into_a_store_created_beforehand_for_a_plan(tmp_path):
    from ddpipe.labelstore import create_store, plan_units
    from ddpipe.labelstore.prune import pruned_spec

    images, labels = digits()
    src = ArraySource(images[:100], labels[:100])
    kw = dict(epochs=7, batch_size=32, num_classes=10, k=3)
    sched, full = relabel_spec(src, recipe("sre2l", output_size=(8, 8)), **kw)
    plan = plan_units(full, 0.3, "batch", 5)  # 0.3 * 28 units rounds to 8: len(plan) / 28 != 0.3
    create_store(str(tmp_path / "s"), pruned_spec(full, 0.3, "batch", 5), plan).close()
    out = relabel(str(tmp_path / "s"), src, ToyTeacher(10), sched, full, plan=plan,
                  loader=LoaderConfig(num_workers=0, channels=1, **RAW), teacher_input="numpy")
    assert out["units_written"] == len(plan) == 8 and open_store(str(tmp_path / "s")).complete


def test_sre2l_adapter_images_carry_the_stored_cutout_colours(lpld_store):
    """SRe2L-style loops (LPLD's included) never see cutout parameters: the images come painted."""
    from ddpipe.pipeline.sre2l_adapter import SRe2LBatches

    src, path, _ = lpld_store
    r = open_store(path)
    batches = SRe2LBatches(src, path, num_workers=0, **RAW)
    batches.set_epoch(1)
    units = r.epoch_units(1)  # an unpruned store replays epoch 1's units in order
    seen = 0
    for ((images, _, _, _), mix_index, mix_lam, mix_bbox, _), unit in zip(batches, units, strict=True):
        assert mix_index is None and mix_lam is None and mix_bbox is None  # LPLD 21K: no mix
        u = r.read_unit(unit)
        for i, (y0, x0, y1, x1) in enumerate(u.cutout.tolist()):
            box = images[i, :, y0:y1, x0:x1]
            colour = torch.tensor(u.cutout_fill[i] / 255.0, dtype=torch.float32).view(3, 1, 1)
            assert torch.equal(box, colour.expand_as(box))
            seen += 1
    assert seen == 60
