"""Large image sets: memory flat in the image count (lazy ImageFolder and WebDataset sources, the
automatic switch), the same images through both kinds, and a decoded-cache build that is killed
midway and resumed."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile

import numpy as np
import pytest

from ddpipe.pipeline import ImageFolderSource, SourceError, WebDatasetSource, open_source
from ddpipe.pipeline.cache import build_cache

N, SIZE, CLASSES = 2000, 224, 20


def _image(i: int) -> np.ndarray:
    """A smooth 224 px RGB image (a JPEG of tens of KB, like a distilled set's), different per i."""
    rng = np.random.default_rng(i)
    small = rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)
    return np.repeat(np.repeat(small, 4, axis=0), 4, axis=1)


def _jpeg(i: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_image(i)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    """The same 2,000 JPEGs as an ImageFolder and as 4 WebDataset shards (same order)."""
    root = tmp_path_factory.mktemp("large")
    folder, shards = root / "folder", root / "shards"
    shards.mkdir()
    per_shard, tar, total = N // 4, None, 0
    for i in range(N):
        c = i * CLASSES // N
        data = _jpeg(i)
        total += len(data)
        (folder / f"c{c:02d}").mkdir(parents=True, exist_ok=True)
        (folder / f"c{c:02d}" / f"img{i:05d}.jpg").write_bytes(data)
        if i % per_shard == 0:
            if tar is not None:
                tar.close()
            tar = tarfile.open(shards / f"s-{i // per_shard:03d}.tar", "w")
        for ext, payload in (("jpg", data), ("cls", str(c).encode())):
            info = tarfile.TarInfo(f"c{c:02d}/img{i:05d}.{ext}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    tar.close()
    return str(folder), str(shards), total


_CHILD = r"""
import json, os, sys
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))
from ddpipe.pipeline import open_source
import PIL.Image, numpy, webdataset  # fixed costs (webdataset imports torch), not per image
path, in_memory = sys.argv[1], {"auto": "auto", "True": True, "False": False}[sys.argv[2]]
before = rss()
src = open_source(path, in_memory=in_memory)
h = src.content_hash()
pixels = 0
for i in range(len(src)):
    pixels += int(src.array(i, 3)[::37, ::37].sum())
print(json.dumps({"mode": src.mode, "growth": rss() - before, "n": len(src), "hash": h, "pixels": pixels,
                  "repr": repr(src)}))
"""


def _measure(python, path, in_memory, env=None):
    out = subprocess.run([python, "-c", _CHILD, path, str(in_memory)], check=True, capture_output=True, text=True,
                         timeout=300, env={**os.environ, **(env or {})})
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", ["folder", "shards"])
def test_a_set_larger_than_the_memory_budget_is_read_lazily_with_flat_rss(python, large, kind):
    """2,000 224 px JPEGs (tens of MB) opened, hashed and decoded in a child: with a 1 MB budget the
    source is lazy and the child's RSS grows by far less than the images' bytes; held in RAM, it
    grows by at least their bytes (so the measurement sees them); both read the same pixels."""
    folder, shards, total = large
    path = folder if kind == "folder" else shards
    lazy = _measure(python, path, "auto", {"DDPIPE_IN_MEMORY_MAX_BYTES": str(2**20)})
    ram = _measure(python, path, "True")
    assert lazy["mode"] == "lazy" and "mode=lazy" in lazy["repr"] and ram["mode"] == "memory"
    assert lazy["n"] == ram["n"] == N and lazy["hash"] == ram["hash"] and lazy["pixels"] == ram["pixels"]
    assert total > 30 * 2**20, total
    assert lazy["growth"] < total / 4, (lazy["growth"], total)
    assert ram["growth"] > total * 0.9, (ram["growth"], total)
    print(f"{kind}: {total / 2**20:.1f} MiB of JPEGs; RSS growth lazy {lazy['growth'] / 2**20:.1f} MiB, "
          f"in RAM {ram['growth'] / 2**20:.1f} MiB")


def test_the_switch_is_automatic_and_overridable(large, monkeypatch):
    folder, shards, total = large
    assert open_source(folder).mode == "memory"  # 2,000 JPEGs are under the default threshold
    monkeypatch.setenv("DDPIPE_IN_MEMORY_MAX_BYTES", str(total - 1))
    assert open_source(folder).mode == "lazy" and open_source(shards).mode == "lazy"
    assert open_source(folder, in_memory=True).mode == "memory"
    monkeypatch.setenv("DDPIPE_IN_MEMORY_MAX_BYTES", "lots")
    with pytest.raises(SourceError, match="DDPIPE_IN_MEMORY_MAX_BYTES"):
        open_source(folder)


def test_webdataset_and_image_folder_give_the_same_images_and_labels(large):
    folder, shards, _ = large
    a = ImageFolderSource(folder, in_memory=False)
    b = open_source(shards, in_memory=False)
    c = open_source(os.path.join(shards, "s-{000..003}.tar"), in_memory=True)
    assert isinstance(b, WebDatasetSource) and len(a) == len(b) == len(c) == N
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.sizes, b.sizes)
    assert [n.removesuffix(".jpg") for n in a.names] == b.names == c.names
    for i in (0, 1, 777, N - 1):
        assert bytes(a.item(i)) == bytes(b.item(i)) == bytes(c.item(i))
        np.testing.assert_array_equal(a.array(i), b.array(i))
    assert b.content_hash() == c.content_hash()  # the hash does not depend on the mode


def test_lazy_webdataset_sources_read_in_forked_and_unpickled_copies(large):
    import multiprocessing as mp
    import pickle

    _, shards, _ = large
    src = open_source(shards, in_memory=False)
    want = bytes(src.item(1234))
    copy = pickle.loads(pickle.dumps(src))
    assert bytes(copy.item(1234)) == want and len(pickle.dumps(src)) < 2**20
    with mp.get_context("fork").Pool(1) as pool:
        assert pool.apply(_item_bytes, (src, 1234)) == want


def _item_bytes(src, i):
    return bytes(src.item(i))


def _shard(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


@pytest.mark.parametrize("in_memory", [True, False])
def test_webdataset_members_missing_or_bad_give_one_line(tmp_path, in_memory):
    jpg = _jpeg(0)
    cases = [
        ([("a.cls", b"1")], "sample 'a' has no .jpg/.jpeg/.png member"),
        ([("a.jpg", jpg)], "sample 'a' has no .cls member"),
        ([("a.jpg", jpg), ("a.cls", b"one")], "sample 'a' has a non-integer .cls member"),
    ]
    for k, (members, message) in enumerate(cases):
        path = _shard(tmp_path / f"bad{k}.tar", members)
        with pytest.raises(SourceError, match=message) as info:
            open_source(path, in_memory=in_memory)
        assert len(str(info.value).splitlines()) == 1
    with pytest.raises(SourceError, match="shards not found"):
        open_source(str(tmp_path / "none-{000..002}.tar"))


_KILLED_BUILD = r"""
import os, signal, sys
from ddpipe.pipeline import open_source
from ddpipe.pipeline import cache
cache._CHUNK = 64
src = open_source(sys.argv[1])
real = type(src).array
def array(self, i, channels=3):
    if i == 300:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, i, channels)
type(src).array = array
cache.build_cache(src, sys.argv[2], channels=3, workers=1)
"""


def test_a_cache_build_killed_midway_resumes_to_the_same_bytes(python, large, tmp_path, monkeypatch):
    from ddpipe.pipeline import cache

    folder = large[0]
    small = str(tmp_path / "small")
    names = sorted(os.listdir(folder))[:4]  # 400 images
    os.makedirs(small)
    for d in names:
        os.symlink(os.path.join(folder, d), os.path.join(small, d))
    whole = build_cache(small, tmp_path / "whole", channels=3, workers=1)

    out = str(tmp_path / "resumed")
    run = subprocess.run([python, "-c", _KILLED_BUILD, small, out], capture_output=True, timeout=300)
    assert run.returncode == -9, run.stderr.decode()
    progress = json.loads((tmp_path / "resumed.partial" / "progress.json").read_text())
    assert progress["done"] == 256 and not os.path.exists(out)  # 4 chunks of 64 committed before the kill

    monkeypatch.setattr(cache, "_CHUNK", 64)
    src = open_source(small)
    decoded = []
    real = type(src).array
    monkeypatch.setattr(type(src), "array", lambda self, i, channels=3: decoded.append(i) or real(self, i, channels))
    resumed = build_cache(src, out, channels=3, workers=1)
    assert min(decoded) == 256 and len(decoded) == 400 - 256  # continued, not restarted
    assert not os.path.exists(out + ".partial")
    assert (tmp_path / "resumed" / "images.u8").read_bytes() == (tmp_path / "whole" / "images.u8").read_bytes()
    meta = [json.loads((tmp_path / d / "cache.json").read_text()) for d in ("whole", "resumed")]
    assert meta[0]["data_sha256"] == meta[1]["data_sha256"] and meta[0]["source_hash"] == meta[1]["source_hash"]
    cache.open_cache(out, source=small, verify=True)
    assert resumed.source_hash == whole.source_hash
