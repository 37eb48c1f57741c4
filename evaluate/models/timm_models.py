"""Any timm architecture by name (``timm:<name>``), for cross-architecture students.

``pretrained`` is always False: weights come from a local file through ``squeeze --init``.
Models that take an image size (ViTs, MaxViT …) are built for ``input_size``.
"""

from __future__ import annotations

from ..errors import UnknownModelError
from ._registry import register_model

__all__ = ["create_timm_model"]


def create_timm_model(name: str, num_classes: int, in_chans: int = 3, input_size: int = 224, **kwargs):
    """``timm.create_model(name, pretrained=False, ...)``; an unknown name lists close timm names."""
    import timm

    if not timm.is_model(name):
        import difflib

        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.5)
        hint = f"; close timm names: {', '.join(close)}" if close else ""
        raise UnknownModelError(f"unknown timm model {name!r}{hint} (timm.list_models() lists them)")
    kwargs.pop("pretrained", None)
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans,
                                 img_size=input_size, **kwargs)
    except TypeError:  # architectures without an img_size argument (CNNs)
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model
def test_timm_vit(num_classes, in_chans=3, input_size=8, **kwargs):
    """timm's tiny ``test_vit`` at our input size, so tests exercise the timm path cheaply."""
    kwargs.setdefault("patch_size", 4 if input_size % 4 == 0 else 1)
    return create_timm_model("test_vit", num_classes, in_chans, input_size, **kwargs)


@register_model
def test_timm_resnet(num_classes, in_chans=3, input_size=8, **kwargs):
    """timm's tiny ``test_resnet``."""
    return create_timm_model("test_resnet", num_classes, in_chans, input_size, **kwargs)
