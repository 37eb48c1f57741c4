"""A writer SIGKILLed at any moment resumes to the same arrays as an uninterrupted run;
separate processes write disjoint shards of one store concurrently. Every test runs on a format-3
store and on a format-4 one (class-index gaps, abs512 values, schedule fields kept as digests)."""

import json
import os
import signal
import subprocess

import numpy as np
import pytest

from ddpipe.labelstore import StoreSpec, create_store, open_store, verify_store
from labelstore_units import all_units, make_unit, raw_arrays

SPEC3 = StoreSpec(num_samples=45, num_classes=12, epochs=4, batch_size=8, k=5, value_codec="uint8", units_per_shard=4)
SPEC4 = SPEC3.replace(format_version=4, value_codec="abs512", index_coding="gaps", derived_fields=True)
CHILD = os.path.join(os.path.dirname(__file__), "labelstore_child_writer.py")


@pytest.fixture(scope="module", params=[SPEC3, SPEC4], ids=["format3", "format4"])
def spec(request):
    return request.param


@pytest.fixture(scope="module")
def reference(tmp_path_factory, spec):
    path = str(tmp_path_factory.mktemp("ref") / "s")
    create_store(path, spec).write_many(all_units(spec))
    return raw_arrays(path)


def start_child(python, env, path, spec, which="all", die_array=""):
    return subprocess.Popen(
        [python, CHILD, path, json.dumps(spec.to_dict()), which, die_array],
        stdout=subprocess.PIPE, text=True, env=env,
    )


def resume_in_process(path, spec):
    w = create_store(path, spec, resume=True)
    for e, b in w.pending_units():
        w.write(make_unit(spec, int(e), int(b)))
    assert w.close() == 0 and w.complete


def verified(path, spec) -> bool:
    """verify_store, with the units' fields (make_unit) for a derived-fields store."""
    fields = (lambda e, b: make_unit(spec, e, b)) if spec.derived_fields else None
    return verify_store(path, fields=fields)["ok"]


def assert_same_arrays(path, reference):
    got = raw_arrays(path)
    assert got.keys() == reference.keys()
    for name in reference:
        assert np.array_equal(got[name], reference[name]), name


@pytest.mark.parametrize("kill_after", [1, 6, 13])  # inside shard 0, mid shard 1, mid shard 3
def test_sigkill_between_units_then_resume(tmp_path, python, subprocess_env, spec, reference, kill_after):
    path = str(tmp_path / "s")
    child = start_child(python, subprocess_env, path, spec)
    for line in child.stdout:
        if line.strip() == str(kill_after):
            child.send_signal(signal.SIGKILL)
            break
    child.wait()
    assert child.returncode == -signal.SIGKILL
    r = open_store(path)
    committed_units = r.complete_units
    assert committed_units == (kill_after // spec.units_per_shard) * spec.units_per_shard
    resume_in_process(path, spec)
    assert_same_arrays(path, reference)
    assert verified(path, spec)


@pytest.mark.parametrize("die_array", ["unit_count", "label_value"])
def test_sigkill_in_the_middle_of_a_shard_flush(tmp_path, python, subprocess_env, spec, reference, die_array):
    path = str(tmp_path / "s")
    child = start_child(python, subprocess_env, path, spec, die_array=die_array)
    child.communicate()
    assert child.returncode == -signal.SIGKILL
    r = open_store(path)
    assert r.complete_units == 0, "a half-written shard must not be visible"
    report = verify_store(path)
    assert not report["ok"] and {p["array"] for p in report["problems"]} == {"commit_shard"}
    resume_in_process(path, spec)
    assert_same_arrays(path, reference)
    assert verified(path, spec)


def test_two_processes_write_disjoint_shards(tmp_path, python, subprocess_env, spec, reference):
    path = str(tmp_path / "s")
    create_store(path, spec)  # created once; each rank opens it and writes its own shards
    children = [start_child(python, subprocess_env, path, spec, which=f"rank:{r}/2") for r in range(2)]
    outs = [c.communicate()[0] for c in children]
    assert all(c.returncode == 0 for c in children), outs
    assert all(o.strip().endswith("done") for o in outs)
    assert open_store(path).complete
    assert_same_arrays(path, reference)
    assert verified(path, spec)
