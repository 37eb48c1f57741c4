"""DALI (CPU-only here) against the torch reference: same ids and targets exactly, images within
1/255 mean absolute error on real images; DALI checkpoints resume mid-epoch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dist_pipeline_data import ToyTeacher, class_sorted, fashion_mnist, pattern_images, write_image_folder
from ddpipe.pipeline import ArraySource, ScheduleConfig, open_source, recipe
from ddpipe.pipeline.loader import LoaderConfig, make_loader
from ddpipe.pipeline.relabel import relabel, relabel_spec
from ddpipe.pipeline.stages import IMAGENET_STD

pytest.importorskip("nvidia.dali")

GRAY = dict(channels=1, mean=(0.286,), std=(0.353,))


def _compare(src, path, epochs, **kw):
    ref = make_loader(src, path, backend="torch", num_workers=0, **kw)
    dali = make_loader(src, path, backend="dali", num_workers=2, threads=2, **kw)
    maes, n = [], 0
    for e in range(epochs):
        a, b = list(ref.epoch(e)), list(dali.epoch(e))
        assert len(a) == len(b)
        for (x0, t0, m0), (x1, t1, m1) in zip(a, b):
            torch.testing.assert_close(m0.sample_ids, m1.sample_ids, rtol=0, atol=0)
            torch.testing.assert_close(t0, t1, rtol=0, atol=0)
            assert m0.unit == m1.unit and x0.shape == x1.shape and x1.dtype == torch.float32
            std = kw.get("std", IMAGENET_STD)  # the loader's std (default ImageNet's): errors in pixel levels
            std = torch.tensor(std or [1.0] * x0.shape[1]).reshape(-1).expand(x0.shape[1]).reshape(1, -1, 1, 1)
            maes.append(((x0 - x1).abs() * std * 255).mean().item())  # in pixel levels
            n += len(m0.sample_ids)
    dali.close()
    return float(np.mean(maes)), float(np.max(maes)), n


@pytest.mark.slow
def test_dali_matches_torch_on_fashion_mnist_jpegs(tmp_path):
    images, labels = class_sorted(*fashion_mnist(256))
    root = write_image_folder(str(tmp_path / "imgs"), images, labels, "jpg", quality=90)
    relabel(str(tmp_path / "s"), root, ToyTeacher(10),
            *relabel_spec(root, recipe("sre2l", output_size=(32, 32)), epochs=2, batch_size=64, num_classes=10, k=10,
                          value_codec="fp32"),
            loader=LoaderConfig(num_workers=0, **GRAY), teacher_input="numpy")
    mean_mae, max_mae, n = _compare(open_source(root), str(tmp_path / "s"), 2, **GRAY)
    assert n == 2 * 256
    assert max_mae < 1.0, (mean_mae, max_mae)  # < 1/255 per pixel in every batch


@pytest.mark.slow
def test_dali_matches_torch_on_colour_arrays_with_upscaling(tmp_path):
    src = ArraySource(pattern_images(120, 40, 56), np.arange(120) % 7)
    cfg = ScheduleConfig(output_size=(48, 48), scale=(0.05, 1.0), flip=0.5, mix="mixup", mix_alpha=0.8)
    relabel(str(tmp_path / "s"), src, ToyTeacher(7),
            *relabel_spec(src, cfg, epochs=2, batch_size=25, num_classes=7, k=3), loader=LoaderConfig(num_workers=0),
            teacher_input="numpy")
    mean_mae, max_mae, n = _compare(src, str(tmp_path / "s"), 2)
    assert n == 240 and max_mae < 1.0, (mean_mae, max_mae)


def test_dali_relabel_writes_a_store_the_torch_loader_replays(tmp_path):
    images, labels = fashion_mnist(96)
    src = ArraySource(images, labels)
    relabel(str(tmp_path / "s"), src, ToyTeacher(10),
            *relabel_spec(src, recipe("sre2l", output_size=(28, 28)), epochs=1, batch_size=32, num_classes=10, k=3),
            loader=LoaderConfig(backend="dali", num_workers=0, **GRAY), teacher_input="numpy")
    ids = np.concatenate([m.sample_ids.numpy() for _, _, m in make_loader(src, str(tmp_path / "s"), num_workers=0, **GRAY).epoch(0)])
    np.testing.assert_array_equal(np.sort(ids), np.arange(96))


def test_dali_checkpoint_resumes_mid_epoch(tmp_path):
    images, labels = fashion_mnist(200)
    src = ArraySource(images, labels)
    relabel(str(tmp_path / "s"), src, ToyTeacher(10),
            *relabel_spec(src, recipe("sre2l", output_size=(16, 16)), epochs=3, batch_size=20, num_classes=10, k=3),
            loader=LoaderConfig(num_workers=0, **GRAY), teacher_input="numpy")
    path = str(tmp_path / "s")
    kw = dict(backend="dali", num_workers=2, **GRAY)
    full = make_loader(src, path, **kw)
    whole = list(full.epoch(0)) + list(full.epoch(1))
    full.close()
    a = make_loader(src, path, **kw)
    list(a.epoch(0))
    it = a.epoch(1)
    for _ in range(4):
        next(it)
    state = a.state_dict()
    assert state["epoch"] == 1 and state["position"] == 4 and state["backend"]["checkpoint"]
    a.close()
    b = make_loader(src, path, **kw)
    b.load_state_dict(state)
    rest = list(b.epoch(1))
    expect = whole[10 + 4 :]
    assert len(rest) == len(expect) == 6
    for (x0, t0, m0), (x1, t1, m1) in zip(expect, rest):
        assert m0.unit == m1.unit
        torch.testing.assert_close(m0.sample_ids, m1.sample_ids, rtol=0, atol=0)
        torch.testing.assert_close(x0, x1, rtol=0, atol=0)
        torch.testing.assert_close(t0, t1, rtol=0, atol=0)
    # and the next epoch follows on the same pipeline
    nxt = list(b.epoch(2))
    ref = list(make_loader(src, path, backend="torch", num_workers=0, **GRAY).epoch(2))
    assert [m.unit for _, _, m in nxt] == [m.unit for _, _, m in ref]
    b.close()


@pytest.mark.slow
def test_dali_matches_torch_on_colour_jpegs(tmp_path):
    from PIL import Image

    images, labels = class_sorted(*fashion_mnist(128))
    # real Fashion-MNIST pictures, tinted into three channels and enlarged, saved as colour JPEGs
    rgb = np.stack([images, 255 - images, (images // 2 + 60).astype(np.uint8)], -1)
    rgb = np.stack([np.asarray(Image.fromarray(x).resize((96, 80), Image.BICUBIC)) for x in rgb])
    root = write_image_folder(str(tmp_path / "rgb"), rgb, labels, "jpg", quality=90)
    relabel(str(tmp_path / "s"), root, ToyTeacher(10),
            *relabel_spec(root, recipe("sre2l", output_size=(64, 64)), epochs=1, batch_size=32, num_classes=10, k=10),
            loader=LoaderConfig(num_workers=0), teacher_input="numpy")
    mean_mae, max_mae, n = _compare(open_source(root), str(tmp_path / "s"), 1)
    print(f"colour JPEGs: DALI vs torch MAE {mean_mae:.3f} levels (max batch {max_mae:.3f})")
    assert n == 128 and max_mae < 1.0, (mean_mae, max_mae)


def test_dali_pruned_store_and_abandoned_epoch_follow_the_reference(tmp_path):
    images, labels = fashion_mnist(160)
    src = ArraySource(images, labels)
    relabel(str(tmp_path / "p"), src, ToyTeacher(10),
            *relabel_spec(src, recipe("sre2l", output_size=(16, 16)), epochs=6, batch_size=32, num_classes=10, k=3,
                          keep=0.3),
            loader=LoaderConfig(num_workers=0, **GRAY), teacher_input="numpy")
    ref = make_loader(src, str(tmp_path / "p"), backend="torch", num_workers=0, **GRAY)
    dali = make_loader(src, str(tmp_path / "p"), backend="dali", num_workers=1, **GRAY)
    it = dali.epoch(0)
    next(it), next(it)  # abandon epoch 0 after two batches
    for e in (1, 2):
        want = [m.unit for _, _, m in ref.epoch(e)]
        got = [m.unit for _, _, m in dali.epoch(e)]
        assert got == want and len(got) == 5  # LPLD: batches_per_epoch draws from the kept pool
    dali.close()
