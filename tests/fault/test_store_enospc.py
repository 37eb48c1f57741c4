"""A full disk during store creation and in the middle of writing.

Two ways to fill it: a real small filesystem (a tmpfs mounted for the test, where the machine lets
us: root), and everywhere a fault injector at the file-write layer (``store_fault_child``: after N
bytes every write below the store's folder raises ``OSError(ENOSPC)``). Either way the writer stops
with one line (:class:`StoreIOError` naming the path and ENOSPC), what it leaves is no store at all
(creation) or a store whose committed shards verify, and a resume once there is space gives a store
byte-identical to an uninterrupted one. Rerun: ``pytest tests/fault/test_store_enospc.py``.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from ddpipe.labelstore import NotAStoreError, open_store, verify_store
from ddpipe.labelstore.metadata import make_attrs
from ddpipe.labelstore.spec import full_plan
from ddpipe.labelstore.writer import _prepared_objects
from store_faults import SPEC, Writer, assert_identical, fingerprint, build, resume_in_process


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = build(str(tmp_path_factory.mktemp("ref") / "s"))
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)
    return fingerprint(path), total


def creation_bytes() -> int:
    plan = full_plan(SPEC)
    return sum(len(v) for v in _prepared_objects(SPEC, plan, make_attrs(SPEC, plan), 5).values())


def check_left_state(path: str, writer: Writer) -> None:
    (err,) = writer.words("error")
    kind, message = err
    assert kind == "StoreIOError" and "ENOSPC" in message and "\n" not in message, err
    try:
        r = open_store(path)
    except NotAStoreError:
        assert writer.words("created") == [], "a created store must stay a store"
        parent = os.path.dirname(path)
        assert [n for n in os.listdir(parent) if n.startswith(".")] == []  # no half-made store hidden
        return
    report = verify_store(path)
    bad = [p for p in report["problems"] if p["array"] != "commit_shard"]
    assert not bad, bad  # only uncommitted shards, never a damaged one
    assert r.complete_units == len(writer.words("shard")) * SPEC.units_per_shard


@pytest.mark.parametrize("where", ["creation", "first shard", "mid-run", "last shard"])
def test_injected_enospc_then_resume(tmp_path, reference, where):
    arrays, total = reference
    c = creation_bytes()
    limit = {"creation": c // 2, "first shard": c + 200, "mid-run": c + (total - c) // 2, "last shard": total - 300}[where]
    path = str(tmp_path / "s")
    w = Writer(path, enospc_after=limit)
    assert w.finish() == 2, w.events[-3:]
    check_left_state(path, w)
    resume_in_process(path)
    assert_identical(path, arrays)


def _mount(where: str, size: str) -> bool:
    os.makedirs(where, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", where],
                          capture_output=True).returncode == 0


@pytest.mark.parametrize("size", ["64k", "320k"])
def test_small_tmpfs_fills_then_resume(tmp_path, reference, size):
    arrays, _ = reference
    disk = str(tmp_path / "disk")
    if os.geteuid() != 0 or not _mount(disk, size):
        pytest.skip("cannot mount a tmpfs here (not root); the injected-fault test covers ENOSPC")
    try:
        path = os.path.join(disk, "s")
        w = Writer(path)
        assert w.finish() == 2, w.events[-3:]
        check_left_state(path, w)
        subprocess.run(["mount", "-o", "remount,size=16m", disk], check=True)  # space freed
        resume_in_process(path)
        assert_identical(path, arrays)
    finally:
        subprocess.run(["umount", "-l", disk], capture_output=True)
