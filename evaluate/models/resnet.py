"""ResNet-18/50 from torchvision (He et al., CVPR 2016), never pretrained here.

``*_small`` variants replace the stem for 28-64 px inputs the way SRe2L's Tiny-ImageNet and
CIFAR teachers do: ``conv1`` becomes 3x3 stride 1 and ``maxpool`` an identity. ``in_chans`` other
than 3 swaps ``conv1`` for one with that many input channels. Weights of a torchvision checkpoint
load unchanged into the standard variants (same module names).
"""

from __future__ import annotations

from torch import nn
from torchvision.models import resnet as tv_resnet

from ._registry import register_model

__all__: list[str] = []


def _create_resnet(block, layers, num_classes: int, in_chans: int, small: bool, **kwargs) -> tv_resnet.ResNet:
    model = tv_resnet.ResNet(block, layers, num_classes=num_classes, **kwargs)
    if small:
        model.conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_chans != 3:
        model.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


@register_model
def resnet18(num_classes, in_chans=3, input_size=224, **kwargs):
    return _create_resnet(tv_resnet.BasicBlock, [2, 2, 2, 2], num_classes, in_chans, small=False, **kwargs)


@register_model
def resnet18_small(num_classes, in_chans=3, input_size=64, **kwargs):
    """ResNet-18 with a 3x3 stride-1 stem and no max pool (SRe2L's Tiny-ImageNet / CIFAR teacher)."""
    return _create_resnet(tv_resnet.BasicBlock, [2, 2, 2, 2], num_classes, in_chans, small=True, **kwargs)


@register_model
def resnet50(num_classes, in_chans=3, input_size=224, **kwargs):
    return _create_resnet(tv_resnet.Bottleneck, [3, 4, 6, 3], num_classes, in_chans, small=False, **kwargs)


@register_model
def resnet50_small(num_classes, in_chans=3, input_size=64, **kwargs):
    return _create_resnet(tv_resnet.Bottleneck, [3, 4, 6, 3], num_classes, in_chans, small=True, **kwargs)


@register_model
def test_resnet_small(num_classes, in_chans=3, input_size=8, **kwargs):
    """Tiny variant for tests: one basic block per stage, small stem."""
    return _create_resnet(tv_resnet.BasicBlock, [1, 1, 1, 1], num_classes, in_chans, small=True, **kwargs)
