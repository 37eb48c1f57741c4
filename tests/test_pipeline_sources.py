"""Image sources: ImageFolder, npz arrays, WebDataset shards; stable ids, content hashes, errors."""

from __future__ import annotations

import io
import os
import tarfile

import numpy as np
import pytest

from dist_pipeline_data import class_sorted, fashion_mnist, write_image_folder
from ddpipe.pipeline import ArraySource, ImageFolderSource, SourceError, WebDatasetSource, open_source


@pytest.fixture(scope="module")
def fm():
    return class_sorted(*fashion_mnist(60))


def test_image_folder_sorted_ids_sizes_and_pixels(tmp_path, fm):
    images, labels = fm
    root = write_image_folder(str(tmp_path / "f"), images, labels, "png")
    src = open_source(root)
    assert isinstance(src, ImageFolderSource) and len(src) == 60
    np.testing.assert_array_equal(src.labels, labels)
    assert src.names == sorted(src.names)
    np.testing.assert_array_equal(src.sizes, np.tile([[28, 28]], (60, 1)))
    for i in (0, 17, 59):
        np.testing.assert_array_equal(src.array(i, 1)[..., 0], images[i])  # PNG is lossless
        assert src.array(i, 3).shape == (28, 28, 3)
    lazy = ImageFolderSource(root, in_memory=False)
    assert lazy.content_hash() == src.content_hash()
    np.testing.assert_array_equal(lazy.array(5, 1), src.array(5, 1))


def test_content_hash_is_stable_and_sees_any_change(tmp_path, fm):
    images, labels = fm
    a = write_image_folder(str(tmp_path / "a"), images, labels, "png")
    b = write_image_folder(str(tmp_path / "b"), images, labels, "png")
    assert open_source(a).content_hash() == open_source(b).content_hash()
    changed = images.copy()
    changed[3, 0, 0] ^= 1
    c = write_image_folder(str(tmp_path / "c"), changed, labels, "png")
    assert open_source(c).content_hash() != open_source(a).content_hash()
    os.remove(os.path.join(b, "c00", sorted(os.listdir(os.path.join(b, "c00")))[0]))
    assert open_source(b).content_hash() != open_source(a).content_hash()


def test_array_source_and_npz(tmp_path, fm):
    images, labels = fm
    path = str(tmp_path / "x.npz")
    np.savez(path, images=images, labels=labels)
    src = open_source(path)
    assert isinstance(src, ArraySource) and not src.encoded
    np.testing.assert_array_equal(src.array(4, 1)[..., 0], images[4])
    assert src.array(4, 3).shape == (28, 28, 3)
    assert src.content_hash() == ArraySource(images, labels).content_hash()
    assert src.content_hash() != ArraySource(images, (labels + 1) % 10).content_hash()
    with pytest.raises(SourceError, match="uint8"):
        ArraySource(images.astype(np.float32))
    with pytest.raises(SourceError, match="labels"):
        ArraySource(images, labels[:3])


def _write_shard(path, images, labels, start):
    from PIL import Image

    with tarfile.open(path, "w") as tar:
        for i, (img, c) in enumerate(zip(images, labels)):
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            for ext, data in (("png", buf.getvalue()), ("cls", str(int(c)).encode())):
                info = tarfile.TarInfo(f"s{start + i:05d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_webdataset_shards(tmp_path, fm):
    images, labels = fm
    _write_shard(str(tmp_path / "d-000.tar"), images[:30], labels[:30], 0)
    _write_shard(str(tmp_path / "d-001.tar"), images[30:], labels[30:], 30)
    for spec in (str(tmp_path / "d-{000..001}.tar"), str(tmp_path)):
        src = open_source(spec)
        assert isinstance(src, WebDatasetSource) and len(src) == 60
        np.testing.assert_array_equal(src.labels, labels)
        np.testing.assert_array_equal(src.array(45, 1)[..., 0], images[45])
    assert open_source(str(tmp_path)).content_hash() == open_source(str(tmp_path / "d-{000..001}.tar")).content_hash()


def test_webdataset_written_by_webdataset_package(tmp_path, fm):
    import webdataset as wds

    images, labels = fm
    with wds.TarWriter(str(tmp_path / "w.tar")) as sink:
        for i in range(10):
            sink.write({"__key__": f"k{i:03d}", "png": images[i], "cls": int(labels[i])})
    src = open_source(str(tmp_path / "w.tar"))
    np.testing.assert_array_equal(src.labels, labels[:10])
    assert src.array(3, 1).shape[:2] == (28, 28)


def test_bad_sources_give_one_clear_error(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        open_source(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="neither class folders"):
        open_source(str(tmp_path / "empty"))
    (tmp_path / "f" / "c0").mkdir(parents=True)
    (tmp_path / "f" / "c0" / "a.png").write_bytes(b"not an image")
    with pytest.raises(SourceError, match="not a readable PNG/JPEG"):
        open_source(str(tmp_path / "f"))


def test_lazy_folder_reports_a_vanished_file(tmp_path, fm):
    images, labels = fm
    root = write_image_folder(str(tmp_path / "f"), images[:5], labels[:5], "png")
    src = ImageFolderSource(root, in_memory=False)
    os.remove(os.path.join(root, src.names[2]))
    with pytest.raises(SourceError, match=r"image 2 .* cannot be read"):
        src.array(2)


@pytest.mark.parametrize("backend,workers", [("torch", 2), ("torch", 0), ("dali", 1), ("batched", 2), ("batched", 0)])
def test_a_truncated_jpeg_is_one_source_error_naming_the_file(tmp_path, fm, backend, workers):
    """A JPEG cut short fails where it is decoded (a torch worker, DALI's pipeline, the batched backend's threads) and
    reaches the caller as one SourceError line naming the file, not a worker or pipeline traceback."""
    from ddpipe.pipeline import Schedule, recipe
    from ddpipe.pipeline.dali_backend import dali_available
    from ddpipe.pipeline.loader import make_relabel_loader

    if backend == "dali" and not dali_available():
        pytest.skip("DALI is not installed")
    images, labels = fm
    root = write_image_folder(str(tmp_path / "f"), images[:16], labels[:16], "jpg")
    src = open_source(root)
    bad = os.path.join(root, src.names[9])
    data = open(bad, "rb").read()
    with open(bad, "wb") as f:
        f.write(data[: len(data) - 60])  # the end of the scan data
    src = open_source(root)  # the header still reads: the damage shows only when decoding
    sched = Schedule(recipe("lpld-tiny", output_size=(16, 16)), 0, src.sizes, 4, 1)
    with pytest.raises(SourceError) as info:
        with make_relabel_loader(src, sched, backend=backend, num_workers=workers, threads=1) as loader:
            for _ in loader.epoch(0):
                pass
    message = str(info.value)
    assert len(message.splitlines()) == 1 and bad in message and "cannot be decoded" in message, message


def test_schedules_and_sources_do_not_import_torch(python):
    import subprocess

    code = ("import sys, ddpipe.pipeline as p; p.open_source; p.Schedule; "
            "assert 'torch' not in sys.modules, 'torch imported'; p.LoaderConfig; assert 'torch' in sys.modules")
    subprocess.run([python, "-c", code], check=True, timeout=120)
