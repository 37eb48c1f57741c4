"""Real and patterned images, a toy teacher and store builders for the pipeline tests.

Importable by test processes started with torchrun (``tests/dist_pipeline_epoch.py``).
"""

from __future__ import annotations

import gzip
import os

import numpy as np

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


def fashion_mnist(n: int = 512, split: str = "t10k") -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` Fashion-MNIST images (uint8 [n, 28, 28]) and labels, from the Debian IDX files."""
    with gzip.open(os.path.join(FASHION_DIR, f"{split}-images-idx3-ubyte.gz"), "rb") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:n]
    with gzip.open(os.path.join(FASHION_DIR, f"{split}-labels-idx1-ubyte.gz"), "rb") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)[:n].astype(np.int64)
    return images.copy(), labels


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits as uint8 [1797, 8, 8] (0..16 scaled to 0..240) and labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images * 15).astype(np.uint8), d.target.astype(np.int64)


def pattern_images(n: int, h: int = 48, w: int = 64) -> np.ndarray:
    """RGB images whose pixels say where they are: R = 4x, G = 4y (+2 rows/cols stay < 256), B = id."""
    assert w <= 64 and h <= 64 and n <= 256
    y, x = np.mgrid[0:h, 0:w]
    img = np.zeros((n, h, w, 3), np.uint8)
    img[..., 0] = 4 * x
    img[..., 1] = 4 * y
    img[..., 2] = np.arange(n, dtype=np.uint8)[:, None, None]
    return img


def write_image_folder(root: str, images: np.ndarray, labels: np.ndarray, ext: str = "png", quality: int = 90) -> str:
    """``root/c{label:02d}/img{i:05d}.{ext}`` like the recover methods write (sorted = sample order)."""
    from PIL import Image

    for i, (img, c) in enumerate(zip(images, labels)):
        d = os.path.join(root, f"c{int(c):02d}")
        os.makedirs(d, exist_ok=True)
        arr = img[..., 0] if img.ndim == 3 and img.shape[2] == 1 else img
        kw = {"quality": quality} if ext == "jpg" else {}
        Image.fromarray(arr).save(os.path.join(d, f"img{i:05d}.{ext}"), **kw)
    return root


def class_sorted(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images reordered by class (stable), the order an ImageFolder of them lists."""
    order = np.argsort(labels, kind="stable")
    return images[order], labels[order]


class ToyTeacher:
    """A fixed random linear map of 4x4-average-pooled images: numpy in, logits out."""

    def __init__(self, num_classes: int, seed: int = 0):
        self.num_classes = num_classes
        self.seed = seed
        self._w = None

    def __call__(self, x):
        x = np.asarray(x, dtype=np.float32)
        b, c, h, w = x.shape
        pooled = x[:, :, : h // 4 * 4, : w // 4 * 4].reshape(b, c, h // 4, 4, w // 4, 4).mean(axis=(3, 5)).reshape(b, -1)
        if self._w is None or self._w.shape[0] != pooled.shape[1]:
            self._w = np.random.default_rng(self.seed).normal(size=(pooled.shape[1], self.num_classes)).astype(np.float32)
        return 3.0 * pooled @ self._w / np.sqrt(pooled.shape[1])
