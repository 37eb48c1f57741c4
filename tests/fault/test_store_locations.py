"""Every spelling of a store's location, on every backend; prune never writes onto its source.

Prune with ``--out`` equal to the source (as given, with a trailing slash, as ``./S``, through a
symlink, as a ``file://`` URL) or a folder around it or inside it is refused with one error before
anything is touched: the source stays byte for byte as it was. Stores created at ``file://`` and
``memory://`` URLs are written at the URL; relative, ``~`` and trailing-slash paths read on both
backends. Rerun: ``pytest tests/fault/test_store_locations.py``.
"""

from __future__ import annotations

import hashlib
import os
import uuid

import fsspec
import numpy as np
import pytest

from ddpipe.labelstore import (
    SameLocationError,
    create_store,
    open_store,
    prune_store,
    store_info,
    store_location,
    verify_store,
)
from store_faults import SPEC, assert_identical, build, fingerprint


def tree_digest(path: str) -> dict[str, bytes]:
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                out[os.path.relpath(os.path.join(root, f), path)] = hashlib.sha256(fh.read()).digest()
    return out


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    path = build(str(root / "S"))
    os.symlink(path, root / "link")
    return path, tree_digest(path)


@pytest.mark.parametrize("spelling", ["same", "slash", "dot", "symlink", "file-url", "parent", "inside"])
def test_prune_onto_its_source_is_refused(src, monkeypatch, spelling):
    src, before = src
    root = os.path.dirname(src)
    monkeypatch.chdir(root)
    out = {"same": src, "slash": src + "/", "dot": "./S", "symlink": os.path.join(root, "link"),
           "file-url": f"file://{src}", "parent": root, "inside": os.path.join(src, "pruned")}[spelling]
    for overwrite in (True, False):
        with pytest.raises(SameLocationError, match="would destroy the input"):
            prune_store(src, out, 0.5, overwrite=overwrite)
    assert tree_digest(src) == before  # not one object touched
    assert sorted(os.listdir(root)) == ["S", "link"]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    root = tmp_path_factory.mktemp("home")
    path = build(str(root / "labels.zarr"))
    os.makedirs(root / "sub")
    return str(root), path, open_store(path).read_epoch(2).arrays["label_index"]


@pytest.mark.parametrize("backend", ["tensorstore", "zarr"])
@pytest.mark.parametrize("spelling", ["relative", "dot-dot", "home", "slash", "file-url"])
def test_every_path_form_reads_on_every_backend(home, monkeypatch, backend, spelling):
    root, path, want = home
    monkeypatch.setenv("HOME", root)
    monkeypatch.chdir(root)
    name = {"relative": "./labels.zarr", "dot-dot": "../labels.zarr", "home": "~/labels.zarr", "slash": "labels.zarr/",
            "file-url": f"file://{path}"}[spelling]
    if spelling == "dot-dot":
        monkeypatch.chdir(os.path.join(root, "sub"))
    assert store_location(name) == path
    r = open_store(name, backend=backend)
    assert r.backend == backend and r.path == path and r.complete
    np.testing.assert_array_equal(r.read_epoch(2).arrays["label_index"], want)
    assert store_info(name, backend=backend)["bytes_on_disk"] > 0
    if spelling == "relative":
        assert verify_store(name, backend=backend)["ok"]


def test_relative_store_is_created_where_it_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.makedirs("runs")
    build("./runs/l.zarr/")
    assert open_store(str(tmp_path / "runs" / "l.zarr")).complete
    prune_store("runs/l.zarr", "./runs/p.zarr", 0.5)
    assert open_store(tmp_path / "runs" / "p.zarr", backend="tensorstore").complete


def test_file_url_output_goes_to_the_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "deep" / "out.zarr"
    w = create_store(f"file://{target}", SPEC)
    assert w.path == str(target)
    ref = build(str(tmp_path / "ref"))
    from labelstore_units import all_units

    w.write_many(all_units(SPEC))
    assert sorted(os.listdir(tmp_path)) == ["deep", "ref"]  # nothing under the working directory
    assert_identical(str(target), fingerprint(ref), verify=True)
    prune_store(f"file://{target}", f"file://{tmp_path}/p.zarr", 0.5)
    assert open_store(tmp_path / "p.zarr").complete


def test_memory_url_output_goes_to_the_url(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = f"memory://ddpipe-fault-{uuid.uuid4().hex}/"
    try:
        from labelstore_units import all_units

        create_store(url, SPEC).write_many(all_units(SPEC))
        assert os.listdir(tmp_path) == []  # nothing written under the working directory
        r = open_store(url)
        assert r.path == url.rstrip("/") and r.complete and r.backend == "zarr"
        ref = open_store(build(str(tmp_path / "ref")))
        for a, b in zip(r.iter_units(), ref.iter_units()):
            np.testing.assert_array_equal(a.indices, b.indices)
        assert verify_store(url)["ok"]
        with pytest.raises(SameLocationError):
            prune_store(url, url.rstrip("/"), 0.5, overwrite=True)
        assert verify_store(url)["ok"]
    finally:
        fsspec.filesystem("memory").rm(url.removeprefix("memory://").rstrip("/"), recursive=True)
