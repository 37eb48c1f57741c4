"""LoaderConfig(temperature=T): a logit store's targets taken at the training temperature."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from dist_pipeline_data import digits
from ddpipe.labelstore import create_store
from ddpipe.pipeline import ArraySource, LoaderSpecError, Schedule, recipe
from ddpipe.pipeline.loader import LoaderConfig, make_loader

STORE_T = 20.0
RAW = dict(num_workers=0, channels=1, mean=None, std=None)


def _store(path, src, *, k, value_kind="logits", temperature=STORE_T):
    """One epoch of 2 batches over ``src`` with seeded logits; returns {batch: logits [b, 10]}."""
    sched = Schedule(recipe("sre2l", output_size=(8, 8)), 0, src.sizes, 32, 1)
    spec = sched.store_spec(10, k, value_codec="fp32", value_kind=value_kind, temperature=temperature)
    ref = {}
    with create_store(str(path), spec) as w:
        for b in range(sched.batches_per_epoch):
            u = sched.unit(0, b)
            logits = np.random.default_rng(b).normal(scale=8.0, size=(u.count, 10)).astype(np.float32)
            ref[b] = logits
            w.write(replace(u, logits=logits))
    return ref


@pytest.fixture(scope="module")
def src():
    images, labels = digits()
    return ArraySource(images[:64], labels[:64])


def _targets(src, path, **cfg):
    return [(m.batch, t) for _x, t, m in make_loader(src, str(path), LoaderConfig(**RAW, **cfg)).epoch(0)]


def _softmax(z, t):
    return torch.softmax(torch.from_numpy(z).double() / t, dim=1).float()


def test_dense_targets_are_the_teachers_softmax_at_the_asked_temperature(tmp_path, src):
    ref = _store(tmp_path / "l", src, k=10)  # k = C: exact at every temperature
    for t in (1.0, 4.0, STORE_T, 50.0):
        got = _targets(src, tmp_path / "l", temperature=t)
        assert [b for b, _ in got] == [0, 1]
        for b, targets in got:
            torch.testing.assert_close(targets, _softmax(ref[b], t), rtol=1e-5, atol=1e-7)
    # no temperature: the store's (20), exactly what temperature=20 gives
    default = _targets(src, tmp_path / "l")
    at_store = _targets(src, tmp_path / "l", temperature=STORE_T)
    for (_, a), (_, b) in zip(default, at_store):
        assert torch.equal(a, b)


def test_topk_targets_are_retempered_too(tmp_path, src):
    ref = _store(tmp_path / "l", src, k=10)
    for b, (idx, val) in _targets(src, tmp_path / "l", temperature=2.0, targets="topk"):
        want = _softmax(ref[b], 2.0)
        torch.testing.assert_close(val, torch.gather(want, 1, idx), rtol=1e-5, atol=1e-7)


def _retempered(targets, store_t, t):
    """The store's dense targets (probabilities at ``store_t``, the tail classes sharing one logit) at
    ``t``: ``softmax(log(p) * store_t / t)``, since ``log p = row / store_t - lse`` (docs/format.md §5)."""
    z = torch.log(targets.double().clamp_min(1e-300)) * (store_t / t)
    return torch.softmax(z, dim=1).to(targets.dtype)


def test_top_k_store_targets_are_the_stored_targets_retempered(tmp_path, src):
    """k < C: the loader's targets at T are the store's targets re-taken at T from their logarithms."""
    _store(tmp_path / "l", src, k=4)
    base = _targets(src, tmp_path / "l")
    for t in (1.0, 5.0):
        for (_, stored), (_, got) in zip(base, _targets(src, tmp_path / "l", temperature=t)):
            torch.testing.assert_close(got, _retempered(stored, STORE_T, t), rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(got.sum(1), torch.ones(got.shape[0]), rtol=0, atol=1e-5)


def test_probability_store_refuses_another_temperature(tmp_path, src):
    _store(tmp_path / "p", src, k=4, value_kind="probs", temperature=4.0)
    with pytest.raises(LoaderSpecError, match="probability store written at temperature 4.0"):
        make_loader(src, str(tmp_path / "p"), LoaderConfig(**RAW, temperature=20.0))
    # its own temperature is fine (a no-op)
    same = _targets(src, tmp_path / "p", temperature=4.0)
    plain = _targets(src, tmp_path / "p")
    for (_, a), (_, b) in zip(same, plain):
        assert torch.equal(a, b)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "20", True])
def test_bad_temperatures_are_refused(bad):
    with pytest.raises(LoaderSpecError, match="temperature must be a positive number"):
        LoaderConfig(temperature=bad)
