"""The phase CLI only parses: flags come from the configs, bad input is one line and exit 2, every phase
writes results.json with ordinary permissions, and nothing half-made is left behind."""

import dataclasses
import json
import os
import stat
import subprocess
import sys

import pytest

from ddpipe._flags import cli_fields
from ddpipe.cli import PHASES, main
from ddpipe.config import flag_name

pytestmark = pytest.mark.usefixtures("one_torch_thread")

Q = ["--no-progress", "--threads", "1"]


def _config_classes():
    import importlib

    out = {}
    for name, (module, cls_name, _help) in PHASES.items():
        out[name] = getattr(importlib.import_module(module), cls_name)
    from ddpipe.evaluate.demo import DemoConfig

    out["demo"] = DemoConfig
    return out


@pytest.mark.parametrize("command", sorted([*PHASES, "demo"]))
def test_every_flag_comes_from_a_config_field(command, capsys):
    cls = _config_classes()[command]
    argv = ["demo", "chain", "--help"] if command == "demo" else [command, "--help"]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--json" in text
    for f in cli_fields(cls):
        if f.metadata.get("positional"):
            assert (f.metadata.get("metavar") or f.name) in text
        elif f.type in ("bool", bool) and f.default is True:
            assert "--no-" + f.name.replace("_", "-") in text, f.name
        else:
            assert flag_name(f.name) in text, f.name


def test_shared_run_options_are_declared_once():
    """--device, --threads, --no-progress (and --resume where a phase resumes) are RunOptions' fields."""
    from ddpipe.evaluate._phase import ResumeOption, RunOptions

    shared = {f.name for f in dataclasses.fields(RunOptions)} | {f.name for f in dataclasses.fields(ResumeOption)}
    assert shared == {"device", "threads", "progress", "resume"}
    for name, cls in _config_classes().items():
        if issubclass(cls, RunOptions):
            own = cls.__dict__.get("__annotations__", {})
            assert not shared & set(own), f"{name} redeclares {shared & set(own)}"


BAD = [
    (["train", "--images", "x", "--hard-labels", "--out", "{tmp}/t", "-T", "-1"], "temperature"),
    (["train", "--images", "x", "--hard-labels", "--out", "{tmp}/t", "-T", "0"], "temperature"),
    (["train", "--images", "x", "--hard-labels", "--out", "{tmp}/t", "--epochs", "0"], "epochs"),
    (["train", "--images", "x", "--out", "{tmp}/t"], "exactly one of labels"),
    (["train", "--images", "x", "--hard-labels", "--out", "{tmp}/t", "--lr", "nan"], "lr"),
    (["train", "--images", "x", "--hard-labels", "--out", "{tmp}/t", "--val-every", "0"], "val_every"),
    (["squeeze", "--out", "{tmp}/s", "-j", "-1"], "workers"),
    (["squeeze", "--out", "{tmp}/s", "--threads", "-2"], "threads"),
    (["squeeze", "--out", "{tmp}/s", "--seed", "-1"], "seed"),
    (["squeeze", "--out", "{tmp}/s", "--model-arg", "width"], "KEY=VALUE"),
    (["squeeze", "--out", "{tmp}/s", "--model-arg", "input_size=32"], "input_size"),
    (["squeeze", "--out", "{tmp}/afile"], "existing file"),
    (["squeeze", "--out", "{tmp}/s", "--device", "tpu"], "device"),
    (["recover", "--out", "{tmp}/r", "--ipc", "0"], "ipc"),
    (["recover", "--out", "{tmp}/r", "--min-scale", "1.5"], "min_scale"),
    (["show", "{tmp}", "--per-class", "0"], "per_class"),
    (["demo", "--out", "{tmp}/d", "--seeds", "0"], "seeds"),
    (["prune", "{tmp}/a.zarr", "--out", "{tmp}/a.zarr/", "--keep", "0.5"], "source store"),
]


@pytest.mark.parametrize("argv, field", BAD, ids=[f"{a[0]}-{f}" for a, f in BAD])
def test_bad_settings_are_one_line_and_exit_2(argv, field, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"ddpipe {argv[0]}: error:"), err
    assert field in err, err
    assert not (tmp_path / "t").exists() and not (tmp_path / "s").exists()


def test_cuda_without_a_gpu_is_one_line(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["squeeze", "--out", str(tmp_path / "s"), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no CUDA GPU" in err


def test_config_errors_name_the_field_in_python():
    from ddpipe.evaluate.errors import RecoverError, SqueezeError, TrainError
    from ddpipe.evaluate.recover import RecoverRunConfig
    from ddpipe.evaluate.squeeze import SqueezeConfig
    from ddpipe.evaluate.student import TrainConfig

    with pytest.raises(SqueezeError, match="batch_size must be >= 1"):
        SqueezeConfig(out="x", batch_size=0)
    with pytest.raises(TrainError, match="temperature must be > 0"):
        TrainConfig(out="x", images="y", hard_labels=True, temperature=-1.0)
    with pytest.raises(RecoverError, match="jpeg_quality"):
        RecoverRunConfig(out="x", jpeg_quality=101)
    with pytest.raises(dataclasses.FrozenInstanceError):
        SqueezeConfig(out="x").epochs = 3  # type: ignore[misc]
    assert SqueezeConfig(out="x", model_args={"width": 48}).model_kwargs() == {"width": 48}
    assert SqueezeConfig(out="x", model_args=("width=48",)).model_kwargs() == {"width": 48}


def test_os_errors_are_one_line_naming_the_path(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" / "sub"  # under a file: NotADirectoryError when the run creates it
    assert main(["squeeze", "--dataset", "digits", "--epochs", "1", "--out", str(out), *Q]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(out) in err and "Traceback" not in err


def test_a_validation_error_leaves_no_empty_output_folder(tmp_path, capsys):
    out = tmp_path / "new"
    assert main(["train", "--images", str(tmp_path / "missing.npz"), "--hard-labels", "--dataset", "digits",
                 "--out", str(out), *Q]) == 2
    assert "missing.npz" in capsys.readouterr().err
    assert not out.exists()
    assert main(["squeeze", "--dataset", "digits", "--model-arg", "bogus=1", "--out", str(out), *Q]) == 2
    assert "bogus" in capsys.readouterr().err and not out.exists()


def test_missing_torch_extra_is_one_line(tmp_path, python):
    code = ("import sys; sys.modules['torch'] = None; from ddpipe.cli import main; "
            f"raise SystemExit(main(['squeeze', '--dataset', 'digits', '--out', {str(tmp_path / 's')!r}]))")
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'ddpipe[torch]'" in lines[0]


def test_recover_defaults_fit_the_data():
    from ddpipe.evaluate.recover import resolve_recipe

    assert resolve_recipe("sre2l", "fashion-mnist")[0] == "sre2l.fmnist"
    assert resolve_recipe("delt", "fashion-mnist")[0] == "delt.fmnist"
    recipe, note = resolve_recipe("sre2l", "digits")  # no digits recipe: the default, and it says so
    assert recipe == "sre2l.in1k" and "no recipe made for digits" in note
    assert resolve_recipe("sre2l.test", "fashion-mnist") == ("sre2l.test", None)  # a full name runs as given


def _modes(root):
    bad = []
    for d, _, files in os.walk(root):
        for f in files:
            mode = stat.S_IMODE(os.stat(os.path.join(d, f)).st_mode)
            if mode != 0o644:
                bad.append((os.path.relpath(os.path.join(d, f), root), oct(mode)))
    return bad


def test_every_phase_writes_results_json_with_ordinary_permissions(tmp_path, capsys):
    old = os.umask(0o022)
    try:
        t = tmp_path / "teacher"
        assert main(["squeeze", "--dataset", "digits", "--model", "test_convnet", "--epochs", "1",
                     "--max-train-samples", "200", "--out", str(t), "--json", *Q]) == 0
        captured = capsys.readouterr()
        res = json.loads(captured.out)
        assert "distributed" not in captured.err
        assert res["phase"] == "squeeze" and json.load(open(t / "results.json"))["status"] == "complete"
        imgs = tmp_path / "images"
        assert main(["recover", "--method", "random", "--teacher", str(t / "teacher.pt"), "--ipc", "2",
                     "--out", str(imgs), "--json", *Q]) == 0
        rec = json.loads(capsys.readouterr().out)
        assert rec["phase"] == "recover" and rec["recipe"] == "random.default" and rec["dataset"] == "digits"
        assert json.load(open(imgs / "results.json"))["counts"] == [2] * 10
        store = tmp_path / "labels.zarr"
        assert main(["relabel", "--images", str(imgs), "--teacher", str(t / "teacher.pt"), "--out", str(store),
                     "--epochs", "2", "-b", "10", "--topk", "3", "-j", "0", "--json", *Q]) == 0
        capsys.readouterr()
        pruned = tmp_path / "pruned.zarr"
        assert main(["prune", str(store), "--keep", "1/2", "--out", str(pruned), "--json"]) == 0
        pr = json.loads(capsys.readouterr().out)
        assert pr["phase"] == "prune" and pr["units"] == pr["kept_units"] == 2 and pr["source_units"] == 4
        assert json.load(open(pruned / "results.json"))["kept_units"] == 2
        # verify --teacher re-runs the teacher on a sample of units
        assert main(["verify", str(store), "--teacher", str(t / "teacher.pt"), "--images", str(imgs), "--sample", "2",
                     "--json", "--threads", "1"]) == 0
        v = json.loads(capsys.readouterr().out)
        assert v["ok"] and v["store_ok"] and v["teacher_check"]["ok"] and len(v["teacher_check"]["checked_units"]) == 2
        s = tmp_path / "student"
        assert main(["train", "--images", str(imgs), "--labels", str(pruned), "--dataset", "digits",
                     "--model", "test_convnet", "--out", str(s), "-j", "0", "--json",
                     "--check-teacher", str(t / "teacher.pt"), "--check-units", "1", *Q]) == 0
        tr = json.loads(capsys.readouterr().out)
        assert tr["phase"] == "train" and tr["status"] == "complete" and tr["student"] == str(s / "student.pt")
        assert tr["teacher_check"]["ok"] and len(tr["teacher_check"]["checked_units"]) == 1
        assert json.load(open(s / "results.json"))["status"] == "complete"
        for folder in (t, imgs, s, pruned):
            assert _modes(folder) == [], folder
        # a store relabelled for 8 px digits does not train a 28 px Fashion-MNIST student
        if os.path.isdir("/usr/share/datasets/fashion-mnist"):
            assert main(["train", "--images", str(imgs), "--labels", str(pruned), "--dataset", "fashion-mnist",
                         "--out", str(tmp_path / "fm"), "-j", "0", *Q]) == 2
            err = capsys.readouterr().err
            assert len(err.strip().splitlines()) == 1 and "8x8 px crops" in err, err
            assert not (tmp_path / "fm").exists()
    finally:
        os.umask(old)


def test_flags_builder_shapes():
    """bool False -> --x, True -> --no-x, None -> both; tuples repeat; required without default; parse errors."""
    import argparse

    from ddpipe._flags import add_config_arguments, config_from_args
    from ddpipe.config import option

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class C:
        name: str = option(help="required")
        on: bool = option(True, help="on")
        off: bool = option(False, flags=("-o",), help="off")
        maybe: bool | None = option(None, help="maybe")
        many: tuple[str, ...] = option((), flags=("--one",), help="repeat")
        nums: tuple[int, ...] = option((1,), parse=lambda t: [int(x) for x in t.split(",")], help="csv")
        size: int | None = option(None, help="size")

    p = argparse.ArgumentParser()
    add_config_arguments(p, C)
    c = config_from_args(C, p.parse_args(["--name", "n", "--no-on", "-o", "--no-maybe", "--one", "a", "--many", "b",
                                          "--nums", "2,3", "--nums", "4", "--size", "5"]))
    assert c == C(name="n", on=False, off=True, maybe=False, many=("a", "b"), nums=(2, 3, 4), size=5)
    assert config_from_args(C, p.parse_args(["--name", "n"])) == C(name="n")
    with pytest.raises(SystemExit):
        p.parse_args([])  # --name is required


def test_a_full_disk_names_the_file(tmp_path):
    """A write that fails with ENOSPC leaves nothing behind and says which file (the CLI prints that line)."""
    import errno

    from ddpipe._files import replace_atomically
    from ddpipe.cli import _os_error_line

    def full(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    target = tmp_path / "results.json"
    with pytest.raises(OSError) as e:
        replace_atomically(target, full)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)
    assert os.listdir(tmp_path) == []
    assert _os_error_line(e.value) == f"No space left on device: {target}"


def test_a_worker_traceback_becomes_its_last_line():
    from ddpipe.cli import _one_line

    msg = ("Caught OSError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
           "  File \"x.py\", line 1, in f\n    img.load()\nOSError: image file is truncated (3 bytes not processed)\n")
    assert _one_line(OSError(msg)) == "OSError: image file is truncated (3 bytes not processed)"


def test_store_commands_need_no_torch(python, subprocess_env, tmp_path):
    """info, verify and prune through the CLI with torch made unimportable: they work (exit 0)."""
    code = f"""
import sys
sys.modules["torch"] = None
from ddpipe.labelstore import StoreSpec, create_store
from labelstore_units import all_units
spec = StoreSpec(num_samples=20, num_classes=7, epochs=2, batch_size=8, k=3)
create_store({str(tmp_path / "s")!r}, spec).write_many(all_units(spec))
from ddpipe.cli import main
codes = [main(["info", {str(tmp_path / "s")!r}, "--json"]), main(["verify", {str(tmp_path / "s")!r}]),
         main(["prune", {str(tmp_path / "s")!r}, "--keep", "1/2", "--out", {str(tmp_path / "p")!r}])]
print("CODES", codes)
"""
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, env=subprocess_env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "CODES [0, 0, 0]" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
    assert (tmp_path / "p" / "results.json").exists()
