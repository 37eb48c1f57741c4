"""ddpipe export sre2l: the folder SRe2L's train_FKD.py reads; refusals; export then import equals the source."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import interop_fixtures as fx
from ddpipe.labelstore import SameLocationError, create_store, open_store
from ddpipe.pipeline.interop import ExportConfig, ImportConfig, InteropError, run_export, run_import
from ddpipe.pipeline.schedule import Schedule, recipe


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return fx.make_images(str(tmp_path_factory.mktemp("imgs") / "set"))


def _import(src, images, out, **kw):
    return run_import(ImportConfig(format="auto", src=str(src), images=images, out=str(out), progress=False, **kw))


def _export(store, out):
    return run_export(ExportConfig(format="sre2l", store=str(store), out=str(out), progress=False))


def _same_record(a, b, where):
    """Element by element, types and dtypes included (what SRe2L's loader would see)."""
    assert len(a) == len(b) == 6, where
    for i, (x, y) in enumerate(zip(a, b)):
        assert type(x) is type(y), (where, i, type(x), type(y))
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and x.shape == y.shape, (where, i)
            assert torch.equal(x, y), (where, i)
        elif isinstance(x, list):
            assert [type(v) for v in x] == [type(v) for v in y] and [int(v) for v in x] == [int(v) for v in y], (where, i)
        else:
            assert x == y, (where, i)


def _sre2l_reader_view(folder):
    """What SRe2L's train_FKD.py derives from a folder (their get_FKD_info and
    get_img2batch_idx_list, restated): epochs from the folder's entries, batch size from
    epoch_0/batch_0.tar, image count, and per epoch the map first-image -> batch file."""
    max_epoch = len(os.listdir(folder))
    files = len(os.listdir(os.path.join(folder, "epoch_0")))
    bs = torch.load(os.path.join(folder, "epoch_0", "batch_0.tar"), weights_only=False)[1].size(0)
    last = torch.load(os.path.join(folder, "epoch_0", f"batch_{files - 1}.tar"), weights_only=False)[1].size(0)
    num_img = bs * (files - 1) + last
    gen = torch.Generator()
    gen.manual_seed(42)
    sampler = torch.utils.data.RandomSampler(torch.utils.data.TensorDataset(torch.arange(num_img)), generator=gen)
    batch_sampler = torch.utils.data.BatchSampler(sampler, batch_size=bs, drop_last=False)
    maps = []
    for _ in range(max_epoch):
        maps.append({idx[0]: b for b, idx in enumerate(batch_sampler)})
    return max_epoch, bs, num_img, maps


@pytest.mark.parametrize("mix", ["cutmix", "mixup"])
def test_export_then_import_equals_the_source(tmp_path, images, mix):
    src = tmp_path / "src"
    fx.write_sre2l(str(src), mix=mix)
    _import(src, images, tmp_path / "s.zarr")
    res = _export(tmp_path / "s.zarr", tmp_path / "out")
    assert res.exact and res.files == 12
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == ["epoch_0", "epoch_1", "epoch_2"]  # nothing else: get_FKD_info counts entries
    for e in range(3):
        assert sorted(os.listdir(out / f"epoch_{e}")) == sorted(os.listdir(src / f"epoch_{e}"))
        for name in os.listdir(src / f"epoch_{e}"):
            a = torch.load(src / f"epoch_{e}" / name, weights_only=False)
            b = torch.load(out / f"epoch_{e}" / name, weights_only=False)
            _same_record(a, b, f"epoch_{e}/{name}")
    # and the exported folder imports to the same store content
    _import(out, images, tmp_path / "again.zarr")
    r1, r2 = open_store(str(tmp_path / "s.zarr")), open_store(str(tmp_path / "again.zarr"))
    for u1, u2 in zip(r1.iter_units(), r2.iter_units()):
        for f in ("sample_ids", "crops", "flips", "mix_perm", "mix_box", "lse"):
            np.testing.assert_array_equal(getattr(u1, f), getattr(u2, f))
        np.testing.assert_array_equal(u1.topk_logits[1], u2.topk_logits[1])
        assert u1.mix_lambda == u2.mix_lambda


def test_torch_sampler_relabel_exports_to_what_train_fkd_expects(tmp_path):
    """A store relabelled in the torch-sampler order (seed 42): SRe2L's own batch-to-file mapping
    finds, for every batch its sampler yields, the file holding exactly those images."""
    n, B, E, C = 100, 32, 3, 7
    sched = Schedule(recipe("sre2l-torch", output_size=(16, 16)), 42, np.tile([[20, 24]], (n, 1)), B, E)
    spec = sched.store_spec(C, C, value_codec="fp32", value_kind="logits", temperature=20.0)
    rng = np.random.default_rng(0)
    with create_store(str(tmp_path / "t.zarr"), spec) as w:
        for e in range(E):
            for b in range(sched.batches_per_epoch):
                u = sched.unit(e, b)
                u.logits = rng.normal(size=(u.count, C)).astype(np.float32)
                w.write(u)
    res = _export(tmp_path / "t.zarr", tmp_path / "out")
    assert res.files == 12
    max_epoch, bs, num_img, maps = _sre2l_reader_view(str(tmp_path / "out"))
    assert (max_epoch, bs, num_img) == (E, B, n)
    r = open_store(str(tmp_path / "t.zarr"))
    gen = torch.Generator()
    gen.manual_seed(42)
    batches = torch.utils.data.BatchSampler(torch.utils.data.RandomSampler(range(n), generator=gen), B, drop_last=False)
    for e in range(E):
        for idx in batches:  # what their DataLoader yields in epoch e
            b = maps[e][idx[0]]
            np.testing.assert_array_equal(r.read_batch(e, b).sample_ids, idx)
            rec = torch.load(tmp_path / "out" / f"epoch_{e}" / f"batch_{b}.tar", weights_only=False)
            assert rec[1].size(0) == len(idx) and rec[5].dtype == torch.float16 and rec[5].shape == (len(idx), C)
            assert isinstance(rec[3], float) and all(isinstance(v, np.int64) for v in rec[4])


def test_refusals_say_why(tmp_path, images):
    src = tmp_path / "src"
    fx.write_sre2l(str(src), epochs=1)
    _import(src, images, tmp_path / "p.zarr", values="probs")
    with pytest.raises(InteropError, match="stores probabilities"):
        _export(tmp_path / "p.zarr", tmp_path / "o1")
    # ddpipe's own order
    sched = Schedule(recipe("sre2l", output_size=(16, 16)), 42, np.tile([[20, 24]], (100, 1)), 32, 1)
    spec = sched.store_spec(5, 5, value_kind="logits")
    with create_store(str(tmp_path / "d.zarr"), spec) as w:
        for b in range(4):
            u = sched.unit(0, b)
            u.logits = np.zeros((u.count, 5), np.float32)
            w.write(u)
    with pytest.raises(InteropError, match="ddpipe's own order"):
        _export(tmp_path / "d.zarr", tmp_path / "o2")
    # pruned (LPLD)
    lp = tmp_path / "lpld"
    fx.write_lpld(str(lp), epochs=4, prune_ratio=0.6)
    _import(lp, images, tmp_path / "l.zarr")
    with pytest.raises(InteropError, match="pruned"):
        _export(tmp_path / "l.zarr", tmp_path / "o3")
    assert not any(os.path.exists(tmp_path / f"o{i}") for i in (1, 2, 3))
    # never onto its source
    _import(src, images, tmp_path / "s.zarr")
    with pytest.raises(SameLocationError):
        _export(tmp_path / "s.zarr", tmp_path / "s.zarr" / "inside")
