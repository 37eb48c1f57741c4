"""ddpipe import / export from the command line, and training on a logit store at another temperature."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import torch

import interop_fixtures as fx
from ddpipe.pipeline.interop import importer

EXE = os.path.join(os.path.dirname(sys.executable), "ddpipe")


def _run(*args):
    return subprocess.run([EXE, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)


def test_import_and_export_commands(tmp_path):
    images = fx.make_images(str(tmp_path / "imgs"))
    src = tmp_path / "FKD_cutmix_fp16"
    fx.write_sre2l(str(src), epochs=2)
    out = _run("import", "auto", str(src), "--images", images, "--out", str(tmp_path / "s.zarr"), "--json")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["source"] == "sre2l" and res["units"] == 8 and res["lossy"] == [] and res["values"] == "logits"
    assert res["value_codec"] == "fp16" and "codec" not in res
    # results.json inside the store: the same keys plus the config; summary_text reads it back
    written = json.loads((tmp_path / "s.zarr" / "results.json").read_text())
    assert written.keys() == {*res, "config"} and written["config"]["value_codec"] == "fp16"
    assert importer.summary_text(written) == importer.summary_text(importer.ImportResult.from_dict(res))
    out = _run("export", "sre2l", str(tmp_path / "s.zarr"), "--out", str(tmp_path / "exp"), "--no-progress")
    assert out.returncode == 0, out.stderr
    assert "exported" in out.stdout and sorted(os.listdir(tmp_path / "exp")) == ["epoch_0", "epoch_1"]
    # a probability import cannot be exported: one line, exit 2, nothing written
    out = _run("import", "sre2l", str(src), "--images", images, "--out", str(tmp_path / "p.zarr"),
               "--values", "probs", "--codec", "fp32", "--json", "--no-progress")  # --codec: --value-codec's alias
    assert out.returncode == 0 and json.loads(out.stdout)["value_codec"] == "fp32", out.stderr
    out = _run("export", "sre2l", str(tmp_path / "p.zarr"), "--out", str(tmp_path / "no"))
    assert out.returncode == 2 and "stores probabilities" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "no")
    # a pickled object outside the allow-list: one line naming the file
    torch.save([os.getcwd], str(src / "epoch_1" / "batch_0.tar"))
    out = _run("import", "auto", str(src), "--images", images, "--out", str(tmp_path / "x.zarr"))
    assert out.returncode == 2 and "epoch_1/batch_0.tar: refused" in out.stderr


def test_retemper_gives_the_teachers_softmax_at_the_training_temperature(tmp_path):
    """ddpipe train -T on a logit store: the loader's targets (LoaderConfig.temperature) at the training temperature."""
    from ddpipe.labelstore import open_store
    from ddpipe.pipeline import open_source
    from ddpipe.pipeline.interop import ImportConfig, run_import
    from ddpipe.pipeline.loader import LoaderConfig, make_loader

    images = fx.make_images(str(tmp_path / "imgs"))
    src = tmp_path / "src"
    fx.write_sre2l(str(src), epochs=1)

    def first_targets(store, T):  # epoch 0's first batch: unit 0
        with make_loader(open_source(images), str(store), LoaderConfig(num_workers=0, temperature=T)) as loader:
            return next(iter(loader.epoch(0))).targets

    for k in (10, 4):
        store = tmp_path / f"k{k}.zarr"
        run_import(ImportConfig(format="sre2l", src=str(src), images=images, out=str(store), k=k, progress=False))
        u = open_store(str(store)).read_unit(0)
        logits = torch.load(src / "epoch_0" / "batch_0.tar", weights_only=False)[5].double()
        if k == 10:
            for T in (1.0, 4.0, 20.0):
                torch.testing.assert_close(first_targets(store, T).double(), torch.softmax(logits / T, 1),
                                           rtol=1e-4, atol=1e-6)
        else:  # top-4: exact at the store's temperature; at others the tail classes share one logit
            got = first_targets(store, 20.0).double()
            top = np.take_along_axis(torch.softmax(logits / 20.0, 1).numpy(), u.topk[0], 1)
            np.testing.assert_allclose(np.take_along_axis(got.numpy(), u.topk[0], 1), top, rtol=1e-5)
