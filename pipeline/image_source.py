"""What every image source is: :class:`ImageSource`, the interface the kinds in ``sources.py`` and
the decoded cache (``decoded.py``) implement and the loaders read. Kept apart from the kinds so that
the cache can be a source without importing the front door (``sources.open_source``) that opens it.
"""

from __future__ import annotations

import io

import numpy as np

from .errors import SourceError

__all__ = ["ImageSource", "pil_image"]


def pil_image():
    """Pillow's ``Image`` module, imported on first use."""
    from PIL import Image

    return Image


def _mode(channels: int) -> str:
    if channels not in (1, 3):
        raise SourceError(f"channels must be 1 or 3, got {channels}")
    return "L" if channels == 1 else "RGB"


class ImageSource:
    """Base of all sources. Subclasses fill ``labels``, ``sizes``, ``names`` and implement ``item``."""

    kind = "base"
    encoded = True  # item() returns encoded bytes (True) or a uint8 HWC array (False)
    labels: np.ndarray  # int64 [N]
    sizes: np.ndarray  # int64 [N, 2] (height, width)
    names: list[str]  # a human-readable name per sample (for error messages)
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def item(self, i: int):
        raise NotImplementedError

    def content_hash(self) -> str:
        raise NotImplementedError

    def describe(self, i: int) -> str:
        return f"image {i} ({self.names[i]})"

    def pil(self, i: int, channels: int = 3):
        """Sample ``i`` decoded as a PIL image in mode ``L`` (1 channel) or ``RGB`` (3)."""
        Image = pil_image()
        data = self.item(i)
        try:
            if self.encoded:
                img = Image.open(io.BytesIO(data))
                img.load()
            else:
                arr = data[..., 0] if data.ndim == 3 and data.shape[2] == 1 else data
                img = Image.fromarray(np.ascontiguousarray(arr))
        except Exception as e:  # noqa: BLE001 - any decode failure is one clear error
            raise SourceError(f"{self.describe(i)} cannot be decoded: {e}") from None
        mode = _mode(channels)
        return img if img.mode == mode else img.convert(mode)

    def array(self, i: int, channels: int = 3) -> np.ndarray:
        """Sample ``i`` as uint8 ``[H, W, channels]``."""
        if not self.encoded:
            data = self.item(i)
            if data.shape[2] == channels:
                return data
        a = np.asarray(self.pil(i, channels))
        return a[:, :, None] if a.ndim == 2 else a
