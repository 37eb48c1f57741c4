"""Writing a synthetic set: an ImageFolder that ``ddpipe.pipeline.open_source`` reads, plus ``manifest.json``.

Layout (SRe2L's): ``OUT/new{class:03d}/class{class:03d}_id{index:03d}.png`` (or ``.jpg``), class
folders and files sorted by name, so sample id = class * ipc + index. Images are de-normalised,
clamped to [0, 1] and rounded to uint8; one-channel sets are written as grayscale (mode ``L``).
``manifest.json`` is replaced atomically after every finished batch; it records which batches are
done, so a rerun with the same config skips them (resume). Under torchrun only rank 0 writes
``manifest.json`` (at the start and at the end); meanwhile each rank records its own finished batches in
``manifest.rank{r}.json`` (:meth:`ImageFolderWriter.save_part`), which rank 0 merges into the manifest
and removes, at the end of the run or at the start of the next one when the run was killed.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import torch

from .errors import RunStateError, SynthConfigError

__all__ = ["MANIFEST", "FORMAT", "ImageFolderWriter", "to_uint8", "read_manifest", "part_name"]

MANIFEST = "manifest.json"
_PART = re.compile(r"manifest\.rank(\d+)\.json")
FORMAT = "ddpipe-synth-v1"
_EXT = {"png": ".png", "jpeg": ".jpg"}


def to_uint8(x: torch.Tensor, mean, std) -> np.ndarray:
    """Normalised [B, C, H, W] -> uint8 [B, H, W, C]: ``round(clamp(x * std + mean, 0, 1) * 255)``."""
    m = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    img = (x.detach().float().cpu() * s + m).clamp(0, 1)
    return (img * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _write_json_atomic(obj: dict, path: str) -> None:
    from ddpipe._files import replace_atomically

    replace_atomically(path, lambda f: f.write(json.dumps(obj, indent=1, sort_keys=True).encode()))


def part_name(rank: int) -> str:
    """The file in which rank ``rank`` of a torchrun group records its finished batches."""
    return f"manifest.rank{int(rank)}.json"


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise RunStateError(f"{path} is unreadable ({e}); delete it or pass overwrite to start afresh") from None


def read_manifest(out: str) -> dict | None:
    path = os.path.join(out, MANIFEST)
    if not os.path.exists(path):
        return None
    return _read_json(path)


def fingerprint_changes(old: dict, new: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """``[(key, old, new)]`` for every leaf where two fingerprints differ, nested keys joined by dots
    (``config.min_scale``), so a refused resume names what changed."""
    out = []
    for k in sorted(set(old) | set(new), key=str):
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(fingerprint_changes(a, b, f"{prefix}{k}."))
        else:
            out.append((f"{prefix}{k}", a, b))
    return out


def _short(value) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= 60 else text[:57] + "..."


class ImageFolderWriter:
    """Writes images into class folders and keeps the manifest; see the module docstring."""

    def __init__(self, out: str, num_classes: int, ipc: int, mean, std, image_format: str = "png",
                 jpeg_quality: int = 95):
        if image_format not in _EXT:
            raise SynthConfigError(f"image_format must be png or jpeg, got {image_format!r}")
        self.out = os.path.abspath(os.path.expanduser(out))
        self.mean, self.std = list(mean), list(std)
        self.format, self.quality = image_format, int(jpeg_quality)
        self.cw = max(3, len(str(num_classes - 1)))
        self.iw = max(3, len(str(max(ipc - 1, 0))))

    def class_dir(self, c: int) -> str:
        return os.path.join(self.out, f"new{c:0{self.cw}d}")

    def path(self, c: int, i: int) -> str:
        return os.path.join(self.class_dir(c), f"class{c:0{self.cw}d}_id{i:0{self.iw}d}{_EXT[self.format]}")

    def start(self, fingerprint: dict, overwrite: bool = False) -> dict | None:
        """Prepare ``out``; returns the manifest of a matching earlier run (to resume) or None.

        A manifest from another config is :class:`RunStateError` (one line naming each differing entry
        of the fingerprint with its old and new value) unless ``overwrite`` (which deletes
        the earlier run's class folders, manifest and rank parts, nothing else). A non-empty folder without a
        manifest is refused too.
        """
        old = read_manifest(self.out) if os.path.isdir(self.out) else None
        if old is not None and overwrite:
            for name in os.listdir(self.out):
                p = os.path.join(self.out, name)
                if name == MANIFEST or _PART.fullmatch(name) or (name.startswith("new") and os.path.isdir(p)):
                    shutil.rmtree(p) if os.path.isdir(p) else os.unlink(p)
            old = None
        if old is not None:
            if old.get("fingerprint") != fingerprint:
                diff = "; ".join(f"{k} {_short(a)} -> {_short(b)}"
                                 for k, a, b in fingerprint_changes(old.get("fingerprint") or {}, fingerprint))
                raise RunStateError(
                    f"{self.out} holds a recover run made with other settings ({diff}); "
                    "use another output folder or overwrite=True (--overwrite) to replace it"
                )
            return old
        if os.path.isdir(self.out) and any(not n.startswith(".") for n in os.listdir(self.out)):
            raise RunStateError(f"{self.out} is not empty and holds no {MANIFEST}; choose an empty or new folder")
        os.makedirs(self.out, exist_ok=True)
        return None

    def write(self, images: np.ndarray, classes, indices) -> list[str]:
        """Write uint8 [B, H, W, C] images as (class, index) pairs; each file appears atomically."""
        from PIL import Image

        paths = []
        for img, c, i in zip(images, classes, indices):
            c, i = int(c), int(i)
            os.makedirs(self.class_dir(c), exist_ok=True)
            path = self.path(c, i)
            arr = img[..., 0] if img.shape[-1] == 1 else img
            pil = Image.fromarray(np.ascontiguousarray(arr))  # 2-D uint8 -> L, [H, W, 3] -> RGB
            tmp = path + ".tmp"
            if self.format == "png":
                pil.save(tmp, format="PNG")
            else:
                pil.save(tmp, format="JPEG", quality=self.quality)
            os.replace(tmp, path)
            paths.append(path)
        return paths

    def save_manifest(self, manifest: dict) -> None:
        _write_json_atomic(manifest, os.path.join(self.out, MANIFEST))

    def save_part(self, rank: int, part: dict) -> None:
        """Replace rank ``rank``'s record of its finished batches (``manifest.rank{rank}.json``) atomically."""
        _write_json_atomic(part, os.path.join(self.out, part_name(rank)))

    def part_files(self) -> list[str]:
        """The rank parts in ``out``, by rank."""
        if not os.path.isdir(self.out):
            return []
        found = [(int(m.group(1)), n) for n in os.listdir(self.out) if (m := _PART.fullmatch(n))]
        return [os.path.join(self.out, n) for _, n in sorted(found)]

    def read_parts(self) -> list[dict]:
        """Every rank part in ``out`` (of a finished or a killed torchrun run), by rank."""
        return [_read_json(p) for p in self.part_files()]

    def remove_parts(self) -> None:
        """Delete the rank parts (after :meth:`save_manifest` has stored what they held)."""
        for p in self.part_files():
            os.unlink(p)
