"""Class-wise BN (LPLD): exact pooled statistics, LPLD's EMA, and conversion of any architecture.

Exactness: with ``momentum=None`` the modules pool every batch with Chan's parallel update, so after
one pass over mixed, shuffled batches each class's mean and (biased) variance equal the statistics
of all that class's BN inputs computed directly in one go, up to float rounding (compared with a
1e-5 tolerance). With LPLD's ``momentum=0.1`` the buffers are an EMA of per-batch within-class
statistics, checked against the formula; with momentum 1.0 and one batch per class, the EMA is
exactly that class's statistics.
"""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from ddpipe.evaluate.datasets import load_dataset
from ddpipe.evaluate.errors import EvaluateError
from ddpipe.evaluate.models import (
    ClassAwareBatchNorm2d, class_labels, class_stats, collect_class_stats, convert_to_classwise_bn, create_model,
    reset_class_stats,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits_tensors():
    ds = load_dataset("digits")
    x = (torch.from_numpy(ds.train.images).permute(0, 3, 1, 2).float() / 255 - ds.mean[0]) / ds.std[0]
    return ds, x, torch.from_numpy(ds.train.labels)


def _trained_bn_model(seed=0):
    torch.manual_seed(seed)
    m = create_model("convnet_d2_w32_bn", 10, in_chans=1, input_size=8)
    m.train()
    with torch.no_grad():  # move the running statistics off their defaults
        for _ in range(3):
            m(torch.randn(32, 1, 8, 8) * 2 + 0.5)
    return m.eval()


def _bn_inputs(model, x):
    """Inputs of every BatchNorm2d for a single eval-mode forward of ``x``."""
    seen = {}
    hooks = [mod.register_forward_pre_hook(lambda mod, inp, name=name: seen.__setitem__(name, inp[0].detach()))
             for name, mod in model.named_modules() if isinstance(mod, nn.BatchNorm2d)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def test_pooled_statistics_equal_direct_per_class_statistics(digits_tensors):
    ds, x, y = digits_tensors
    model = _trained_bn_model()
    reference = _bn_inputs(model, x)
    convert_to_classwise_bn(model, num_classes=10, momentum=None)
    g = torch.Generator().manual_seed(0)
    loader = DataLoader(list(zip(x, y)), batch_size=50, shuffle=True, generator=g)  # mixed classes per batch
    assert collect_class_stats(model, loader) == len(y)
    stats = class_stats(model)
    assert set(stats) == set(reference)
    for name, feats in reference.items():
        mean, var = stats[name]
        for c in range(10):
            fc = feats[y == c].double()
            torch.testing.assert_close(mean[c].double(), fc.mean((0, 2, 3)), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(var[c].double(), fc.var((0, 2, 3), unbiased=False), rtol=1e-5, atol=1e-5)


def test_lpld_ema_semantics(digits_tensors):
    _, x, y = digits_tensors
    model = _trained_bn_model()
    ref_model = _trained_bn_model()
    convert_to_classwise_bn(model, num_classes=10)  # LPLD: momentum 0.1
    bn_names = [n for n, m in model.named_modules() if isinstance(m, ClassAwareBatchNorm2d)]
    assert bn_names and all(model.get_submodule(n).class_momentum == 0.1 for n in bn_names)
    expected = {n: (torch.zeros(10, 32), torch.ones(10, 32)) for n in bn_names}
    batches = [(x[:40], y[:40]), (x[40:100], y[40:100])]
    batches.append((x[y == 3][:7], y[y == 3][:7]))  # one class only: the others must not move
    for xb, yb in batches:
        feats = _bn_inputs(ref_model, xb)
        for n in bn_names:
            mean, var = expected[n]
            for c in yb.unique().tolist():
                fc = feats[n][yb == c]
                mean[c] = 0.9 * mean[c] + 0.1 * fc.mean((0, 2, 3))
                var[c] = 0.9 * var[c] + 0.1 * fc.var((0, 2, 3), unbiased=False)
        with class_labels(model, yb), torch.no_grad():
            model(xb)
    for n in bn_names:
        torch.testing.assert_close(model.get_submodule(n).class_running_mean, expected[n][0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(model.get_submodule(n).class_running_var, expected[n][1], rtol=1e-6, atol=1e-6)


def test_one_batch_per_class_with_momentum_one_is_exact(digits_tensors):
    _, x, y = digits_tensors
    model = _trained_bn_model()
    reference = _bn_inputs(model, x)
    convert_to_classwise_bn(model, 10, momentum=1.0)
    with torch.no_grad():
        for c in range(10):
            with class_labels(model, y[y == c]):
                model(x[y == c])
    for name, (mean, var) in class_stats(model).items():
        for c in range(10):
            fc = reference[name][y == c]
            torch.testing.assert_close(mean[c], fc.mean((0, 2, 3)), rtol=0, atol=1e-6)
            torch.testing.assert_close(var[c], fc.var((0, 2, 3), unbiased=False), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["test_convnet", "test_resnet_small", "test_timm_resnet", "convnet_d2_w32_bn"])
def test_conversion_keeps_outputs_and_works_on_any_architecture(name):
    torch.manual_seed(0)
    model = create_model(name, 5, in_chans=3, input_size=8).eval()
    x, y = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 1, 4, 4, 4])
    with torch.no_grad():
        before = model(x)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    convert_to_classwise_bn(model, 5)
    mods = [m for m in model.modules() if hasattr(m, "class_running_mean")]
    assert len(mods) == n_bn > 0
    with torch.no_grad(), class_labels(model, y):
        during = model(x)
    torch.testing.assert_close(during, before)  # the normal BN output (and any fused activation) is unchanged
    assert all(m.class_labels is None for m in mods)  # labels are cleared after the block
    assert all(m.class_num_samples[[0, 1, 4]].gt(0).all() and m.class_num_samples[[2, 3]].eq(0).all() for m in mods)
    # training mode never touches the class statistics
    snapshot = [m.class_running_mean.clone() for m in mods]
    model.train()
    with class_labels(model, y):
        model(x)
    assert all(torch.equal(a, m.class_running_mean) for a, m in zip(snapshot, mods))


def test_state_dict_roundtrip_and_lpld_checkpoints_without_counts():
    a = convert_to_classwise_bn(_trained_bn_model(), 10)
    with torch.no_grad(), class_labels(a, torch.arange(8) % 10):
        a(torch.randn(8, 1, 8, 8))
    sd = a.state_dict()
    assert any(k.endswith("class_running_mean") for k in sd) and sd["features.1.class_running_mean"].shape == (10, 32)
    b = convert_to_classwise_bn(_trained_bn_model(seed=1), 10)
    b.load_state_dict(sd)
    assert torch.equal(b.features[1].class_running_var, a.features[1].class_running_var)
    lpld = {k: v for k, v in sd.items() if not k.endswith("class_num_samples")}  # LPLD's files carry no counts
    c = convert_to_classwise_bn(_trained_bn_model(seed=2), 10)
    c.load_state_dict(lpld)
    assert torch.equal(c.features[1].class_running_mean, a.features[1].class_running_mean)
    reset_class_stats(c)
    assert c.features[1].class_running_mean.abs().sum() == 0


def test_standalone_module_and_errors():
    bn = ClassAwareBatchNorm2d(4, num_classes=3).eval()
    with pytest.raises(EvaluateError, match="labels must lie in"):
        bn.update_class_stats(torch.randn(2, 4, 3, 3), torch.tensor([0, 3]))
    with pytest.raises(EvaluateError, match="2 labels for a batch of 3"):
        bn.update_class_stats(torch.randn(3, 4, 3, 3), torch.tensor([0, 1]))
    with pytest.raises(EvaluateError, match="no BatchNorm2d"):
        convert_to_classwise_bn(create_model("convnet", 3, input_size=8, depth=1), 3)
    with pytest.raises(EvaluateError, match="convert_to_classwise_bn"):
        with class_labels(create_model("test_convnet", 3), torch.zeros(1)):
            pass
    assert np.isclose(bn.class_momentum, 0.1)
