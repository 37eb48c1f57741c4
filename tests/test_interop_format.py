"""The format step of issue 12 in the label store: logit stores, exact fields, per-sample aux values."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from ddpipe.labelstore import SpecError, StoreSpec, Unit, create_store, logit_probs, open_store, verify_store


def _spec(**kw):
    base = dict(num_samples=10, num_classes=50, epochs=2, batch_size=4, k=5, value_codec="fp32", temperature=3.0)
    return StoreSpec(**{**base, **kw})


def _units(spec, rng):
    for e in range(spec.epochs):
        for b in range(spec.batches_per_epoch):
            n = spec.batch_count(b)
            yield Unit(epoch=e, batch=b, sample_ids=rng.permutation(spec.num_samples)[:n],
                       crops=rng.uniform(0, 0.5, (n, 4)).astype(np.float32), flips=rng.random(n) < 0.5,
                       mix_kind="mixup", mix_perm=rng.permutation(n), mix_lambda=float(rng.beta(0.8, 0.8)),
                       logits=(rng.normal(size=(n, spec.num_classes)) * 5).astype(np.float32))


def test_logit_store_round_trip_and_exact_fields(tmp_path):
    spec = _spec(value_kind="logits", exact_fields=True)
    rng = np.random.default_rng(0)
    units = list(_units(spec, rng))
    with create_store(str(tmp_path / "s"), spec) as w:
        for u in units:
            w.write(u)
    r = open_store(str(tmp_path / "s"))
    assert r.spec == spec and verify_store(str(tmp_path / "s"))["ok"]
    for u, got in zip(units, r.iter_units()):
        np.testing.assert_array_equal(got.crops, u.crops)  # float32, bit for bit
        assert got.mix_lambda == u.mix_lambda  # float64, bit for bit
        z = u.logits.astype(np.float64)
        order = np.argsort(-z, axis=1, kind="stable")[:, :5]
        np.testing.assert_array_equal(got.topk_logits[0], order)
        np.testing.assert_array_equal(got.topk_logits[1], np.take_along_axis(u.logits, order, 1))
        m = (z / 3.0).max(1, keepdims=True)
        lse = (m + np.log(np.exp(z / 3.0 - m).sum(1, keepdims=True)))[:, 0]
        np.testing.assert_allclose(got.lse, lse, rtol=1e-15)
        p = np.exp(z / 3.0 - lse[:, None])
        np.testing.assert_allclose(got.topk[1], np.take_along_axis(p, order, 1), rtol=1e-6)  # probs at T_s
        # another temperature: the row model (top-k exact, tail classes sharing one logit)
        q = logit_probs(got.topk_logits[1], got.lse, 50, 3.0, 10.0)
        assert np.all(q.sum(1) < 1) and np.all(np.diff(q, axis=1) <= 0)


def test_k_equals_c_is_stored_in_class_order(tmp_path):
    spec = _spec(value_kind="logits", k=50, value_codec="fp16")
    rng = np.random.default_rng(1)
    units = list(_units(spec, rng))
    with create_store(str(tmp_path / "s"), spec) as w:
        for u in units:
            w.write(u)
    got = open_store(str(tmp_path / "s")).read_unit(0)
    np.testing.assert_array_equal(got.topk_logits[0], np.broadcast_to(np.arange(50), (4, 50)))
    np.testing.assert_array_equal(got.topk_logits[1], units[0].logits.astype(np.float16).astype(np.float32))


def test_defaults_leave_the_attributes_as_they_were_and_bad_specs_are_refused(tmp_path):
    spec = _spec()
    assert not {"value_kind", "exact_fields", "aux_fields"} & set(spec.to_dict())
    create_store(str(tmp_path / "p"), spec).close()
    attrs = json.load(open(os.path.join(tmp_path, "p", "zarr.json")))["attributes"]["ddpipe"]["spec"]
    assert "value_kind" not in attrs
    with pytest.raises(SpecError, match="fp16 or fp32 codec"):
        _spec(value_kind="logits", value_codec="uint8")
    with pytest.raises(SpecError, match="value_kind"):
        _spec(value_kind="logprobs")
    with pytest.raises(SpecError, match="aux_fields"):
        _spec(aux_fields=["a", "a"])


def test_exact_fields_refuse_rounding_and_aux_is_required(tmp_path):
    spec = _spec(exact_fields=True, aux_fields=["x", "y"])
    w = create_store(str(tmp_path / "s"), spec)
    u = Unit(epoch=0, batch=0, sample_ids=np.arange(4), crops=np.full((4, 4), 0.1), logits=np.zeros((4, 50)))
    with pytest.raises(SpecError, match="float32 values"):
        w.write(u)  # 0.1 in float64 is no float32
    u.crops = np.full((4, 4), 0.1, np.float32)
    with pytest.raises(SpecError, match="give aux"):
        w.write(u)
    u.aux = np.arange(8, dtype=np.float64).reshape(4, 2) / 3
    w.write(u)
    w.close()
