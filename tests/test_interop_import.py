"""ddpipe import: folders written as SRe2L, LPLD, LPQLD, G-VBSM and FKD write them, compared bit for bit."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import interop_fixtures as fx
from ddpipe.labelstore import SameLocationError, dense_logits, logsumexp_at, open_store, verify_store
from ddpipe.pipeline.interop import ImportConfig, InteropError, detect_format, load_label_file, run_import
from ddpipe.pipeline.interop.importer import cutout_pixels


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return fx.make_images(str(tmp_path_factory.mktemp("imgs") / "set"))  # 100 images, 10 classes


def _import(src, images, out, **kw):
    return run_import(ImportConfig(format=kw.pop("format", "auto"), src=str(src), images=images, out=str(out),
                                   progress=False, **kw))


def _files_by_unit(reader, src, fmt):
    """(unit, torch.load of its source file) pairs."""
    for u in reader.iter_units():
        if fmt == "lpqld":
            path = os.path.join(src, f"batch_{u.unit}.tar")  # global counter = store position here
        else:
            path = os.path.join(src, f"epoch_{u.epoch}", f"batch_{u.batch}.tar")
        yield u, torch.load(path, weights_only=False)


def _check_common(u, f, fmt, second_is_flip=True):
    # coords: the source's FloatTensor (or HalfTensor) bit for bit
    np.testing.assert_array_equal(u.crops, f[0].float().numpy())
    if second_is_flip:
        np.testing.assert_array_equal(u.flips, f[1].numpy())


def _check_mix(u, mix_index, lam, bbox):
    if mix_index is None:
        assert u.mix_kind == "none"
        return
    np.testing.assert_array_equal(u.mix_perm, mix_index.long().numpy())
    assert u.mix_lambda == lam  # the Python float, exactly (float64)
    if bbox is None:
        assert u.mix_kind == "mixup"
    else:
        assert u.mix_kind == "cutmix"
        assert [int(v) for v in u.mix_box] == [int(v) for v in bbox]


@pytest.mark.parametrize("mix", ["cutmix", "mixup", "none"])
def test_sre2l_every_field_bit_for_bit(tmp_path, images, mix):
    src = tmp_path / "sre2l"
    truth = fx.write_sre2l(str(src), mix=mix)
    assert detect_format(str(src)) == "sre2l"
    res = _import(src, images, tmp_path / "s.zarr")
    assert res.values == "logits" and res.lossy == [] and res.order == "torch-sampler"
    r = open_store(str(tmp_path / "s.zarr"))
    assert r.spec.num_classes == 10 and r.spec.k == 10 and r.spec.batch_size == 32 and r.spec.epochs == 3
    assert r.num_units == 12 and r.spec.pruning is None
    n = 0
    for u, f in _files_by_unit(r, str(src), "sre2l"):
        np.testing.assert_array_equal(u.sample_ids, truth[(u.epoch, u.batch)])  # the sampler replay
        _check_common(u, f, "sre2l")
        _check_mix(u, f[2], f[3], f[4])
        # fp16 logits, k = C: every logit back bit for bit
        dense = np.zeros((u.count, 10), np.float16)
        np.put_along_axis(dense, u.topk_logits[0], u.topk_logits[1].astype(np.float16), axis=1)
        np.testing.assert_array_equal(dense.view(np.uint16), f[5].numpy().view(np.uint16))
        np.testing.assert_allclose(u.lse, logsumexp_at(f[5].float().numpy(), r.spec.temperature), rtol=0, atol=0)
        n += u.count
    assert n == 300 and u.count == 4  # short last batch
    assert verify_store(str(tmp_path / "s.zarr"))["ok"]


def test_gvbsm_uses_the_stored_indices(tmp_path, images):
    src = tmp_path / "gvbsm"
    truth = fx.write_gvbsm(str(src), seed=5)  # a sampler seed the replay would not know
    assert detect_format(str(src)) == "gvbsm"
    res = _import(src, images, tmp_path / "g.zarr")
    assert res.order == "ddpipe"
    r = open_store(str(tmp_path / "g.zarr"))
    for u, f in _files_by_unit(r, str(src), "gvbsm"):
        np.testing.assert_array_equal(u.sample_ids, f[6].numpy())
        np.testing.assert_array_equal(u.sample_ids, truth[(u.epoch, u.batch)])
        _check_common(u, f, "gvbsm")
        _check_mix(u, f[2], f[3], f[4])


def test_lpld_pruned_with_index_json(tmp_path, images):
    src = tmp_path / "lpld"
    truth = fx.write_lpld(str(src), epochs=4, prune_ratio=0.6)
    assert detect_format(str(src)) == "lpld"
    _import(src, images, tmp_path / "p.zarr")
    r = open_store(str(tmp_path / "p.zarr"))
    # drop_last: 3 full batches per epoch; int(4 * 3 * 0.4) = 4 batches kept
    assert r.spec.pruning is not None and r.num_units == 4
    assert [tuple(p) for p in r.plan] == [(0, 0), (0, 1), (0, 2), (1, 0)]
    for u, f in _files_by_unit(r, str(src), "lpld"):
        np.testing.assert_array_equal(u.sample_ids, truth[(u.epoch, u.batch)])
        _check_common(u, f, "lpld")
        _check_mix(u, f[2], f[3], f[4])


def test_lpld_21k_cutout_parameters_kept_exactly(tmp_path, images):
    src = tmp_path / "lpld21k"
    truth = fx.write_lpld(str(src), epochs=2, cutout=True, num_classes=70000 // 1000 * 1000)
    _import(src, images, tmp_path / "c.zarr", k=5)
    r = open_store(str(tmp_path / "c.zarr"))
    assert r.spec.index_dtype == np.dtype("<u4")  # more than 65,535 classes
    assert list(r.spec.aux_fields[:4]) == ["cutout_yc", "cutout_xc", "cutout_h", "cutout_w"]
    for u, f in _files_by_unit(r, str(src), "lpld"):
        np.testing.assert_array_equal(u.sample_ids, truth[(u.epoch, u.batch)])
        _check_common(u, f, "lpld", second_is_flip=False)
        assert not u.flips.any() and u.mix_kind == "none"
        np.testing.assert_array_equal(u.aux.astype(np.float32), f[1].numpy())  # [b, 7] as stored
        boxes, colours = cutout_pixels(f[1].numpy(), (224, 224))
        np.testing.assert_array_equal(u.cutout, boxes)
        np.testing.assert_array_equal(u.cutout_fill, colours)
        # top-5 of 70,000 fp16 logits: the five largest, bit for bit, and the full row's log-sum-exp
        logits = f[5].float().numpy()
        order = np.argsort(-logits, axis=1, kind="stable")[:, :5]
        np.testing.assert_array_equal(u.topk_logits[1], np.take_along_axis(logits, order, 1))
        np.testing.assert_array_equal(u.lse, logsumexp_at(logits, r.spec.temperature))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # LPLD's np.clip on torch tensors, replayed as written
def test_lpld_cutout_box_matches_pil_drawing():
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(3)
    for _ in range(50):
        h = w = 224
        y_c, x_c = int(rng.integers(h)), int(rng.integers(w))
        hc = wc = int(0.5 * h + 0.5)
        params = torch.FloatTensor([y_c / h, x_c / w, hc / h, wc / w, 1, 2, 3]).numpy()[None]
        img = Image.new("L", (w, h), 0)
        d = ImageDraw.Draw(img)
        p = torch.from_numpy(params[0]) * torch.FloatTensor([h, w, h, w, 1, 1, 1])
        yc, xc, hh, ww = p[0], p[1], p[2], p[3]
        y1, x1 = np.clip(yc - hh // 2, 0, h), np.clip(xc - ww // 2, 0, w)
        y2, x2 = np.clip(yc + hh // 2, 0, h), np.clip(xc + ww // 2, 0, w)
        d.rectangle([float(x1), float(y1), float(x2), float(y2)], fill=255)  # LPLD's replay branch
        painted = np.argwhere(np.asarray(img) > 0)
        (y0, x0, yy1, xx1), = cutout_pixels(params, (h, w))[0]
        assert painted[:, 0].min() == y0 and painted[:, 0].max() == yy1 - 1
        assert painted[:, 1].min() == x0 and painted[:, 1].max() == xx1 - 1


@pytest.mark.parametrize("randaug", [False, True])
def test_lpqld_topk_logits_uint8_mix_fp16_crops(tmp_path, images, randaug):
    src = tmp_path / "lpqld"
    truth = fx.write_lpqld(str(src), epochs=2, randaug=randaug)
    assert detect_format(str(src)) == "lpqld"
    res = _import(src, images, tmp_path / "q.zarr")
    r = open_store(str(tmp_path / "q.zarr"))
    assert r.spec.k == 4 and res.lossy == []
    index = json.load(open(src / "sampler_indices_batch.json"))
    for u, f in _files_by_unit(r, str(src), "lpqld"):
        np.testing.assert_array_equal(u.sample_ids, truth[u.unit])
        np.testing.assert_array_equal(u.sample_ids, index[str(u.unit)])
        np.testing.assert_array_equal(u.crops, f[0].float().numpy())  # fp16 crops, exactly
        np.testing.assert_array_equal(u.flips, f[1].numpy())
        rest = f[2:]
        if randaug:
            flat = np.stack([t.double().numpy() for layer in rest[0] for t in layer], axis=1)
            np.testing.assert_array_equal(u.aux, flat)
            rest = rest[1:]
        mix_index, lam, bbox, values, idx = rest
        _check_mix(u, mix_index, lam, bbox)
        # the k stored logits and their int16 indices (as a set per row: same values, same classes)
        got = dict(zip(map(tuple, np.stack([np.repeat(np.arange(u.count), 4), u.topk_logits[0].ravel()], 1)),
                       u.topk_logits[1].ravel()))
        want = dict(zip(map(tuple, np.stack([np.repeat(np.arange(u.count), 4), idx.long().numpy().ravel()], 1)),
                        values.float().numpy().ravel()))
        assert got == want
        # MR-k: softmax over the k stored logits only
        np.testing.assert_allclose(u.topk[1].sum(axis=1), 1.0, atol=1e-6)


def test_fkd_per_image_files(tmp_path, images):
    src = tmp_path / "fkd"
    fx.write_fkd(str(src), images, num_crops=5)
    assert detect_format(str(src)) == "fkd"
    res = _import(src, images, tmp_path / "f.zarr", batch_size=40)
    assert res.values == "probs" and res.lossy == []
    r = open_store(str(tmp_path / "f.zarr"))
    assert r.spec.epochs == 5 and r.spec.k == 5 and r.spec.batches_per_epoch == 3
    names = sorted(os.path.relpath(os.path.join(dp, f), images) for dp, _, fs in os.walk(images) for f in fs)
    for u in r.iter_units():
        for slot, sid in enumerate(u.sample_ids):
            cls, fname = names[sid].split("/")
            path = next(os.path.join(dp, fname.replace(".png", ".tar")) for dp, _, _ in os.walk(src)
                        if os.path.basename(dp) == cls)
            coords, flips, lab = torch.load(path, weights_only=False)
            np.testing.assert_array_equal(u.crops[slot], coords[u.epoch].astype(np.float32))
            assert u.flips[slot] == flips[u.epoch]
            np.testing.assert_array_equal(u.topk[0][slot], lab[u.epoch, 0].astype(np.int64))
            np.testing.assert_array_equal(u.topk[1][slot], lab[u.epoch, 1].astype(np.float32))


def test_logit_store_any_temperature_matches_the_teacher(tmp_path, images):
    """k = C: the probabilities at any training temperature are softmax(logits / T) of the source."""
    from ddpipe.labelstore import logit_probs

    src = tmp_path / "sre2l"
    fx.write_sre2l(str(src), epochs=1)
    _import(src, images, tmp_path / "t.zarr", temperature=4.0)
    r = open_store(str(tmp_path / "t.zarr"))
    u = r.read_unit(0)
    f = torch.load(src / "epoch_0" / "batch_0.tar", weights_only=False)
    for T in (1.0, 4.0, 20.0):
        want = torch.softmax(f[5].double() / T, dim=1).numpy()
        got = np.zeros_like(want)
        np.put_along_axis(got, u.topk_logits[0], logit_probs(u.topk_logits[1], u.lse, 10, 4.0, T), axis=1)
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-9)
        dense = dense_logits(u.topk_logits[0], u.topk_logits[1], u.lse, 10, 4.0)
        np.testing.assert_allclose(torch.softmax(torch.from_numpy(dense).double() / T, 1).numpy(), want, atol=1e-7)


def test_probability_import_at_a_temperature(tmp_path, images):
    src = tmp_path / "sre2l"
    fx.write_sre2l(str(src), epochs=1)
    res = _import(src, images, tmp_path / "p.zarr", values="probs", k=3, temperature=20.0, value_codec="fp32")
    assert any("probabilities at T=20" in s for s in res.lossy) and any("top-3" in s for s in res.lossy)
    r = open_store(str(tmp_path / "p.zarr"))
    u = r.read_unit(0)
    f = torch.load(src / "epoch_0" / "batch_0.tar", weights_only=False)
    p = torch.softmax(f[5].double() / 20, 1).numpy().astype(np.float32)
    np.testing.assert_array_equal(u.topk[1], np.take_along_axis(p, u.topk[0], 1))


def test_refuses_pickled_code_and_names_the_file(tmp_path, images):
    src = tmp_path / "sre2l"
    fx.write_sre2l(str(src), epochs=1)
    bad = src / "epoch_0" / "batch_1.tar"
    torch.save([1, os.getcwd], str(bad))  # a function: never unpickled
    with pytest.raises(InteropError, match=r"batch_1\.tar: refused: the pickle names .*getcwd"):
        _import(src, images, tmp_path / "x.zarr")
    with pytest.raises(InteropError, match="refused"):
        load_label_file(str(bad))


def test_corrupted_and_mixed_folders_name_the_file(tmp_path, images):
    src = tmp_path / "sre2l"
    fx.write_sre2l(str(src), epochs=2)
    f = src / "epoch_1" / "batch_2.tar"
    f.write_bytes(f.read_bytes()[:100])  # truncated
    with pytest.raises(InteropError, match=r"epoch_1/batch_2\.tar: not a readable torch\.save"):
        _import(src, images, tmp_path / "a.zarr")
    # a G-VBSM file among SRe2L ones
    src2 = tmp_path / "mixed"
    fx.write_sre2l(str(src2), epochs=1)
    other = tmp_path / "g"
    fx.write_gvbsm(str(other), epochs=1)
    os.replace(other / "epoch_0" / "batch_1.tar", src2 / "epoch_0" / "batch_1.tar")
    with pytest.raises(InteropError, match=r"epoch_0/batch_1\.tar: a sre2l batch file holds a list of 6, found 7"):
        _import(src2, images, tmp_path / "b.zarr")
    # a stray file
    (src2 / "notes.txt").write_text("x")
    with pytest.raises(InteropError, match=r"notes\.txt: not part of a sre2l label folder"):
        _import(src2, images, tmp_path / "c.zarr", format="sre2l")
    # the wrong image set: batch sizes do not fit
    with pytest.raises(InteropError, match="check --images"):
        _import(src, None, tmp_path / "d.zarr", num_samples=90, format="sre2l")


def test_never_writes_onto_its_source(tmp_path, images):
    src = tmp_path / "sre2l"
    fx.write_sre2l(str(src), epochs=1)
    with pytest.raises(SameLocationError):
        _import(src, images, src / "inside.zarr")
    with pytest.raises(SameLocationError):
        _import(src, images, src, overwrite=True)
    assert sorted(os.listdir(src)) == ["epoch_0"]
