"""ddpipe.evaluate.teacher: every form of teacher (teacher file, plain state dict + model name + input size,
nn.Module), explicit input sizes, hashing, and the teacher checks against a store."""

import os

import numpy as np
import pytest
import torch

from teacher32 import MEAN, STD, folder_tensors, make_image_folder, save_state_dict, train_resnet18

from ddpipe.evaluate.check_teacher import (TeacherCheckConfig, check_teacher, check_teacher_hash, check_teacher_text,
                                           run as run_check)
from ddpipe.evaluate.errors import (CheckpointError, ClassCountMismatchError, ModelConfigError, TeacherError,
                                    TeacherMismatchError)
from ddpipe.evaluate.relabel import RelabelConfig, run
from ddpipe.evaluate.teacher import (Ensemble, Teacher, load_teacher, open_teacher, open_teachers, state_dict_hash,
                                     teacher_hash, write_teacher)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("teacher")
    images = make_image_folder(str(root / "images"))
    a = train_resnet18(images, steps=6, seed=0)
    b = train_resnet18(images, steps=6, seed=1)
    return {"root": root, "images": images, "a": a, "b": b,
            "a_sd": save_state_dict(a, str(root / "a.pth")), "b_sd": save_state_dict(b, str(root / "b.pth"))}


def test_plain_state_dict_with_model_name_and_input_size(env):
    t = open_teacher(env["a_sd"], model="resnet18", input_size=32)
    assert isinstance(t, Teacher) and t.kind == "state-dict"
    # class count from the classifier, channels from the stem, ImageNet normalisation by default
    assert (t.num_classes, t.in_chans, t.input_size) == (10, 3, 32)
    assert t.mean == MEAN and t.std == STD
    assert t.teacher_hash == state_dict_hash(env["a"].state_dict()) == teacher_hash(env["a"])
    x, _ = folder_tensors(env["images"])
    assert torch.equal(t(x), env["a"](x).detach())
    # load_teacher: the (model, meta) pair with the facts in meta
    model, meta = load_teacher(env["a_sd"], model="resnet18", num_classes=10, input_size=32)
    assert meta["input_size"] == 32 and meta["teacher_hash"] == t.teacher_hash and meta["path"] == env["a_sd"]


def test_model_arg_input_size_is_the_input_size_and_bad_args_are_one_error(env):
    t = open_teacher(env["a_sd"], model="resnet18", model_args=["input_size=32"])
    assert t.input_size == 32
    with pytest.raises(ModelConfigError, match="input_size=28 contradicts input_size=32"):
        open_teacher(env["a_sd"], model="resnet18", input_size=32, model_args=["input_size=28"])
    with pytest.raises(ModelConfigError, match="does not take these arguments"):
        open_teacher(env["a_sd"], model="resnet18", input_size=32, model_args=["bogus=1"])
    with pytest.raises(ModelConfigError, match="KEY=VALUE"):
        open_teacher(env["a_sd"], model="resnet18", input_size=32, model_args=["nonsense"])


def test_plain_state_dict_needs_its_facts(env):
    with pytest.raises(CheckpointError, match="is not a ddpipe teacher file.*--model resnet18 --num-classes 10 --input-size 32"):
        open_teacher(env["a_sd"])
    with pytest.raises(TeacherError, match="--input-size"):
        open_teacher(env["a_sd"], model="resnet18")
    with pytest.raises(ClassCountMismatchError, match="100"):
        open_teacher(env["a_sd"], model="resnet18", num_classes=100, input_size=32)
    with pytest.raises(CheckpointError, match="does not fit model resnet50"):
        open_teacher(env["a_sd"], model="resnet50", input_size=32)
    with pytest.raises(CheckpointError, match="directory"):
        open_teacher(env["root"], model="resnet18", input_size=32)


def test_nn_module_teacher(env):
    t = open_teacher(env["a"], num_classes=10, input_size=32, mean=MEAN, std=STD)
    assert t.kind == "module" and t.source == "<ResNet>" and t.teacher_hash == teacher_hash(env["a"])
    with pytest.raises(TeacherError, match="input_size"):
        open_teacher(env["a"], num_classes=10)
    with pytest.raises(TeacherError, match="mean and std"):
        open_teacher(env["a"], num_classes=10, input_size=32, in_chans=1)
    with pytest.raises(TeacherError, match="cannot run on 1-channel 32 px inputs"):
        open_teacher(env["a"], num_classes=10, input_size=32, in_chans=1, mean=(0.5,), std=(0.5,))
    with pytest.raises(TeacherError, match=r"not \(1, 12\) logits"):
        open_teacher(env["a"], num_classes=12, input_size=32)
    with pytest.raises(TeacherError, match="3 finite numbers"):
        open_teacher(env["a"], num_classes=10, input_size=32, in_chans=3, mean=(0.5,), std=(0.5,))


def test_a_plain_state_dict_written_as_a_teacher_file_keeps_its_facts_and_hash(env, tmp_path):
    t = open_teacher(env["a_sd"], model="resnet18", num_classes=10, input_size=32)
    path = str(tmp_path / "teacher.pt")
    assert write_teacher(t, path) == t.teacher_hash
    f = open_teacher(path)
    assert f.kind == "teacher-file" and f.teacher_hash == t.teacher_hash
    assert (f.num_classes, f.in_chans, f.input_size, f.mean, f.std) == (10, 3, 32, MEAN, STD)
    x, _ = folder_tensors(env["images"])
    assert torch.equal(f(x), t(x))
    # facts given explicitly must agree with the file
    assert open_teacher(path, input_size=32).input_size == 32
    with pytest.raises(TeacherError, match="records 32 px inputs, not 224"):
        open_teacher(path, input_size=224)
    # a module not built by create_model cannot become a file (its architecture cannot be rebuilt)
    with pytest.raises(TeacherError, match="create_model"):
        write_teacher(open_teacher(env["a"], num_classes=10, input_size=32), str(tmp_path / "m.pt"))


def test_ensemble_and_its_hash(env):
    ts = open_teachers([env["a"], env["b"]], num_classes=10, input_size=32)
    assert teacher_hash(ts) not in (ts[0].teacher_hash, ts[1].teacher_hash)
    assert teacher_hash(ts[:1]) == ts[0].teacher_hash
    x, _ = folder_tensors(env["images"])
    out = Ensemble(ts, "cpu")(x)
    assert out.shape == (20, 10)
    with pytest.raises(ClassCountMismatchError, match="input_size"):
        open_teachers([open_teacher(env["a"], num_classes=10, input_size=32),
                       open_teacher(env["b"], num_classes=10, input_size=64)])


# --- checking a store against a teacher ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def store_a(env):
    out = str(env["root"] / "labels_a.zarr")
    run(RelabelConfig(images=env["images"], teacher=(env["a_sd"],), model="resnet18", num_classes=10, input_size=32,
                      out=out, epochs=3, batch_size=8, k=3, temperature=4.0, workers=0, progress=False,
                      device="cpu"))
    return out


def test_teacher_check_passes_on_the_right_teacher(env, store_a):
    facts = dict(model="resnet18", input_size=32)
    res = check_teacher(store_a, env["a_sd"], env["images"], sample=4, **facts)
    assert res.ok and res.hash_matches and len(res.checked_units) == 4 and res.samples_checked > 0
    assert res.mismatches == [] and "ok" in check_teacher_text(res)
    # every unit, the module form of the same teacher
    full = check_teacher(store_a, env["a"], env["images"], sample=0, num_classes=10, input_size=32)
    assert full.ok and len(full.checked_units) == full.units == 9
    # the first units (what train --check-teacher re-runs), and the config form of `ddpipe verify --teacher`
    assert check_teacher(store_a, env["a"], env["images"], units=[0, 1], num_classes=10, input_size=32).ok
    res = run_check(TeacherCheckConfig(store=store_a, teacher=(env["a_sd"],), images=env["images"], sample=2,
                                       model="resnet18", input_size=32, device="cpu", progress=False))
    assert res.ok and res.checked_units == sorted(res.checked_units) and len(res.checked_units) == 2


def test_teacher_check_catches_a_store_made_with_another_teacher(env, store_a):
    facts = dict(model="resnet18", input_size=32)
    # the recorded hash: one line naming both
    with pytest.raises(TeacherMismatchError, match="was labelled by teacher") as e:
        check_teacher_hash(store_a, env["b_sd"], **facts)
    assert "\n" not in str(e.value)
    with pytest.raises(TeacherMismatchError):
        check_teacher(store_a, env["b_sd"], env["images"], sample=2, **facts)
    # re-running the other teacher: every checked unit is named
    res = check_teacher(store_a, env["b_sd"], env["images"], sample=3, check_hash=False, **facts)
    assert not res.ok and res.hash_matches is False
    assert sorted(m["unit"] for m in res.mismatches) == res.checked_units
    assert all(m["bad_samples"] > 0 for m in res.mismatches)
    assert "3 unit(s) do not match" in check_teacher_text(res)
    # a teacher for another input size is refused before anything runs
    with pytest.raises(TeacherMismatchError, match="32x32 px crops"):
        check_teacher(store_a, env["a"], env["images"], num_classes=10, input_size=64, check_hash=False)


def test_teacher_check_flags():
    import argparse

    from ddpipe._flags import add_config_arguments, config_from_args

    p = add_config_arguments(argparse.ArgumentParser(), TeacherCheckConfig)
    ns = p.parse_args(["s.zarr", "--teacher", "t.pth", "--images", "imgs", "--sample", "3", "--no-check-hash",
                       "--model", "resnet18", "--input-size", "32", "--mean", "0.5,0.5,0.5", "--std", "0.2,0.2,0.2"])
    c = config_from_args(TeacherCheckConfig, ns)
    assert (c.store, c.teacher, c.sample, c.check_hash, c.model, c.input_size) == ("s.zarr", ("t.pth",), 3, False,
                                                                                    "resnet18", 32)
    assert c.mean == (0.5, 0.5, 0.5) and c.std == (0.2, 0.2, 0.2)
    assert c.teacher_facts()["input_size"] == 32


def test_squeeze_checkpoint_names_its_architecture_and_facts(env, tmp_path):
    """A `ddpipe squeeze` checkpoint.pth (weights, optimizer, config) with its results.json beside it."""
    import json

    sd = env["a"].state_dict()
    torch.save({"model": sd, "optimizer": {}, "epoch": 0, "config": {"model": "resnet18", "model_args": {}}},
               tmp_path / "checkpoint.pth")
    with pytest.raises(TeacherError, match="input size"):
        open_teacher(tmp_path / "checkpoint.pth")  # no results.json: the input size is not known
    with open(tmp_path / "results.json", "w") as f:
        json.dump({"dataset": {"num_classes": 10, "in_chans": 3, "input_size": 32, "mean": list(MEAN),
                               "std": list(STD)}}, f)
    t = open_teacher(tmp_path / "checkpoint.pth")
    assert t.kind == "checkpoint" and t.input_size == 32 and t.teacher_hash == teacher_hash(env["a"])


def test_teacher_check_of_an_ensemble_on_a_store_pruned_at_relabel(env, tmp_path):
    out = str(tmp_path / "ens.zarr")
    facts = dict(num_classes=10, input_size=32)
    res = run(RelabelConfig(images=env["images"], teacher=(env["a"], env["b"]), **facts, out=out, epochs=4,
                            batch_size=8, k=3, temperature=4.0, keep=0.5, workers=0, progress=False, device="cpu"))
    assert res.units == 6 and res.teacher_hash == teacher_hash([env["a"], env["b"]])
    assert check_teacher(out, [env["a"], env["b"]], env["images"], sample=0, **facts).ok
    with pytest.raises(TeacherMismatchError, match="<ResNet>"):
        check_teacher(out, [env["a"]], env["images"], **facts)
