"""Image sources: an ImageFolder of PNG/JPEG, an in-memory uint8 array (npz), WebDataset shards.

A source gives every image a stable sample id (its position), a class label, its ``(H, W)`` size
and a content hash that the label store records and checks. Distilled sets are small, so encoded
bytes (or the raw array) are held in RAM by default; an ImageFolder can also read lazily.
:func:`open_source` picks the kind from a path.
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import re
import tarfile
from typing import Iterable, Sequence

import numpy as np

from .decoded import is_cache, load_cache
from .errors import SourceError
from .image_source import ImageSource, pil_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


# --- encoded images held as one blob ----------------------------------------------------------
class _EncodedSource(ImageSource):
    """Encoded images in one uint8 blob with offsets (cheap to pickle, no per-image objects)."""

    def _set_blobs(self, blobs: Sequence[bytes]) -> None:
        lengths = np.array([len(b) for b in blobs], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self._blob = np.frombuffer(b"".join(blobs), dtype=np.uint8) if blobs else np.zeros(0, np.uint8)
        self.sizes = np.array([_header_size(b, n) for b, n in zip(blobs, self.names)], dtype=np.int64).reshape(-1, 2)

    def item(self, i: int) -> np.ndarray:
        return self._blob[self._offsets[i] : self._offsets[i + 1]]

    def _hash_of(self, keys: Iterable[str]) -> str:
        h = hashlib.sha256(f"ddpipe-images-v1:{self.kind}\0".encode())
        for i, key in enumerate(keys):
            data = self.item(i)
            h.update(f"{key}\0{int(self.labels[i])}\0{len(data)}\0".encode())
            h.update(memoryview(np.ascontiguousarray(data)))
        return h.hexdigest()


def _header_size(data: bytes, name: str) -> tuple[int, int]:
    try:
        with pil_image().open(io.BytesIO(data)) as img:
            w, h = img.size
    except Exception as e:  # noqa: BLE001
        raise SourceError(f"{name} is not a readable PNG/JPEG image: {e}") from None
    return h, w


class ImageFolderSource(_EncodedSource):
    """``root/<class>/<image>``: classes and files sorted by name; sample id = position in that order.

    ``in_memory=True`` (default) reads every file once at open; ``False`` keeps paths and reads
    each image when asked (a file that disappears is then reported by name).
    """

    kind = "imagefolder"

    def __init__(self, root: str | os.PathLike, in_memory: bool = True):
        self.root = os.fspath(root)
        if not os.path.isdir(self.root):
            raise SourceError(f"{self.root} is not a directory of class folders")
        self.classes = sorted(d for d in os.listdir(self.root) if os.path.isdir(os.path.join(self.root, d)))
        if not self.classes:
            raise SourceError(f"{self.root} holds no class folders (expected root/<class>/<image>.jpg|png)")
        names, labels = [], []
        for c, cls in enumerate(self.classes):
            for f in sorted(os.listdir(os.path.join(self.root, cls))):
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    names.append(f"{cls}/{f}")
                    labels.append(c)
        if not names:
            raise SourceError(f"{self.root} holds no .jpg/.jpeg/.png images in its class folders")
        self.names = names
        self.labels = np.array(labels, dtype=np.int64)
        self.in_memory = in_memory
        blobs = [self._read(i) for i in range(len(names))]
        self._hash = None
        if in_memory:
            self._set_blobs(blobs)
        else:
            self.sizes = np.array([_header_size(b, n) for b, n in zip(blobs, names)], dtype=np.int64).reshape(-1, 2)
            self._hash = self._hash_blobs(blobs)

    def describe(self, i: int) -> str:
        return f"image {i} ({os.path.join(self.root, self.names[i])})"

    def _read(self, i: int) -> bytes:
        path = os.path.join(self.root, self.names[i])
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as e:
            raise SourceError(f"image {i} ({path}) cannot be read: {e.strerror or e}") from None

    def item(self, i: int) -> np.ndarray:
        if self.in_memory:
            return super().item(i)
        return np.frombuffer(self._read(i), dtype=np.uint8)

    def _hash_blobs(self, blobs) -> str:
        h = hashlib.sha256(f"ddpipe-images-v1:{self.kind}\0".encode())
        for i, (name, data) in enumerate(zip(self.names, blobs)):
            h.update(f"{name}\0{int(self.labels[i])}\0{len(data)}\0".encode())
            h.update(data)
        return h.hexdigest()

    def content_hash(self) -> str:
        if self._hash is None:
            self._hash = self._hash_of(self.names)
        return self._hash

    def __repr__(self) -> str:
        return f"ImageFolderSource({self.root!r}, images={len(self)}, classes={len(self.classes)})"


class WebDatasetSource(_EncodedSource):
    """WebDataset tar shards (sorted by path); sample id = order of appearance.

    Each sample needs one image member (``.jpg``, ``.jpeg`` or ``.png``) and a ``.cls`` member with
    its integer class; members sharing a key (the path up to the first dot of the file name) form
    one sample.
    """

    kind = "webdataset"

    def __init__(self, shards: Sequence[str] | str):
        paths = expand_shards(shards)
        self.shards = paths
        keys, blobs, labels = [], [], []
        for p in paths:
            try:
                samples = _read_tar(p)
            except (OSError, tarfile.TarError) as e:
                raise SourceError(f"WebDataset shard {p} cannot be read: {e}") from None
            for key, members in samples:
                img = next((members[e] for e in ("jpg", "jpeg", "png") if e in members), None)
                if img is None:
                    raise SourceError(f"{p}: sample {key!r} has no .jpg/.jpeg/.png member")
                if "cls" not in members:
                    raise SourceError(f"{p}: sample {key!r} has no .cls member (its class)")
                try:
                    labels.append(int(members["cls"].decode().strip()))
                except ValueError:
                    raise SourceError(f"{p}: sample {key!r} has a non-integer .cls member") from None
                keys.append(key)
                blobs.append(img)
        if not keys:
            raise SourceError(f"no samples in WebDataset shards {paths}")
        self.names = keys
        self.labels = np.array(labels, dtype=np.int64)
        self.classes = [str(c) for c in range(int(self.labels.max()) + 1)]
        self._set_blobs(blobs)
        self._hash = None

    def content_hash(self) -> str:
        if self._hash is None:
            self._hash = self._hash_of(self.names)
        return self._hash

    def __repr__(self) -> str:
        return f"WebDatasetSource({len(self.shards)} shards, images={len(self)})"


def _read_tar(path: str) -> list[tuple[str, dict[str, bytes]]]:
    samples: list[tuple[str, dict[str, bytes]]] = []
    with tarfile.open(path, "r") as tar:
        for m in tar:
            if not m.isfile():
                continue
            d, base = os.path.split(m.name)
            if "." not in base:
                continue
            stem, ext = base.split(".", 1)
            key = f"{d}/{stem}" if d else stem
            data = tar.extractfile(m).read()
            if not samples or samples[-1][0] != key:
                samples.append((key, {}))
            samples[-1][1][ext.lower()] = data
    return samples


def expand_shards(shards: Sequence[str] | str) -> list[str]:
    """``a-{000..003}.tar`` brace ranges, globs, a directory of ``.tar`` files, or a list."""
    if not isinstance(shards, str):
        out = [os.fspath(s) for s in shards]
    elif os.path.isdir(shards):
        out = sorted(glob.glob(os.path.join(shards, "*.tar")))
    else:
        m = re.search(r"\{(\d+)\.\.(\d+)\}", shards)
        if m:
            lo, hi, width = int(m.group(1)), int(m.group(2)), len(m.group(1))
            out = [shards[: m.start()] + str(i).zfill(width) + shards[m.end() :] for i in range(lo, hi + 1)]
        else:
            out = sorted(glob.glob(shards)) or [shards]
    missing = [p for p in out if not os.path.isfile(p)]
    if not out or missing:
        raise SourceError(f"WebDataset shards not found: {missing or shards}")
    return out


# --- raw arrays ---------------------------------------------------------------------------------
class ArraySource(ImageSource):
    """An in-memory uint8 array ``[N, H, W]`` or ``[N, H, W, C]`` with integer labels."""

    kind = "array"
    encoded = False

    def __init__(self, images: np.ndarray, labels: np.ndarray | None = None, name: str = "array"):
        a = np.asarray(images)
        if a.dtype != np.uint8 or a.ndim not in (3, 4) or len(a) == 0:
            raise SourceError(f"an array source must be non-empty uint8 [N, H, W(, C)], got {a.dtype} {a.shape}")
        if a.ndim == 3:
            a = a[..., None]
        if a.shape[3] not in (1, 3):
            raise SourceError(f"an array source must have 1 or 3 channels, got {a.shape[3]}")
        self.images = np.ascontiguousarray(a)
        lab = np.zeros(len(a), np.int64) if labels is None else np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(lab) != len(a):
            raise SourceError(f"{name}: {len(a)} images but {len(lab)} labels")
        self.labels = lab
        self.sizes = np.tile(np.array(a.shape[1:3], dtype=np.int64), (len(a), 1))
        self.names = [f"{name}[{i}]" for i in range(len(a))]
        self.classes = [str(c) for c in range(int(lab.max()) + 1)]
        self.source_name = name
        self._hash = None

    @classmethod
    def from_npz(cls, path: str | os.PathLike) -> "ArraySource":
        path = os.fspath(path)
        try:
            with np.load(path) as z:
                img_key = next((k for k in ("images", "x", "X") if k in z), None)
                if img_key is None:
                    raise SourceError(f"{path} holds no 'images' array (keys: {sorted(z.files)})")
                lab_key = next((k for k in ("labels", "y", "Y") if k in z), None)
                return cls(z[img_key], z[lab_key] if lab_key else None, name=os.path.basename(path))
        except (OSError, ValueError) as e:
            raise SourceError(f"{path} is not a readable .npz of images: {e}") from None

    def item(self, i: int) -> np.ndarray:
        return self.images[i]

    def content_hash(self) -> str:
        if self._hash is None:
            h = hashlib.sha256(b"ddpipe-images-v1:array\0")
            h.update(str(self.images.shape).encode())
            h.update(memoryview(self.images).cast("B"))
            h.update(self.labels.astype("<i8").tobytes())
            self._hash = h.hexdigest()
        return self._hash

    def __repr__(self) -> str:
        return f"ArraySource({self.source_name!r}, shape={self.images.shape})"


# --- the one front door -------------------------------------------------------------------------
def open_source(path: str | os.PathLike | Sequence[str], *, in_memory: bool = True) -> ImageSource:
    """Open an image source from a path: ``*.npz`` (array), ``*.tar`` / brace pattern / a directory
    of ``.tar`` shards (WebDataset), a decoded cache directory (``ddpipe cache``, :mod:`.decoded`), or a
    directory of class folders (ImageFolder)."""
    if isinstance(path, ImageSource):
        return path
    if not isinstance(path, (str, os.PathLike)):
        return WebDatasetSource(list(path))
    p = os.fspath(path)
    if p.endswith(".npz"):
        return ArraySource.from_npz(p)
    if p.endswith(".tar") or "{" in p:
        return WebDatasetSource(p)
    if is_cache(p):  # a decoded cache (`ddpipe cache`)
        return load_cache(p)
    if os.path.isdir(p):
        entries = os.listdir(p)
        if any(os.path.isdir(os.path.join(p, e)) for e in entries):
            return ImageFolderSource(p, in_memory=in_memory)
        if any(e.endswith(".tar") for e in entries):
            return WebDatasetSource(p)
        raise SourceError(f"{p} holds neither class folders nor .tar shards")
    raise SourceError(f"{p} does not exist or is not an image source (.npz, .tar shards, or an ImageFolder)")
