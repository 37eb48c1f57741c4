"""ddpipe.synth without trained teachers: registry, recipes, schedules, augmentation, densification, herding."""

import math
import sys

import pytest
import torch

import ddpipe.synth as S
from ddpipe.errors import DDPipeError
from ddpipe.synth.augment import DSA, cda_min_scale, sre2l_augment

FAMILIES = ["cda", "delt", "dm", "gvbsm", "herding", "lpld", "random", "rded", "sre2l"]


def test_every_family_is_registered_with_a_test_recipe():
    assert S.list_methods(families=True) == FAMILIES
    for fam in FAMILIES:
        assert f"{fam}.test" in S.list_methods(f"{fam}.*")
        assert S.default_recipe(fam) != f"{fam}.test"  # the paper's recipe is the default, not the tiny one


def test_unknown_method_lists_the_valid_names():
    with pytest.raises(S.UnknownMethodError) as e:
        S.create_method("sre3l")
    assert isinstance(e.value, DDPipeError) and isinstance(e.value, ValueError)
    assert "sre2l" in str(e.value) and "dm.test" in str(e.value)
    with pytest.raises(S.SynthConfigError, match="no option"):
        S.create_method("sre2l", not_an_option=1)
    with pytest.raises(S.UnknownLossError, match="bn_stats"):
        S.create_loss("bn_stat")


def test_none_overrides_keep_the_recipe_values():
    cfg = S.create_method("sre2l", lr=None, iterations=None, seed=3)
    assert cfg.recipe == "sre2l.in1k" and cfg.lr == 0.25 and cfg.iterations == 4000 and cfg.seed == 3


def test_recipes_carry_the_papers_numbers():
    c = S.create_method("sre2l.in1k")
    assert (c.lr, c.iterations, c.batch_size, c.loss, c.first_bn_multiplier, c.jitter) == (
        0.25, 4000, 100, {"ce": 1.0, "bn_stats": 0.01}, 10.0, 32)
    assert c.optimizer == "adam" and tuple(c.betas) == (0.5, 0.9) and c.lr_schedule == "cosine" and c.init == "noise"
    c = S.create_method("cda.in21k")
    assert (c.lr, c.iterations, c.loss["bn_stats"], c.crop_curriculum) == (0.05, 2000, 0.25, "cosine")
    c = S.create_method("lpld")
    assert c.loss == {"ce": 1.0, "class_bn_stats": 0.01} and c.batching == "class" and c.classes_per_batch == 1
    c = S.create_method("gvbsm")
    assert set(c.loss) == {"ce", "bn_stats_ema", "conv_stats", "densify"} and (c.batch_size, c.lr, c.tau) == (80, 0.1, 4.0)
    c = S.create_method("delt")
    assert (c.init, c.round_iterations, c.iterations, c.jitter) == ("medium", 500, 4000, 0)
    c = S.create_method("dm")
    assert (c.optimizer, c.momentum, c.lr, c.init, c.batching, c.iterations) == ("sgd", 0.5, 1.0, "real", "all", 20000)
    assert c.dsa == "color_crop_cutout_flip_scale_rotate" and not c.clamp


def test_fmnist_recipes_share_one_budget():
    """The 28 px recipes differ only in what defines each method (terms, batching, curriculum, DELT's rounds)."""
    from ddpipe.synth.config import FMNIST_28PX, FMNIST_STAT_WEIGHT

    for fam in ("sre2l", "cda", "lpld", "gvbsm", "delt"):
        c = S.create_method(f"{fam}.fmnist")
        assert (c.iterations, c.lr, c.min_scale) == (FMNIST_28PX["iterations"], FMNIST_28PX["lr"], FMNIST_28PX["min_scale"])
        assert c.init == ("medium" if fam == "delt" else "real") and c.jitter == (0 if fam == "delt" else FMNIST_28PX["jitter"])
        assert all(w == FMNIST_STAT_WEIGHT for t, w in c.loss.items() if t not in ("ce", "densify"))
        assert c.loss["ce"] == 1.0 and c.optimizer == "adam" and c.first_bn_multiplier == 10.0
    assert S.create_method("cda.fmnist").crop_curriculum == "cosine" and S.create_method("delt.fmnist").round_iterations == 125
    assert S.create_method("lpld.fmnist").classes_per_batch == 1
    dm = S.create_method("dm.fmnist")
    assert (dm.init, dm.optimizer, dm.lr, dm.batch_real) == ("real", "sgd", 1.0, 64)


def test_config_round_trips_and_validates():
    c = S.create_method("gvbsm.test")
    assert S.RecoverConfig.from_dict(c.to_dict()) == c
    with pytest.raises(S.SynthConfigError, match="batching"):
        S.RecoverConfig(batching="bogus")
    with pytest.raises(S.SynthConfigError, match="round_iterations"):
        S.RecoverConfig(iterations=10, round_iterations=20)


def test_synth_does_not_import_evaluate_or_pipeline():
    import subprocess

    code = ("import sys, ddpipe.synth; bad=[m for m in sys.modules if m.startswith(('ddpipe.evaluate','ddpipe.pipeline'))];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_synth_holds_no_model_and_select_uses_the_engines_public_interface():
    """DM's network is passed in (no nn.Module subclass in synth), and the selection baselines call the
    engine only through public names (no ``engine._x``)."""
    import ast
    import os

    root = os.path.dirname(S.__file__)
    for name in sorted(os.listdir(root)):
        if name.endswith(".py"):
            tree = ast.parse(open(os.path.join(root, name)).read())
            modules = [ast.unparse(b) for c in ast.walk(tree) if isinstance(c, ast.ClassDef) for b in c.bases]
            assert not [m for m in modules if m.endswith("Module")], f"{name} defines a network"
    tree = ast.parse(open(os.path.join(root, "select.py")).read())
    private = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
               and n.value.id == "engine" and n.attr.startswith("_")]
    assert not private, private


# --- DELT ------------------------------------------------------------------------------------------------
def test_delt_schedule_matches_the_formula():
    sched = S.delt_schedule(50, 4000, 500)  # DELT's IN-1K IPC50 example
    assert [s for s, _, _ in sched] == [7, 7, 6, 6, 6, 6, 6, 6]
    assert [k for _, k, _ in sched] == list(range(8))
    assert [n for _, _, n in sched] == [4000, 3500, 3000, 2500, 2000, 1500, 1000, 500]
    for ipc, itr, rnd in [(10, 4000, 500), (3, 100, 10), (7, 90, 30), (1, 50, 5)]:
        sched = S.delt_schedule(ipc, itr, rnd)
        r = itr // rnd  # every round runs, also when ipc < R (VILA-Lab/DELT recover.py; bench origin delt)
        assert sum(s for s, _, _ in sched) == ipc
        assert len(sched) == min(r, ipc)  # empty subsets left out
        for k, (size, start, n) in enumerate(sched):
            assert start == k and n == (r - k) * rnd and size >= 1
        assert S.delt_start_rounds(ipc, itr, rnd) == [k for k, (s, _, _) in enumerate(sched) for _ in range(s)]


def test_ranking_orders():
    assert S.medium_order(7) == [4, 5, 3, 6, 2, 1, 0]
    assert S.medium_order(6) == [3, 4, 2, 5, 1, 0]
    scores = torch.tensor([0.5, 0.9, 0.1, 0.7, 0.3]).numpy()
    assert S.rank_order(scores, "top").tolist() == [1, 3, 0, 4, 2]
    assert S.rank_order(scores, "min").tolist() == [2, 4, 0, 3, 1]
    assert S.rank_order(scores, "medium").tolist() == [3, 1, 0, 4, 2]  # ascending [2,4,0,3,1], order 3,4,2,1,0


# --- augmentation -----------------------------------------------------------------------------------
def test_cda_curriculum_is_a_cosine_from_one_to_the_minimum():
    assert cda_min_scale(0, 100, 0.08) == pytest.approx(1.0)
    assert cda_min_scale(50, 100, 0.08) == pytest.approx(0.08 + 0.92 * 0.5)
    assert cda_min_scale(100, 100, 0.08) == pytest.approx(0.08)
    assert cda_min_scale(60, 100, 0.08, milestone=0.5) == pytest.approx(0.08)
    vals = [cda_min_scale(i, 100, 0.08) for i in range(101)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))


def test_augmentations_are_seeded_and_differentiable():
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    a = sre2l_augment(x, torch.Generator().manual_seed(1), jitter=4)
    b = sre2l_augment(x, torch.Generator().manual_seed(1), jitter=4)
    assert torch.equal(a, b) and a.shape == x.shape
    a.sum().backward()
    assert x.grad is not None
    for seed in range(12):  # every DSA group: the same draw gives the same transform on two batches
        d = DSA("color_crop_cutout_flip_scale_rotate", torch.Generator().manual_seed(seed))
        y = torch.randn(2, 3, 16, 16)
        both = d(torch.cat([x.detach(), y]))
        assert torch.allclose(both[:4], d(x.detach()), atol=1e-6) and both.shape == (6, 3, 16, 16)


# --- G-VBSM densification -------------------------------------------------------------------------------
def _kl(p, q):
    return float((p * (p.log() - q.log())).sum())


def test_densify_is_zero_for_a_flat_spectrum_and_positive_for_a_collapsed_class():
    n, tau = 4, 4.0
    # orthogonal images of equal norm: Gram = 9 I, all eigenvalues equal -> both softmaxes uniform -> 0
    ortho = torch.zeros(n, 1, 8, 8)
    for i in range(n):
        ortho[i, 0, i, :] = 3.0 / math.sqrt(8)  # row i only: squared norm 9
    feats = ortho.flatten(1)
    assert torch.allclose(feats @ feats.t(), torch.diag(torch.diag(feats @ feats.t())))
    labels = torch.zeros(n, dtype=torch.long)
    assert S.densify_loss(ortho, labels, tau, pool=8).item() == pytest.approx(0.0, abs=1e-6)
    # identical images: Gram = s * ones, eigenvalues (n s, 0, ..., 0): KL(softmax(lam/tau) || softmax(lam))
    same = torch.full((n, 1, 8, 8), 0.25)
    s = float((same[0].flatten() ** 2).sum())
    lam = torch.tensor([0.0] * (n - 1) + [n * s], dtype=torch.float64)
    want = _kl(torch.softmax(lam / tau, 0), torch.softmax(lam, 0))
    got = S.densify_loss(same, labels, tau, pool=8).item()
    assert got == pytest.approx(want, rel=1e-3) and got > 0.1
    # classes are separate: two collapsed classes give twice the loss; a single image gives nothing
    two = S.densify_loss(torch.cat([same, same]), torch.tensor([0] * n + [1] * n), tau, pool=8).item()
    assert two == pytest.approx(2 * got, rel=1e-4)
    assert S.densify_loss(same[:1], labels[:1], tau).item() == 0.0


def test_densify_gradient_spreads_the_spectrum():
    torch.manual_seed(0)
    base = 0.1 * torch.randn(1, 1, 8, 8)  # small norms: eigenvalues O(1), where the softmaxes are not one-hot
    x = (base + 0.01 * torch.randn(4, 1, 8, 8)).requires_grad_(True)  # a nearly collapsed class
    labels = torch.zeros(4, dtype=torch.long)

    def eff_rank(t):
        lam = torch.linalg.eigvalsh(t.flatten(1) @ t.flatten(1).t()).clamp_min(1e-12)
        p = lam / lam.sum()
        return float(torch.exp(-(p * p.log()).sum()))

    before, loss0 = eff_rank(x.detach()), S.densify_loss(x, labels, 4.0, 8).item()
    opt = torch.optim.Adam([x], lr=0.05)
    for _ in range(30):
        opt.zero_grad()
        S.densify_loss(x, labels, 4.0, 8).backward()
        opt.step()
    assert S.densify_loss(x, labels, 4.0, 8).item() < loss0
    assert eff_rank(x.detach()) > before


# --- herding -----------------------------------------------------------------------------------------
def test_herding_picks_the_point_nearest_the_mean_first_then_balances():
    f = torch.tensor([[0.0, 0.0], [10.0, 0.0], [-10.0, 0.0], [1.0, 0.0], [0.0, 9.0], [0.0, -9.0]])
    order = S.herding_order(f, 6)
    mu = f.mean(0)
    assert order[0] == int(((f - mu) ** 2).sum(1).argmin())
    assert sorted(order) == list(range(6))
    # after two picks the running mean is as close to mu as any pair containing the first pick
    first = order[0]
    best = min(float(((mu - (f[first] + f[j]) / 2) ** 2).sum()) for j in range(6) if j != first)
    assert float(((mu - (f[order[0]] + f[order[1]]) / 2) ** 2).sum()) == pytest.approx(best)


def test_dsa_crop_is_an_integer_translation_with_zero_fill():
    x = torch.arange(64.0).view(1, 1, 8, 8) + 1
    for seed in range(60):
        d = DSA("crop", torch.Generator().manual_seed(seed))
        y = d(x)
        dy, dx = round(d.params["ty"] * 8), round(d.params["tx"] * 8)
        assert abs(dy) <= 1 and abs(dx) <= 1
        for i in range(8):
            for j in range(8):
                si, sj = i - dy, j - dx
                want = x[0, 0, si, sj] if 0 <= si < 8 and 0 <= sj < 8 else 0.0
                assert y[0, 0, i, j] == want


def test_random_selection_from_a_lazily_decoded_image_folder(tmp_path):
    """ImageFolder datasets are decoded on demand, resized and centre-cropped to the input size (RGB)."""
    import numpy as np
    from PIL import Image

    from ddpipe.evaluate import recover as phase

    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 1)):
        for c in ("cat", "dog"):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
                Image.fromarray(arr).save(tmp_path / "data" / split / c / f"{i}.png")
    res = phase.run(phase.RecoverRunConfig(out=str(tmp_path / "sel"), method="random",
                                           dataset=f"imagefolder:{tmp_path / 'data'}", ipc=2, progress=False))
    assert res.counts == [2, 2] and res.input_size == 224 and res.extra["classes"] == ["cat", "dog"]
    with Image.open(tmp_path / "sel" / "new001" / "class001_id000.png") as img:
        assert img.mode == "RGB" and img.size == (224, 224)
    with pytest.raises(S.SynthConfigError, match="fewer than ipc"):
        phase.run(phase.RecoverRunConfig(out=str(tmp_path / "sel4"), method="random",
                                         dataset=f"imagefolder:{tmp_path / 'data'}", ipc=4, progress=False))
