"""Relabel through the CLI and through the API give the same labels: a plain torchvision resnet18 state dict
trained at 32 px (issue 10), an nn.Module teacher, results.json inside the store, and RelabelConfig's checks."""

import json
import os

import numpy as np
import pytest
import torch

from teacher32 import make_image_folder, save_state_dict, train_resnet18

from ddpipe.cli import main
from ddpipe.evaluate.errors import RelabelError
from ddpipe.evaluate.relabel import RelabelConfig, RelabelResult, run, summary_text
from ddpipe.labelstore import open_store, store_info, verify_store

SCHED = dict(epochs=2, batch_size=10, k=3, temperature=4.0, workers=0, progress=False, device="cpu")
CLI_SCHED = ["--epochs", "2", "-b", "10", "--topk", "3", "-T", "4", "-j", "0", "--device", "cpu", "--no-progress"]


def labels(store):
    r = open_store(store)
    units = [r.read_unit(u) for u in range(r.num_units)]
    return {"indices": np.stack([np.asarray(u.indices) for u in units]),
            "values": np.stack([np.asarray(u.values) for u in units]), "spec": r.spec}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("relabel32")
    images = make_image_folder(str(root / "images"))
    model = train_resnet18(images, steps=6, seed=0)
    sd = save_state_dict(model, str(root / "resnet18.pth"))
    api = str(root / "api.zarr")
    res = run(RelabelConfig(images=images, teacher=(sd,), model="resnet18", num_classes=10, input_size=32, out=api,
                            **SCHED))
    return {"root": root, "images": images, "model": model, "sd": sd, "api": api, "res": res}


def test_api_relabel_of_a_32px_torchvision_state_dict(env):
    res = env["res"]
    assert isinstance(res, RelabelResult) and res.units == res.units_written == 4
    spec = open_store(env["api"]).spec
    # the teacher's input size is the crops' size: a 32 px teacher stays 32 px
    assert list(spec.augmentation["output_size"]) == [32, 32] and spec.num_classes == 10 and spec.k == 3
    assert spec.teacher_hash == res.teacher_hash == res.teachers[0]["teacher_hash"]
    assert res.teachers[0]["kind"] == "state-dict" and res.teachers[0]["input_size"] == 32
    assert "store " + env["api"] in summary_text(res)


def test_results_json_is_inside_the_store_and_readers_accept_the_store(env):
    path = os.path.join(env["api"], "results.json")
    assert env["res"].results == path
    on_disk = json.load(open(path))
    assert on_disk["units"] == 4 and on_disk["config"]["teacher"] == [env["sd"]]
    assert on_disk["config"]["input_size"] == 32 and on_disk["phase"] == "relabel"
    assert verify_store(env["api"])["ok"]
    assert store_info(env["api"])["units"] == 4
    for backend in ("zarr", "tensorstore"):
        r = open_store(env["api"], backend=backend)
        assert r.complete and r.read_unit(0).count == 10


def test_cli_gives_the_same_labels_as_the_api(env, capsys):
    out = str(env["root"] / "cli.zarr")
    argv = ["relabel", "--images", env["images"], "--teacher", env["sd"], "--model", "resnet18",
            "--num-classes", "10", "--input-size", "32", "--out", out, *CLI_SCHED, "--json"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["units"] == 4 and printed["store"] == out
    a, c = labels(env["api"]), labels(out)
    assert a["spec"] == c["spec"]
    assert np.array_equal(a["indices"], c["indices"]) and np.array_equal(a["values"], c["values"])


def test_model_arg_input_size_on_the_cli(env, capsys):
    out = str(env["root"] / "cli-model-arg.zarr")
    argv = ["relabel", "--images", env["images"], "--teacher", env["sd"], "--model", "resnet18",
            "--model-arg", "input_size=32", "--out", out, *CLI_SCHED]
    assert main(argv) == 0
    assert np.array_equal(labels(out)["values"], labels(env["api"])["values"])
    # a bad architecture argument is one line and exit status 2, not a TypeError traceback
    bad = ["relabel", "--images", env["images"], "--teacher", env["sd"], "--model", "resnet18", "--input-size", "32",
           "--model-arg", "bogus=1", "--out", str(env["root"] / "bad.zarr"), *CLI_SCHED]
    capsys.readouterr()
    assert main(bad) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bogus" in err and "Traceback" not in err
    assert not os.path.exists(env["root"] / "bad.zarr")


def test_nn_module_teacher_gives_the_same_labels(env, tmp_path):
    out = str(tmp_path / "module.zarr")
    res = run(RelabelConfig(images=env["images"], teacher=(env["model"],), num_classes=10, input_size=32, out=out,
                            **SCHED))
    assert res.teachers[0]["kind"] == "module" and res.config["teacher"] == ["<ResNet>"]
    a, m = labels(env["api"]), labels(out)
    assert np.array_equal(a["indices"], m["indices"]) and np.array_equal(a["values"], m["values"])
    json.dumps(res.to_dict())  # results.json-ready


def test_existing_store_needs_resume(env):  # the flags of the run it continues (the fixture's)
    cfg = RelabelConfig(images=env["images"], teacher=(env["sd"],), model="resnet18", num_classes=10, input_size=32,
                        out=env["api"], **SCHED)
    with pytest.raises(Exception, match="--resume"):
        run(cfg)
    res = run(RelabelConfig(**{**cfg.__dict__, "resume": True}))
    assert res.units_written == 0 and res.units == 4


@pytest.mark.parametrize("field,value,match", [
    ("temperature", 0.0, "temperature must be > 0"),
    ("temperature", -1.0, "temperature must be > 0"),
    ("temperature", float("nan"), "temperature must be a finite number"),
    ("epochs", 0, "epochs must be >= 1"),
    ("batch_size", 0, "batch_size must be >= 1"),
    ("k", 0, "k must be >= 1"),
    ("workers", -1, "workers must be >= 0"),
    ("seed", -1, "seed must be >= 0"),
    ("prune_seed", -2, "prune_seed must be >= 0"),
    ("keep", 0.0, "keep must be > 0"),
    ("keep", 1.5, "keep must be <= 1"),
    ("min_scale", 0.0, "min_scale must be > 0"),
    ("value_codec", "fp8", "value_codec must be one of"),
    ("mix", "blend", "mix must be one of"),
    ("granularity", "unit", "granularity must be one of"),
    ("loader", "pil", "loader must be one of"),
    ("teacher", (), "teacher"),
    ("std", (0.2, 0.0, 0.2), "std must be > 0"),
])
def test_config_rejects_bad_values_naming_the_field(field, value, match):
    kw = dict(images="imgs", teacher=("t.pt",), out="o.zarr")
    kw[field] = value
    with pytest.raises(RelabelError, match=match):
        RelabelConfig(**kw)


def test_topk_is_checked_against_the_classes():
    with pytest.raises(RelabelError, match=r"k \(--topk\) must be <= num_classes"):
        RelabelConfig(images="i", teacher=("t.pt",), out="o", num_classes=10, k=11)


def test_topk_above_the_teachers_classes(env, tmp_path):
    with pytest.raises(RelabelError, match=r"k \(--topk\) must be <= the teacher's 10 classes"):
        run(RelabelConfig(images=env["images"], teacher=(env["sd"],), model="resnet18", input_size=32,
                          out=str(tmp_path / "x.zarr"), **{**SCHED, "k": 11}))
    assert not os.path.exists(tmp_path / "x.zarr")


def test_cli_flag_names_and_defaults():
    from ddpipe._flags import add_config_arguments
    import argparse

    p = add_config_arguments(argparse.ArgumentParser(), RelabelConfig)
    flags = {s for a in p._actions for s in a.option_strings}
    for f in ("--images", "--teacher", "--out", "--epochs", "-b", "--batch-size", "--schedule", "--mix", "--min-scale",
              "--topk", "--codec", "-T", "--temperature", "--seed", "--keep", "--granularity", "--prune-seed",
              "--loader", "-j", "--workers", "--device", "--resume", "--no-progress", "--model", "--model-arg",
              "--num-classes", "--input-size", "--in-chans", "--mean", "--std", "--threads"):
        assert f in flags, f
    c = RelabelConfig(images="i", teacher=("t",), out="o")
    assert (c.epochs, c.batch_size, c.schedule, c.k, c.value_codec, c.temperature, c.seed, c.keep, c.granularity,
            c.prune_seed, c.loader, c.workers, c.device, c.resume, c.progress) == (
        300, 1024, "sre2l", 10, "fp16", 20.0, 42, None, "batch", 0, "torch", 2, "auto", False, True)


def test_a_logit_store_gives_the_probability_store_s_labels_at_its_temperature(env):
    """--value-kind logits keeps the top-k logits and each row's log-sum-exp: read back at the relabel
    temperature, the targets are the probability store's (same teacher, same schedule), to fp16 precision."""
    out = str(env["root"] / "logits.zarr")
    run(RelabelConfig(images=env["images"], teacher=(env["sd"],), model="resnet18", num_classes=10, input_size=32,
                      out=out, value_kind="logits", **SCHED))
    logit, prob = open_store(out), open_store(env["api"])
    assert logit.spec.value_kind == "logits" and prob.spec.value_kind == "probs"
    for u in range(prob.num_units):
        a, b = logit.read_unit(u), prob.read_unit(u)
        np.testing.assert_array_equal(np.asarray(a.sample_ids), np.asarray(b.sample_ids))
        np.testing.assert_allclose(a.dense(10), b.dense(10), atol=2e-3)
    with pytest.raises(RelabelError, match="value_kind"):
        RelabelConfig(images=env["images"], teacher=(env["sd"],), out=out + "x", value_kind="logits", value_codec="uint8")


def test_derived_fields_store_trains_and_checks_like_the_stored_one(env):
    """--format-version 4 --derived-fields --codec abs512: no crops on disk, yet the training loader gives the
    images and meta of the fp16 store (same teacher, schedule, images) and targets within 1/512, and
    verify --teacher re-runs its units exactly; the store is smaller."""
    from ddpipe.evaluate.check_teacher import check_teacher
    from ddpipe.labelstore import SpecError
    from ddpipe.pipeline import make_loader

    out = str(env["root"] / "derived.zarr")
    run(RelabelConfig(images=env["images"], teacher=(env["sd"],), model="resnet18", num_classes=10, input_size=32,
                      out=out, format_version=4, derived_fields=True, value_codec="abs512", **SCHED))
    assert open_store(out).spec.derived_fields and not os.path.exists(os.path.join(out, "sample_crop"))
    assert store_info(out)["bytes_on_disk"] < store_info(env["api"])["bytes_on_disk"]
    with pytest.raises(SpecError, match="derived_fields"):
        open_store(out).read_unit(0)
    kw = dict(batch_size=10, num_workers=0, targets="topk")
    a, b = make_loader(env["images"], env["api"], **kw), make_loader(env["images"], out, **kw)
    for x, y in zip(a.epoch(1), b.epoch(1)):
        assert torch.equal(x.images, y.images)
        np.testing.assert_array_equal(np.asarray(x.meta.params.crops), np.asarray(y.meta.params.crops))
        np.testing.assert_array_equal(np.asarray(x.targets[0]), np.asarray(y.targets[0]))
        np.testing.assert_allclose(np.asarray(x.targets[1]), np.asarray(y.targets[1]), atol=1 / 512 + 1e-3)
    result = check_teacher(out, [env["sd"]], env["images"], sample=0, model="resnet18", num_classes=10,
                           input_size=32, device="cpu", loader="torch", workers=0)
    assert result.ok and result.samples_checked == 40


def test_verify_with_images_checks_a_derived_store_s_fields(env, tmp_path, capsys):
    """`ddpipe verify STORE --images DIR` recomputes a derived store's fields and compares digests: the
    images it was made from pass; other images (same count, other sizes) fail naming the digest array."""
    from teacher32 import make_image_folder as folder

    out = str(env["root"] / "derived-verify.zarr")
    run(RelabelConfig(images=env["images"], teacher=(env["sd"],), model="resnet18", num_classes=10, input_size=32,
                      out=out, format_version=4, derived_fields=True, **SCHED))
    assert main(["verify", out, "--images", env["images"]]) == 0
    other = folder(str(tmp_path / "other"), size=40)
    capsys.readouterr()
    assert main(["verify", out, "--images", other]) == 1
    assert "unit_fields_digest" in capsys.readouterr().out
