"""The shared loop's pieces: optimiser groups, cosine schedule, accuracy, seeding, atomic checkpoints."""

import math
import os

import pytest
import torch

from ddpipe.evaluate.checkpoint import extract_state_dict, load_checkpoint, save_atomic, state_dict_hash
from ddpipe.evaluate.distributed import get_world_size, init_distributed, is_main_process
from ddpipe.evaluate.errors import CheckpointError, EvaluateError
from ddpipe.evaluate.models import create_model
from ddpipe.evaluate.train import (
    accuracy, build_optimizer, build_scheduler, cosine_factor, epoch_seed, train_one_epoch, validate,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_weight_decay_only_on_kernels():
    m = create_model("convnet_d2_w32_bn", 10, 1, 8)
    opt = build_optimizer(m, "adamw", lr=1e-3, weight_decay=0.01)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(m.parameters()))
    assert isinstance(build_optimizer(m, "SGD"), torch.optim.SGD)
    with pytest.raises(EvaluateError, match="only sgd, adamw are supported"):
        build_optimizer(m, "lamb")


def test_cosine_schedule_per_epoch():
    m = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    sched = build_scheduler(opt, epochs=4)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)])
    assert [cosine_factor(e, 6, warmup_epochs=2) for e in range(3)] == pytest.approx([1 / 3, 2 / 3, 1.0])


def test_accuracy_hard_and_soft_targets():
    out = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    assert accuracy(out, torch.tensor([1, 1, 2]), (1, 2)) == [2.0, 3.0]
    soft = torch.tensor([[0.0, 1.0, 0.0], [0.1, 0.8, 0.1], [0.0, 0.0, 1.0]])
    assert accuracy(out, soft, (1,)) == [2.0]


def test_train_and_validate_on_soft_targets():
    """The student phase feeds (images, soft targets, meta); the loop takes any criterion."""
    torch.manual_seed(0)
    m = create_model("test_convnet", 3, 1, 8)
    x = torch.randn(16, 1, 8, 8)
    soft = torch.softmax(torch.randn(16, 3), 1)
    loader = [(x[:8], soft[:8], {"unit": 0}), (x[8:], soft[8:], {"unit": 1})]

    def kl(out, target):
        return torch.nn.functional.kl_div(torch.log_softmax(out, 1), target, reduction="batchmean")

    stats = train_one_epoch(m, loader, kl, build_optimizer(m, "sgd", lr=0.1), "cpu", 0, progress=False)
    assert stats["images"] == 16 and math.isfinite(stats["train_loss"])
    val = validate(m, [(x, soft.argmax(1))], progress=False)
    assert val["count"] == 16 and 0 <= val["top1"] <= val["top5"] == 100.0


def test_epoch_seed_is_a_pure_function():
    assert epoch_seed(0, 3) == epoch_seed(0, 3) != epoch_seed(0, 4) != epoch_seed(1, 3) != epoch_seed(0, 3, rank=1)


def test_atomic_checkpoint_and_state_dict_extraction(tmp_path):
    m = create_model("test_convnet", 3, 1, 8)
    path = str(tmp_path / "c.pth")
    save_atomic({"model": m.state_dict(), "epoch": 2}, path)
    assert os.listdir(tmp_path) == ["c.pth"]  # no temporary file left behind
    ck = load_checkpoint(path)
    assert ck["epoch"] == 2 and state_dict_hash(ck["model"]) == state_dict_hash(m.state_dict())
    assert extract_state_dict({"state_dict": {f"module.{k}": v for k, v in m.state_dict().items()}}).keys() == \
        m.state_dict().keys()
    with pytest.raises(CheckpointError, match="holds no model state dict"):
        extract_state_dict({"epoch": 1}, "x.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_checkpoint(str(tmp_path / "junk.pth"))


def test_single_process_mode(capsys):
    info = init_distributed("cpu")
    assert not info.distributed and info.world_size == 1 and info.device == "cpu"
    assert capsys.readouterr().err == "", "a plain single-process run prints nothing about distribution"
    assert is_main_process() and get_world_size() == 1


def test_array_loader_augments_whole_batches():
    import numpy as np

    from ddpipe.evaluate.train import ArrayLoader

    rng = np.random.default_rng(0)
    imgs = rng.integers(1, 256, (50, 6, 6, 1)).astype(np.uint8)  # no zeros, so padding is recognisable
    loader = ArrayLoader(imgs, np.arange(50) % 5, 16, mean=(0.0,), std=(1 / 255,), train=True, padding=2, hflip=True)
    seen = [xi[0].round().to(torch.uint8).numpy() for x, _ in loader for xi in x]
    assert len(seen) == 50 and len(loader) == 4
    # every output is a 6x6 window of the zero-padded source, possibly mirrored (order: randperm of seed 0)
    order = torch.randperm(50, generator=torch.Generator().manual_seed(0))
    for img, src in zip(seen, imgs[order.numpy()]):
        padded = np.pad(src[..., 0], 2)
        windows = [padded[i : i + 6, j : j + 6] for i in range(5) for j in range(5)]
        assert any(np.array_equal(img, w) or np.array_equal(img, w[:, ::-1]) for w in windows)
    # reseeding the generator replays the same epoch; ranks split the order without overlap
    loader.generator.manual_seed(7)
    a = [y.clone() for _, y in loader]
    loader.generator.manual_seed(7)
    assert all(torch.equal(p, q) for p, q in zip(a, [y for _, y in loader]))
    shards = []
    for rank in range(3):
        sh = ArrayLoader(imgs, np.arange(50), 8, mean=(0.0,), std=(1.0,), train=True, rank=rank, world=3)
        shards.append(torch.cat([y for _, y in sh]))
    assert {len(s) for s in shards} == {17} and set(torch.cat(shards).tolist()) == set(range(50))


def test_array_loader_eval_matches_torchvision_transform():
    from ddpipe.evaluate.datasets import SplitDataset, eval_transform, load_dataset
    from ddpipe.evaluate.train import build_loaders

    ds = load_dataset("digits")
    _, val = build_loaders(ds, 32)
    x, y = next(iter(val))
    ref = torch.stack([SplitDataset(ds.test, eval_transform(ds))[i][0] for i in range(len(x))])
    torch.testing.assert_close(x, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(y, torch.from_numpy(ds.test.labels[: len(x)]))
