"""``ddpipe train --hard-labels --augment dsa``: the DC/DSA evaluation protocol on real digits images."""

import types

import pytest
import torch

from ddpipe.evaluate import recover, student
from ddpipe.evaluate.checkpoint import state_dict_hash
from ddpipe.evaluate.datasets import load_dataset
from ddpipe.evaluate.dsa_batches import DSABatches
from ddpipe.evaluate.errors import EvaluateError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    out = tmp_path_factory.mktemp("dsa") / "images"
    recover.run(recover.RecoverRunConfig(out=str(out), method="random.default", ipc=3, seed=0, dataset="digits",
                                         progress=False))
    return str(out)


def _train(images, out, **kw):
    cfg = dict(out=str(out), images=images, dataset="digits", hard_labels=True, augment="dsa",
               model="convnet_d2_w32_bn", epochs=6, batch_size=8, opt="sgd", lr=0.01, weight_decay=5e-4, workers=0,
               progress=False, val_every=6)
    cfg.update(kw)
    return student.run(student.TrainConfig(**cfg))


def test_dsa_batches_cover_the_set_once_per_epoch_with_per_image_draws(images):
    ds = load_dataset("digits")
    args = types.SimpleNamespace(images=images, epochs=None, batch_size=8, seed=0)
    batches = DSABatches(args, ds, types.SimpleNamespace(rank=0, world_size=1))
    assert (batches.epochs, len(batches.labels)) == (1000, 30)
    seen = []
    for x, y in batches.epoch(0):
        assert x.shape[1:] == (1, ds.input_size, ds.input_size) and x.shape[0] == y.shape[0] <= 8
        seen.append(y)
    assert sorted(torch.cat(seen).tolist()) == sorted(batches.labels.tolist())  # every image once, its own label
    # the same (seed, epoch) gives the same batches; another epoch another order and other draws
    a = [x for x, _ in batches.epoch(3)]
    b = [x for x, _ in batches.epoch(3)]
    c = [x for x, _ in batches.epoch(4)]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not all(torch.equal(p, q) for p, q in zip(a, c))
    # one draw per image: two copies of one image in a batch are (almost surely) transformed differently
    x0 = batches.images[:1]
    batches.images = x0.repeat(len(batches.labels), 1, 1, 1)
    first = next(iter(batches.epoch(0)))[0]
    assert not all(torch.equal(first[0], first[i]) for i in range(1, first.shape[0]))


def test_dsa_student_trains_and_resumes_bit_identically(images, tmp_path):
    full = _train(images, tmp_path / "full")
    assert full.mode == "hard-labels-dsa" and full.label_bytes == 0 and full.epochs == 6 and full.batch_size == 8
    assert 0.0 <= full.final["top1"] <= 100.0
    stopped = _train(images, tmp_path / "resumed", stop_after_epoch=2)
    assert stopped.status == "stopped"
    resumed = _train(images, tmp_path / "resumed", resume=True)
    assert resumed.status == "complete" and resumed.final == full.final
    w = lambda r: state_dict_hash(torch.load(r.student, weights_only=False)["model"])  # noqa: E731
    assert w(resumed) == w(full)


def test_dsa_needs_hard_labels(images, tmp_path):
    with pytest.raises(EvaluateError, match="augment dsa"):
        student.TrainConfig(out=str(tmp_path / "x"), images=images, labels="store.zarr", augment="dsa")
    with pytest.raises(EvaluateError, match="augment"):
        student.TrainConfig(out=str(tmp_path / "x"), images=images, hard_labels=True, augment="cutmix")
