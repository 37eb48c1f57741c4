"""ddpipe.synth with tiny teachers trained on digits: every method lowers its matching loss, class-wise
BN statistics, DELT budgets, one DM step by hand, resume, output layout, the recover and show phases."""

import copy
import json
import os

import numpy as np
import pytest
import torch

import ddpipe.synth as S
from ddpipe.evaluate.datasets import load_dataset
from ddpipe.evaluate.models import collect_class_stats, convert_to_classwise_bn, create_model
from ddpipe.synth.losses import LossTerm
from ddpipe.synth.stats import Recorder, channel_stats

IPC = 2
# on 8 px digits a RandomResizedCrop down to 8 % of the area leaves 2x2 pixels; the loss tests turn the
# crop and jitter off so that the augmented and the evaluated images agree (the recipes keep them).
PLAIN = dict(flip=False, random_crop=False, jitter=0)
# each method's matching terms at weight 1 (the paper weights, e.g. r_bn 0.01, let cross-entropy dominate at 8 px)
MATCH = {
    "sre2l.test": ({"ce": 1.0, "bn_stats": 1.0}, ["bn_stats"]),
    "cda.test": ({"ce": 1.0, "bn_stats": 1.0}, ["bn_stats"]),
    "lpld.test": ({"ce": 1.0, "class_bn_stats": 1.0}, ["class_bn_stats"]),
    "delt.test": ({"ce": 1.0, "bn_stats": 1.0}, ["total"]),
    "gvbsm.test": ({"ce": 1.0, "bn_stats_ema": 1.0, "conv_stats": 1.0, "densify": 1.0}, ["conv_stats", "densify"]),
    "dm.test": ({"dm_mean": 1.0}, ["dm_mean"]),
}


def _train(name, epochs, seed, ds):
    torch.manual_seed(seed)
    m = create_model(name, ds.num_classes, ds.in_chans, ds.input_size)
    x = (torch.from_numpy(ds.train.images).permute(0, 3, 1, 2).float() / 255 - ds.mean[0]) / ds.std[0]
    y = torch.from_numpy(ds.train.labels)
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    for _ in range(epochs):
        perm = torch.randperm(len(y))
        for s in range(0, len(y), 64):
            i = perm[s:s + 64]
            loss = torch.nn.functional.cross_entropy(m(x[i]), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return m.eval()


@pytest.fixture(scope="module")
def env():
    torch.set_num_threads(1)
    ds = load_dataset("digits")
    teacher = _train("convnet_d2_w32_bn", 3, 0, ds)
    second = _train("test_convnet", 3, 1, ds)
    real = S.RealData(ds.train.labels, images=ds.train.images)
    return dict(ds=ds, teacher=teacher, second=second, real=real)


def _dm_net():
    """DM's random network for 8 px digits: evaluate's ConvNet (synth has none of its own), narrow and shallow."""
    return create_model("convnet", 10, 1, 8, width=16, depth=2)


def _engine(env, name, **overrides):
    cfg = S.create_method(name, **overrides)
    teachers = [env["teacher"], env["second"]] if cfg.method == "gvbsm" else [env["teacher"]]
    model_fn = (lambda: _dm_net()) if cfg.method == "dm" else None
    ds = env["ds"]
    return S.Engine(cfg, teachers=teachers, real=env["real"], num_classes=10, ipc=IPC, mean=ds.mean, std=ds.std,
                    model_fn=model_fn)


def test_teacher_is_trained(env):
    ds = env["ds"]
    x = (torch.from_numpy(ds.test.images).permute(0, 3, 1, 2).float() / 255 - ds.mean[0]) / ds.std[0]
    acc = (env["teacher"](x).argmax(1).numpy() == ds.test.labels).mean()
    assert acc > 0.8


@pytest.mark.parametrize("name", sorted(MATCH))
def test_method_lowers_its_matching_loss(env, name):
    loss, watched = MATCH[name]
    its = {"delt.test": 40}.get(name, 30)
    eng = _engine(env, name, iterations=its, loss=loss, **PLAIN, **({"round_iterations": 10} if name == "delt.test" else {}))
    eng.prepare()
    batch = eng.batches()[0]
    x0 = eng.init_images(batch, eng.batch_generator(0))
    x1, history = eng.optimise(batch, 0)
    assert len(history) == eng.cfg.iterations  # delt: all R = 4 rounds run, also with ipc 2 < R (as DELT's recover.py)
    before, after = eng.evaluate_loss(batch, x0), eng.evaluate_loss(batch, x1)
    for term in watched:
        assert after[term] < before[term], (name, term, before, after)
    assert after["total"] < before["total"]
    print(f"{name}: " + ", ".join(f"{t} {before[t]:.4g} -> {after[t]:.4g}" for t in dict.fromkeys(watched + ["total"])))


@pytest.mark.parametrize("name", S.list_methods("*.test"))
def test_every_recipe_writes_a_readable_image_folder(env, name, tmp_path):
    from ddpipe.pipeline import open_source

    ds = env["ds"]
    cfg = S.create_method(name)
    teachers = [env["teacher"], env["second"]] if cfg.method == "gvbsm" else [env["teacher"]]
    res = S.recover(name, teachers=teachers, real=env["real"], num_classes=10, ipc=IPC, mean=ds.mean, std=ds.std,
                    out=str(tmp_path / "set"), progress=False, flip=False,
                    model_fn=(lambda: _dm_net()) if cfg.method == "dm" else None)
    assert res["status"] == "complete" and res["counts"] == [IPC] * 10 and res["recipe"] == name
    src = open_source(str(tmp_path / "set"))
    assert len(src) == 10 * IPC and src.labels.tolist() == [c for c in range(10) for _ in range(IPC)]
    names = sorted(os.listdir(tmp_path / "set" / "new000"))
    assert names == ["class000_id000.png", "class000_id001.png"]
    from PIL import Image

    with Image.open(tmp_path / "set" / "new003" / "class003_id001.png") as img:
        assert img.mode == "L" and img.size == (8, 8)
    man = json.loads((tmp_path / "set" / "manifest.json").read_text())
    assert man["config"]["method"] == cfg.method and man["teacher_hashes"] == [S.module_hash(t) for t in teachers]
    assert man["wall_time_s"] > 0 and len(man["batches_done"]) == man["batches_total"]
    if cfg.select in ("random", "herding"):  # the selected images are real ones, bit for bit (rded: below)
        with Image.open(tmp_path / "set" / "new004" / "class004_id001.png") as img:
            got = np.asarray(img).reshape(8, 8, 1).tobytes()
        assert got in {env["real"].images[i].tobytes() for i in np.flatnonzero(env["real"].labels == 4)}


def test_cda_crop_scale_follows_the_curriculum(env, monkeypatch):
    import ddpipe.synth.engine as engine_mod

    seen = []
    real_aug = engine_mod.sre2l_augment

    def spy(x, gen, **kw):
        seen.append(kw["min_scale"])
        return real_aug(x, gen, **kw)

    monkeypatch.setattr(engine_mod, "sre2l_augment", spy)
    eng = _engine(env, "cda.test", iterations=6, flip=False)
    eng.optimise(eng.batches()[0], 0)
    from ddpipe.synth.augment import cda_min_scale

    assert seen == [pytest.approx(cda_min_scale(i, 6, 0.08, 1.0)) for i in range(6)]
    assert seen[0] == pytest.approx(1.0) and seen[-1] < 0.2
    seen.clear()
    eng = _engine(env, "sre2l.test", iterations=3, flip=False)
    eng.optimise(eng.batches()[0], 0)
    assert seen == [0.08] * 3


def test_class_bn_statistics_equal_direct_per_class_statistics(env):
    ds, teacher = env["ds"], env["teacher"]
    eng = _engine(env, "lpld.test")
    got = eng.class_bn_targets(0)
    x = eng.normalise(ds.train.images)
    y = torch.from_numpy(ds.train.labels)
    with Recorder(teacher) as rec, torch.no_grad():
        for c in range(10):
            rec.clear()
            teacher(x[y == c])  # all images of class c in one batch: the definition
            for name, inp in rec.bn.items():
                mean, var = channel_stats(inp.double())
                assert torch.allclose(got[name][0][c].double(), mean, atol=1e-5), (name, c)
                assert torch.allclose(got[name][1][c].double(), var, atol=1e-5), (name, c)
    # a teacher carrying LPLD's buffers is used as is (here collected exactly by evaluate's forward pass)
    lpld_teacher = convert_to_classwise_bn(copy.deepcopy(teacher), 10, momentum=None)
    loader = [(x[s:s + 100], y[s:s + 100]) for s in range(0, len(y), 100)]
    collect_class_stats(lpld_teacher, loader)
    eng2 = S.Engine(S.create_method("lpld.test"), teachers=[lpld_teacher], real=None, num_classes=10, ipc=IPC,
                    mean=ds.mean, std=ds.std, input_size=8, in_chans=1)
    buf = eng2.class_bn_targets(0)
    for name in got:
        assert torch.allclose(buf[name][0], got[name][0], atol=1e-4)
        assert torch.allclose(buf[name][1], got[name][1], atol=1e-4)


def test_lpld_batches_hold_one_class(env):
    eng = _engine(env, "lpld.test")
    assert [set(b.classes) for b in eng.batches()] == [{c} for c in range(10)]
    sre = _engine(env, "sre2l.test")
    assert [b.classes for b in sre.batches()] == [tuple(range(10))] * IPC  # one image of every class


class _Spy(LossTerm):
    """Counts how many images each iteration optimises."""

    name = "test_spy"
    uses_teacher = False
    sizes: list = []

    def __call__(self, step):
        type(self).sizes.append(len(step.x_syn))
        return (step.x_syn ** 2).mean() * 0


def test_delt_iteration_budgets_equal_the_formula(env):
    S.register_loss(_Spy)
    ipc, itr, rnd = 5, 12, 3  # R = 4 rounds, subsets [2, 1, 1, 1] get [12, 9, 6, 3] iterations
    cfg = S.create_method("delt.test", iterations=itr, round_iterations=rnd, loss={"test_spy": 1.0}, batch_size=ipc)
    ds = env["ds"]
    eng = S.Engine(cfg, teachers=[env["teacher"]], real=env["real"], num_classes=10, ipc=ipc, mean=ds.mean, std=ds.std)
    _Spy.sizes = []
    batch = eng.batches()[0]
    assert set(batch.classes) == {0}
    x, history = eng.optimise(batch, 0)
    sched = S.delt_schedule(ipc, itr, rnd)
    assert [(s, n) for s, _, n in sched] == [(2, 12), (1, 9), (1, 6), (1, 3)]
    assert len(history) == 12
    # per iteration, the active images are the subsets that joined by that round
    assert _Spy.sizes == [2] * 3 + [3] * 3 + [4] * 3 + [5] * 3
    assert sum(_Spy.sizes) == sum(s * n for s, _, n in sched)
    # medium init: images come from the middle of the class's score ranking
    order = eng.rank_class(0, "medium")
    assert torch.allclose(eng.init_images(batch, eng.batch_generator(0)), eng.normalise(env["real"].get(order[:ipc])))


def test_delt_skips_the_rounds_before_a_split_class_batch_first_image(env):
    # ipc 4 > batch 2: a class spans two batches; R = 4 rounds, image i joins at round i. DELT's recover.py
    # deletes rounds in which no image of the batch is active, so the second batch (images 2, 3) runs 2 rounds
    S.register_loss(_Spy)
    cfg = S.create_method("delt.test", iterations=8, round_iterations=2, loss={"test_spy": 1.0}, batch_size=2)
    ds = env["ds"]
    eng = S.Engine(cfg, teachers=[env["teacher"]], real=env["real"], num_classes=10, ipc=4, mean=ds.mean, std=ds.std)
    first, second = eng.batches()[:2]
    assert (first.indices, second.indices) == ((0, 1), (2, 3))
    _Spy.sizes = []
    eng.optimise(first, 0)
    assert _Spy.sizes == [1] * 2 + [2] * 6
    _Spy.sizes = []
    eng.optimise(second, 1)
    assert _Spy.sizes == [1] * 2 + [2] * 2


def test_dm_needs_a_network_from_the_caller(env):
    """synth defines no network: DM without model_fn is one clear error at construction."""
    ds = env["ds"]
    with pytest.raises(S.SynthConfigError, match="model_fn"):
        S.Engine(S.create_method("dm.test"), real=env["real"], num_classes=10, ipc=IPC, mean=ds.mean, std=ds.std)


def test_one_dm_step_equals_a_hand_computation(env):
    ds = env["ds"]
    torch.manual_seed(5)
    net = _dm_net()
    cfg = S.create_method("dm.test", iterations=1, dsa="", batch_real=10_000, lr=0.7)  # "" = no DSA (None = recipe)
    eng = S.Engine(cfg, real=env["real"], num_classes=10, ipc=IPC, mean=ds.mean, std=ds.std,
                   model_fn=lambda: copy.deepcopy(net))
    batch = eng.batches()[0]
    x0 = eng.init_images(batch, eng.batch_generator(0)).clone().requires_grad_(True)
    x1, history = eng.optimise(batch, 0)
    # by hand: sum over classes of the squared distance between mean embeddings of all real and the synthetic images
    labels = torch.tensor(batch.classes)
    loss = 0.0
    for c in range(10):
        real = eng.normalise(ds.train.images[ds.train.labels == c])
        loss = loss + ((net.embed(real).mean(0) - net.embed(x0[labels == c]).mean(0)) ** 2).sum()
    assert history[0]["dm_mean"] == pytest.approx(loss.item(), rel=1e-5)
    (grad,) = torch.autograd.grad(loss, x0)
    assert torch.allclose(x1, x0.detach() - 0.7 * grad, atol=1e-5)  # SGD's first step: momentum buffer = grad


def test_gvbsm_conv_statistics_are_cached(env, tmp_path):
    cache = str(tmp_path / "stats.pt")
    eng = _engine(env, "gvbsm.test")
    eng.stats_cache = cache
    first = eng.conv_targets(0)
    assert os.path.exists(cache)
    stamp = os.stat(cache).st_mtime_ns
    eng2 = _engine(env, "gvbsm.test")
    eng2.stats_cache = cache
    import ddpipe.synth.engine as engine_mod

    real_collect = engine_mod.collect_conv_stats
    engine_mod.collect_conv_stats = lambda *a, **k: pytest.fail("recomputed cached statistics")
    try:
        again = eng2.conv_targets(0)
    finally:
        engine_mod.collect_conv_stats = real_collect
    assert os.stat(cache).st_mtime_ns == stamp
    for name in first:
        assert set(first[name]) == {"mean", "var", "patch_mean", "patch_var"}
        assert torch.equal(first[name]["patch_var"], again[name]["patch_var"])
    # the first conv sees the normalised images: 2x2 patches of 4 px for 8 px digits
    conv1 = first["features.0"]
    assert conv1["mean"].shape == (1,) and conv1["patch_mean"].shape == (4,)


def test_resume_continues_from_the_last_finished_batch(env, tmp_path):
    ds = env["ds"]
    kw = dict(teachers=[env["teacher"]], real=env["real"], num_classes=10, ipc=3, mean=ds.mean, std=ds.std,
              progress=False, iterations=4, flip=False)
    full = S.recover("sre2l.test", out=str(tmp_path / "full"), **kw)
    part = S.recover("sre2l.test", out=str(tmp_path / "part"), stop_after_batches=1, **kw)
    assert part["status"] == "stopped" and part["batches_done"] == ["id0000_c00000"]
    first = tmp_path / "part" / "new000" / "class000_id000.png"
    stamp = first.stat().st_mtime_ns
    assert not (tmp_path / "part" / "new000" / "class000_id001.png").exists()
    done = S.recover("sre2l.test", out=str(tmp_path / "part"), **kw)
    assert done["status"] == "complete" and done["resumed_batches"] == 1 and done["runs"] == 2
    assert first.stat().st_mtime_ns == stamp  # the finished batch was not redone
    for c in range(10):
        for i in range(3):
            rel = f"new{c:03d}/class{c:03d}_id{i:03d}.png"
            assert (tmp_path / "part" / rel).read_bytes() == (tmp_path / "full" / rel).read_bytes(), rel
    again = S.recover("sre2l.test", out=str(tmp_path / "part"), **kw)  # nothing left to do
    assert again["resumed_batches"] == 3
    with pytest.raises(S.RunStateError, match="config"):
        S.recover("sre2l.test", out=str(tmp_path / "part"), **{**kw, "iterations": 5})
    redo = S.recover("sre2l.test", out=str(tmp_path / "part"), overwrite=True, **{**kw, "iterations": 5})
    assert redo["resumed_batches"] == 0 and redo["status"] == "complete"


def test_a_killed_run_resumes(env, tmp_path):
    """A batch whose images were written but not yet recorded is redone; a half-written file is replaced."""
    ds = env["ds"]
    kw = dict(teachers=[env["teacher"]], real=env["real"], num_classes=10, ipc=2, mean=ds.mean, std=ds.std,
              progress=False, iterations=3, flip=False, out=str(tmp_path / "k"))
    S.recover("sre2l.test", stop_after_batches=1, **kw)
    # simulate a kill in the middle of batch 2: a truncated file, no manifest entry
    (tmp_path / "k" / "new000" / "class000_id001.png").write_bytes(b"\x89PNG trunc")
    res = S.recover("sre2l.test", **kw)
    assert res["status"] == "complete" and res["resumed_batches"] == 1
    from PIL import Image

    with Image.open(tmp_path / "k" / "new000" / "class000_id001.png") as img:
        assert img.size == (8, 8)


def test_jpeg_output_and_refusing_a_foreign_folder(env, tmp_path):
    ds = env["ds"]
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    kw = dict(teachers=[env["teacher"]], real=env["real"], num_classes=10, ipc=1, mean=ds.mean, std=ds.std,
              progress=False)
    with pytest.raises(S.RunStateError, match="not empty"):
        S.recover("random.test", out=str(tmp_path / "busy"), **kw)
    res = S.recover("herding.test", out=str(tmp_path / "j"), image_format="jpeg", jpeg_quality=75, **kw)
    assert res["image_format"] == "jpeg" and (tmp_path / "j" / "new009" / "class009_id000.jpg").exists()


def test_recover_and_show_phases(env, tmp_path):
    from ddpipe.evaluate import recover as phase
    from ddpipe.evaluate import show
    from ddpipe.evaluate.squeeze import write_teacher

    ds = env["ds"]
    path = str(tmp_path / "teacher.pt")
    write_teacher(env["teacher"], path, ds, {"top1": 0.0})
    out = str(tmp_path / "rec")
    res = phase.run(phase.RecoverRunConfig(out=out, method="sre2l.test", teacher=(path,), ipc=2, iterations=3,
                                           progress=False, r_bn=0.5))
    assert res.status == "complete" and res.extra["dataset"] == "digits"
    assert res.method_config["loss"] == {"ce": 1.0, "bn_stats": 0.5} and res.method_config["flip"] is False
    assert "recover complete" in phase.summary_text(res)
    # LPLD through the phase with a teacher file carrying class-wise BN buffers: they are used as is
    lpld_teacher = convert_to_classwise_bn(copy.deepcopy(env["teacher"]), 10, momentum=None)
    x = (torch.from_numpy(ds.train.images).permute(0, 3, 1, 2).float() / 255 - ds.mean[0]) / ds.std[0]
    collect_class_stats(lpld_teacher, [(x, torch.from_numpy(ds.train.labels))])
    write_teacher(lpld_teacher, str(tmp_path / "lpld.pt"), ds, {"top1": 0.0})
    res = phase.run(phase.RecoverRunConfig(out=str(tmp_path / "lpld"), method="lpld.test",
                                           teacher=(str(tmp_path / "lpld.pt"),), ipc=1, iterations=2, progress=False))
    assert res.notes["class_bn_stats_teacher0"].startswith("teacher buffers") and res.counts == [1] * 10
    # DM through the phase: the random networks are evaluate's ConvNet
    res = phase.run(phase.RecoverRunConfig(out=str(tmp_path / "dm"), method="dm.test", dataset="digits", ipc=1,
                                           iterations=1, progress=False))
    assert res.counts == [1] * 10 and res.extra["dm_model"] == "convnet"
    grid = show.run(show.ShowConfig(src=out, out=str(tmp_path / "grid.png"), min_cell=16))
    from PIL import Image

    with Image.open(grid.out) as img:
        assert img.mode == "L" and grid.rows == 10 and grid.per_class == 2
        assert img.size == (2 + 2 * (16 + 2), 2 + 10 * (16 + 2))
    assert "10 classes" in show.summary_text(grid)


@pytest.mark.slow
def test_sigkill_then_rerun_continues_from_the_last_finished_batch(env, tmp_path):
    """A real kill: `recover` in a child process is SIGKILLed after its first recorded batch; the rerun skips it."""
    import signal
    import subprocess
    import sys
    import time

    from ddpipe.evaluate import recover as phase
    from ddpipe.evaluate.squeeze import write_teacher

    path = str(tmp_path / "teacher.pt")
    write_teacher(env["teacher"], path, env["ds"], {"top1": 0.0})
    out = tmp_path / "killed"
    code = ("import torch; torch.set_num_threads(1); from ddpipe.evaluate import recover as p; "
            f"p.run(p.RecoverRunConfig(out={str(out)!r}, method='sre2l.test', teacher=({path!r},), ipc=4, iterations=150, "
            "progress=False))")
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            man = out / "manifest.json"
            if man.exists() and json.loads(man.read_text())["batches_done"]:
                break
            if child.poll() is not None:
                pytest.fail("the child finished before it could be killed")
            time.sleep(0.05)
        else:
            pytest.fail("no batch finished within 120 s")
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    before = json.loads((out / "manifest.json").read_text())
    assert before["status"] == "running" and 1 <= len(before["batches_done"]) < before["batches_total"]
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("new000/*.png")}
    res = phase.run(phase.RecoverRunConfig(out=str(out), method="sre2l.test", teacher=(path,), ipc=4,
                                           iterations=150, progress=False))
    assert res.status == "complete" and res.resumed_batches == len(before["batches_done"])
    assert res.batches_done[: len(before["batches_done"])] == before["batches_done"]
    assert res.counts == [4] * 10
    for i in range(len(before["batches_done"])):  # finished batches were not rewritten
        p = out / "new000" / f"class000_id{i:03d}.png"
        assert p.stat().st_mtime_ns == stamps[p]


def test_gvbsm_uses_its_teachers_round_robin(env):
    calls = []
    eng = _engine(env, "gvbsm.test", iterations=5, flip=False)
    eng.prepare()  # the real-data statistics pass, before counting
    handles = [t.register_forward_hook(lambda m, i, o, k=k: calls.append(k))
               for k, t in enumerate([env["teacher"], env["second"]])]
    try:
        eng.optimise(eng.batches()[0], 0)
    finally:
        for h in handles:
            h.remove()
    assert calls == [0, 1, 0, 1, 0]
    assert eng.batches()[0].classes == tuple(c for c in range(5) for _ in range(IPC))  # bs 10 // ipc 2 = 5 classes


def test_bn_terms_refuse_a_teacher_without_batch_norm(env):
    ds = env["ds"]
    no_bn = create_model("test_convnet_in", 10, 1, 8).eval()
    eng = S.Engine(S.create_method("sre2l.test"), teachers=[no_bn], real=env["real"], num_classes=10, ipc=1,
                   mean=ds.mean, std=ds.std)
    with pytest.raises(S.TeacherError, match="no BatchNorm2d"):
        eng.prepare()
    with pytest.raises(S.SynthConfigError, match="needs at least one teacher"):
        S.Engine(S.create_method("herding.test"), real=env["real"], num_classes=10, ipc=1, mean=ds.mean, std=ds.std)


@pytest.mark.slow
def test_fashion_mnist_lpld_and_herding(tmp_path):
    """Fashion-MNIST at tiny scale: a teacher on 2,000 images, LPLD lowers its class-BN loss, herding selects."""
    from ddpipe.evaluate.datasets import FASHION_MNIST_DIR

    if not os.path.isdir(FASHION_MNIST_DIR):
        pytest.skip(f"{FASHION_MNIST_DIR} missing (Debian package dataset-fashion-mnist)")
    ds = load_dataset("fashion-mnist")
    pick = np.random.default_rng(0).permutation(len(ds.train))[:2000]
    sub = ds.train.subset(np.sort(pick))
    small = copy.copy(ds)
    small.train = sub
    teacher = _train("convnet_d3_w32_bn", 2, 0, small)
    real = S.RealData(sub.labels, images=sub.images)
    common = dict(teachers=[teacher], real=real, num_classes=10, ipc=2, mean=ds.mean, std=ds.std, progress=False)
    res = S.recover("lpld.test", out=str(tmp_path / "lpld"), iterations=25, loss={"ce": 1.0, "class_bn_stats": 1.0},
                    min_scale=0.5, jitter=2, **common)
    ends = [v["class_bn_stats"] for v in res["losses"].values()]
    assert all(e["end"] < e["start"] for e in ends), ends
    res = S.recover("herding", out=str(tmp_path / "herd"), **common)
    from PIL import Image

    with Image.open(tmp_path / "herd" / "new007" / "class007_id001.png") as img:
        assert img.size == (28, 28) and img.mode == "L"
    assert res["counts"] == [2] * 10


# --- RDED: stitched, teacher-scored patches of real images ----------------------------------------------------
def _rded(env, name="rded.test", ipc=IPC, **overrides):
    ds = env["ds"]
    return S.Engine(S.create_method(name, **overrides), teachers=[env["teacher"]], real=env["real"], num_classes=10,
                    ipc=ipc, mean=ds.mean, std=ds.std)


def test_rded_draw_is_torchvisions_random_resized_crop():
    """The seeded crop draw equals torchvision's RandomResizedCrop.get_params (ratio 1) under the same seed."""
    import torchvision.transforms as T

    from ddpipe.synth.rded import square_crop_box

    for h, w in ((8, 8), (28, 28), (20, 28)):
        gen = torch.Generator().manual_seed(11)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(11)
            theirs = [tuple(T.RandomResizedCrop.get_params(torch.zeros(1, h, w), [0.08, 1.0], [1.0, 1.0]))
                      for _ in range(100)]
        assert [square_crop_box(gen, h, w, (0.08, 1.0)) for _ in range(100)] == theirs


def test_rded_cells_and_stitch_on_an_odd_side():
    from ddpipe.synth.rded import cell_grid, stitch

    assert cell_grid(9, 2) == [(0, 0, 5, 5), (0, 5, 5, 4), (5, 0, 4, 5), (5, 5, 4, 4)]
    assert cell_grid(8, 1) == [(0, 0, 8, 8)]
    patches = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1).expand(8, 1, 4, 4).contiguous()
    out = stitch(patches, 9, 2, ipc=2)  # patch q * ipc + t fills cell q of image t, resized to the cell
    assert out.shape == (2, 1, 9, 9)
    for t in range(2):
        for q, (top, left, h, w) in enumerate(cell_grid(9, 2)):
            assert torch.all(out[t, 0, top:top + h, left:left + w] == q * 2 + t)


def test_rded_images_are_stitched_resized_crops_of_real_images_of_their_class(env):
    """Every cell of a synthetic image equals torchvision's resized crop (antialias, as RandomResizedCrop) of a
    real image of its class, normalised; each kept crop is its image's lowest-scoring one and every kept image
    scores no worse than any image left out; the teacher's score is -log p(class) of the zero-padded patch."""
    from torchvision.transforms import functional as TF

    ds, teacher = env["ds"], env["teacher"]
    eng = _rded(env)
    cfg = eng.cfg
    for c in (0, 7):
        r = S.rded.rded_class(eng, c)
        assert r.images.shape == (IPC, 1, 8, 8) and r.scores.shape == (cfg.num_crop, cfg.mipc)
        assert len(set(r.sources.tolist())) == cfg.mipc and np.all(ds.train.labels[r.sources] == c)
        for t in range(IPC):
            for q, (top, left, h, w) in enumerate(S.rded.cell_grid(8, cfg.factor)):
                src, box = r.provenance(t, q)
                assert ds.train.labels[src] == c
                img = torch.from_numpy(ds.train.images[src]).permute(2, 0, 1).float() / 255
                crop = TF.resized_crop(img, *box, [8 // cfg.factor] * 2, antialias=True)
                want = (crop - ds.mean[0]) / ds.std[0]
                torch.testing.assert_close(r.images[t, :, top:top + h, left:left + w], want, rtol=0, atol=1e-6)
        best = r.scores.min(dim=0).values
        kept = np.zeros(cfg.mipc, dtype=bool)
        kept[r.picked] = True
        assert torch.equal(r.scores[r.crops, r.picked], best[r.picked])
        assert best[kept].max() <= best[~kept].min()
        assert np.all(np.diff(best[r.picked].numpy()) >= 0)  # rank order
        # one score by hand: the patch padded to 8 px with zeros (2 px each side), the teacher's -log p(c)
        src, box = r.provenance(0, 0)
        img = torch.from_numpy(ds.train.images[src]).permute(2, 0, 1).float() / 255
        patch = (TF.resized_crop(img, *box, [4, 4], antialias=True) - ds.mean[0]) / ds.std[0]
        padded = torch.zeros(1, 1, 8, 8)
        padded[0, :, 2:6, 2:6] = patch
        with torch.no_grad():
            want = -torch.log_softmax(teacher(padded), dim=1)[0, c]
        assert float(r.scores[r.crops[0], r.picked[0]]) == pytest.approx(float(want), rel=1e-5, abs=1e-6)


def test_rded_is_deterministic_and_the_seed_changes_the_draw(env):
    a, b = S.rded.rded_class(_rded(env), 4), S.rded.rded_class(_rded(env), 4)
    assert torch.equal(a.images, b.images) and np.array_equal(a.boxes, b.boxes)
    c = S.rded.rded_class(_rded(env, seed=1), 4)
    assert not np.array_equal(a.boxes, c.boxes) and not torch.equal(a.images, c.images)
    # factor 1 (their 32 px setting): each image is one whole resized crop, the ipc best-scoring ones
    one = S.rded.rded_class(_rded(env, factor=1), 4)
    assert one.images.shape == (IPC, 1, 8, 8) and len(one.picked) == IPC


def test_rded_recover_writes_its_images_and_refuses_too_few(env, tmp_path):
    from PIL import Image

    ds = env["ds"]
    kw = dict(teachers=[env["teacher"]], real=env["real"], num_classes=10, ipc=IPC, mean=ds.mean, std=ds.std,
              progress=False)
    res = S.recover("rded.test", out=str(tmp_path / "r"), **kw)
    assert res["status"] == "complete" and res["counts"] == [IPC] * 10 and res["config"]["select"] == "rded"
    want = S.to_uint8(S.rded.rded_class(_rded(env), 6).images, ds.mean, ds.std)
    with Image.open(tmp_path / "r" / "new006" / "class006_id001.png") as img:
        assert np.array_equal(np.asarray(img).reshape(8, 8, 1), want[1])
    with pytest.raises(S.SynthConfigError, match="ipc \\* factor"):
        S.rded.rded_class(_rded(env, ipc=5, mipc=16), 0)  # 5 * 4 patches from 16 images
    with pytest.raises(S.SynthConfigError, match="teacher"):
        S.recover("rded.test", out=str(tmp_path / "none"), **{**kw, "teachers": []})


def test_rded_through_the_recover_phase(env, tmp_path):
    """``ddpipe recover --method rded.test``: the teacher file's model scores the patches; --min-scale reaches it."""
    from ddpipe.evaluate import recover as phase
    from ddpipe.evaluate.squeeze import write_teacher

    ds = env["ds"]
    path = str(tmp_path / "teacher.pt")
    write_teacher(env["teacher"], path, ds, {"top1": 0.0})
    res = phase.run(phase.RecoverRunConfig(out=str(tmp_path / "rded"), method="rded.test", teacher=(path,), ipc=2,
                                           min_scale=0.5, progress=False))
    assert res.status == "complete" and res.counts == [2] * 10 and res.method_config["select"] == "rded"
    assert res.method_config["min_scale"] == 0.5 and res.method_config["factor"] == 2
