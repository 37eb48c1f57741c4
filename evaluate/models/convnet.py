"""ConvNet of Dataset Condensation / Distribution Matching (Zhao & Bilen; DM, WACV 2023).

Origin: VICO-UoE/DatasetCondensation ``networks.py``. ``depth`` blocks of
[conv3x3(width) -> norm -> ReLU -> pool 2x2], then one linear classifier on the flattened
features. DM's defaults: width 128, depth 3, instance norm (a ``GroupNorm(width, width)`` with
affine parameters), average pooling; depth 4 for 64 px inputs. As in DM, the first convolution of a
one-channel network pads by 3 (28 px MNIST-like inputs act as 32 px). ``embed(x)`` gives the
flattened features DM's distribution matching compares.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelConfigError
from ._registry import register_model

__all__ = ["ConvNet"]

NORMS = ("batchnorm", "instancenorm", "none")
POOLINGS = ("avgpool", "maxpool", "none")


def _norm(kind: str, width: int) -> nn.Module | None:
    if kind == "batchnorm":
        return nn.BatchNorm2d(width)
    if kind == "instancenorm":
        return nn.GroupNorm(width, width, affine=True)
    if kind == "none":
        return None
    raise ModelConfigError(f"unknown ConvNet norm {kind!r}; choose one of {', '.join(NORMS)}")


def _pool(kind: str) -> nn.Module | None:
    if kind == "avgpool":
        return nn.AvgPool2d(2, 2)
    if kind == "maxpool":
        return nn.MaxPool2d(2, 2)
    if kind == "none":
        return None
    raise ModelConfigError(f"unknown ConvNet pooling {kind!r}; choose one of {', '.join(POOLINGS)}")


class ConvNet(nn.Module):
    """DM's ConvNet: ``features`` (the conv blocks), ``embed`` (flattened features), ``classifier``."""

    def __init__(self, num_classes: int, in_chans: int = 3, input_size: int = 32, width: int = 128, depth: int = 3,
                 norm: str = "instancenorm", pooling: str = "avgpool", first_padding: int | None = None):
        super().__init__()
        first_padding = (3 if in_chans == 1 else 1) if first_padding is None else first_padding
        layers: list[nn.Module] = []
        side, channels = input_size, in_chans
        for d in range(depth):
            pad = first_padding if d == 0 else 1
            layers.append(nn.Conv2d(channels, width, kernel_size=3, padding=pad))
            side = side + 2 * pad - 2
            for m in (_norm(norm, width), nn.ReLU(inplace=True), _pool(pooling)):
                if m is not None:
                    layers.append(m)
            if pooling != "none":
                side //= 2
            channels = width
            if side < 1:
                raise ModelConfigError(
                    f"ConvNet depth {depth} with {pooling} pools a {input_size} px input below 1 px; use a smaller depth"
                )
        self.features = nn.Sequential(*layers)
        self.num_features = width * side * side
        self.feature_shape = (width, side, side)
        self.classifier = nn.Linear(self.num_features, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


def _create_convnet(variant_kwargs: dict, num_classes: int, in_chans: int, input_size: int, **kwargs) -> ConvNet:
    return ConvNet(num_classes=num_classes, in_chans=in_chans, input_size=input_size, **{**variant_kwargs, **kwargs})


@register_model
def convnet(num_classes, in_chans=3, input_size=32, **kwargs):
    """DM's default: depth 3, width 128, instance norm, average pooling."""
    return _create_convnet(dict(depth=3, width=128, norm="instancenorm"), num_classes, in_chans, input_size, **kwargs)


@register_model
def convnet_bn(num_classes, in_chans=3, input_size=32, **kwargs):
    """DM's ConvNet with batch norm (DM Table 2, 'ConvNet with BN')."""
    return _create_convnet(dict(depth=3, width=128, norm="batchnorm"), num_classes, in_chans, input_size, **kwargs)


@register_model
def convnet_d4(num_classes, in_chans=3, input_size=64, **kwargs):
    """DM's ConvNetD4 for 64 px inputs (Tiny-ImageNet)."""
    return _create_convnet(dict(depth=4, width=128, norm="instancenorm"), num_classes, in_chans, input_size, **kwargs)


@register_model
def convnet_d4_bn(num_classes, in_chans=3, input_size=64, **kwargs):
    return _create_convnet(dict(depth=4, width=128, norm="batchnorm"), num_classes, in_chans, input_size, **kwargs)


@register_model
def convnet_d3_w64_bn(num_classes, in_chans=3, input_size=32, **kwargs):
    return _create_convnet(dict(depth=3, width=64, norm="batchnorm"), num_classes, in_chans, input_size, **kwargs)


@register_model
def convnet_d3_w32_bn(num_classes, in_chans=3, input_size=32, **kwargs):
    """A narrow BN ConvNet: the default CPU teacher for Fashion-MNIST."""
    return _create_convnet(dict(depth=3, width=32, norm="batchnorm"), num_classes, in_chans, input_size, **kwargs)


@register_model
def convnet_d3_w32(num_classes, in_chans=3, input_size=32, **kwargs):
    """DM's ConvNet (instance norm) at width 32: DM's random network on a CPU budget (about 7x cheaper per
    iteration than width 128 on 28 px Fashion-MNIST)."""
    return _create_convnet(dict(depth=3, width=32, norm="instancenorm"), num_classes, in_chans, input_size, **kwargs)


@register_model
def convnet_d2_w32_bn(num_classes, in_chans=3, input_size=8, **kwargs):
    """Two blocks, for 8 px digits."""
    return _create_convnet(dict(depth=2, width=32, norm="batchnorm"), num_classes, in_chans, input_size, **kwargs)


@register_model
def test_convnet(num_classes, in_chans=3, input_size=8, **kwargs):
    """Tiny variant for tests: one block of width 8."""
    return _create_convnet(dict(depth=1, width=8, norm="batchnorm"), num_classes, in_chans, input_size, **kwargs)


@register_model
def test_convnet_in(num_classes, in_chans=3, input_size=8, **kwargs):
    """Tiny variant for tests: two blocks, instance norm, max pooling."""
    return _create_convnet(dict(depth=2, width=8, norm="instancenorm", pooling="maxpool"), num_classes, in_chans,
                           input_size, **kwargs)
