"""Stores at ``s3://`` URLs, against a real S3-compatible server (moto's) started on 127.0.0.1.

The server speaks S3's HTTP API (conditional writes included); ddpipe reaches it through s3fs the
way it reaches AWS: credentials and ``AWS_ENDPOINT_URL`` from the environment (what ``torchrun``
ranks and the CLI inherit), or ``storage_options``. Nothing of boto, s3fs or ddpipe is mocked.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import uuid

import numpy as np
import pytest

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

from ddpipe.labelstore import (  # noqa: E402
    IncompleteUnitError,
    StoreSpec,
    create_store,
    open_store,
    open_writer,
    prune_store,
    store_info,
    verify_store,
)
from ddpipe.labelstore.objects import Objects  # noqa: E402
from labelstore_units import all_units  # noqa: E402

SPEC = StoreSpec(num_samples=30, num_classes=9, epochs=2, batch_size=8, k=4, value_codec="uint8")  # 2 shards
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on a free loopback port; the AWS environment points at it for this module."""
    import s3fs

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in [*CREDENTIALS, "AWS_ENDPOINT_URL"]}
    os.environ.update(CREDENTIALS, AWS_ENDPOINT_URL=endpoint)
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        yield endpoint
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


@pytest.fixture
def bucket(s3_endpoint):
    """A fresh bucket: ``s3://<name>``."""
    import s3fs

    name = f"ddpipe-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}).mkdir(name)
    return f"s3://{name}"


@pytest.fixture(scope="module")
def written(s3_endpoint, tmp_path_factory):
    """One store written to a bucket, and the same units written to a local store."""
    import s3fs

    name = f"ddpipe-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}).mkdir(name)
    url = f"s3://{name}/labels.zarr"
    create_store(url, SPEC).write_many(all_units(SPEC))
    local = str(tmp_path_factory.mktemp("s3local") / "local.zarr")
    create_store(local, SPEC).write_many(all_units(SPEC))
    return url, local


def _same_units(a, b) -> None:
    ua, ub = list(a.iter_units()), list(b.iter_units())
    assert len(ua) == len(ub)
    for x, y in zip(ua, ub):
        assert (x.epoch, x.batch) == (y.epoch, y.batch)
        assert np.array_equal(x.sample_ids, y.sample_ids) and np.array_equal(x.crops, y.crops)
        assert np.array_equal(x.indices, y.indices) and np.array_equal(x.values, y.values)


def test_write_read_verify_info_prune_on_s3(written, bucket):
    url, local = written
    r = open_store(url)
    assert r.complete and r.backend == "tensorstore"  # tensorstore's s3 driver, same endpoint
    _same_units(r, open_store(local))
    report = verify_store(url)
    assert report["ok"], report["problems"]
    info = store_info(url)
    assert info["bytes_on_disk"] > 0 and info["complete_units"] == r.num_units
    pruned = prune_store(url, f"{bucket}/pruned.zarr", 0.5)
    p = open_store(pruned)
    assert p.complete and p.num_units == 4
    assert verify_store(pruned)["ok"]


def test_storage_options_reach_both_backends(bucket, monkeypatch):
    """Without ``AWS_ENDPOINT_URL``: the endpoint given as storage options reaches s3fs and tensorstore."""
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    opts = {"client_kwargs": {"endpoint_url": endpoint}}
    url = f"{bucket}/opts.zarr"
    spec = SPEC.replace(epochs=1)
    create_store(url, spec, storage_options=opts).write_many(all_units(spec))
    r = open_store(url, storage_options=opts)
    assert r.backend == "tensorstore" and r.complete
    _same_units(r, open_store(url, storage_options=opts, backend="zarr"))
    s3fs.S3FileSystem.clear_instance_cache()  # no instance made without the endpoint outlives the test


def test_commit_on_complete_without_rename(bucket):
    """A shard is visible only once its commit record is written (S3 has no rename): buffered units
    of an unfinished shard leave nothing readable, objects without their record count as absent,
    and a resumed writer rewrites the shard to the same bytes."""
    url = f"{bucket}/partial.zarr"
    spec = SPEC
    units = list(all_units(spec))
    w = create_store(url, spec)
    per_shard = spec.units_per_shard
    w.write_many(units[: per_shard + 1])  # shard 0 complete, one unit of shard 1 buffered
    r = open_store(url)
    assert r.committed.tolist() == [True, False]
    with pytest.raises(IncompleteUnitError):
        r.read_unit(per_shard)
    assert w.close() == 1
    w = open_writer(url)
    w.write_many(units)
    assert open_store(url).complete
    objects = w._objects
    key = "label_value/c/1/0/0"
    before = objects.get(key)
    objects.delete("commit_shard/c/1/0")  # as if the writer died between the objects and the record
    r = open_store(url)
    assert r.committed.tolist() == [True, False]
    with pytest.raises(IncompleteUnitError):
        r.read_unit(per_shard)
    assert not verify_store(url)["ok"]
    resumed = create_store(url, spec, resume=True)
    assert resumed.pending_shards() == [1]
    resumed.write_many(units)
    assert open_store(url).complete and objects.get(key) == before
    assert verify_store(url)["ok"]


def test_create_only_writes_have_one_winner(bucket):
    """Leases rest on S3's conditional write: of writers racing to create one key, one wins."""
    url = f"{bucket}/race.zarr"
    create_store(url, SPEC)
    store = open_writer(url)._objects._zstore()
    objects = [Objects(url, store) for _ in range(4)]
    wins: dict[int, list[int]] = {}
    lock = threading.Lock()

    def race(i: int) -> None:
        for key in range(12):
            if objects[i].put_new(f"commit_shard/lease/race/{key}", f"writer {i}".encode()):
                with lock:
                    wins.setdefault(key, []).append(i)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == list(range(12)) and all(len(v) == 1 for v in wins.values())
    for key, (i,) in wins.items():
        assert objects[0].get(f"commit_shard/lease/race/{key}") == f"writer {i}".encode()


CHILD = r"""
import json, sys
import numpy as np
from dist_pipeline_data import ToyTeacher
from ddpipe.pipeline import ArraySource, recipe
from ddpipe.pipeline.loader import LoaderConfig
from ddpipe.pipeline.relabel import relabel, relabel_spec

def run(store, rank, world):
    rng = np.random.default_rng(7)
    src = ArraySource(rng.integers(0, 256, (100, 8, 8), dtype=np.uint8), rng.integers(0, 10, 100))
    return relabel(store, src, ToyTeacher(10), *relabel_spec(src, recipe("sre2l", output_size=(8, 8)), epochs=2,
                   batch_size=25, num_classes=10, k=3, units_per_shard=2), rank=rank, world_size=world,
                   loader=LoaderConfig(num_workers=0, channels=1, mean=(0.5,), std=(0.5,)), teacher_input="numpy")

if __name__ == "__main__":
    store, rank, world = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    print(json.dumps({"rank": rank, "written": run(store, rank, world)["units_written"]}))
"""


def test_two_ranks_relabel_into_a_bucket_equal_one_rank(bucket, tmp_path, python, subprocess_env):
    """Two processes (rank 0 creates, rank 1 joins) write disjoint shards of one store in a bucket;
    its arrays equal a one-rank relabel's, and training replays it through the loader."""
    url = f"{bucket}/relabel.zarr"
    env = {**subprocess_env, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([python, "-c", CHILD, url, str(r), "2"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    written = {json.loads(o.strip().splitlines()[-1])["rank"]: json.loads(o.strip().splitlines()[-1])["written"]
               for o, _ in outs}
    one = str(tmp_path / "one.zarr")  # the same relabel by one rank, on a local disk (here)
    child: dict = {"__name__": "s3_child"}
    exec(compile(CHILD, "s3_child", "exec"), child)
    child["run"](one, 0, 1)
    a, b = open_store(url), open_store(one)
    assert a.complete and written[0] > 0 and written[1] > 0 and written[0] + written[1] == a.num_units
    for name in a.array_names:
        assert np.array_equal(a._backend.read(name, 0, a.num_units), b._backend.read(name, 0, b.num_units)), name

    from ddpipe.pipeline import ArraySource
    from ddpipe.pipeline.loader import make_loader

    rng = np.random.default_rng(7)
    src = ArraySource(rng.integers(0, 256, (100, 8, 8), dtype=np.uint8), rng.integers(0, 10, 100))
    kw = dict(num_workers=0, channels=1, mean=(0.5,), std=(0.5,))
    remote, here = make_loader(src, url, **kw), make_loader(src, one, **kw)
    for (xa, ta, ma), (xb, tb, mb) in zip(remote.epoch(1), here.epoch(1)):
        assert np.array_equal(np.asarray(xa), np.asarray(xb)) and np.array_equal(np.asarray(ta), np.asarray(tb))
        assert np.array_equal(ma.sample_ids, mb.sample_ids)


def test_cli_info_verify_on_s3(written, bucket, python):
    url = written[0]
    env = dict(os.environ)

    def cli(*args):
        proc = subprocess.run([python, "-m", "ddpipe", *args], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout)

    info = cli("info", "--json", url)
    assert info["complete_units"] == open_store(url).num_units
    assert cli("verify", "--json", url)["ok"]


# --- requests per object: the moto server's own request log --------------------------------------------
@pytest.fixture
def requests_log(s3_endpoint, tmp_path):
    """The S3 requests the server receives while the test runs (moto's recorder, in this process's
    server thread): a function returning ``[(method, path)]`` since the last call."""
    from urllib.parse import unquote, urlsplit

    from moto.moto_api import recorder

    saved = recorder._location
    recorder._location = str(tmp_path / "moto-requests.jsonl")
    recorder.reset_recording()
    recorder.start_recording()

    def take() -> list[tuple[str, str]]:
        with open(recorder._location) as f:
            lines = [json.loads(line) for line in f if line.strip()]
        recorder.reset_recording()
        return [(e["method"], unquote(urlsplit(e["url"]).path)) for e in lines]

    try:
        yield take
    finally:
        recorder.stop_recording()
        recorder._location = saved


def _gets(log, prefix: str) -> dict[str, int]:
    """GETs (whole or ranged) per object key under the store at ``prefix`` (``/bucket/path``)."""
    out: dict[str, int] = {}
    for method, path in log:
        if method == "GET" and path.startswith(prefix + "/"):
            key = path[len(prefix) + 1:]
            out[key] = out.get(key, 0) + 1
    return out


@pytest.mark.parametrize("backend", ["tensorstore", "zarr"])
def test_first_read_of_a_shard_gets_each_object_once(written, requests_log, backend):
    """The first read of a shard hashes its objects (the commit record's digests) and decodes the same
    bytes: one GET per object, where reading them again through the backend cost an index and chunk
    GETs more per object. ``verify`` reads every object once too."""
    url = written[0]
    prefix = "/" + url[len("s3://"):]
    r = open_store(url, backend=backend)
    requests_log()  # opening: metadata and commit records
    units = r.shard_units(0)
    slab = r.read_slab(units.start, units.stop)
    gets = _gets(requests_log(), prefix)
    shard0 = {k: n for k, n in gets.items() if "/c/0" in k and not k.startswith("commit_shard")}
    assert len(shard0) == len(r.array_names), sorted(gets)
    assert set(shard0.values()) == {1}, shard0
    assert not any("/c/1" in k for k in gets)  # nothing of the other shard
    _same_units(r, open_store(written[1]))  # and what was decoded is what a local store holds
    local = open_store(written[1]).read_slab(units.start, units.stop)
    for name in r.array_names:
        assert np.array_equal(slab.arrays[name], local.arrays[name]), name

    requests_log()
    report = verify_store(url, backend=backend)
    assert report["ok"], report["problems"]
    gets = _gets(requests_log(), prefix)
    objects = {k: n for k, n in gets.items() if "/c/" in k and not k.startswith("commit_shard")}
    assert len(objects) == 2 * len(r.array_names) and set(objects.values()) == {1}, objects


def test_a_damaged_object_is_named_on_the_first_remote_read(bucket):
    """The single-GET first read keeps the checks: a changed object is refused, naming its array."""
    from ddpipe.labelstore import ChunkCorruptError

    url = f"{bucket}/damaged.zarr"
    create_store(url, SPEC).write_many(all_units(SPEC))
    objects = open_writer(url)._objects
    key = "label_value/c/1/0/0"
    data = bytearray(objects.get(key))
    data[len(data) // 2] ^= 0xFF
    objects.put(key, bytes(data))
    r = open_store(url)
    r.read_slab(*(lambda u: (u.start, u.stop))(r.shard_units(0)))  # the sound shard reads
    with pytest.raises(ChunkCorruptError, match="label_value"):
        u = r.shard_units(1)
        r.read_slab(u.start, u.stop)
    report = verify_store(url)
    assert not report["ok"] and {p["array"] for p in report["problems"]} == {"label_value"}


# --- storage options through info, verify, prune, import, export --------------------------------------
@pytest.fixture
def no_endpoint_env(s3_endpoint, monkeypatch):
    """The endpoint only as storage options (``AWS_ENDPOINT_URL`` unset): what reaches the server is
    what the call passed."""
    import s3fs

    monkeypatch.delenv("AWS_ENDPOINT_URL")
    s3fs.S3FileSystem.clear_instance_cache()
    yield {"client_kwargs": {"endpoint_url": s3_endpoint}}
    s3fs.S3FileSystem.clear_instance_cache()


def test_info_verify_prune_take_storage_options(written, bucket, no_endpoint_env, tmp_path):
    from ddpipe.evaluate import info as info_phase
    from ddpipe.evaluate import prune as prune_phase
    from ddpipe.evaluate import verify as verify_phase

    opts = no_endpoint_env
    url = written[0]
    info = store_info(url, storage_options=opts)
    assert info["complete_units"] == info["units"] > 0 and info["bytes_on_disk"] > 0
    assert set(info["bytes_by_array"]) >= {"label_value", "label_index", "commit_shard"}
    assert verify_store(url, storage_options=opts)["ok"]
    assert info_phase.run(info_phase.InfoConfig(store=url, storage_options=opts)).units == info["units"]
    assert verify_phase.run(verify_phase.VerifyConfig(store=url, storage_options=opts)).ok

    # s3 -> s3 and s3 -> local, through the library and the phase
    to_s3 = prune_store(url, f"{bucket}/p1.zarr", 0.5, seed=1, storage_options=opts)
    to_local = prune_store(url, str(tmp_path / "p1.zarr"), 0.5, seed=1, storage_options=opts)
    a, b = open_store(to_s3, storage_options=opts), open_store(to_local)
    assert a.complete and b.complete and a.num_units == b.num_units == 4
    _same_units(a, b)
    res = prune_phase.run(prune_phase.PruneConfig(src=url, out=f"{bucket}/p2.zarr", keep=0.5, seed=1, progress=False,
                                                  storage_options=opts))
    assert res.kept_units == 4 and verify_store(f"{bucket}/p2.zarr", storage_options=opts)["ok"]
    import s3fs

    fs = s3fs.S3FileSystem(**opts)
    recorded = json.loads(fs.cat(f"{bucket}/p2.zarr/results.json"))
    assert recorded["kept_units"] == 4 and recorded["out"] == f"{bucket}/p2.zarr"
    res = prune_phase.run(prune_phase.PruneConfig(src=url, out=str(tmp_path / "p2.zarr"), keep=0.5, seed=1,
                                                  progress=False, storage_options=opts))
    assert res.kept_units == 4 and os.path.isfile(tmp_path / "p2.zarr" / "results.json")
    _same_units(open_store(str(tmp_path / "p2.zarr")), a)


def test_storage_options_are_not_recorded_in_clear(written, bucket, no_endpoint_env):
    from ddpipe.evaluate import prune as prune_phase

    opts = {**no_endpoint_env, "key": "testing", "secret": "testing"}  # explicit keys: the zarr read path
    res = prune_phase.run(prune_phase.PruneConfig(src=written[0], out=f"{bucket}/p3.zarr", keep=0.5, progress=False,
                                                  storage_options=opts))
    assert res.config["storage_options"]["secret"] == "***" and res.config["storage_options"]["key"] == "***"
    assert res.config["storage_options"]["client_kwargs"] == opts["client_kwargs"]


def test_cli_prune_s3_to_s3_and_to_local(written, bucket, python, tmp_path):
    env = dict(os.environ)

    def cli(*args):
        proc = subprocess.run([python, "-m", "ddpipe", *args], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout)

    out = cli("prune", "--json", written[0], "--out", f"{bucket}/cli.zarr", "--keep", "0.5", "--no-progress")
    assert out["units"] == 4 and cli("verify", "--json", f"{bucket}/cli.zarr")["ok"]
    out = cli("prune", "--json", written[0], "--out", str(tmp_path / "cli.zarr"), "--keep", "0.5", "--no-progress")
    assert out["units"] == 4
    _same_units(open_store(f"{bucket}/cli.zarr"), open_store(str(tmp_path / "cli.zarr")))


def test_import_to_s3_and_export_from_s3(bucket, tmp_path, no_endpoint_env):
    """An SRe2L label folder imported into a bucket equals the same import on a local disk, and
    exporting it from the bucket gives back SRe2L's files."""
    pytest.importorskip("torch")
    import interop_fixtures as fx
    import torch

    from ddpipe.pipeline.interop import ExportConfig, ImportConfig, run_export, run_import

    opts = no_endpoint_env
    images = fx.make_images(str(tmp_path / "imgs"))
    src = tmp_path / "sre2l"
    fx.write_sre2l(str(src), epochs=2)
    url = f"{bucket}/imported.zarr"
    res = run_import(ImportConfig(format="auto", src=str(src), images=images, out=url, progress=False,
                                  storage_options=opts))
    assert res.out == url and res.units == 8
    local = run_import(ImportConfig(format="auto", src=str(src), images=images, out=str(tmp_path / "l.zarr"),
                                    progress=False))
    a, b = open_store(url, storage_options=opts), open_store(local.out)
    for u1, u2 in zip(a.iter_units(), b.iter_units()):
        np.testing.assert_array_equal(u1.topk_logits[1], u2.topk_logits[1])
        np.testing.assert_array_equal(u1.sample_ids, u2.sample_ids)
    import s3fs

    assert json.loads(s3fs.S3FileSystem(**opts).cat(f"{url}/results.json"))["units"] == 8
    out = run_export(ExportConfig(format="sre2l", store=url, out=str(tmp_path / "export"), progress=False,
                                  storage_options=opts))
    assert out.exact and out.files == 8
    for e in range(2):
        for name in os.listdir(src / f"epoch_{e}"):
            x = torch.load(src / f"epoch_{e}" / name, weights_only=False)
            y = torch.load(tmp_path / "export" / f"epoch_{e}" / name, weights_only=False)
            assert torch.equal(x[5], y[5]) and torch.equal(x[0], y[0]), (e, name)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
