"""A resume with any option that changes the result changed is refused, in one line naming the option.

For squeeze, recover, relabel and train: each phase runs once on digits (tiny model, one epoch or
batch), then every field its config declares as changing the result (``ddpipe.config.result_fields``,
so a new field is covered without editing this file) is changed in turn to another valid value and
the resumed run must stop before any heavy work with one line naming that field's flag and its old
and new value. A field whose type has no generic other value needs one in ``OTHER`` (the test fails
saying so).
"""

import dataclasses
import shutil
import typing

import numpy as np
import pytest

from ddpipe.config import field_choices, flag_text, result_fields
from ddpipe.errors import DDPipeError
from ddpipe.evaluate import recover, relabel, squeeze, student
from ddpipe.evaluate.datasets import load_dataset, real_subset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

Q = dict(progress=False, threads=1, device="cpu")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One run of each phase, and the paths the other values of path fields point at."""
    root = tmp_path_factory.mktemp("resume_fields")
    sq = squeeze.SqueezeConfig(out=str(root / "teacher"), dataset="digits", model="convnet_d2_w32_bn", epochs=2,
                               batch_size=64, max_train_samples=200, stop_after_epoch=0, **Q)
    assert squeeze.run(sq).status == "stopped"
    # a finished teacher for the other phases
    done = squeeze.run(dataclasses.replace(sq, out=str(root / "t1"), epochs=1, stop_after_epoch=None))
    teacher = done.teacher
    copy = str(root / "teacher_copy.pt")  # the same teacher under another name: another value of `teacher`
    shutil.copy(teacher, copy)
    rc = recover.RecoverRunConfig(out=str(root / "images"), method="sre2l", teacher=(teacher,), dataset="digits",
                                  ipc=1, iterations=2, stop_after_batches=1, **Q)
    recover.run(rc)
    other = str(root / "other.npz")
    sub = real_subset(load_dataset("digits"), 1, seed=1)
    np.savez(other, images=sub.images, labels=sub.labels)
    rl = relabel.RelabelConfig(images=rc.out, teacher=(teacher,), out=str(root / "labels.zarr"), epochs=2,
                               batch_size=5, k=3, temperature=4.0, workers=0, **Q)
    relabel.run(rl)
    tr = student.TrainConfig(images=rc.out, hard_labels=True, dataset="digits", out=str(root / "student"),
                             model="convnet_d2_w32_bn", epochs=2, batch_size=10, stop_after_epoch=0, workers=0, **Q)
    assert student.run(tr).status == "stopped"
    others = {
        "teacher": (copy,), "online_teacher": (teacher,), "init": teacher, "labels": rl.out, "images": other,
        "dataset": "fashion-mnist", "model": "convnet_d1_w32_bn", "dm_model": "convnet_d2_w32_bn",
        "schedule": "sre2l-mixup", "method": "random", "model_args": ("width=16",), "mean": (0.5,), "std": (0.25,),
    }
    return {"squeeze": (dataclasses.replace(sq, resume=True), squeeze.run), "recover": (rc, recover.run),
            "relabel": (dataclasses.replace(rl, resume=True), relabel.run),
            "train": (dataclasses.replace(tr, resume=True), student.run), "others": others}


# changing some fields alone makes an invalid config (train: exactly one label mode); these go with them
WITH = {"hard_labels": lambda others: {"online_teacher": others["online_teacher"]},
        "labels": lambda others: {"hard_labels": False},
        "online_teacher": lambda others: {"hard_labels": False},
        "derived_fields": lambda others: {"format_version": 4},
        "index_coding": lambda others: {"format_version": 4}}


def _candidates(cls, name: str, value, others: dict) -> list:
    """Other values of field ``name``, in the order tried: the fixture's, another choice, then by type."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    out = []
    if name in others:
        out.append(others[name])
    choices = field_choices(f)
    if choices is not None:
        out += [c for c in choices if c != value]
    tp = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    base = args[0] if typing.get_origin(tp) in (typing.Union, type(int | None)) and len(args) == 1 else tp
    if base is bool:
        out += [True, False] if value is None else [not value]
    elif base is int:
        out += [2, 16] if value is None else [value + 1]
    elif base is float:
        out += [0.5, 0.25] if value is None or value == 0 else [value * 0.5]
    elif base is str:
        out.append(f"{value}_other")
    return [v for v in out if v != value]


def _changed(config, name: str, others: dict):
    """``config`` with field ``name`` (and what must go with it) changed to another valid value."""
    cls = type(config)
    extras = [{}] + ([WITH[name](others)] if name in WITH else [])
    for value in _candidates(cls, name, getattr(config, name), others):
        for extra in extras:
            try:
                return dataclasses.replace(config, **{name: value, **extra})
            except DDPipeError:
                continue
    pytest.fail(f"{cls.__name__}.{name}: no other valid value found; add one to `others` in this test's fixture")


def _cases():
    out = []
    for phase, cls in (("squeeze", squeeze.SqueezeConfig), ("recover", recover.RecoverRunConfig),
                       ("relabel", relabel.RelabelConfig), ("train", student.TrainConfig)):
        out += [(phase, name) for name in result_fields(cls)]
    return out


@pytest.mark.parametrize("phase,name", _cases(), ids=[f"{p}-{n}" for p, n in _cases()])
def test_resume_with_a_result_field_changed_is_refused_in_one_line(runs, phase, name):
    config, run = runs[phase]
    changed = _changed(config, name, runs["others"])
    with pytest.raises(DDPipeError) as e:
        run(changed)
    msg = str(e.value)
    flag = flag_text(type(config), name)
    assert "\n" not in msg, msg
    assert f"{flag} " in msg and " -> " in msg and "other settings" in msg, msg


def test_fields_that_do_not_change_the_result_are_declared():
    """The run options, outputs and checks are not result fields; the declared ones stay so."""
    for cls in (squeeze.SqueezeConfig, recover.RecoverRunConfig, relabel.RelabelConfig, student.TrainConfig):
        fields = set(result_fields(cls))
        assert not fields & {"device", "threads", "progress", "resume", "out", "overwrite", "data_root",
                             "val_every", "stop_after_epoch", "stop_after_batches", "check_teacher", "check_units"}
    assert {"min_scale", "momentum", "schedule_seed"} <= set(result_fields(student.TrainConfig))  # issue 23's run
    assert "workers" in result_fields(squeeze.SqueezeConfig)  # DataLoader workers draw their own augmentation
    assert "workers" not in result_fields(student.TrainConfig)  # the schedule draws the replay


@pytest.mark.parametrize("phase", ["relabel", "recover", "train"])
def test_the_same_options_resume(runs, phase):
    """Only the run options changed: the resume goes on (relabel and recover find their work done)."""
    config, run = runs[phase]
    res = run(dataclasses.replace(config, threads=2))
    assert getattr(res, "status" if phase != "relabel" else "units") in ("complete", 4)
