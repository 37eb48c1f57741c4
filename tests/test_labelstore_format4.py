"""Store format 4 (docs/format.md): bit-packed class indices, the quantised ``abs*`` value codecs
with their stated bound, crops as whole source pixels (``crop_grid``); written only when the spec
asks (``format_version=4``), read by the same reader, bound and verified as format 3 is."""

import json
import os
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ddpipe.labelstore import StoreSpec, Unit, create_store, get_codec, open_store, softmax_at, top_k
from ddpipe.labelstore.errors import MisplacedShardError, SpecError
from ddpipe.labelstore.packing import pack_indices, unpack_indices
from ddpipe.labelstore.prune import prune_store
from ddpipe.labelstore.verify import verify_store

ABS = [f"abs{b}{d}" for b in (256, 512, 2048, 8192) for d in ("", "d")]


# --- packing ------------------------------------------------------------------------------------------
@settings(max_examples=80, deadline=None)
@given(data=st.data(), bits=st.integers(1, 32), rows=st.integers(1, 5), k=st.integers(1, 20))
def test_packed_indices_round_trip(data, bits, rows, k):
    idx = data.draw(hnp.arrays(np.uint64, (rows, k), elements=st.integers(0, 2**bits - 1)))
    packed = pack_indices(idx, bits)
    assert packed.dtype == np.uint8 and packed.shape == (rows, -(-k * bits // 8))
    assert np.array_equal(unpack_indices(packed, bits, k).astype(np.uint64), idx)


def test_packing_is_msb_first_row_by_row():
    # 3 and 5 in 3 bits: 011 101 -> 0111 0100 (two zero bits of padding)
    assert pack_indices(np.array([[3, 5]]), 3).tolist() == [[0b01110100]]
    assert StoreSpec(num_samples=4, num_classes=1000, epochs=1, batch_size=2, k=10).index_bits == 10
    assert StoreSpec(num_samples=4, num_classes=1024, epochs=1, batch_size=2, k=10).packed_index_bytes == 13
    assert StoreSpec(num_samples=4, num_classes=1, epochs=1, batch_size=2, k=1).index_bits == 1


# --- the quantised codecs ---------------------------------------------------------------------------------
def any_rows():
    """Any float32 values in [0, 1], also unsorted rows and exact half steps."""
    halves = st.integers(0, 2**13).map(lambda i: i / 2**13)
    return st.tuples(st.integers(1, 6), st.integers(1, 12)).flatmap(
        lambda s: hnp.arrays(np.float32, s, elements=st.one_of(st.floats(0, 1, width=32), halves)))


@pytest.mark.parametrize("name", ABS)
@settings(max_examples=80, deadline=None)
@given(values=any_rows())
def test_abs_codec_round_trip_within_its_stated_bound(name, values):
    codec = get_codec(name)
    bound = 1.0 / int(name[3:].rstrip("d"))
    assert codec.bound == bound and codec.min_format == 4 and not codec.has_scale
    stored, scale = codec.encode(values)
    assert scale is None and stored.dtype == codec.dtype
    back = codec.decode(stored)
    assert back.dtype == np.float32 and back.shape == values.shape
    assert np.all(np.abs(back.astype(np.float64) - values.astype(np.float64)) <= bound)
    assert np.all((back >= 0) & (back <= 1))
    # the delta form decodes to exactly what the plain form does, whatever the row's order
    plain = get_codec(name.rstrip("d"))
    assert np.array_equal(back, plain.decode(plain.encode(values)[0]))


def test_abs512_meets_one_in_512_on_teacher_rows():
    p = softmax_at(np.random.default_rng(0).normal(0, 3, (500, 1000)), 1.0)
    _, v = top_k(p, 10)
    codec = get_codec("abs512")
    assert np.abs(codec.decode(codec.encode(v)[0]) - v).max() <= 1 / 512


# --- stores --------------------------------------------------------------------------------------------
def _spec(**kw):
    base = dict(num_samples=70, num_classes=1000, epochs=2, batch_size=32, k=10, seed=3, format_version=4)
    return StoreSpec(**{**base, **kw})


def _units(spec, grid=224, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for e in range(spec.epochs):
        ids = rng.permutation(spec.num_samples)
        for b in range(spec.batches_per_epoch):
            n = spec.batch_count(b)
            px = rng.integers(0, grid // 2, (n, 4))
            out.append(Unit(epoch=e, batch=b, sample_ids=ids[b * spec.batch_size:][:n], crops=px / grid,
                            flips=rng.random(n) < 0.5, logits=rng.normal(0, 3, (n, spec.num_classes)).astype(np.float32)))
    return out


def _write(path, spec, units):
    with create_store(path, spec) as w:
        for u in units:
            w.write(u)
    return path


@pytest.mark.parametrize("codec", ["fp16", "fp32", "uint8", "abs512", "abs512d", "abs256"])
def test_format4_store_round_trips_and_verifies(tmp_path, codec):
    spec = _spec(value_codec=codec, crop_grid=224)
    units = _units(spec)
    path = _write(str(tmp_path / "s.zarr"), spec, units)
    with open(os.path.join(path, "zarr.json")) as f:
        attrs = json.load(f)["attributes"]["ddpipe"]
    assert attrs["format_version"] == 4 and attrs["spec"]["format_version"] == 4
    with open(os.path.join(path, "label_index", "zarr.json")) as f:
        assert json.load(f)["data_type"] == "uint8"
    with open(os.path.join(path, "sample_crop", "zarr.json")) as f:
        assert json.load(f)["data_type"] == "uint8"  # whole pixels of a 224-pixel image
    reader = open_store(path)
    assert reader.format_version == 4 and reader.spec == spec
    c = get_codec(codec)
    for want, got in zip(units, reader.iter_units()):
        idx, val = top_k(softmax_at(want.logits, 1.0), spec.k)
        assert np.array_equal(got.topk[0], idx)
        assert np.all(np.abs(got.topk[1] - val) <= c.max_error(val))
        assert np.array_equal(np.rint(got.crops * 224), np.rint(np.asarray(want.crops) * 224))
        assert np.array_equal(got.crops, (np.rint(np.asarray(want.crops) * 224) / 224).astype(np.float32))
        assert np.array_equal(got.sample_ids, want.sample_ids) and np.array_equal(got.flips, want.flips)
    result = verify_store(path)
    assert result["ok"], result["problems"]


def test_format4_lossless_logits_keep_fp16_bit_for_bit(tmp_path):
    spec = _spec(value_kind="logits", value_codec="fp16")
    rng = np.random.default_rng(1)
    units = []
    for u in _units(spec):
        z = rng.normal(0, 4, (u.count, spec.num_classes)).astype(np.float16)
        idx = np.argsort(-z.astype(np.float32), axis=1, kind="stable")[:, :spec.k]
        units.append(Unit(epoch=u.epoch, batch=u.batch, sample_ids=u.sample_ids, crops=u.crops,
                          topk_logits=(idx, np.take_along_axis(z, idx, 1).astype(np.float32))))
    path = _write(str(tmp_path / "l.zarr"), spec, units)
    for want, got in zip(units, open_store(path).iter_units()):
        assert np.array_equal(got.topk_logits[0], want.topk_logits[0])
        assert np.array_equal(got.topk_logits[1].astype(np.float16).view(np.uint16),
                              want.topk_logits[1].astype(np.float16).view(np.uint16))
    assert verify_store(path)["ok"]


def test_default_spec_still_writes_format3(tmp_path):
    spec = _spec(format_version=3)
    assert spec == StoreSpec(**{k: v for k, v in spec.to_dict().items()}) and "format_version" not in spec.to_dict()
    path = _write(str(tmp_path / "s3.zarr"), spec, _units(spec))
    with open(os.path.join(path, "zarr.json")) as f:
        attrs = json.load(f)["attributes"]["ddpipe"]
    assert attrs["format_version"] == 3 and "format_version" not in attrs["spec"] and "crop_grid" not in attrs["spec"]
    with open(os.path.join(path, "label_index", "zarr.json")) as f:
        assert json.load(f)["data_type"] == "uint16"


@pytest.mark.parametrize("kw, match", [
    (dict(format_version=3, value_codec="abs512"), "needs format_version 4"),
    (dict(format_version=3, crop_grid=224), "crop_grid"),
    (dict(crop_grid=224, exact_fields=True), "crop_grid"),
    (dict(format_version=5), "format_version must be one of"),
    (dict(value_kind="logits", value_codec="abs512"), "logit store"),
    (dict(format_version=3, derived_fields=True), "derived_fields"),
    (dict(exact_fields=True, derived_fields=True), "derived_fields"),
    (dict(derived_fields="yes"), "derived_fields must be true or false"),
])
def test_format4_spec_refusals(kw, match):
    with pytest.raises(SpecError, match=match):
        _spec(**kw)


def test_crops_off_the_grid_are_refused(tmp_path):
    spec = _spec(crop_grid=300)
    with create_store(str(tmp_path / "g.zarr"), spec) as w:
        with pytest.raises(SpecError, match="not whole pixels of a 300-pixel"):
            w.write(_units(spec, grid=224)[0])


def test_format4_binding_refuses_a_copied_shard(tmp_path):
    spec = _spec(value_codec="abs512", crop_grid=224, units_per_shard=1)
    a = _write(str(tmp_path / "a.zarr"), spec, _units(spec, seed=0))
    b = _write(str(tmp_path / "b.zarr"), spec, _units(spec, seed=1))
    key = os.path.join("label_index", "c", "1", "0", "0")
    shutil.copyfile(os.path.join(b, key), os.path.join(a, key))
    with pytest.raises(MisplacedShardError, match="label_index"):
        open_store(a).read_unit(1)
    result = verify_store(a)
    assert not result["ok"] and result["problems"][0]["array"] == "label_index"


def test_prune_keeps_format4(tmp_path):
    spec = _spec(value_codec="abs512d", crop_grid=224)
    src = _write(str(tmp_path / "src.zarr"), spec, _units(spec))
    dst = prune_store(src, str(tmp_path / "dst.zarr"), 0.5, seed=1)
    r_src, r_dst = open_store(src), open_store(dst)
    assert r_dst.format_version == 4 and verify_store(dst)["ok"]
    for u in r_dst.iter_units():
        w = r_src.read_batch(u.epoch, u.batch)
        assert np.array_equal(u.topk[0], w.topk[0]) and np.array_equal(u.topk[1], w.topk[1])
        assert np.array_equal(u.crops, w.crops)


def test_format4_binding_refuses_a_moved_shard(tmp_path):
    spec = _spec(value_codec="abs512d", crop_grid=224, units_per_shard=1)
    a = _write(str(tmp_path / "a.zarr"), spec, _units(spec))
    src, dst = (os.path.join(a, "label_index", "c", str(s), "0", "0") for s in (0, 1))
    shutil.copyfile(src, dst)  # a valid object of this store, at the wrong position
    with pytest.raises(MisplacedShardError, match="label_index"):
        open_store(a).read_unit(1)
    problems = verify_store(a)["problems"]
    assert [(p["unit"], p["array"]) for p in problems] == [(1, "label_index")]


def test_format4_edited_attributes_are_refused(tmp_path):
    from ddpipe.labelstore.errors import MetadataEditedError

    spec = _spec(value_codec="abs512", crop_grid=224)
    a = _write(str(tmp_path / "a.zarr"), spec, _units(spec))
    meta_path = os.path.join(a, "zarr.json")
    with open(meta_path) as f:
        meta = json.load(f)
    meta["attributes"]["ddpipe"]["spec"]["crop_grid"] = 256
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    with pytest.raises(MetadataEditedError, match="spec.crop_grid"):
        open_store(a)


# --- derived schedule fields ------------------------------------------------------------------------------
def _schedule(spec_kw=None, seed=3, size=224):
    from ddpipe.pipeline.schedule import Schedule, recipe

    sizes = np.full((70, 2), size, np.int64)
    return Schedule(recipe("sre2l", output_size=(32, 32)), seed, sizes, 32, 2)


def _labelled(sched, spec):
    rng = np.random.default_rng(5)
    out = []
    for e in range(spec.epochs):
        for b in range(spec.batches_per_epoch):
            u = sched.unit(e, b)
            out.append(Unit(**{**u.__dict__, "logits": rng.normal(0, 3, (u.count, spec.num_classes)).astype(np.float32)}))
    return out


def test_derived_fields_keep_a_digest_and_read_back_the_schedule_s_units(tmp_path):
    """derived_fields: no schedule arrays on disk, one uint64 digest per unit; read with the schedule, every
    unit is the one the relabel wrote (ids, crops, flips, mix, labels); the store is smaller by their bytes."""
    from ddpipe.labelstore import store_info
    from ddpipe.labelstore.layout import DIGEST_ARRAY, SCHEDULE_ARRAYS

    sched = _schedule()
    stored = sched.store_spec(1000, 10, value_codec="abs512", format_version=4)
    derived = stored.replace(derived_fields=True)
    units = _labelled(sched, stored)
    a = _write(str(tmp_path / "stored.zarr"), stored, units)
    d = _write(str(tmp_path / "derived.zarr"), derived, units)
    on_disk = set(os.listdir(d))
    assert DIGEST_ARRAY in on_disk and not on_disk & set(SCHEDULE_ARRAYS)
    assert store_info(d)["bytes_on_disk"] < store_info(a)["bytes_on_disk"]
    ra, rd = open_store(a), open_store(d, fields=sched.unit)
    for want, got in zip(ra.iter_units(), rd.iter_units()):
        for name in ("sample_ids", "crops", "flips", "cutout", "cutout_fill", "mix_perm", "mix_box"):
            assert np.array_equal(getattr(want, name), getattr(got, name)), name
        assert (want.mix_kind, want.mix_lambda) == (got.mix_kind, got.mix_lambda)
        assert np.array_equal(want.topk[0], got.topk[0]) and np.array_equal(want.topk[1], got.topk[1])
    assert verify_store(d, fields=sched.unit)["ok"]
    assert verify_store(d)["ok"]  # without the schedule: every label check, no field check


def test_derived_fields_refuse_another_schedule_naming_the_unit(tmp_path):
    from ddpipe.labelstore import FieldsMismatchError
    from ddpipe.labelstore.layout import DIGEST_ARRAY

    sched = _schedule()
    spec = sched.store_spec(1000, 10, value_codec="abs512", format_version=4, derived_fields=True)
    d = _write(str(tmp_path / "d.zarr"), spec, _labelled(sched, spec))
    with pytest.raises(SpecError, match="derived_fields"):
        open_store(d).read_unit(0)  # labels only without the schedule: whole units need it
    assert open_store(d).read_slab(0, 1).values.shape == (1, 32, 10)
    for other in (_schedule(seed=4), _schedule(size=200)):  # another seed; other image sizes
        with pytest.raises(FieldsMismatchError, match=r"unit 2 \(epoch 0, batch 2\)"):
            open_store(d, fields=other.unit).read_unit(2)
        problems = verify_store(d, fields=other.unit)["problems"]
        assert problems and {p["array"] for p in problems} == {DIGEST_ARRAY}


def test_prune_and_copy_into_a_derived_store(tmp_path):
    """prune copies a derived store's digests; rows of a store that keeps its fields, written into a
    derived store, keep their digest, and read back equal."""
    from ddpipe.labelstore import open_writer

    sched = _schedule()
    stored = sched.store_spec(1000, 10, value_codec="abs512", format_version=4)
    units = _labelled(sched, stored)
    a = _write(str(tmp_path / "a.zarr"), stored, units)
    d = _write(str(tmp_path / "d.zarr"), stored.replace(derived_fields=True), units)
    p = prune_store(d, str(tmp_path / "p.zarr"), 0.5, seed=2)
    rp = open_store(p, fields=sched.unit)
    assert rp.spec.derived_fields and verify_store(p, fields=sched.unit)["ok"]
    ra = open_store(a)
    for u in rp.iter_units():
        w = ra.read_batch(u.epoch, u.batch)
        assert np.array_equal(u.crops, w.crops) and np.array_equal(u.topk[1], w.topk[1])
    c = str(tmp_path / "c.zarr")
    create_store(c, stored.replace(derived_fields=True)).close()
    with open_writer(c) as w:
        slab = ra.read_slab(0, ra.num_units)
        for i in range(ra.num_units):
            w.write_rows(int(ra.plan[i, 0]), int(ra.plan[i, 1]), {n: v[i] for n, v in slab.arrays.items()})
    assert verify_store(c, fields=sched.unit)["ok"]


# --- the gaps index coding ---------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.data(), st.integers(1, 70_000), st.integers(1, 40))
def test_gaps_round_trip_any_set(data, classes, k):
    from ddpipe.labelstore.packing import class_order, from_gaps, to_gaps

    k = min(k, classes)
    rows = data.draw(st.integers(1, 5))
    idx = np.stack([np.asarray(data.draw(st.lists(st.integers(0, classes - 1), min_size=k, max_size=k, unique=True)))
                    for _ in range(rows)])
    val = np.random.default_rng(0).random(idx.shape).astype(np.float32)
    dtype = np.dtype("<u2") if classes <= 65535 else np.dtype("<u4")
    s_idx, s_val = class_order(idx, val)
    back = from_gaps(to_gaps(s_idx, dtype), classes, dtype)
    assert np.array_equal(back, np.sort(idx, axis=1)) and back.dtype == dtype
    for r in range(rows):  # each class keeps its value
        assert dict(zip(idx[r].tolist(), val[r].tolist())) == dict(zip(back[r].tolist(), s_val[r].tolist()))


@pytest.mark.parametrize("codec", ["fp16", "abs512", "uint8"])
def test_gaps_store_keeps_every_class_its_value_in_class_order(tmp_path, codec):
    """index_coding gaps: label_index holds class-sorted gaps in the index dtype; each sample reads back the
    same top-k set, every class with its value (within the codec), in ascending class order; verify passes,
    and prune from a packed store into a gaps store (and back) keeps the labels."""
    spec = _spec(value_codec=codec, crop_grid=224, index_coding="gaps")
    units = _units(spec)
    path = _write(str(tmp_path / "g.zarr"), spec, units)
    with open(os.path.join(path, "label_index", "zarr.json")) as f:
        assert json.load(f)["data_type"] == "uint16"
    c = get_codec(codec)
    for want, got in zip(units, open_store(path).iter_units()):
        idx, val = top_k(softmax_at(want.logits, 1.0), spec.k)
        order = np.argsort(idx, axis=1)
        assert np.array_equal(got.topk[0], np.take_along_axis(idx, order, 1))
        exp = np.take_along_axis(val, order, 1)
        assert np.all(np.abs(got.topk[1] - exp) <= c.max_error(exp))
    assert verify_store(path)["ok"]


def test_gaps_and_packed_copy_into_each_other(tmp_path):
    from ddpipe.labelstore import open_writer

    packed = _spec(value_codec="abs512", crop_grid=224)
    gaps = packed.replace(index_coding="gaps")
    a = _write(str(tmp_path / "a.zarr"), packed, _units(packed))
    ra = open_store(a)
    for dst_spec, name in ((gaps, "g.zarr"), (packed, "p.zarr")):
        dst = str(tmp_path / name)
        create_store(dst, dst_spec).close()
        src = open_store(str(tmp_path / "g.zarr")) if name == "p.zarr" else ra
        with open_writer(dst) as w:
            slab = src.read_slab(0, src.num_units)
            for i in range(src.num_units):
                w.write_rows(int(src.plan[i, 0]), int(src.plan[i, 1]), {n: v[i] for n, v in slab.arrays.items()})
        rd = open_store(dst)
        assert verify_store(dst)["ok"]
        for u, w_ in zip(rd.iter_units(), ra.iter_units()):
            for r in range(u.count):
                assert dict(zip(u.topk[0][r].tolist(), u.topk[1][r].tolist())) == \
                    dict(zip(w_.topk[0][r].tolist(), w_.topk[1][r].tolist()))


def test_gaps_damage_is_reported_not_read():
    spec = _spec(index_coding="gaps")
    from ddpipe.labelstore.packing import from_gaps

    assert from_gaps(np.array([[999, 5]]), spec.num_classes, spec.index_dtype).tolist() == [[999, 1000]]
    with pytest.raises(SpecError, match="index_coding"):
        _spec(format_version=3, index_coding="gaps")
    with pytest.raises(SpecError, match="index_coding must be one of"):
        _spec(index_coding="huffman")
