"""``ddpipe recover`` under ``torchrun --nproc_per_node 2`` (gloo, CPU): every rank optimises every second
batch into the same folder, the files are those of one process with the same seed, byte for byte, and a
stopped or killed run resumes under another world size."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from ddpipe.cli import main

Q = ["--no-progress", "--threads", "1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    t = tmp_path_factory.mktemp("teacher")
    assert main(["squeeze", "--dataset", "digits", "--model", "test_convnet", "--epochs", "1",
                 "--max-train-samples", "200", "--out", str(t), *Q]) == 0
    return str(t / "teacher.pt")


def _args(teacher, method, out, *extra) -> list[str]:
    # ipc 2, batches of 4: sre2l.test makes 6 batches, gvbsm.test and delt.test 5 (rank 0 gets one more)
    return ["recover", "--method", method, "--teacher", teacher, "--ipc", "2", "-b", "4", "--out", str(out), *Q,
            *extra]


def _torchrun_cmd(args, n: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_addr", "127.0.0.1",
            "--master_port", str(_free_port()), "-m", "ddpipe", *args]


def _torchrun(args, env, n: int = 2) -> None:
    proc = subprocess.run(_torchrun_cmd(args, n), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (torchrun starts its ranks in sessions of their own), children first."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, frontier = [], [pid]
    while frontier:
        kids = [p for p, pp in parents.items() if pp in frontier]
        out, frontier = kids + out, kids
    return out


def _images(folder) -> dict[str, bytes]:
    out = {}
    for d, _, files in os.walk(folder):
        for f in files:
            if f.endswith(".png"):
                path = os.path.join(d, f)
                out[os.path.relpath(path, folder)] = open(path, "rb").read()
    return out


def _manifest(folder) -> dict:
    return json.load(open(os.path.join(folder, "manifest.json")))


def _assert_same_run(single, other) -> None:
    """``other`` holds the files of ``single`` byte for byte and a manifest recording the same batches."""
    a, b = _images(single), _images(other)
    assert len(a) == 20 and sorted(a) == sorted(b)
    assert [k for k in a if a[k] != b[k]] == []
    ma, mb = _manifest(single), _manifest(other)
    for key in ("status", "batches_total", "batches_done", "counts", "losses", "notes", "fingerprint"):
        assert ma[key] == mb[key], key
    assert mb["status"] == "complete" and mb["counts"] == [2] * 10
    assert not [n for n in os.listdir(other) if n.startswith("manifest.rank")]  # the ranks' parts are merged


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sre2l.test", "gvbsm.test"])
def test_two_ranks_write_the_single_process_files(tmp_path, teacher, method, subprocess_env):
    assert main(_args(teacher, method, tmp_path / "one")) == 0
    _torchrun(_args(teacher, method, tmp_path / "two"), subprocess_env)
    _assert_same_run(tmp_path / "one", tmp_path / "two")
    m = _manifest(tmp_path / "two")
    assert m["world_size"] == 2 and m["runs"] == 1 and m["resumed_batches"] == 0
    res = json.load(open(tmp_path / "two" / "results.json"))  # written once, by rank 0
    assert res["batches_done"] == m["batches_done"] and res["counts"] == [2] * 10
    if method.startswith("gvbsm"):  # one statistics cache, filled by rank 0 before rank 1 reads it
        assert open(tmp_path / "one" / "gvbsm_stats.pt", "rb").read() == \
            open(tmp_path / "two" / "gvbsm_stats.pt", "rb").read()


@pytest.mark.slow
def test_a_stopped_run_resumes_under_the_other_world_size(tmp_path, teacher, subprocess_env):
    method = "delt.test"  # real images ranked by the teacher as the start, early-late rounds
    assert main(_args(teacher, method, tmp_path / "one")) == 0
    # two ranks stop after one batch each (batches 0 and 1), one process does the other three
    _torchrun(_args(teacher, method, tmp_path / "a", "--stop-after-batches", "1"), subprocess_env)
    m = _manifest(tmp_path / "a")
    assert m["status"] == "stopped" and m["batches_done"] == _manifest(tmp_path / "one")["batches_done"][:2]
    assert main(_args(teacher, method, tmp_path / "a")) == 0
    assert _manifest(tmp_path / "a")["resumed_batches"] == 2
    _assert_same_run(tmp_path / "one", tmp_path / "a")
    # one process stops after one batch, two ranks do the other four
    assert main(_args(teacher, method, tmp_path / "b", "--stop-after-batches", "1")) == 0
    assert len(_manifest(tmp_path / "b")["batches_done"]) == 1
    _torchrun(_args(teacher, method, tmp_path / "b"), subprocess_env)
    assert _manifest(tmp_path / "b")["resumed_batches"] == 1 and _manifest(tmp_path / "b")["runs"] == 2
    _assert_same_run(tmp_path / "one", tmp_path / "b")


@pytest.mark.slow
def test_a_killed_two_rank_run_resumes_in_one_process(tmp_path, teacher, subprocess_env):
    slow = ("--iterations", "300")  # about a second per batch here: time to kill the run halfway
    assert main(_args(teacher, "sre2l.test", tmp_path / "one", *slow)) == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen(_torchrun_cmd(_args(teacher, "sre2l.test", out, *slow)), env=subprocess_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parts = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            parts = [n for n in os.listdir(out) if n.startswith("manifest.rank")] if out.is_dir() else []
            if parts:
                break
            time.sleep(0.05)
    finally:
        for pid in _descendants(proc.pid):  # both ranks, then the launcher, before the run ends
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.kill()
        proc.wait()
    assert parts, "no rank finished a batch before the run ended: " + proc.stderr.read().decode()[-2000:]
    recorded = set()
    for name in os.listdir(out):
        if name.startswith("manifest.rank"):
            recorded |= set(json.load(open(out / name))["batches_done"])
    m = _manifest(out)
    assert m["status"] == "running" and m["batches_done"] == [] and 1 <= len(recorded) < 6
    assert main(_args(teacher, "sre2l.test", out, *slow)) == 0  # resumed by one process
    m = _manifest(out)
    assert m["resumed_batches"] == len(recorded) and m["runs"] == 2
    _assert_same_run(tmp_path / "one", out)


def test_a_world_size_without_a_process_group_is_refused(tmp_path):
    from ddpipe import synth

    with pytest.raises(synth.SynthConfigError, match="initialised process group"):
        synth.recover("random.test", real=synth.RealData([0, 1], images=np.zeros((2, 4, 4, 1), np.uint8)),
                      num_classes=2, ipc=1, mean=[0.5], std=[0.5], out=str(tmp_path / "x"), rank=1, world_size=2)
    assert not (tmp_path / "x").exists()
