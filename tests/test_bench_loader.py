"""``ddpipe bench loader`` end to end at a tiny shape (no timing assertions): the typed config, the
rows run in child processes that receive the config as JSON, the results JSON with stage shares."""

import json
import os

import pytest

from ddpipe.bench.loader import CPU_ROWS, GPU_ROWS, Config, _dali_installed, default_rows, run
from ddpipe.config import config_from_dict, config_to_dict
from ddpipe.errors import DDPipeError


def test_config_flags_validate_and_round_trip():
    want = CPU_ROWS if _dali_installed() else tuple(r for r in CPU_ROWS if "dali" not in r)
    assert Config().rows == want == default_rows("cpu")
    assert set(Config(device="gpu").rows) <= set(GPU_ROWS) and "gpu" in Config(device="gpu").rows
    assert Config(rows=("torch,dali-cpu",)).rows == ("torch", "dali-cpu")  # --rows torch,dali-cpu
    with pytest.raises(DDPipeError, match="rows"):
        Config(rows=("torch,nope",))
    with pytest.raises(DDPipeError, match="quality"):
        Config(quality=0)
    with pytest.raises(DDPipeError, match="device"):
        Config(device="tpu")
    c = Config(row="torch", workdir="/x", rows=("torch",))
    assert config_from_dict(Config, json.loads(json.dumps(config_to_dict(c)))) == c


def test_bench_loader_tiny(tmp_path, capsys):
    cfg = Config(images=48, classes=4, size=32, batch_size=8, k=3, rows=("sre2l-baseline", "torch", "cache-cpu"),
                 repeats=1, workers=1, workdir=str(tmp_path / "work"), results_dir=str(tmp_path / "res"), json=True)
    assert run(cfg) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["backend"] for r in out["rows"]] == ["sre2l-baseline", "torch", "cache-cpu"]
    assert all(r["images_per_s"] > 0 for r in out["rows"])
    for r in out["rows"]:  # where the time goes: shares of decode, crop-resize, collate, mix (+ labels) <= 1
        shares = [r[f"share_{k}"] for k in ("decode", "crop_resize", "collate", "mix")]
        assert all(s is not None and 0 <= s <= 1 for s in shares) and sum(shares) <= 1 + 1e-9, r
    cache_row = out["rows"][2]
    assert cache_row["share_decode"] < out["rows"][0]["share_decode"]  # the cache decodes nothing per epoch
    assert out["cache_build"]["bytes"] == 48 * 32 * 32 * 3
    assert out["args"]["rows"] == ["sre2l-baseline", "torch", "cache-cpu"]
    assert "fastest_cpu_speedup" in out["targets"]
    assert [p for p in os.listdir(tmp_path / "res") if p.endswith(".json")]
    assert not os.listdir(tmp_path / "work"), "the images and labels are deleted unless --keep-work"
