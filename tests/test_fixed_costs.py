"""What a run pays once, made cheaper without changing any output: a teacher opened without the random
initialisation its weights replace (``evaluate.teacher``), and checkpoints made durable by a background
thread in the order written (``evaluate.checkpoint.Commits``, ``ddpipe._files.write_temp`` / ``commit_temp``)."""

import json
import os

import pytest
import torch

from ddpipe._files import commit_temp, write_temp
from ddpipe.evaluate.checkpoint import Commits, load_checkpoint, save_atomic
from ddpipe.evaluate.models import create_model
from ddpipe.evaluate.teacher import open_teacher, state_dict_hash, write_teacher


@pytest.fixture
def resnet(tmp_path, one_torch_thread):
    torch.manual_seed(3)
    model = create_model("resnet18", 10, 3, 32).eval()
    with torch.no_grad():  # running statistics that are not the defaults
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    path = str(tmp_path / "r18.pth")
    torch.save(model.state_dict(), path)
    return model, path


@pytest.mark.parametrize("form", ["state-dict", "teacher-file"])
def test_teacher_opened_without_init_is_the_same_and_draws_nothing(resnet, tmp_path, form):
    model, path = resnet
    if form == "teacher-file":
        path_tf = str(tmp_path / "teacher.pt")
        write_teacher(open_teacher(path, model="resnet18", input_size=32), path_tf)
        path = path_tf
    before = torch.get_rng_state()
    t = open_teacher(path, model="resnet18", input_size=32)
    assert torch.equal(torch.get_rng_state(), before)  # the skipped initialisation drew nothing
    sd, ours = model.state_dict(), t.model.state_dict()
    assert list(ours) == list(sd)
    for k in sd:
        assert ours[k].dtype == sd[k].dtype and torch.equal(ours[k], sd[k]), k
    assert t.teacher_hash == state_dict_hash(sd)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(t(x), model(x))


def test_teacher_with_other_dtypes_or_missing_keys_is_built_as_before(resnet, tmp_path):
    model, path = resnet
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    p16 = str(tmp_path / "half.pth")
    torch.save(half, p16)
    t = open_teacher(p16, model="resnet18", input_size=32)  # cast into float32 parameters, as a plain load does
    assert all(v.dtype != torch.float16 for v in t.model.state_dict().values())
    for k, v in half.items():
        assert torch.equal(t.model.state_dict()[k], v.to(t.model.state_dict()[k].dtype)), k
    short = dict(model.state_dict())
    short.pop("fc.bias")
    p_short = str(tmp_path / "short.pth")
    torch.save(short, p_short)
    from ddpipe.evaluate.errors import CheckpointError

    with pytest.raises(CheckpointError, match="missing keys"):
        open_teacher(p_short, model="resnet18", input_size=32)


def test_write_temp_then_commit_is_replace_atomically(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    tmp = write_temp(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"old" and os.path.exists(tmp) and os.path.dirname(tmp) == str(tmp_path)
    commit_temp(tmp, path)
    assert path.read_bytes() == b"new" and not os.path.exists(tmp)
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_commits_put_files_in_place_in_order(tmp_path):
    c = Commits()
    ck, res = str(tmp_path / "checkpoint.pth"), str(tmp_path / "results.json")
    doc = {"epoch": 0, "history": [{"loss": 1.0}]}
    c.save({"w": torch.arange(5), "epoch": 0}, ck)
    c.write_json(doc, res)
    doc["history"].append({"loss": 2.0})  # copied when given: the file holds what was given
    c.wait()
    assert torch.equal(load_checkpoint(ck)["w"], torch.arange(5))
    assert json.load(open(res)) == {"epoch": 0, "history": [{"loss": 1.0}]}
    big = {"w": torch.randn(5_000_000, generator=torch.Generator().manual_seed(0)), "epoch": 1}  # 20 MB: writeback starts early
    c.save(big, ck)
    c.close()
    assert load_checkpoint(ck)["epoch"] == 1
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pth", "results.json"]  # no temporaries left
    ref = str(tmp_path / "ref" / "checkpoint.pth")
    save_atomic(big, ref)
    assert open(ck, "rb").read() == open(ref, "rb").read()  # the bytes save_atomic writes


def test_commits_drop_what_follows_a_failure(tmp_path, monkeypatch):
    import ddpipe.evaluate.checkpoint as ckpt

    calls = []

    def failing(tmp, path):
        calls.append(path)
        os.unlink(tmp)  # as the real one does on failure
        raise OSError(28, "No space left on device", path)

    monkeypatch.setattr(ckpt, "commit_temp", failing)
    c = Commits()
    ck, res = str(tmp_path / "checkpoint.pth"), str(tmp_path / "results.json")
    c.save({"epoch": 3}, ck)
    c.write_json({"status": "running"}, res)  # must not reach its path ahead of the checkpoint
    with pytest.raises(OSError, match="No space left"):
        c.close()
    assert calls == [ck]
    assert os.listdir(tmp_path) == []  # the checkpoint's temporary removed, results.json never written
