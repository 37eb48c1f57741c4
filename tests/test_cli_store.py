"""`ddpipe info / verify / prune` are machine-readable: --json prints exactly one JSON object."""

import json
import os
import subprocess
import sys

import pytest

from ddpipe.cli import main as cli
from ddpipe.labelstore import FORMAT_VERSION, StoreSpec, create_store
from labelstore_units import all_units

SPEC = StoreSpec(num_samples=100, num_classes=50, epochs=8, batch_size=32, k=10, value_codec="fp16", temperature=4.0)
INFO_FIELDS = {
    "format_version", "num_samples", "num_classes", "epochs", "batch_size", "k", "value_codec", "temperature",
    "units", "complete_units", "bytes_on_disk", "bytes_per_sample_epoch", "sre2l_equivalent_bytes",
    "compression_vs_sre2l",
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("cli") / "s")
    create_store(path, SPEC).write_many(all_units(SPEC))
    return path


def run_json(capsys, argv, code=0):
    assert cli(argv) == code
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1, out
    return json.loads(out)


def test_info_json(store, capsys):
    info = run_json(capsys, ["info", store, "--json"])
    assert INFO_FIELDS <= info.keys()
    assert info["units"] == info["complete_units"] == 8 * 4
    assert info["format_version"] == FORMAT_VERSION and info["k"] == 10 and info["temperature"] == 4.0
    on_disk = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(store) for f in fs)
    assert info["bytes_on_disk"] == on_disk
    # SRe2L: fp16 logits + float32 coords + bool flip + int64 mix index per sample, lam + box per file
    assert info["sre2l_equivalent_bytes"] == 8 * 100 * (2 * 50 + 16 + 1 + 8) + 32 * 40
    assert info["compression_vs_sre2l"] == pytest.approx(info["sre2l_equivalent_bytes"] / on_disk)
    assert info["bytes_per_sample_epoch"] == pytest.approx(on_disk / 800)


def test_info_text(store, capsys):
    assert cli(["info", store]) == 0
    out = capsys.readouterr().out
    assert "compression_vs_sre2l" in out and "complete_units: 32" in out


def test_verify_json_ok(store, capsys):
    assert run_json(capsys, ["verify", store, "--json", "--backend", "zarr"]) == {
        "ok": True, "problems": [], "checked_units": 32, "units": 32,
    }


@pytest.mark.parametrize("keep", ["1/8", "8x", "0.125"])
def test_prune_json_prints_info_of_the_new_store(store, tmp_path, capsys, keep):
    out = str(tmp_path / "p")
    info = run_json(capsys, ["prune", store, "--keep", keep, "--seed", "2", "--out", out, "--json"])
    assert INFO_FIELDS <= info.keys()
    assert info["units"] == 4 and info["keep"] == 0.125 and info["path"] == out
    assert run_json(capsys, ["verify", out, "--json"])["ok"]


def test_prune_dry_run_writes_nothing(store, tmp_path, capsys):
    out = str(tmp_path / "p")
    res = run_json(capsys, ["prune", store, "--keep", "0.5", "--out", out, "--dry-run", "--json"])
    assert res["kept_units"] == 16 and not os.path.exists(out)


def test_prune_refuses_to_overwrite(store, tmp_path, capsys):
    out = tmp_path / "p"
    out.mkdir()
    (out / "precious.txt").write_text("x")
    assert cli(["prune", store, "--keep", "0.5", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ddpipe prune: error:") and len(err.strip().splitlines()) == 1
    assert (out / "precious.txt").exists()


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert cli(["info", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "not a ddpipe label store" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):
        cli(["prune", str(tmp_path), "--keep", "2", "--out", "x"])
    assert "keep must be in (0, 1]" in capsys.readouterr().err


def test_console_script_prints_one_json_object(store):
    exe = os.path.join(os.path.dirname(sys.executable), "ddpipe")  # the venv's console script
    out = subprocess.run([exe, "info", store, "--json"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    assert INFO_FIELDS <= json.loads(out.stdout).keys()


def test_store_demo_needs_neither_torch_nor_scipy(tmp_path):
    """`ddpipe demo store` runs on the base install: torch and scipy made unimportable, it still
    writes (with pipeline's schedule), prunes and catches the damage."""
    out = str(tmp_path / "demo")
    code = (
        "import sys, json; sys.modules['torch'] = None; sys.modules['scipy'] = None\n"
        "from ddpipe.demo import demo\n"
        f"r = demo({out!r})\n"
        "assert r['corruption']['caught'], r['corruption']\n"
        "print(json.dumps(r['written']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["units"] == 40 * 16
