"""A store writer SIGKILLed at 20 seeded moments of store creation and writing, then resumed.

Each killed run leaves either nothing a reader takes for a store (and a fresh create or a resume
proceeds) or a resumable store; resumed, every array and every commit record (store id aside) equals
an uninterrupted run's, so every object is byte-identical, and ``verify`` passes. The moments are
drawn with seed 0: 8 inside store creation (measured on an uninterrupted child), 12 over the writing.
Rerun: ``pytest tests/fault/test_store_kill.py``.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from ddpipe.labelstore import NotAStoreError, open_store
from store_faults import SPEC, Writer, assert_identical, fingerprint, build, resume_in_process

pytestmark = pytest.mark.slow  # 20 writer processes: `make test` runs it, `make test-fast` does not

KILLS_IN_CREATION = 8
KILLS_IN_WRITING = 12
DELAY = 0.01  # seconds per unit in the child: ~0.3 s of writing to land kills in


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return fingerprint(build(str(tmp_path_factory.mktemp("ref") / "s")))


@pytest.fixture(scope="module")
def timing(tmp_path_factory):
    """(creation seconds, total seconds) of an uninterrupted child, counted from its 'ready'."""
    path = str(tmp_path_factory.mktemp("timing") / "s")
    w = Writer(path, DELAY)
    assert w.wait_for("ready")
    t0 = time.perf_counter()
    assert w.wait_for("created")
    t_create = time.perf_counter() - t0
    assert w.wait_for("done")
    t_total = time.perf_counter() - t0
    assert w.finish() == 0
    return t_create, t_total


def moments(timing) -> list[float]:
    t_create, t_total = timing
    rng = np.random.default_rng(0)
    return sorted(rng.uniform(0, t_create, KILLS_IN_CREATION).tolist() + rng.uniform(t_create, t_total, KILLS_IN_WRITING).tolist())


@pytest.mark.parametrize("i", range(KILLS_IN_CREATION + KILLS_IN_WRITING))
def test_sigkill_then_resume_is_byte_identical(tmp_path, reference, timing, i):
    delay = moments(timing)[i]
    path = str(tmp_path / "s")
    w = Writer(path, DELAY, linger=True)
    assert w.wait_for("ready")
    time.sleep(delay)
    w.kill()
    assert w.proc.exitcode == -signal.SIGKILL
    # what a kill leaves: no store (nothing, or only a hidden creation folder), or an openable store
    try:
        r = open_store(path)
        assert r.complete_units % SPEC.units_per_shard == 0 or r.complete
    except NotAStoreError as e:
        assert "not a ddpipe label store" not in str(e) or "no zarr.json" in str(e), e
    resume_in_process(path)
    assert_identical(path, reference, verify=i % 5 == 0)
    leftovers = [n for n in os.listdir(tmp_path) if n != "s"]
    assert leftovers == [], leftovers  # the killed creation's hidden folder was swept
