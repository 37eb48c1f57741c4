"""The chain from the library entry points on digits: squeeze -> relabel -> prune -> train -> validate,
with resume, pruning at relabel time, online-teacher equivalence and the wrong-input errors."""

import os

import numpy as np
import pytest
import torch

from ddpipe.evaluate import relabel, student
from ddpipe.evaluate.datasets import load_dataset, real_subset
from ddpipe.evaluate.errors import ClassCountMismatchError, EvaluateError
from ddpipe.evaluate import squeeze
from ddpipe.evaluate.demo import summary_text
from ddpipe.errors import DDPipeError
from ddpipe.labelstore import open_store, prune_store, verify_store

SCHED = dict(epochs=8, batch_size=25, min_scale=0.5)
Q = dict(progress=False, workers=0)


def relabel_config(out, images, teachers, **kw):
    return relabel.RelabelConfig(out=str(out), images=str(images), teacher=tuple(teachers), **kw)


def data_object_bytes(store, shards=None):
    """Bytes of the store's data-array objects (no zarr.json, no commit flags), optionally of some shards only."""
    total = 0
    for root, _, files in os.walk(store):
        for f in files:
            parts = os.path.relpath(os.path.join(root, f), store).split(os.sep)
            if f == "zarr.json" or parts[0] in ("commit_shard", "results.json"):
                continue
            assert parts[1] == "c", parts
            if shards is None or int(parts[2]) in shards:
                total += os.path.getsize(os.path.join(root, f))
    return total


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("chain")
    res = squeeze.run(squeeze.SqueezeConfig(out=str(root / "teacher"), dataset="digits", epochs=4, progress=False, threads=1))
    assert res.final["top1"] > 80
    ds = load_dataset("digits")
    sub = real_subset(ds, 10, seed=0)
    np.savez(root / "images.npz", images=sub.images, labels=sub.labels)
    other = real_subset(ds, 10, seed=1)
    np.savez(root / "other.npz", images=other.images, labels=other.labels)
    teacher = str(root / "teacher" / "teacher.pt")
    store = str(root / "labels.zarr")
    rl = relabel.run(relabel_config(store, root / "images.npz", [teacher], k=10, value_codec="fp32", temperature=4.0,
                                       **SCHED, **Q))
    return {"root": root, "teacher": teacher, "images": str(root / "images.npz"), "other": str(root / "other.npz"),
            "store": store, "relabel": rl}


def test_relabel_writes_a_complete_verified_store(chain):
    rl = chain["relabel"]
    assert rl.units == rl.units_written == 8 * 4 == rl.teacher_forward_calls
    assert rl.images_labelled == 8 * 100
    r = open_store(chain["store"])
    assert r.complete and r.spec.num_classes == 10 and r.spec.temperature == 4.0
    assert verify_store(chain["store"])["ok"]
    assert os.path.exists(os.path.join(chain["store"], "results.json"))


def test_relabel_with_keep_runs_the_teacher_only_on_kept_units(chain, tmp_path):
    rl = relabel.run(relabel_config(str(tmp_path / "kept.zarr"), chain["images"], [chain["teacher"]],
                                       keep=0.25, **SCHED, **Q))
    assert rl.units == 8 and rl.teacher_forward_calls == 8 and rl.images_labelled == 200
    r = open_store(tmp_path / "kept.zarr")
    assert r.spec.pruning["keep"] == 0.25 and r.complete


@pytest.mark.parametrize("mode", ["store", "pruned", "hard"])
def test_students_train_and_validate(chain, tmp_path, mode):
    kw = {"store": dict(labels=chain["store"]), "hard": dict(hard_labels=True, **SCHED)}.get(mode)
    if mode == "pruned":
        prune_store(chain["store"], str(tmp_path / "p.zarr"), 0.5)
        kw = dict(labels=str(tmp_path / "p.zarr"))
    res = student.run(student.TrainConfig(out=str(tmp_path / "s"), images=chain["images"], dataset="digits", threads=1, lr=5e-3,
                                        **kw, **Q))
    assert res.status == "complete" and res.epochs_done == 8
    assert res.final["count"] == 359 and res.final["top1"] > 15  # above chance (10%) after 32 steps
    assert os.path.exists(tmp_path / "s" / "results.json") and os.path.exists(tmp_path / "s" / "student.pt")
    if mode == "store":  # every epoch replayed: every data object of the store, once
        assert res.label_bytes == data_object_bytes(chain["store"]) and res.label_shards_read == 8
    elif mode == "pruned":  # LPLD's draws from the kept pool: the shards holding a drawn unit
        from ddpipe.pipeline.schedule import replay_units

        r = open_store(tmp_path / "p.zarr")
        shards = {int(u) // r.spec.units_per_shard for e in range(8) for u in replay_units(r.plan, r.spec, e)}
        assert res.label_bytes == data_object_bytes(tmp_path / "p.zarr", shards)
        assert 0 < res.label_bytes < data_object_bytes(chain["store"])
    else:
        assert res.label_bytes == 0


def test_online_teacher_sees_the_stored_targets(chain):
    """k = C with fp32 values: replaying the store and labelling live give the same targets, batch by batch."""
    ds = load_dataset("digits")
    from ddpipe.evaluate.distributed import init_distributed
    from ddpipe.evaluate.train_batches import make_batches

    dist = init_distributed("cpu", announce=False)
    base = dict(dataset="digits", temperature=4.0, **Q)
    stored = make_batches(student.TrainConfig(out="x", images=chain["images"], labels=chain["store"], **base), ds, dist,
                          "cpu")
    online = make_batches(student.TrainConfig(out="x", images=chain["images"], online_teacher=(chain["teacher"],), **SCHED, **base),
                          ds, dist, "cpu")
    try:
        for epoch in (0, 7):
            a, b = list(stored.epoch(epoch)), list(online.epoch(epoch))
            assert len(a) == len(b) == 4
            for (ia, ta, ma), (ib, tb, mb) in zip(a, b):
                assert torch.equal(ma.sample_ids, mb.sample_ids)
                assert torch.equal(ia, ib)
                assert torch.equal(ta, tb)
    finally:
        stored.close()


def test_killed_train_run_resumes_to_the_same_weights(chain, tmp_path):
    common = dict(dataset="digits", labels=chain["store"], threads=1, **Q)
    student.run(student.TrainConfig(out=str(tmp_path / "a"), images=chain["images"], **common))
    stopped = student.run(student.TrainConfig(out=str(tmp_path / "b"), images=chain["images"], stop_after_epoch=1, **common))
    assert stopped.status == "stopped" and stopped.epochs_done == 2 and stopped.epochs == 8
    assert stopped.label_bytes == data_object_bytes(chain["store"], {0, 1})  # one shard per epoch here
    with pytest.raises(DDPipeError, match="pass --resume"):
        student.run(student.TrainConfig(out=str(tmp_path / "b"), images=chain["images"], **common))
    resumed = student.run(student.TrainConfig(out=str(tmp_path / "b"), images=chain["images"], resume=True, **common))
    assert resumed.label_bytes == data_object_bytes(chain["store"]), "resuming counts both sessions' reads"
    wa = torch.load(tmp_path / "a" / "student.pt")["model"]
    wb = torch.load(tmp_path / "b" / "student.pt")["model"]
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_store_built_for_other_images_is_refused(chain, tmp_path):
    with pytest.raises(DDPipeError, match="image set"):
        student.run(student.TrainConfig(out=str(tmp_path / "s"), images=chain["other"], dataset="digits", labels=chain["store"], **Q))


def test_teacher_with_another_class_count_is_refused(chain, tmp_path):
    sub = real_subset(load_dataset("digits"), 2, seed=0)
    np.savez(tmp_path / "twelve.npz", images=sub.images, labels=np.arange(len(sub.labels)) % 12)
    with pytest.raises(ClassCountMismatchError, match="teacher predicts 10 classes"):
        relabel.run(relabel_config(str(tmp_path / "x.zarr"), tmp_path / "twelve.npz", [chain["teacher"]], **SCHED, **Q))


def test_unknown_model_name(chain, tmp_path):
    with pytest.raises(DDPipeError, match="resnet1"):
        student.run(student.TrainConfig(out=str(tmp_path / "s"), images=chain["images"], dataset="digits",
                                        labels=chain["store"], model="resnet1", **Q))


def test_existing_store_needs_resume(chain):
    with pytest.raises(DDPipeError, match="--resume"):
        relabel.run(relabel_config(chain["store"], chain["images"], [chain["teacher"]], **SCHED, **Q))


@pytest.mark.slow
def test_demo_chain_cli_on_digits(tmp_path, capsys):
    """`ddpipe demo --out ...` (the chain) end to end at tiny settings, two seeds trained two at a time in
    spawned processes: one JSON object with the table's rows; a rerun in-process resumes every step."""
    import json

    from ddpipe.cli import main

    argv = ["demo", "--dataset", "digits", "--out", str(tmp_path / "d"), "--teacher-epochs", "2", "--epochs", "4",
            "--batch-size", "25", "--keep", "0.25", "--seeds", "2", "--method", "sre2l", "--iterations", "5",
            "--no-progress", "--json"]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    by = {r["kind"]: r for r in res["rows"]}
    assert list(by) == ["teacher", "full", "pruned", "hard", "random-real"]
    assert res["units"] == 16 and res["kept_units"] == 4 and res["seeds"] == [0, 1]
    for kind in ("full", "pruned", "hard"):
        assert [p["seed"] for p in by[kind]["per_seed"]] == [0, 1]
        assert by[kind]["top1"] == pytest.approx(np.mean([p["top1"] for p in by[kind]["per_seed"]]))
    assert by["full"]["label_bytes"] == data_object_bytes(tmp_path / "d" / "labels.zarr")
    assert 0 < by["pruned"]["label_bytes"] < by["full"]["label_bytes"] and by["hard"]["label_bytes"] == 0
    assert res["full_minus_pruned"] == pytest.approx(by["full"]["top1"] - by["pruned"]["top1"])
    # the synthesised images and the random real selection are two runs, side by side in the table
    assert res["recipe"] == "sre2l.in1k" and "sre2l.in1k images" in by["full"]["run"]
    assert by["random-real"]["run"].startswith("student: random real images")
    assert res["synthesised_minus_random"] == pytest.approx(by["full"]["top1"] - by["random-real"]["top1"])
    assert os.path.exists(tmp_path / "d" / "images-random-ipc10" / "results.json")
    assert os.path.exists(tmp_path / "d" / "results.json")
    assert main(argv + ["--jobs", "1"]) == 0, "a second run resumes every step"
    again = json.loads(capsys.readouterr().out)
    assert [r["top1"] for r in again["rows"]] == [r["top1"] for r in res["rows"]]
    text = summary_text(res)
    assert "label bytes read" in text and "top-1 per seed" in text


@pytest.mark.slow
def test_student_trains_with_ddp_under_torchrun(chain, tmp_path, python):
    """`torchrun --nproc_per_node 2 -m ddpipe train` (gloo): ranks split each epoch's units, rank 0 reports."""
    import json
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [python, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), "-m", "ddpipe", "train", "--images", chain["images"], "--labels", chain["store"],
           "--dataset", "digits", "--out", str(tmp_path / "ddp"), "--threads", "1", "-j", "0", "--no-progress", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["world_size"] == 2 and res["status"] == "complete"
    assert all(h["images"] == 100 for h in res["history"]), "every epoch covers the 100 images once across ranks"
    assert res["final"]["count"] == 359
