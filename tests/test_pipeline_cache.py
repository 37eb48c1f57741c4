"""The decoded uint8 cache: the reference decoder's pixels, the source's hash, stale caches refused,
in RAM or memory-mapped, built by `ddpipe cache` or by a loader on first use, read by every backend."""

from __future__ import annotations

import io
import json
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

from dist_pipeline_data import ToyTeacher, class_sorted, fashion_mnist, write_image_folder
from ddpipe.pipeline import ArraySource, ImageSetMismatchError, SourceError, open_source, recipe
from ddpipe.pipeline.cache import CachedSource, StaleCacheError, build_cache, is_cache, open_cache
from ddpipe.pipeline.loader import LoaderConfig, make_loader
from ddpipe.pipeline.relabel import relabel, relabel_spec

GRAY = dict(channels=1, mean=(0.286,), std=(0.353,))


@pytest.fixture(scope="module")
def fm():
    images, labels = class_sorted(*fashion_mnist(60))
    return images, labels


def _colour(images: np.ndarray) -> np.ndarray:
    return np.stack([images, 255 - images, (images // 2 + 60).astype(np.uint8)], -1)


def test_cache_holds_the_reference_pixels_and_the_source_hash(tmp_path, fm):
    images, labels = fm
    root = write_image_folder(str(tmp_path / "jpg"), _colour(images), labels, "jpg", quality=80)
    src = open_source(root)
    cached = build_cache(root, tmp_path / "c", channels=3)
    assert isinstance(cached, CachedSource) and is_cache(tmp_path / "c") and not cached.encoded
    assert cached.content_hash() == src.content_hash() and cached.uniform
    np.testing.assert_array_equal(cached.labels, src.labels)
    np.testing.assert_array_equal(cached.sizes, src.sizes)
    assert cached.names == src.names and cached.classes == src.classes
    for i in (0, 31, 59):
        np.testing.assert_array_equal(cached.array(i, 3), src.array(i, 3))  # the same decoder's pixels
        np.testing.assert_array_equal(cached.array(i, 1), src.array(i, 1))  # and the same conversion to grey
    assert cached.stacked().shape == (60, 28, 28, 3)
    # open_source recognises the directory; memory-mapped and in-RAM give the same bytes
    mm, ram = open_cache(tmp_path / "c", in_memory=False), open_source(str(tmp_path / "c"))
    assert isinstance(ram, CachedSource) and not mm.in_memory
    np.testing.assert_array_equal(np.asarray(mm.blob[: mm.nbytes]), np.asarray(ram.blob[: ram.nbytes]))
    # a worker gets the path, not the pixels, and re-opens the file
    data = pickle.dumps(mm)
    assert len(data) < mm.nbytes
    np.testing.assert_array_equal(pickle.loads(data).array(7, 3), src.array(7, 3))
    open_cache(tmp_path / "c", source=root, verify=True)  # the right source and intact bytes: accepted


def test_stale_damaged_and_foreign_caches_are_refused(tmp_path, fm):
    images, labels = fm
    root = write_image_folder(str(tmp_path / "png"), images, labels, "png")
    build_cache(root, tmp_path / "c", channels=1)
    changed = images.copy()
    changed[5, 3, 3] ^= 1
    other = write_image_folder(str(tmp_path / "png2"), changed, labels, "png")
    with pytest.raises(StaleCacheError, match="images changed"):
        open_cache(tmp_path / "c", source=other)
    with pytest.raises(ImageSetMismatchError, match="rebuild"):  # the loader's cache option refuses it too
        from ddpipe.pipeline.cache import with_cache

        with_cache(other, str(tmp_path / "c"), channels=1)
    with pytest.raises(SourceError, match="exists"):
        build_cache(root, tmp_path / "c")
    build_cache(other, tmp_path / "c", channels=1, overwrite=True)  # --overwrite replaces it
    open_cache(tmp_path / "c", source=other)
    os.makedirs(tmp_path / "notacache")
    (tmp_path / "notacache" / "x").write_text("keep me")
    with pytest.raises(SourceError, match="not a decoded cache"):
        build_cache(root, tmp_path / "notacache", overwrite=True)
    # damaged bytes: caught by verify; a truncated file: caught at open
    data = tmp_path / "c" / "images.u8"
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(SourceError, match="damaged"):
        open_cache(tmp_path / "c", verify=True)
    data.write_bytes(bytes(raw[:-10]))
    with pytest.raises(SourceError, match="truncated"):
        open_cache(tmp_path / "c")
    meta = json.loads((tmp_path / "c" / "cache.json").read_text())
    (tmp_path / "c" / "cache.json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(SourceError, match="version"):
        open_cache(tmp_path / "c")


def test_npz_webdataset_and_mixed_sizes(tmp_path, fm):
    images, labels = fm
    np.savez(tmp_path / "x.npz", images=images[:20], labels=labels[:20])
    c = build_cache(str(tmp_path / "x.npz"), None, channels=1)  # in RAM only
    assert c.path is None and c.content_hash() == open_source(str(tmp_path / "x.npz")).content_hash()
    np.testing.assert_array_equal(c.stacked()[..., 0], images[:20])
    from PIL import Image

    shard = str(tmp_path / "s-000.tar")
    with tarfile.open(shard, "w") as tar:
        for i in range(6):
            img = Image.fromarray(images[i]).resize((20 + 4 * i, 28))  # several sizes
            for ext, data in (("png", _png(img)), ("cls", str(int(labels[i])).encode())):
                info = tarfile.TarInfo(f"k{i:03d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    wds = open_source(shard)
    cw = build_cache(shard, tmp_path / "wc", channels=3)
    assert not cw.uniform and cw.content_hash() == wds.content_hash()
    for i in range(6):
        np.testing.assert_array_equal(cw.array(i, 3), wds.array(i, 3))
    with pytest.raises(SourceError, match="several sizes"):
        cw.stacked()


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def jpeg_store(tmp_path_factory, fm):
    images, labels = fm
    root = tmp_path_factory.mktemp("js")
    folder = write_image_folder(str(root / "imgs"), images, labels, "jpg", quality=85)
    relabel(str(root / "s"), folder, ToyTeacher(10),
            *relabel_spec(folder, recipe("sre2l", output_size=(24, 24)), epochs=2, batch_size=16, num_classes=10, k=3),
            loader=LoaderConfig(num_workers=0, **GRAY), teacher_input="numpy")
    return folder, str(root / "s"), root


def test_loader_builds_the_cache_on_first_use_and_replays_the_same_batches(jpeg_store):
    folder, store, root = jpeg_store
    ref = list(make_loader(folder, store, num_workers=0, **GRAY).epoch(1))
    where = str(root / "cache")
    assert not os.path.exists(where)
    first = make_loader(folder, store, num_workers=0, cache=where, **GRAY)  # built here
    assert isinstance(first.source, CachedSource) and is_cache(where)
    again = make_loader(folder, store, num_workers=2, cache=where, **GRAY)  # reused, workers re-open it
    direct = make_loader(where, store, num_workers=0, **GRAY)  # the cache directory as the image set
    for ld in (first, again, direct):
        got = list(ld.epoch(1))
        assert len(got) == len(ref)
        for (x0, t0, m0), (x1, t1, m1) in zip(ref, got):
            # the torch backend over the cache decodes nothing and computes exactly the same pixels
            torch.testing.assert_close(x0, x1, rtol=0, atol=0)
            torch.testing.assert_close(t0, t1, rtol=0, atol=0)
            assert torch.equal(m0.sample_ids, m1.sample_ids)
    mem = make_loader(folder, store, num_workers=0, cache="memory", **GRAY)
    assert mem.source.path is None
    x_mem = next(iter(mem.epoch(1))).images
    torch.testing.assert_close(x_mem, ref[0].images, rtol=0, atol=0)


def test_a_cache_of_other_images_is_refused_by_the_store(jpeg_store, fm):
    folder, store, root = jpeg_store
    images, labels = fm
    other = build_cache(ArraySource(images[::-1].copy(), labels[::-1].copy()), root / "other", channels=1)
    with pytest.raises(ImageSetMismatchError):
        make_loader(other, store, num_workers=0, **GRAY)


def test_dali_reads_the_cache(jpeg_store):
    pytest.importorskip("nvidia.dali")
    folder, store, root = jpeg_store
    where = str(root / "cache-dali")
    ref = list(make_loader(folder, store, num_workers=0, **GRAY).epoch(0))
    ld = make_loader(folder, store, backend="dali", num_workers=1, threads=2, cache=where, **GRAY)
    got = list(ld.epoch(0))
    ld.close()
    assert len(got) == len(ref)
    for (x0, t0, m0), (x1, t1, m1) in zip(ref, got):
        assert torch.equal(m0.sample_ids, m1.sample_ids) and torch.equal(t0, t1)
        assert ((x0 - x1).abs() * 0.353 * 255).mean().item() < 1.0  # within 1/255 per pixel, in levels


def test_ddpipe_cache_command(tmp_path, fm, capsys):
    from ddpipe.cli import main

    images, labels = fm
    root = write_image_folder(str(tmp_path / "imgs"), images[:12], labels[:12], "png")
    out = str(tmp_path / "c")
    assert main(["cache", root, "--out", out, "--channels", "1", "--no-progress", "--verify", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["num_images"] == 12 and res["bytes"] == 12 * 28 * 28 and res["uniform_size"] == [28, 28]
    assert res["source_hash"] == open_source(root).content_hash()
    assert main(["cache", root, "--out", out, "--no-progress"]) == 2  # exists: one line, exit 2
    assert "overwrite" in capsys.readouterr().err
    assert main(["cache", root, "--out", out, "--overwrite", "--no-progress"]) == 0
    assert "decoded into" in capsys.readouterr().out
