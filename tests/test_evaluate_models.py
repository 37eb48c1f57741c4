"""The model registry: every registered model builds and runs; unknown names are one clear error."""

import inspect

import pytest
import torch
from torch import nn

from ddpipe.evaluate.errors import ModelConfigError, UnknownModelError
from ddpipe.evaluate.models import ConvNet, create_model, list_models, model_config, model_entrypoint


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _default_size(name):
    return inspect.signature(model_entrypoint(name)).parameters["input_size"].default


def _run_at(name, size):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, in_chans=3, input_size=size).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    assert model_config(model) == {"name": name, "num_classes": 7, "in_chans": 3, "input_size": size, "kwargs": {}}


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_runs_at_its_input_size(name):
    """ImageNet-sized models run at 64 px here; at their own 224 px in the slow test below."""
    _run_at(name, min(_default_size(name), 64))


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in list_models() if _default_size(n) > 64])
def test_imagenet_sized_models_at_224(name):
    _run_at(name, _default_size(name))


@pytest.mark.parametrize("name", list_models("test_*"))
def test_tiny_variants_train_a_step_with_one_channel(name):
    model = create_model(name, num_classes=4, in_chans=1, input_size=8)
    out = model(torch.randn(4, 1, 8, 8))
    nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 3])).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_unknown_model_lists_close_names():
    with pytest.raises(UnknownModelError) as info:
        create_model("resnet19", 10)
    assert "resnet18" in str(info.value) and "timm:<name>" in str(info.value)
    with pytest.raises(UnknownModelError, match="unknown timm model 'resnet_nope'"):
        create_model("timm:resnet_nope", 10)


def test_timm_by_name_and_none_kwargs_are_dropped():
    m = create_model("timm:test_resnet", num_classes=3, in_chans=1, input_size=16, drop_rate=None).eval()
    assert m(torch.randn(1, 1, 16, 16)).shape == (1, 3)
    assert model_config(m)["kwargs"] == {}
    c = create_model("convnet", 10, width=None, depth=None)
    assert c.classifier.in_features == 128 * 4 * 4  # DM's defaults kept: width 128, depth 3, 32 px


def test_convnet_is_dms_architecture():
    m = create_model("convnet", num_classes=10, in_chans=3, input_size=32)
    kinds = [type(x).__name__ for x in m.features]
    assert kinds == ["Conv2d", "GroupNorm", "ReLU", "AvgPool2d"] * 3
    gn = m.features[1]
    assert (gn.num_groups, gn.num_channels, gn.affine) == (128, 128, True)  # instance norm
    assert m.embed(torch.randn(2, 3, 32, 32)).shape == (2, 2048)
    # one-channel 28 px acts as 32 px (DM pads the first conv by 3): the same 2048-d embedding
    mn = create_model("convnet", num_classes=10, in_chans=1, input_size=28)
    assert mn.features[0].padding == (3, 3) and mn.num_features == 2048
    bn = create_model("convnet_d3_w64_bn", 10, 1, 28, pooling="maxpool")
    assert isinstance(bn.features[1], nn.BatchNorm2d) and isinstance(bn.features[3], nn.MaxPool2d)
    flat = create_model("convnet", 10, 3, 8, norm="none", pooling="none", depth=2, width=4)
    assert not any(isinstance(x, (nn.GroupNorm, nn.AvgPool2d)) for x in flat.features) and flat.num_features == 4 * 64
    assert isinstance(m, ConvNet)


def test_convnet_bad_config_is_clear():
    with pytest.raises(ModelConfigError, match="below 1 px"):
        create_model("convnet_d4", 10, in_chans=3, input_size=8)
    with pytest.raises(ModelConfigError, match="choose one of batchnorm, instancenorm, none"):
        create_model("convnet", 10, norm="layer")


def test_resnet_small_stem_and_channels():
    m = create_model("resnet18_small", 10, in_chans=1, input_size=28)
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1) and m.conv1.in_channels == 1
    assert isinstance(m.maxpool, nn.Identity)
    std = create_model("resnet18", 10, in_chans=3)
    assert std.conv1.kernel_size == (7, 7) and isinstance(std.maxpool, nn.MaxPool2d)
    import torchvision

    ref = torchvision.models.resnet18(num_classes=10).state_dict()
    assert {k: v.shape for k, v in std.state_dict().items()} == {k: v.shape for k, v in ref.items()}
