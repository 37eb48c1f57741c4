"""`ddpipe squeeze`: a digits teacher, bit-identical resume, --init checks, results.json and the CLI."""

import argparse
import json
import signal
import subprocess
import time

import pytest
import torch

from ddpipe.cli import main as cli
from ddpipe.errors import DDPipeError
from ddpipe.evaluate.checkpoint import load_checkpoint, state_dict_hash
from ddpipe.evaluate.errors import CheckpointError, ClassCountMismatchError, RunStateError
from ddpipe.evaluate.models import create_model
from ddpipe.evaluate.squeeze import SqueezeConfig, load_teacher, run


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# small and fast: 600 digits, a two-block ConvNet, one CPU thread (deterministic kernels)
FAST = dict(dataset="digits", model="convnet_d2_w32_bn", batch_size=64, threads=1, progress=False)


def _squeeze(out, **kw):
    return run(SqueezeConfig(out=str(out), **{**FAST, **kw}))


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    return out, _squeeze(out, epochs=5)


def test_digits_teacher_is_accurate_and_complete(teacher_run):
    out, res = teacher_run
    assert res.status == "complete" and res.epochs_done == 5
    assert res.final["top1"] > 80.0 and res.final["count"] == 359
    on_disk = json.load(open(out / "results.json"))
    assert on_disk["teacher_hash"] == res.teacher_hash and on_disk["status"] == "complete"
    cfg = on_disk["config"]
    assert cfg["model"] == "convnet_d2_w32_bn" and cfg["epochs"] == 5 and cfg["lr"] == pytest.approx(0.05)
    assert [h["epoch"] for h in on_disk["history"]] == [0, 1, 2, 3, 4] and "val" in on_disk["history"][0]
    assert on_disk["wall_time_s"] > 0 and on_disk["dataset"]["name"] == "digits"


def test_load_teacher_roundtrip(teacher_run):
    out, res = teacher_run
    model, meta = load_teacher(str(out / "teacher.pt"))
    assert meta["teacher_hash"] == res.teacher_hash == state_dict_hash(model.state_dict())
    assert meta["num_classes"] == 10 and meta["in_chans"] == 1 and meta["input_size"] == 8
    assert meta["model_cfg"]["name"] == "convnet_d2_w32_bn" and not model.training
    assert meta["dataset"]["classes"] == [str(c) for c in range(10)] and len(meta["mean"]) == 1
    with pytest.raises(DDPipeError, match="10 classes, not 100"):  # the teacher module's check (evaluate/teacher.py)
        load_teacher(str(out / "teacher.pt"), num_classes=100)


def test_killed_run_resumes_to_identical_weights(tmp_path):
    kw = dict(epochs=3, max_train_samples=600, seed=3)
    full = _squeeze(tmp_path / "full", **kw)
    stopped = _squeeze(tmp_path / "cut", stop_after_epoch=0, **kw)
    assert stopped.status == "stopped" and stopped.epochs_done == 1
    assert not (tmp_path / "cut" / "teacher.pt").exists()
    assert load_checkpoint(str(tmp_path / "cut" / "checkpoint.pth"))["epoch"] == 0
    with pytest.raises(RunStateError, match="pass --resume"):
        _squeeze(tmp_path / "cut", **kw)
    with pytest.raises(RunStateError, match="--epochs 3 -> 4"):
        _squeeze(tmp_path / "cut", resume=True, **{**kw, "epochs": 4})
    resumed = _squeeze(tmp_path / "cut", resume=True, **kw)
    assert resumed.status == "complete" and resumed.teacher_hash == full.teacher_hash
    a = torch.load(tmp_path / "full" / "teacher.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "teacher.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]


def test_init_with_other_class_count_is_one_clear_error(tmp_path, teacher_run):
    foreign = create_model("convnet_d2_w32_bn", num_classes=1000, in_chans=1, input_size=8)
    path = tmp_path / "timm_style.pth"
    # timm's train.py layout, with its argparse namespace (still loads with weights_only=True)
    torch.save({"state_dict": foreign.state_dict(), "epoch": 7, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(ClassCountMismatchError) as info:
        _squeeze(tmp_path / "out", init=str(path), epochs=1)
    msg = str(info.value)
    assert "1000-class classifier (classifier.weight)" in msg and "digits has 10 classes" in msg and "--reset-head" in msg
    res = _squeeze(tmp_path / "out2", init=str(path), reset_head=True, epochs=0)
    assert res.status == "complete" and res.init["reset"] == ["classifier.weight", "classifier.bias"]


def test_init_from_torchvision_style_state_dict(tmp_path, teacher_run):
    out, res = teacher_run
    sd = torch.load(out / "teacher.pt", weights_only=True)["model"]
    path = tmp_path / "ddp.pth"
    torch.save({f"module.{k}": v for k, v in sd.items()}, path)  # a raw, DDP-prefixed state dict
    wrapped = _squeeze(tmp_path / "wrapped", init=str(path), epochs=0)
    assert wrapped.final["top1"] == res.final["top1"] and wrapped.teacher_hash == res.teacher_hash
    wrong = create_model("test_convnet", 10, in_chans=1, input_size=8)
    torch.save(wrong.state_dict(), tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match="does not fit model convnet_d2_w32_bn"):
        _squeeze(tmp_path / "w", init=str(tmp_path / "wrong.pth"), epochs=0)
    # same class count, other input size: the classifier is mis-shaped, not a class-count mismatch
    torch.save(create_model("convnet_d2_w32_bn", 10, in_chans=1, input_size=28).state_dict(), tmp_path / "28px.pth")
    with pytest.raises(CheckpointError, match=r"built for 1-channel 8 px inputs: 1 mis-shaped keys \(e.g. classifier"):
        _squeeze(tmp_path / "w28", init=str(tmp_path / "28px.pth"), epochs=0)
    with pytest.raises(CheckpointError, match="is not a ddpipe teacher"):
        load_teacher(str(path))


def test_overwrite_removes_the_old_run(tmp_path):
    quick = dict(model="test_convnet", max_train_samples=200)
    _squeeze(tmp_path, epochs=1, **quick)
    assert (tmp_path / "teacher.pt").exists()
    res = _squeeze(tmp_path, epochs=2, stop_after_epoch=0, overwrite=True, **quick)
    assert res.status == "stopped" and not (tmp_path / "teacher.pt").exists()
    assert json.load(open(tmp_path / "results.json"))["status"] == "stopped"


def test_classwise_bn_teacher(tmp_path, teacher_run):
    """LPLD's step: wrap a trained teacher (--epochs 0), record class-wise BN statistics, reload them."""
    from ddpipe.evaluate.models import class_stats, has_classwise_bn

    out, res = teacher_run
    cw = _squeeze(tmp_path / "cw", init=str(out / "teacher.pt"), epochs=0, classwise_bn="exact")
    assert cw.classwise_bn == {"mode": "exact", "images": 1438}
    assert cw.final["top1"] == res.final["top1"]  # BN outputs are unchanged
    model, meta = load_teacher(str(tmp_path / "cw" / "teacher.pt"))
    assert meta["classwise_bn"] and has_classwise_bn(model)
    for mean, var in class_stats(model).values():
        assert mean.abs().sum(1).gt(0).all() and not torch.equal(var, torch.ones_like(var))
    plain, _ = load_teacher(str(out / "teacher.pt"))
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(model(x), plain(x))


def test_cli_json_and_errors(tmp_path, capsys):
    code = cli(["squeeze", "--dataset", "digits", "--model", "test_convnet", "--epochs", "1", "--threads", "1",
                "--max-train-samples", "200", "--no-progress", "--out", str(tmp_path / "o"), "--json"])
    out = capsys.readouterr().out
    assert code == 0 and len(out.strip().splitlines()) == 1
    res = json.loads(out)
    assert res["status"] == "complete" and res["config"]["model"] == "test_convnet"
    assert cli(["squeeze", "--dataset", "fashion-mnist", "--data-root", str(tmp_path), "--out", str(tmp_path / "x"),
                "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "apt-get install dataset-fashion-mnist" in err
    assert cli(["squeeze", "--dataset", "digits", "--model", "resnet19", "--out", str(tmp_path / "y"),
                "--no-progress"]) == 2
    assert "close names: resnet18" in capsys.readouterr().err


def test_importing_the_phase_module_does_not_import_torch(python):
    code = "import sys, ddpipe.evaluate.squeeze, ddpipe.evaluate; print('torch' in sys.modules)"
    assert subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


@pytest.mark.slow
def test_sigkilled_subprocess_resumes_to_identical_weights(tmp_path, python):
    """A real SIGKILL mid-run (not --stop-after-epoch): the resumed teacher equals an uninterrupted one."""
    flags = ["--dataset", "digits", "--model", "convnet_d2_w32_bn", "--epochs", "4", "--threads", "1", "-b", "64",
             "--max-train-samples", "800", "--seed", "5", "--no-progress"]
    full = _squeeze(tmp_path / "full", epochs=4, max_train_samples=800, seed=5)
    out = tmp_path / "killed"
    proc = subprocess.Popen([python, "-m", "ddpipe", "squeeze", *flags, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out / "checkpoint.pth"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists() and load_checkpoint(str(ckpt))["epoch"] >= 1:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if (out / "teacher.pt").exists():
        pytest.skip("the run finished before it could be killed")
    assert subprocess.run([python, "-m", "ddpipe", "squeeze", *flags, "--out", str(out), "--resume"],
                          capture_output=True).returncode == 0
    assert json.load(open(out / "results.json"))["teacher_hash"] == full.teacher_hash


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path, python):
    """DDP on CPU (gloo): ranks train disjoint shards, validation is exact, only rank 0 prints."""
    cmd = [python, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "ddpipe", "squeeze", "--dataset",
           "digits", "--model", "test_convnet", "--epochs", "1", "--threads", "1", "--no-progress", "--json",
           "--out", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    res = json.loads(lines[0])
    assert res["world_size"] == 2 and res["final"]["count"] == 359 and res["history"][0]["images"] == 1438
