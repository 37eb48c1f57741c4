"""What every benchmark shares (bench/common.py): where results go, how a finished step is recognised,
and that bench modules use each other's public names only. Fast: nothing here runs a benchmark."""

import ast
import dataclasses
import json
import os

import pytest

from ddpipe.bench import common, list_benchmarks, load_benchmark

BENCH_DIR = os.path.dirname(common.__file__)


def test_results_and_work_go_under_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert common.results_dir() == str(tmp_path / "bench" / "results")
    assert common.work_dir(None, "recover-digits") == str(tmp_path / "bench" / "work" / "recover-digits")
    assert common.results_dir("elsewhere") == str(tmp_path / "elsewhere")
    path = common.write_results("probe", {"x": 1})
    assert os.path.dirname(path) == str(tmp_path / "bench" / "results")
    assert not path.startswith(BENCH_DIR + os.sep)  # never inside the installed package
    assert json.loads(open(path).read()) == {"x": 1}


@pytest.mark.parametrize("name", sorted(list_benchmarks()))
def test_every_benchmark_takes_a_results_dir(name):
    config = load_benchmark(name).Config
    assert "results_dir" in {f.name for f in dataclasses.fields(config)}


@dataclasses.dataclass(frozen=True)
class _Result:
    status: str
    top1: float

    @classmethod
    def from_dict(cls, d):
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


def test_finished_reads_the_phase_status(tmp_path):
    path = tmp_path / "results.json"
    assert common.finished(_Result, str(path)) is None  # missing
    path.write_text("{not json")
    assert common.finished(_Result, str(path)) is None  # unreadable
    path.write_text(json.dumps({"status": "running", "top1": 1.0}))
    assert common.finished(_Result, str(path)) is None
    path.write_text(json.dumps({"status": "complete"}))
    assert common.finished(_Result, str(path)) is None  # a field missing
    path.write_text(json.dumps({"status": "complete", "top1": 2.5, "extra": 0}))
    assert common.finished(_Result, str(path)) == _Result("complete", 2.5)


def test_timed_sums_sessions(tmp_path):
    sidecar = str(tmp_path / "step.bench.json")
    assert common.sidecar_cpu_s(sidecar) is None
    assert common.timed(sidecar, lambda: 7) == 7
    common.timed(sidecar, lambda: None)
    rec = json.loads(open(sidecar).read())
    assert rec["sessions"] == 2 and rec["cpu_s"] >= 0 and common.sidecar_cpu_s(sidecar) == rec["cpu_s"]


def test_list_flags():
    assert common.csv_list(" a, b,,c ") == ["a", "b", "c"]
    assert common.int_list("0,1, 2") == [0, 1, 2]
    with pytest.raises(ValueError, match="comma-separated integers"):
        common.int_list("0,x")


def test_bench_modules_import_no_private_names():
    """A bench module asks the owner to make a name public instead of importing its ``_private`` one."""
    modules = {f[:-3] for f in os.listdir(BENCH_DIR) if f.endswith(".py")}
    bad = []
    for name in sorted(modules):
        tree = ast.parse(open(os.path.join(BENCH_DIR, name + ".py")).read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                bad += [f"{name}: from {'.' * node.level}{node.module or ''} import {a.name}"
                        for a in node.names if a.name.startswith("_")]
            private = isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
            if private and isinstance(node.value, ast.Name) and node.value.id in modules - {name}:
                bad.append(f"{name}: {node.value.id}.{node.attr}")
    assert not bad, bad
