"""Models for squeeze, recover and train: one registry, one factory, one file per family.

Registered families: DM's ConvNet (``convnet*``), torchvision ResNet-18/50 (``resnet*``, with
``_small`` stems), timm architectures (``timm:<name>``), plus tiny ``test_*`` variants. The
class-wise BN conversion LPLD needs works on any of them.
"""

from ._registry import (
    create_model,
    is_model,
    list_models,
    model_config,
    model_entrypoint,
    register_model,
)
from . import convnet, resnet, timm_models
from .classwise_bn import (
    ClassAwareBatchNorm2d,
    class_labels,
    class_stats,
    collect_class_stats,
    convert_to_classwise_bn,
    has_classwise_bn,
    reset_class_stats,
)
from .convnet import ConvNet

_FAMILIES = (convnet, resnet, timm_models)  # importing these modules registers the families

__all__ = [
    "ClassAwareBatchNorm2d", "ConvNet", "class_labels", "class_stats", "collect_class_stats", "convert_to_classwise_bn",
    "create_model", "has_classwise_bn", "is_model", "list_models", "model_config", "model_entrypoint",
    "register_model", "reset_class_stats",
]
