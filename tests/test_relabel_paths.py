"""relabel's output paths (issue 11 item 4): URLs are written at the URL, never under the current directory;
relative paths, ``~`` and trailing slashes name the same store."""

import json
import os

import fsspec
import numpy as np
import pytest
import torch

from teacher32 import make_image_folder, train_resnet18

from ddpipe.evaluate.relabel import RelabelConfig, results_path, run
from ddpipe.labelstore import open_store

SCHED = dict(epochs=1, batch_size=10, k=2, temperature=4.0, workers=0, progress=False, device="cpu")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("paths")
    images = make_image_folder(str(root / "images"), per_class=1)
    return {"root": root, "images": images, "model": train_resnet18(images, steps=1)}


def relabel_to(env, out, **kw):
    return run(RelabelConfig(images=env["images"], teacher=(env["model"],), num_classes=10, input_size=32, out=out,
                             **SCHED, **kw))


def test_memory_url_is_written_at_the_url(env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = relabel_to(env, "memory://relabel-paths/labels.zarr")
    assert res.store == "memory://relabel-paths/labels.zarr" and os.listdir(tmp_path) == []
    r = open_store("memory://relabel-paths/labels.zarr")
    assert r.complete and r.num_units == 1
    assert res.results == "memory://relabel-paths/labels.zarr/results.json"
    with fsspec.open(res.results, "r") as f:
        assert json.load(f)["units"] == 1


def test_file_url_is_the_local_path(env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "elsewhere" / "labels.zarr"
    res = relabel_to(env, f"file://{target}")
    assert res.store == str(target) and open_store(str(target)).complete
    assert sorted(os.listdir(tmp_path)) == ["elsewhere"]  # nothing like ./file:/... under the cwd
    assert os.path.isfile(target / "results.json")


def test_relative_tilde_and_trailing_slash_paths(env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    os.makedirs(tmp_path / "home")
    a = relabel_to(env, "./runs/a.zarr/")
    assert a.store == str(tmp_path / "runs" / "a.zarr") and open_store("runs/a.zarr").complete
    assert os.path.isfile(tmp_path / "runs" / "a.zarr" / "results.json")
    b = relabel_to(env, "~/b.zarr")
    assert b.store == str(tmp_path / "home" / "b.zarr") and open_store(str(tmp_path / "home" / "b.zarr")).complete
    # the same store named another way resumes it
    again = relabel_to(env, "runs/a.zarr", resume=True)
    assert again.store == a.store and again.units_written == 0
    assert results_path("./runs/a.zarr/") == str(tmp_path / "runs" / "a.zarr" / "results.json")
    x, y = open_store("runs/a.zarr"), open_store(str(tmp_path / "home" / "b.zarr"))
    assert np.array_equal(x.read_unit(0).values, y.read_unit(0).values)
