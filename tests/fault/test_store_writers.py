"""Two writer processes on one store: they split the shards (each committed by exactly one of
them), never corrupt each other, and a killed writer's lease is taken over at once by a resume.
Rerun: ``pytest tests/fault/test_store_writers.py``."""

from __future__ import annotations

import json
import os
import time

import pytest

from ddpipe.labelstore import create_store, open_store, open_writer
from ddpipe.labelstore.layout import LEASE_PREFIX
from labelstore_units import make_unit
from store_faults import SPEC, Writer, assert_identical, fingerprint, build, resume_in_process

DELAY = 0.02


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return fingerprint(build(str(tmp_path_factory.mktemp("ref") / "s")))


def lease_files(path: str) -> list[str]:
    return [f for _, _, fs in os.walk(os.path.join(path, LEASE_PREFIX)) for f in fs]


def shards_of(w: Writer) -> set[int]:
    return {int(s) for (s,) in w.words("shard")}


@pytest.mark.parametrize("start", ["fresh", "resume"])
def test_two_writers_split_the_work(tmp_path, reference, start):
    """Started together on a new path (both create it: one wins, the other resumes it) or on a
    half-written store (two --resume runs): every shard is committed once, by one of them."""
    path = str(tmp_path / "s")
    done_before: set[int] = set()
    if start == "resume":
        w = create_store(path, SPEC)
        for e, b in w.plan[: 3 * SPEC.units_per_shard]:
            w.write(make_unit(SPEC, int(e), int(b)))
        w.close()
        done_before = {0, 1, 2}
    a, b = Writer(path, DELAY), Writer(path, DELAY)
    assert a.finish() == 0 and b.finish() == 0, (a.events[-3:], b.events[-3:])
    sa, sb = shards_of(a), shards_of(b)
    assert not sa & sb, "a shard was committed by both writers"
    assert sa | sb | done_before == set(range(open_store(path).num_shards))
    assert sa and sb, f"one writer did all the work: {sa} / {sb}"
    units_a, units_b = len(a.words("unit")), len(b.words("unit"))
    assert units_a + units_b == SPEC.full_units - len(done_before) * SPEC.units_per_shard  # nothing computed twice
    assert_identical(path, reference)
    assert lease_files(path) == []  # every lease given back at commit


def test_killed_writers_lease_is_taken_over_at_once(tmp_path, reference):
    """A writer killed while it holds a shard's lease: a resume in another process on the same
    host sees the lease's process is gone and takes the shard without waiting for the expiry."""
    path = str(tmp_path / "s")
    w = Writer(path, 0.05, linger=True)
    assert w.wait_for("unit")  # inside shard 0: its lease is held, nothing committed
    w.kill()
    leases = os.listdir(os.path.join(path, LEASE_PREFIX))
    assert leases == ["0"], leases
    t0 = time.perf_counter()
    resume_in_process(path)
    assert time.perf_counter() - t0 < 60  # no waiting for the 300 s expiry
    assert_identical(path, reference)


def test_live_foreign_lease_is_respected_and_an_expired_one_taken(tmp_path, reference):
    """A lease of a writer on another host blocks its shard until it expires, then is taken over."""
    path = str(tmp_path / "s")
    create_store(path, SPEC).close()
    lease_dir = os.path.join(path, LEASE_PREFIX, "2")
    os.makedirs(lease_dir)
    rec = {"owner": "x" * 32, "host": "another-host", "pid": 1, "start": "", "shard": 2, "generation": 1,
           "acquired": time.time(), "expires": time.time() + 3600}
    with open(os.path.join(lease_dir, "1"), "w") as f:
        json.dump(rec, f)
    w = open_writer(path)
    assert 2 not in w.pending_shards()
    e, b = w.plan[2 * SPEC.units_per_shard]
    assert not w.claim(int(e), int(b))
    assert not w.write(make_unit(SPEC, int(e), int(b)))  # skipped: the other writer owns it
    w.close()
    rec["expires"] = time.time() - 1  # its writer stopped renewing: expired
    with open(os.path.join(lease_dir, "1"), "w") as f:
        json.dump(rec, f)
    resume_in_process(path)
    assert_identical(path, reference)
    assert lease_files(path) == []  # the taken-over lease was retired, ours released at commit
