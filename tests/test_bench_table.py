"""``ddpipe bench table --quick`` end to end on digits: every part, resume, README generation, budget, bad input."""

import json
import os
import shutil
import statistics

import pytest

from ddpipe.bench import ddranking, table_report
from ddpipe.cli import main

ROW_FIELDS = ("method", "ipc", "protocol", "label_setting", "student", "top1_mean", "top1_std", "n", "label_bytes")


def _argv(tmp_path, *extra):
    return ["bench", "table", "--quick", "--workdir", str(tmp_path / "work"), "--results-dir", str(tmp_path / "res"),
            "--no-progress", "--json", *extra]


@pytest.fixture
def readme(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(f"# title\n\nbefore\n\n{table_report.README_BEGIN}\nstale text\n{table_report.README_END}\n\nafter\n")
    return path


@pytest.mark.slow
def test_table_quick_runs_every_part_and_resumes(tmp_path, capsys, readme, one_torch_thread):
    assert main(_argv(tmp_path, "--readme", str(readme))) == 0
    rows = json.loads(capsys.readouterr().out)
    payload = json.loads((tmp_path / "res" / "table-quick.json").read_text())
    assert payload["rows"] == rows and payload["cells_done"] == payload["cells"] == payload["cells_run_now"]
    for r in rows:
        for f in ROW_FIELDS:
            assert f in r, f
        assert r["status"] == "complete" and 0.0 <= r["top1_mean"] <= 100.0
    # the grid: 4 methods x 2 IPCs x 2 protocols, 8 label settings x 2 methods, 2 other students x 2 methods
    shared = [r for r in rows if r["part"] == "shared" and r["student"] == "convnet_d2_w32_bn"]
    assert sorted((r["method"], r["ipc"]) for r in shared) == sorted(
        (m, i) for m in ("random", "herding", "sre2l", "dm") for i in (1, 2))
    assert all(r["draws"] == 2 and r["n"] == 2 for r in shared)  # two draws of real images, one student each
    own = {r["method"]: r for r in rows if r["part"] == "own" and r["ipc"] == 2}
    assert own["dm"]["label_setting"] == own["random"]["label_setting"] == "hard" and own["dm"]["label_bytes"] == 0
    assert own["sre2l"]["label_setting"] == "full" and own["sre2l"]["label_bytes"] > 0
    labels = {(r["method"], r["label_setting"]) for r in rows if r["part"] == "labels"}
    assert labels == {(m, s) for m in ("random", "sre2l") for s in
                      ("full", "top-2", "top-5 uint8", "10x pruned uint8", "40x pruned uint8", "80x pruned uint8",
                       "hard", "online teacher")}
    cross = {(r["method"], r["student"]) for r in rows if r["part"] == "cross"}
    assert cross == {(m, s) for m in ("random", "sre2l") for s in ("test_resnet_small", "test_timm_vit")}
    # DD-Ranking: every method's images with hard labels at every IPC; each shared row's HLR, IOR and LRS
    hard = {(r["method"], r["ipc"]): r for r in rows if r["part"] == "hlr"}
    assert set(hard) == {(m, i) for m in ("random", "herding", "sre2l", "dm") for i in (1, 2)}
    assert hard[("random", 2)]["top1_by_run"] == next(
        r for r in rows if r["part"] == "labels" and r["method"] == "random" and r["label_setting"] == "hard")["top1_by_run"]
    for r in shared:
        assert r["hlr"] == pytest.approx(payload["teacher"]["top1"] - hard[(r["method"], r["ipc"])]["top1_mean"])
        assert r["ior"] == (0.0 if r["method"] == "random" else r["delta_vs_random"])
        assert r["lrs"] == pytest.approx(ddranking.lrs(r["ior"], r["hlr"])) and 0.0 <= r["lrs"] <= 1.0
    # the paired difference to random on the same draws
    sre2l = next(r for r in shared if r["method"] == "sre2l" and r["ipc"] == 2)
    rand = next(r for r in shared if r["method"] == "random" and r["ipc"] == 2)
    diffs = [sre2l["top1_by_draw"][d] - rand["top1_by_draw"][d] for d in ("0", "1")]
    assert sre2l["delta_vs_random"] == pytest.approx(sum(diffs) / 2)
    runs = [sre2l["top1_by_run"][k] - rand["top1_by_run"][k] for k in sre2l["top1_by_run"]]
    if statistics.stdev(runs) > 0:  # the t pairs run by run: same draw, same student seed
        t = statistics.fmean(runs) / (statistics.stdev(runs) / len(runs) ** 0.5)
        assert sre2l["t_vs_random"] == pytest.approx(t)
    # the README section between the markers is the generated markdown; the rest of the file is kept
    text = readme.read_text()
    assert "stale text" not in text and text.startswith("# title\n\nbefore\n\n") and text.endswith("\n\nafter\n")
    md = (tmp_path / "res" / "table-quick.md").read_text()
    assert md in text and "| sre2l | own |" in md and "Targets:" in md
    assert (tmp_path / "docs" / "table-quick-ipc.png").stat().st_size > 0

    # a rerun computes nothing and gives the same rows; --render-only rebuilds the same markdown
    assert main(_argv(tmp_path)) == 0
    again = json.loads(capsys.readouterr().out)
    assert json.loads((tmp_path / "res" / "table-quick.json").read_text())["cells_run_now"] == 0
    assert [(r["method"], r["part"], r["top1_by_run"]) for r in again] == [(r["method"], r["part"], r["top1_by_run"])
                                                                           for r in rows]
    os.remove(tmp_path / "res" / "table-quick.md")
    assert main(_argv(tmp_path, "--render-only")) == 0
    capsys.readouterr()
    assert (tmp_path / "res" / "table-quick.md").read_text() == table_report.markdown(
        json.loads((tmp_path / "res" / "table-quick.json").read_text()), {"ipc": "table-quick-ipc.png",
                                                                          "bytes": "table-quick-bytes.png"})

    # another machine: no work dir, only table.json. Its records stand for the finished cells; a cell whose
    # record is gone is computed again, its draw's images made again first, and gives the same number
    table = tmp_path / "res" / "table-quick.json"
    payload = json.loads(table.read_text())
    assert len(payload["records"]) == payload["cells"]
    gone = "own|dm|2|hard|convnet_d2_w32_bn|1"
    del payload["records"][gone]
    table.write_text(json.dumps(payload))
    shutil.rmtree(tmp_path / "work")
    assert main(_argv(tmp_path)) == 0
    moved = json.loads(capsys.readouterr().out)
    after = json.loads(table.read_text())
    assert after["cells_run_now"] == 1 and after["cells_done"] == after["cells"]
    assert after["records"][gone]["source"] == "folders"
    assert [(r["method"], r["part"], r["top1_by_run"], r["label_bytes"]) for r in moved] == [
        (r["method"], r["part"], r["top1_by_run"], r["label_bytes"]) for r in rows]
    assert not (tmp_path / "work" / "students").exists()  # dm's images only: no shared student ran
    # a table.json from before records existed: its rows are the records
    legacy = {k: v for k, v in after.items() if k not in ("records", "fingerprint")}
    table.write_text(json.dumps(legacy))
    shutil.rmtree(tmp_path / "work")
    assert main(_argv(tmp_path)) == 0
    assert json.loads(capsys.readouterr().out) == moved
    assert json.loads(table.read_text())["cells_run_now"] == 0
    # other settings carry nothing
    assert main(_argv(tmp_path, "--budget-minutes", "0", "--epochs", "3")) == 0
    capsys.readouterr()
    assert json.loads(table.read_text())["cells_done"] == 0


def test_paired_differences_match_draw_and_seed_and_skip_unfinished_draws():
    paired_run_differences = table_report.paired_run_differences
    base = {"top1_by_draw": {"0": 70.5, "1": 72.0},  # draw 2 unfinished: one of its two students ran
            "top1_by_run": {"0/0": 70.0, "0/1": 71.0, "1/0": 72.0, "1/1": 72.0, "2/0": 60.0}}
    row = {"top1_by_draw": {"0": 74.0, "1": 73.5, "2": 75.0},
           "top1_by_run": {"0/0": 73.0, "0/1": 75.0, "1/0": 73.0, "1/1": 74.0, "2/0": 75.0, "2/1": 75.0}}
    assert paired_run_differences(row, base) == [3.0, 4.0, 1.0, 2.0]
    assert paired_run_differences(base, base) == [0.0] * 4
    # the label table's "vs full labels" and the 40x target compare on the draws both rows finished
    assert table_report._paired_gap(row, base) == pytest.approx(((74.0 - 70.5) + (73.5 - 72.0)) / 2)
    assert table_report._paired_gap(row, {"top1_by_draw": {}}) is None


def test_table_budget_zero_writes_an_empty_grid(tmp_path, capsys, one_torch_thread):
    assert main(_argv(tmp_path, "--budget-minutes", "0", "--methods", "random", "--parts", "shared")) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and all(r["status"] == "not run" and r["top1_mean"] is None for r in rows)
    md = (tmp_path / "res" / "table-quick.md").read_text()
    assert "not run" in md


@pytest.mark.parametrize("extra, message", [
    (("--methods", "nope"), "unknown 'nope'"),
    (("--parts", "shared,bogus"), "unknown 'bogus'"),
    (("--jobs", "3"), "--jobs must be 1 or 2"),
    (("--render-only",), "run the table first"),
])
def test_table_bad_input_is_one_line(tmp_path, capsys, extra, message):
    assert main(_argv(tmp_path, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "res" / "table-quick.json").exists()


def test_table_readme_without_markers_is_refused(tmp_path, capsys):
    plain = tmp_path / "PLAIN.md"
    plain.write_text("# no markers\n")
    with pytest.raises(Exception, match="markers"):
        table_report.write_all(_minimal_payload(), str(tmp_path / "res"), "table-quick", readme=str(plain))
    assert plain.read_text() == "# no markers\n"


def _minimal_payload():
    return {"dataset": "digits", "rows": [], "cells": 0, "cells_done": 0, "references": {}, "whole_training_set": 0,
            "teacher": {"model": "m", "epochs": 1, "top1": 0.0},
            "grid": {"methods": ["random"], "ipcs": [1], "image_seeds": [0], "seeds": [0], "parts": ["shared"],
                     "label_ipc": 1, "label_methods": ["random"], "label_settings": ["top-5"], "cross_students": []},
            "protocols": {"shared": "s", "own": "o", "cross": "c"}}


def test_ddranking_lrs_is_the_readme_s_normalisation():
    """LRS = (exp(a) - exp(-1)) / (e - exp(-1)), a = w IOR - (1 - w) HLR, accuracies as fractions: 0 when a
    method recovers nothing and loses to random by the whole scale (a = -1), 1 at a = 1, monotone."""
    import math

    assert ddranking.lrs(-100.0, 100.0) == pytest.approx(0.0, abs=1e-12)
    assert ddranking.lrs(100.0, -100.0) == pytest.approx(1.0)
    assert ddranking.lrs(0.0, 0.0) == pytest.approx((1 - math.exp(-1)) / (math.e - math.exp(-1)))
    assert ddranking.lrs(2.0, 10.0) > ddranking.lrs(1.0, 10.0) > ddranking.lrs(1.0, 11.0)
    payload = {"teacher": {"top1": 90.0}, "rows": [
        {"part": "shared", "method": "random", "ipc": 10, "label_setting": "top-5", "top1_mean": 80.0},
        {"part": "shared", "method": "delt", "ipc": 10, "label_setting": "top-5", "top1_mean": 82.0,
         "delta_vs_random": 2.0},
        {"part": "shared", "method": "sre2l", "ipc": 10, "label_setting": "top-5", "top1_mean": 81.0,
         "delta_vs_random": 1.0},
        {"part": "hlr", "method": "delt", "ipc": 10, "label_setting": "hard", "top1_mean": 70.0},
        {"part": "labels", "method": "random", "ipc": 10, "label_setting": "hard", "top1_mean": 65.0}]}
    rows = {r["method"]: r for r in ddranking.annotate(payload)["rows"] if r["part"] == "shared"}
    assert (rows["delt"]["hlr"], rows["delt"]["ior"]) == (20.0, 2.0)
    assert rows["delt"]["lrs"] == pytest.approx(ddranking.lrs(2.0, 20.0))
    assert (rows["random"]["hlr"], rows["random"]["ior"]) == (25.0, 0.0)  # from the label-settings part
    assert rows["sre2l"]["hlr"] is None and rows["sre2l"]["lrs"] is None  # no hard-label run of its images
