"""``ddpipe relabel`` and ``ddpipe train`` SIGKILLed at seeded moments, then rerun with ``--resume``.

Relabel: a 600-unit digits store (100 images, batch 10, 60 epochs). Every killed run, resumed, gives
data arrays equal value for value to an uninterrupted run's, and ``verify`` passes. The moments are
drawn uniformly over the uninterrupted run's wall time (seed 0), so they fall in start-up, in store
creation and between shards. Train: killed at seeded moments, resumed, the student's weights are bit
for bit those of an uninterrupted run. The killed-and-resumed runs go two at a time (each has its own
output). ``pytest tests/fault/test_kill_phases.py`` reruns them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytestmark = pytest.mark.slow

RELABEL_KILLS = 20
TRAIN_KILLS = 8
# each killed run and its resume write their own --out, so two go at once (one thread each: 2 cores busy)
AT_ONCE = 2


def _ddpipe(*args: str) -> list[str]:
    return [sys.executable, "-m", "ddpipe", *args]


def _run(cmd, env):
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=600)
    assert out.returncode == 0, (cmd, out.stderr[-3000:])
    return out


def _each(fn, items) -> list:
    """``fn`` over ``items``, ``AT_ONCE`` at a time; the results in order (the first error raises)."""
    with ThreadPoolExecutor(AT_ONCE) as pool:
        return list(pool.map(fn, items))


def _killed(cmd, env, delay: float) -> int:
    """Start ``cmd``, SIGKILL it after ``delay`` seconds (unless it ended first); its return code."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, stdin=subprocess.DEVNULL)
    try:
        p.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        p.wait()
    return p.returncode


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from ddpipe.evaluate.datasets import load_dataset, real_subset

    root = tmp_path_factory.mktemp("kill")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    _run(_ddpipe("squeeze", "--dataset", "digits", "--epochs", "1", "--out", str(root / "t"), "--threads", "1",
                 "--no-progress", "--json"), env)
    sub = real_subset(load_dataset("digits"), 10, seed=0)
    np.savez(root / "images.npz", images=sub.images, labels=sub.labels)
    return {"root": root, "env": env, "teacher": str(root / "t" / "teacher.pt"), "images": str(root / "images.npz")}


def _relabel_cmd(d, out: str, *extra: str) -> list[str]:
    return _ddpipe("relabel", "--images", d["images"], "--teacher", d["teacher"], "--out", out, "--epochs", "60",
                   "--batch-size", "10", "--topk", "5", "-T", "4", "-j", "0", "--no-progress", "--json", *extra)


def _arrays(path: str) -> dict:
    import zarr

    from golden_chain import DATA_ARRAYS

    g = zarr.open_group(path, mode="r")
    return {n: g[n][...] for n in DATA_ARRAYS if n in g}


@pytest.fixture(scope="module")
def reference(digits):
    """An uninterrupted relabel: its data arrays and wall time."""
    ref = str(digits["root"] / "ref.zarr")
    t0 = time.monotonic()
    _run(_relabel_cmd(digits, ref), digits["env"])
    return {"arrays": _arrays(ref), "wall": time.monotonic() - t0}


def _assert_same(path: str, want: dict, what) -> None:
    got = _arrays(path)
    assert got.keys() == want.keys()
    for name in want:
        assert np.array_equal(got[name], want[name]), (what, name)


def test_relabel_killed_at_seeded_moments_resumes_to_the_same_store(digits, reference):
    from ddpipe.labelstore import verify_store

    delays = [float(d) for d in np.random.default_rng(0).uniform(0.2, reference["wall"], RELABEL_KILLS)]

    def kill_and_resume(i: int) -> int:
        out = str(digits["root"] / f"k{i}.zarr")
        code = _killed(_relabel_cmd(digits, out), digits["env"], delays[i])
        _run(_relabel_cmd(digits, out, "--resume"), digits["env"])
        return code

    codes = _each(kill_and_resume, range(RELABEL_KILLS))
    for i, delay in enumerate(delays):
        out = str(digits["root"] / f"k{i}.zarr")
        _assert_same(out, reference["arrays"], (i, delay))
        assert verify_store(out)["ok"], (i, delay)
    killed = sum(code == -signal.SIGKILL for code in codes)
    assert killed >= RELABEL_KILLS // 2, f"only {killed} of {RELABEL_KILLS} runs were still running when killed"


def test_two_resuming_relabels_split_the_work(digits, reference):
    """Two `ddpipe relabel --resume` on one new --out at once: one creates the store, the teacher
    computes every unit exactly once between them, and the store equals an uninterrupted run's."""
    import json

    out = str(digits["root"] / "two.zarr")
    cmd = _relabel_cmd(digits, out, "--resume")
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=digits["env"],
                              stdin=subprocess.DEVNULL) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    results = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert sum(r["units_written"] for r in results) == 600, [r["units_written"] for r in results]
    _assert_same(out, reference["arrays"], "two writers")


def _train_cmd(d, store: str, out: str, *extra: str) -> list[str]:
    return _ddpipe("train", "--images", d["images"], "--labels", store, "--dataset", "digits", "--out", out,
                   "--epochs", "12", "--threads", "1", "-j", "0", "--no-progress", "--json", *extra)


def test_train_killed_at_seeded_moments_resumes_to_the_same_weights(digits):
    import torch

    store = str(digits["root"] / "train.zarr")
    _run(_ddpipe("relabel", "--images", digits["images"], "--teacher", digits["teacher"], "--out", store,
                 "--epochs", "12", "--batch-size", "10", "--topk", "5", "-T", "4", "-j", "0", "--no-progress"),
         digits["env"])
    ref = str(digits["root"] / "s_ref")
    t0 = time.monotonic()
    _run(_train_cmd(digits, store, ref), digits["env"])
    wall = time.monotonic() - t0
    want = torch.load(os.path.join(ref, "student.pt"), map_location="cpu")["model"]
    delays = [float(d) for d in np.random.default_rng(1).uniform(0.2, wall, TRAIN_KILLS)]

    def kill_and_resume(i: int) -> None:
        out = str(digits["root"] / f"s{i}")
        _killed(_train_cmd(digits, store, out), digits["env"], delays[i])
        _run(_train_cmd(digits, store, out, "--resume"), digits["env"])

    _each(kill_and_resume, range(TRAIN_KILLS))
    for i, delay in enumerate(delays):
        got = torch.load(os.path.join(digits["root"] / f"s{i}", "student.pt"), map_location="cpu")["model"]
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want), (i, delay)
