"""``ddpipe bench recover`` end to end at a tiny scale on digits: table, JSON, resume (no timing assertions)."""

import json
import math
import os

import pytest

from ddpipe.cli import main

ROW_FIELDS = ["method", "recipe", "images_wall_s", "top1_mean", "top1_std", "top1_by_seed", "delta_vs_random",
              "beats_random", "relabel_wall_s", "student_wall_s", "image_set_hash", "computed_now"]


def _argv(tmp_path):
    return ["bench", "recover", "--dataset", "digits", "--methods", "sre2l", "--recipes", "test", "--ipc", "2",
            "--teacher-model", "convnet_d2_w32_bn", "--teacher-epochs", "1", "--epochs", "2", "-b", "10",
            "--min-scale", "0.5", "--seeds", "0,1", "--workdir", str(tmp_path / "work"),
            "--results-dir", str(tmp_path / "results"), "--no-progress", "--json"]


def test_bench_recover_digits_resumes(tmp_path, capsys, one_torch_thread):
    assert main(_argv(tmp_path)) == 0
    captured = capsys.readouterr()
    first = json.loads(captured.out)
    assert "beats random" in captured.err and "student top-1" in captured.err  # the table goes to stderr under --json
    assert first["benchmark"] == "recover" and first["dataset"] == "digits" and first["ipc"] == 2
    assert [r["method"] for r in first["rows"]] == ["random", "sre2l"]  # the baseline is always run, first
    assert first["teacher"]["computed_now"] is True
    for r in first["rows"]:
        for f in ROW_FIELDS:
            assert f in r, f
        assert set(r["top1_by_seed"]) == {"0", "1"}
        assert 0.0 <= r["top1_mean"] <= 100.0 and r["top1_std"] >= 0.0
        assert sorted(r["computed_now"]) == ["images", "labels", "student seed 0", "student seed 1"]
    rand, sre2l = first["rows"]
    assert rand["beats_random"] is None and rand["delta_vs_random"] == 0.0
    assert sre2l["recipe"] == "sre2l.test" and rand["recipe"] == "random.test"
    assert sre2l["delta_vs_random"] == pytest.approx(sre2l["top1_mean"] - rand["top1_mean"])
    assert sre2l["beats_random"] is (sre2l["top1_mean"] > rand["top1_mean"])
    assert rand["image_set_hash"] != sre2l["image_set_hash"]
    # one relabel + student recipe for every method
    fixed = first["fixed_recipe"]
    assert fixed["relabel"]["epochs"] == 2 and fixed["relabel"]["batch_size"] == 10 and fixed["student"]["seeds"] == [0, 1]
    assert set(first["recover_configs"]) == {"random", "sre2l"}
    results = [f for f in os.listdir(tmp_path / "results") if f.startswith("recover-") and f.endswith(".json")]
    assert len(results) == 1

    # a rerun reuses every finished step and reports the same numbers
    assert main(_argv(tmp_path)) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["teacher"]["computed_now"] is False
    assert all(r["computed_now"] == [] for r in second["rows"])
    assert [r["top1_by_seed"] for r in second["rows"]] == [r["top1_by_seed"] for r in first["rows"]]
    assert [r["images_wall_s"] for r in second["rows"]] == [r["images_wall_s"] for r in first["rows"]]


def test_bench_recover_rejects_unknown_method(tmp_path, capsys):
    assert main(["bench", "recover", "--methods", "nope", "--workdir", str(tmp_path)]) == 2
    assert "unknown method" in capsys.readouterr().err


def test_bench_recover_at_most_two_processes(tmp_path, capsys):
    assert main(["bench", "recover", "--jobs", "3", "--workdir", str(tmp_path)]) == 2
    assert "--jobs" in capsys.readouterr().err


def test_welch_t_matches_hand_computation():
    from ddpipe.bench.recover import welch_t

    a, b = [80.0, 81.0, 82.0], [77.0, 77.5, 78.0]
    # means 81 and 77.5; sample variances 1 and 0.25; se = sqrt(1/3 + 0.25/3)
    assert welch_t(a, b) == pytest.approx(3.5 / math.sqrt(1.25 / 3))
    assert welch_t(b, a) == pytest.approx(-welch_t(a, b))
    assert welch_t([1.0], b) is None  # one seed: no spread to compare against
    assert welch_t([2.0, 2.0], [1.0, 1.0]) == math.inf
    assert welch_t([1.0, 1.0], [1.0, 1.0]) == 0.0


def test_default_recipe_is_the_demos():
    """The bench's fixed relabel + student recipe is `ddpipe demo`'s unless flags say otherwise."""
    from ddpipe.bench import recover
    from ddpipe.evaluate import demo

    b, d = recover.Config(), demo.DemoConfig()
    for name in ("epochs", "batch_size", "k", "temperature", "min_scale", "student_model", "teacher_model",
                 "teacher_epochs", "ipc"):
        assert getattr(b, name) == getattr(d, name), name


def test_bench_flags_come_from_its_config(capsys):
    """`ddpipe bench recover --help` lists the Config's fields as flags; a bad value is one line, exit 2."""
    from ddpipe.bench import recover

    with pytest.raises(SystemExit):
        main(["bench", "recover", "--help"])
    text = capsys.readouterr().out
    for f in ("--methods", "--seeds", "--iterations-scale", "--no-progress", "--json", "-b", "-T"):
        assert f in text, f
    assert "--json" not in [n for n in recover.Config.__dataclass_fields__ if n != "json"]
    with pytest.raises(SystemExit) as e:
        main(["bench", "recover", "--seeds", "a,b"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "comma-separated integers" in err
