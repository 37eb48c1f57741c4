"""Image sources: an ImageFolder of PNG/JPEG, an in-memory uint8 array (npz), WebDataset shards.

A source gives every image a stable sample id (its position), a class label, its ``(H, W)`` size
and a content hash that the label store records and checks. Encoded images (ImageFolder, WebDataset)
are held in one RAM blob when the set is small (``mode == "memory"``) and read from their files on
demand when it is large (``mode == "lazy"``: only names, labels, sizes and file offsets in memory,
so memory does not grow with the image count and every rank and worker shares the page cache).
The switch is automatic: ``in_memory="auto"`` holds the set in RAM when its encoded bytes are at
most :func:`in_memory_max_bytes` (256 MiB, or ``$DDPIPE_IN_MEMORY_MAX_BYTES``); ``True``/``False``
force a mode. Sizes come from the image headers and the content hash is streamed, so opening a
large set reads each file once in bounded memory; the hash is the same in both modes.
:func:`open_source` picks the kind from a path.
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import weakref
from typing import Iterable, Sequence

import numpy as np

from ..labelstore.location import is_url
from .decoded import is_cache, load_cache
from .errors import SourceError
from .image_source import ImageSource, pil_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_IMAGE_EXTS = ("jpg", "jpeg", "png")
IN_MEMORY_MAX_BYTES = 256 * 2**20  # encoded bytes up to which "auto" holds a set in RAM
_HEADER_BYTES = 64 * 1024  # what is read of an image to find its size (more only when that fails)


def in_memory_max_bytes() -> int:
    """The byte threshold of ``in_memory="auto"``: ``$DDPIPE_IN_MEMORY_MAX_BYTES`` or 256 MiB."""
    env = os.environ.get("DDPIPE_IN_MEMORY_MAX_BYTES", "").strip()
    if not env:
        return IN_MEMORY_MAX_BYTES
    try:
        return int(float(env))
    except ValueError:
        raise SourceError(f"DDPIPE_IN_MEMORY_MAX_BYTES must be a byte count, got {env!r}") from None


def _choose_in_memory(in_memory, total_bytes: int) -> bool:
    if in_memory == "auto":
        return total_bytes <= in_memory_max_bytes()
    if isinstance(in_memory, bool):
        return in_memory
    raise SourceError(f"in_memory must be 'auto', True or False, got {in_memory!r}")


# --- encoded images: one RAM blob (small sets) or read from the files (large sets) -------------------
class _EncodedSource(ImageSource):
    """Encoded images, either in one uint8 blob with offsets (``mode == "memory"``: cheap to pickle,
    no per-image objects) or read on demand by :meth:`_read` (``mode == "lazy"``)."""

    mode = "lazy"

    def _read(self, i: int) -> bytes:
        raise NotImplementedError

    def _header(self, i: int) -> bytes:
        """The first bytes of image ``i`` (enough for its size, in the usual case)."""
        return self._read(i)

    def _load_blob(self, lengths: np.ndarray) -> None:
        """Read every image into one blob (filled in place: no second copy while it is joined)."""
        self._offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self._blob = np.empty(int(self._offsets[-1]), np.uint8)
        for i in range(len(lengths)):
            data = self._read(i)
            lo, hi = self._offsets[i], self._offsets[i + 1]
            if len(data) != hi - lo:
                raise SourceError(f"{self.describe(i)} changed size while it was read")
            self._blob[lo:hi] = np.frombuffer(data, np.uint8)
        self.mode = "memory"

    def _read_sizes(self) -> np.ndarray:
        sizes = np.empty((len(self.names), 2), np.int64)
        for i in range(len(self.names)):
            data = self.item(i) if self.mode == "memory" else self._header(i)
            try:
                sizes[i] = _header_size(data, self.describe(i))
            except SourceError:
                if self.mode == "memory" or len(data) < _HEADER_BYTES:
                    raise
                sizes[i] = _header_size(self._read(i), self.describe(i))  # a header past the first bytes
        return sizes

    def item(self, i: int) -> np.ndarray:
        if self.mode == "memory":
            return self._blob[self._offsets[i]: self._offsets[i + 1]]
        return np.frombuffer(self._read(i), dtype=np.uint8)

    def content_hash(self) -> str:
        """SHA-256 over kind, then per image its name, label, length and bytes (streamed)."""
        if self._hash is None:
            h = hashlib.sha256(f"ddpipe-images-v1:{self.kind}\0".encode())
            for i, key in enumerate(self.names):
                data = self.item(i)
                h.update(f"{key}\0{int(self.labels[i])}\0{len(data)}\0".encode())
                h.update(memoryview(np.ascontiguousarray(data)))
            self._hash = h.hexdigest()
        return self._hash

    @property
    def in_memory(self) -> bool:
        """Whether the encoded images are held in RAM (``mode == "memory"``)."""
        return self.mode == "memory"

    @property
    def nbytes(self) -> int:
        """The encoded bytes of the whole set."""
        return int(self._lengths.sum())


def _header_size(data, what: str) -> tuple[int, int]:
    try:
        with pil_image().open(io.BytesIO(data)) as img:
            w, h = img.size
    except Exception as e:  # noqa: BLE001
        raise SourceError(f"{what} is not a readable PNG/JPEG image: {e}") from None
    return h, w


def _head(path: str, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


class ImageFolderSource(_EncodedSource):
    """``root/<class>/<image>``: classes and files sorted by name; sample id = position in that order.

    ``in_memory``: ``"auto"`` (default; RAM when the files take at most :func:`in_memory_max_bytes`),
    ``True`` (read every file once at open) or ``False`` (keep paths and read each image when asked;
    a file that disappears is then reported by name). ``mode`` says which was chosen.
    """

    kind = "imagefolder"

    def __init__(self, root: str | os.PathLike, in_memory="auto"):
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
        self._hash = None
        self._lengths = np.array([self._stat(i) for i in range(len(names))], dtype=np.int64)
        if _choose_in_memory(in_memory, int(self._lengths.sum())):
            self._load_blob(self._lengths)
        self.sizes = self._read_sizes()

    def describe(self, i: int) -> str:
        return f"image {i} ({os.path.join(self.root, self.names[i])})"

    def _stat(self, i: int) -> int:
        try:
            return os.path.getsize(os.path.join(self.root, self.names[i]))
        except OSError as e:
            raise SourceError(f"{self.describe(i)} cannot be read: {e.strerror or e}") from None

    def _read(self, i: int) -> bytes:
        try:
            with open(os.path.join(self.root, self.names[i]), "rb") as f:
                return f.read()
        except OSError as e:
            raise SourceError(f"{self.describe(i)} cannot be read: {e.strerror or e}") from None

    def _header(self, i: int) -> bytes:
        try:
            return _head(os.path.join(self.root, self.names[i]), 0, _HEADER_BYTES)
        except OSError as e:
            raise SourceError(f"{self.describe(i)} cannot be read: {e.strerror or e}") from None

    def __repr__(self) -> str:
        return f"ImageFolderSource({self.root!r}, images={len(self)}, classes={len(self.classes)}, mode={self.mode})"


class WebDatasetSource(_EncodedSource):
    """WebDataset tar shards; sample id = order of appearance (shards in the order of their spec,
    a directory's or a glob's sorted by path).

    Each sample needs one image member (``.jpg``, ``.jpeg`` or ``.png``) and a ``.cls`` member with
    its integer class; members sharing a key (webdataset's rule: the path up to the first dot of the
    file name) form one sample. Shard specs and URLs go through the ``webdataset`` library (brace
    expansion, ``::`` lists, ``pipe:``/``http(s)://``/... opened with its ``gopen``); a remote shard is
    copied once to a local spill file. Each shard is indexed once (member offsets, through
    ``tarfile``, in bounded memory) and images are then read by offset: random access by sample
    id, as webdataset's indexed reader does. ``in_memory`` as for :class:`ImageFolderSource`.
    """

    kind = "webdataset"

    def __init__(self, shards: Sequence[str] | str, in_memory="auto"):
        self.shards = expand_shards(shards)
        self._local = self._localize(self.shards)
        keys, labels, shard_of, offsets, lengths = [], [], [], [], []
        for s, path in enumerate(self._local):
            for key, label, off, n in _index_shard(path, self.shards[s]):
                keys.append(key)
                labels.append(label)
                shard_of.append(s)
                offsets.append(off)
                lengths.append(n)
        if not keys:
            raise SourceError(f"no samples in WebDataset shards {self.shards}")
        self.names = keys
        self.labels = np.array(labels, dtype=np.int64)
        self.classes = [str(c) for c in range(int(self.labels.max()) + 1)]
        self._shard_of = np.array(shard_of, dtype=np.int32)
        self._member_offsets = np.array(offsets, dtype=np.int64)
        self._lengths = np.array(lengths, dtype=np.int64)
        self._fds: dict[int, int] = {}
        self._fd_pid = os.getpid()
        self._hash = None
        if _choose_in_memory(in_memory, int(self._lengths.sum())):
            self._load_blob(self._lengths)
            self._close()
        self.sizes = self._read_sizes()

    def _localize(self, shards: list[str]) -> list[str]:
        """Local paths of the shards: remote ones are copied (streamed) into a spill directory that
        lives as long as this source in the process that opened it."""
        remote = [s for s in shards if _is_remote(s)]
        if not remote:
            return list(shards)
        from webdataset.gopen import gopen

        spill = tempfile.mkdtemp(prefix="ddpipe-wds-")
        weakref.finalize(self, _remove_spill, spill, os.getpid())
        out = []
        for s, url in enumerate(shards):
            if not _is_remote(url):
                out.append(url)
                continue
            local = os.path.join(spill, f"{s:06d}.tar")
            try:
                with gopen(url, "rb") as src, open(local, "wb") as dst:
                    shutil.copyfileobj(src, dst, 4 * 2**20)
            except Exception as e:  # noqa: BLE001 - any transport failure is one clear error
                raise SourceError(f"WebDataset shard {url} cannot be read: {e}") from None
            out.append(local)
        return out

    # the open shard files belong to one process: a forked or unpickled worker opens its own
    def __getstate__(self):
        d = dict(self.__dict__)
        d["_fds"] = {}
        return d

    def _fd(self, s: int) -> int:
        if self._fd_pid != os.getpid():
            self._fds, self._fd_pid = {}, os.getpid()
        fd = self._fds.get(s)
        if fd is None:  # decoding threads may race here: the first file opened wins, the others close
            new = os.open(self._local[s], os.O_RDONLY)
            fd = self._fds.setdefault(s, new)
            if fd != new:
                os.close(new)
        return fd

    def _close(self) -> None:
        if self._fd_pid == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
        self._fds = {}

    def __del__(self):
        try:
            self._close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def _pread(self, i: int, length: int) -> bytes:
        s = int(self._shard_of[i])
        try:
            data = os.pread(self._fd(s), length, int(self._member_offsets[i]))
        except OSError as e:
            raise SourceError(f"{self.describe(i)} cannot be read from {self.shards[s]}: {e.strerror or e}") from None
        if len(data) != length:
            raise SourceError(f"{self.describe(i)} cannot be read from {self.shards[s]}: the shard is truncated")
        return data

    def _read(self, i: int) -> bytes:
        return self._pread(i, int(self._lengths[i]))

    def _header(self, i: int) -> bytes:
        return self._pread(i, min(int(self._lengths[i]), _HEADER_BYTES))

    def describe(self, i: int) -> str:
        return f"image {i} ({self.names[i]}, {self.shards[int(self._shard_of[i])]})"

    def __repr__(self) -> str:
        return f"WebDatasetSource({len(self.shards)} shards, images={len(self)}, mode={self.mode})"


def _is_remote(shard: str) -> bool:
    return is_url(shard) and not shard.startswith("file://") or shard.startswith("pipe:")


def _remove_spill(path: str, pid: int) -> None:
    if os.getpid() == pid:  # a forked worker leaves its parent's spill alone
        shutil.rmtree(path, ignore_errors=True)


def _index_shard(path: str, name: str):
    """``(key, label, image offset, image length)`` per sample of one tar shard, in order. Members
    are walked with ``tarfile`` (headers only; data is skipped by seeking, the member list is not
    kept); only the small ``.cls`` members are read."""
    from webdataset.tariterators import base_plus_ext

    def finish(key, members):
        img = next((members[e] for e in _IMAGE_EXTS if e in members), None)
        if img is None:
            raise SourceError(f"{name}: sample {key!r} has no .jpg/.jpeg/.png member")
        if "cls" not in members:
            raise SourceError(f"{name}: sample {key!r} has no .cls member (its class)")
        off, n = members["cls"]
        try:
            label = int(_head(path, off, n).decode().strip())
        except (ValueError, UnicodeDecodeError):
            raise SourceError(f"{name}: sample {key!r} has a non-integer .cls member") from None
        return key, label, img[0], img[1]

    try:
        with tarfile.open(path, "r:") as tar:
            key, members = None, {}
            while (m := tar.next()) is not None:
                tar.members.clear()  # headers only: memory stays flat in the member count
                if not m.isfile():
                    continue
                base, ext = base_plus_ext(m.name)
                if base is None:
                    continue
                if base != key:
                    if key is not None:
                        yield finish(key, members)
                    key, members = base, {}
                members[ext.lower()] = (m.offset_data, m.size)
            if key is not None:
                yield finish(key, members)
    except (OSError, tarfile.TarError) as e:
        raise SourceError(f"WebDataset shard {name} cannot be read: {e}") from None


def expand_shards(shards: Sequence[str] | str) -> list[str]:
    """Shard paths or URLs from a spec: a list (as given), a directory of ``.tar`` files (sorted), a
    glob (sorted), or webdataset's spec syntax (``a-{000..003}.tar`` braces, ``::``-joined lists,
    ``$WDS_`` variables; URLs and ``pipe:`` commands pass through)."""
    if not isinstance(shards, str):
        out = [os.fspath(s) for s in shards]
    elif os.path.isdir(shards):
        out = sorted(glob.glob(os.path.join(shards, "*.tar")))
    elif not _is_remote(shards) and any(c in shards for c in "*?[") and "{" not in shards:
        out = sorted(glob.glob(shards)) or [shards]
    else:
        from webdataset.shardlists import expand_urls

        out = expand_urls(shards)
    missing = [p for p in out if not _is_remote(p) and not os.path.isfile(p.removeprefix("file://"))]
    if not out or missing:
        raise SourceError(f"WebDataset shards not found: {missing or shards}")
    return [p.removeprefix("file://") for p in out]


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
def open_source(path: str | os.PathLike | Sequence[str], *, in_memory="auto") -> ImageSource:
    """Open an image source from a path: ``*.npz`` (array), ``*.tar`` / brace pattern / a directory
    of ``.tar`` shards (WebDataset), a decoded cache directory (``ddpipe cache``, :mod:`.decoded`), or a
    directory of class folders (ImageFolder). ``in_memory`` (``"auto"``, True, False): whether an
    encoded set is held in RAM or read from its files (see the module doc); the source's ``mode``
    says which."""
    if isinstance(path, ImageSource):
        return path
    if not isinstance(path, (str, os.PathLike)):
        return WebDatasetSource(list(path), in_memory=in_memory)
    p = os.fspath(path)
    if p.endswith(".npz"):
        return ArraySource.from_npz(p)
    if p.endswith(".tar") or "{" in p:
        return WebDatasetSource(p, in_memory=in_memory)
    if is_cache(p):  # a decoded cache (`ddpipe cache`)
        return load_cache(p)
    if os.path.isdir(p):
        entries = os.listdir(p)
        if any(os.path.isdir(os.path.join(p, e)) for e in entries):
            return ImageFolderSource(p, in_memory=in_memory)
        if any(e.endswith(".tar") for e in entries):
            return WebDatasetSource(p, in_memory=in_memory)
        raise SourceError(f"{p} holds neither class folders nor .tar shards")
    raise SourceError(f"{p} does not exist or is not an image source (.npz, .tar shards, or an ImageFolder)")
