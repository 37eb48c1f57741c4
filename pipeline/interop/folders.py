"""Reading the label folders of SRe2L, LPLD, LPQLD, G-VBSM and FKD (layouts: ``docs/interop.md``).

A folder is opened with :func:`open_folder` (``fmt="auto"`` detects it), which looks at its layout
and its first file only; :meth:`LabelFolder.records` then yields one :class:`BatchRecord` per
stored batch, in training order, reading one file at a time (bounded memory). Every file is read
with :func:`~ddpipe.pipeline.interop.safe_load.load_label_file` (``weights_only=True`` and a numpy
allow-list), and every record is checked against the folder's shape: a file of another variant, a
batch of the wrong size or a wrong class count is an :class:`InteropError` naming the file.

Rows are mapped to images by the index the format stores (G-VBSM's seventh element, LPLD's
``sampler_indices_epoch.json``, LPQLD's ``sampler_indices_batch.json``) and otherwise by replaying
``RandomSampler(generator=torch.Generator().manual_seed(seed))`` with its discarded draw per epoch
(:func:`ddpipe.pipeline.schedule.torch_sampler_orders`), checked against the batch sizes.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from ..schedule import SamplerReplay
from .errors import InteropError
from .safe_load import load_label_file

FORMATS = ("sre2l", "lpld", "lpqld", "gvbsm", "fkd")
"""Folder formats ``ddpipe import`` reads (``auto`` detects one of them)."""

LPLD_INDEX_JSON = "sampler_indices_epoch.json"
LPQLD_INDEX_JSON = "sampler_indices_batch.json"
SRE2L_SAMPLER_SEED = 42  # SRe2L's train_FKD.py hard-codes it (get_img2batch_idx_list(seed=42))

_EPOCH_DIR = re.compile(r"^epoch_(\d+)$")
_BATCH_FILE = re.compile(r"^batch_(\d+)\.tar$")


@dataclass
class BatchRecord:
    """One stored batch, as its file holds it (arrays as numpy, dtypes as stored)."""

    path: str
    epoch: int
    batch: int
    coords: np.ndarray  # [b, 4] (top, left, height, width) fractions; float32 (SRe2L) or float16 (LPQLD, FKD)
    flips: np.ndarray | None = None  # bool [b]
    cutout: np.ndarray | None = None  # float32 [b, 7] LPLD ImageNet-21K (y_c/h, x_c/w, h_cut/h, w_cut/w, R, G, B)
    randaug: np.ndarray | None = None  # [b, 3 * layers] LPQLD RandAugment (op, decision, param) per layer, as float64
    mix_index: np.ndarray | None = None  # [b] in-batch partner (int64; uint8 in LPQLD)
    mix_lam: float | None = None  # Python float
    mix_bbox: tuple[int, int, int, int] | None = None  # (bbx1, bby1, bbx2, bby2): images[:, :, bbx1:bbx2, bby1:bby2]
    values: np.ndarray | None = None  # logits [b, C] (fp16), top-k logits [b, k] (LPQLD), or top-k probs (FKD)
    value_index: np.ndarray | None = None  # [b, k] class indices of top-k values (LPQLD, FKD); None = all classes
    sample_ids: np.ndarray | None = None  # int64 [b]: the images, where the format stores them

    @property
    def count(self) -> int:
        return len(self.coords)

    @property
    def mix_kind(self) -> str:
        if self.mix_index is None:
            return "none"
        return "cutmix" if self.mix_bbox is not None else "mixup"


def _np(x: Any, path: str, what: str) -> np.ndarray:
    import torch

    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise InteropError(f"{path}: {what} should be a tensor, found {type(x).__name__}")


def _float(x: Any, path: str, what: str) -> float:
    import torch

    if isinstance(x, torch.Tensor) and x.numel() == 1:
        return float(x.item())
    if isinstance(x, (float, int, np.floating, np.integer)) and not isinstance(x, bool):
        return float(x)
    raise InteropError(f"{path}: {what} should be a number, found {type(x).__name__}")


def _bbox(x: Any, path: str) -> tuple[int, int, int, int]:
    import torch

    if not isinstance(x, (list, tuple)) or len(x) != 4:
        raise InteropError(f"{path}: the CutMix box (element 5) should be a list of 4 integers, found {type(x).__name__}")
    out = []
    for v in x:
        if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_floating_point():
            out.append(int(v.item()))
        elif isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            out.append(int(v))
        else:
            raise InteropError(f"{path}: the CutMix box holds {type(v).__name__}, not integers")
    return tuple(out)  # type: ignore[return-value]


def _randaug(x: Any, path: str, b: int) -> np.ndarray:
    """LPQLD's collated RandAugment parameters: per layer a list ``[op_idx, decision, param]`` of
    tensors ``[b]`` -> float64 ``[b, 3 * layers]`` (every value the file holds is exact in float64)."""
    if not isinstance(x, (list, tuple)) or not x:
        raise InteropError(f"{path}: the RandAugment parameters should be a list per layer, found {type(x).__name__}")
    cols = []
    for layer in x:
        if not isinstance(layer, (list, tuple)) or len(layer) != 3:
            raise InteropError(f"{path}: a RandAugment layer should be [op, decision, param]")
        for t in layer:
            a = _np(t, path, "a RandAugment parameter").astype(np.float64).reshape(-1)
            if len(a) != b:
                raise InteropError(f"{path}: a RandAugment parameter holds {len(a)} values for {b} images")
            cols.append(a)
    return np.stack(cols, axis=1)


def parse_batch(obj: Any, path: str, fmt: str, epoch: int, batch: int) -> BatchRecord:
    """One batch file's list as a :class:`BatchRecord` (``fmt``: sre2l | lpld | gvbsm | lpqld)."""
    if not isinstance(obj, (list, tuple)):
        raise InteropError(f"{path}: a {fmt} batch file holds a list, found {type(obj).__name__}")
    n = len(obj)
    allowed = {"sre2l": (6,), "lpld": (6,), "gvbsm": (7,), "lpqld": (6, 7, 8)}[fmt]
    if n not in allowed:
        raise InteropError(f"{path}: a {fmt} batch file holds a list of {' or '.join(map(str, allowed))}, found {n} elements")
    items = list(obj)
    coords = _np(items[0], path, "the crop coordinates (element 1)")
    if coords.ndim != 2 or coords.shape[1] != 4 or not np.issubdtype(coords.dtype, np.floating):
        raise InteropError(f"{path}: the crop coordinates should be floats [batch, 4], found {coords.dtype} {coords.shape}")
    b = len(coords)
    rec = BatchRecord(path=path, epoch=epoch, batch=batch, coords=coords)
    second = _np(items[1], path, "element 2 (flips or cutout)")
    if second.dtype == np.bool_ and second.shape == (b,):
        rec.flips = second
    elif second.ndim == 2 and second.shape == (b, 7) and np.issubdtype(second.dtype, np.floating):
        rec.cutout = second
    else:
        raise InteropError(f"{path}: element 2 should be flips bool [{b}] or cutout floats [{b}, 7], found {second.dtype} {second.shape}")
    rest = items[2:]
    if fmt == "lpqld":
        # [coords, flip|cutout, (randaug,) mix_index, lam, bbox, topk_logits(, indices)]
        has_randaug = isinstance(rest[0], (list, tuple))
        if has_randaug:
            rec.randaug = _randaug(rest[0], path, b)
            rest = rest[1:]
        if len(rest) == 5:
            mix_index, lam, bbox, values, index = rest
            rec.value_index = _np(index, path, "the top-k class indices").astype(np.int64)
        elif len(rest) == 4:
            mix_index, lam, bbox, values = rest
        else:
            raise InteropError(f"{path}: cannot place the {n} elements of an LPQLD batch file")
    elif fmt == "gvbsm":
        mix_index, lam, bbox, values, index = rest
        rec.sample_ids = _np(index, path, "the image indices (element 7)").astype(np.int64).reshape(-1)
        if len(rec.sample_ids) != b:
            raise InteropError(f"{path}: element 7 holds {len(rec.sample_ids)} image indices for {b} rows")
    else:
        mix_index, lam, bbox, values = rest
    if mix_index is not None:
        rec.mix_index = _np(mix_index, path, "the mix index (element 3)").astype(np.int64).reshape(-1)
        if len(rec.mix_index) != b or (b and not np.array_equal(np.sort(rec.mix_index), np.arange(b))):
            raise InteropError(f"{path}: the mix index is not a permutation of the batch's {b} rows")
        if lam is None:
            raise InteropError(f"{path}: a mix index without a mix lambda")
        rec.mix_lam = _float(lam, path, "the mix lambda (element 4)")
        rec.mix_bbox = None if bbox is None else _bbox(bbox, path)
    elif lam is not None or bbox is not None:
        raise InteropError(f"{path}: a mix lambda or box without a mix index")
    vals = _np(values, path, "the soft labels")
    if vals.ndim != 2 or len(vals) != b or not np.issubdtype(vals.dtype, np.floating):
        raise InteropError(f"{path}: the soft labels should be floats [{b}, classes], found {vals.dtype} {vals.shape}")
    rec.values = vals
    if rec.value_index is not None and rec.value_index.shape != vals.shape:
        raise InteropError(f"{path}: top-k indices {rec.value_index.shape} and values {vals.shape} differ in shape")
    return rec


def _numbered(names: list[str], pattern: re.Pattern) -> dict[int, str]:
    out = {}
    for name in names:
        m = pattern.match(name)
        if m:
            out[int(m.group(1))] = name
    return out


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        raise InteropError(f"{path}: no such folder") from None
    except NotADirectoryError:
        raise InteropError(f"{path}: not a folder") from None


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise InteropError(f"{path}: not a readable index file ({e})") from None
    if not isinstance(data, dict):
        raise InteropError(f"{path}: the index file should map keys to lists of image indices")
    return data


# --- the folder --------------------------------------------------------------------------------
@dataclass
class LabelFolder:
    """A foreign label folder: its format, its batches and how rows map to images."""

    root: str
    fmt: str
    batch_size: int
    num_classes: int | None  # None when only top-k indices are stored (LPQLD, FKD): give it
    files: list[tuple[int, int, str]] = field(default_factory=list)  # (epoch, batch, path) in training order
    index_json: str | None = None
    drop_last: bool = False
    details: dict = field(default_factory=dict)  # what detection saw (for provenance)

    @property
    def epochs(self) -> int:
        return 1 + max(e for e, _, _ in self.files)

    def source_bytes(self) -> int:
        total = sum(os.path.getsize(p) for _, _, p in self.files)
        if self.index_json:
            total += os.path.getsize(self.index_json)
        return total

    def records(self, num_samples: int, seed: int = SRE2L_SAMPLER_SEED) -> Iterator[BatchRecord]:
        """Every batch in training order, with ``sample_ids`` filled in (see the module docstring)."""
        if self.fmt == "fkd":
            raise InteropError("FKD folders hold per-image files; use fkd_units()")
        bpe = self.batches_per_epoch(num_samples)
        index = _read_json(self.index_json) if self.index_json else None
        if index is not None:
            self._check_index(index, num_samples)
        orders: dict[int, np.ndarray] = {}
        replay = None  # the RandomSampler replay, made when a file has no stored indices
        for e, b, path in self.files:
            rec = parse_batch(load_label_file(path), path, self.fmt, e, b)
            want = self.batch_size if (self.drop_last or b < bpe - 1) else num_samples - (bpe - 1) * self.batch_size
            if rec.count != want:
                raise InteropError(
                    f"{path}: holds {rec.count} rows; batch {b} of an epoch of {num_samples} images in batches of "
                    f"{self.batch_size}{' (drop_last)' if self.drop_last else ''} has {want}: the folder does not "
                    "match the image set (check --images) or is mixed from several runs"
                )
            if self.num_classes is not None and rec.value_index is None and rec.values.shape[1] != self.num_classes:
                raise InteropError(f"{path}: holds {rec.values.shape[1]} classes, the folder's first file {self.num_classes}")
            if rec.sample_ids is None:
                if index is not None:
                    if self.fmt == "lpqld":
                        ids = index.get(_BATCH_FILE.match(os.path.basename(path)).group(1))
                    else:
                        ids = index.get(str(e))
                        ids = None if ids is None else ids[b * self.batch_size : b * self.batch_size + rec.count]
                    if ids is None or len(ids) != rec.count:
                        raise InteropError(f"{self.index_json}: holds no image indices for {path}")
                    rec.sample_ids = np.asarray(ids, dtype=np.int64)
                else:
                    if e not in orders:
                        replay = replay or SamplerReplay(num_samples, seed)
                        orders.clear()
                        orders[e] = replay.order(e)
                    rec.sample_ids = orders[e][b * self.batch_size : b * self.batch_size + rec.count]
            if rec.sample_ids.min(initial=0) < 0 or rec.sample_ids.max(initial=0) >= num_samples:
                raise InteropError(f"{path}: image indices outside the {num_samples} images of --images")
            yield rec

    def batches_per_epoch(self, num_samples: int) -> int:
        return num_samples // self.batch_size if self.drop_last else -(-num_samples // self.batch_size)

    def _check_index(self, index: dict, num_samples: int) -> None:
        for key, ids in list(index.items())[:2]:
            if not isinstance(ids, list) or (ids and (min(ids) < 0 or max(ids) >= num_samples)):
                raise InteropError(f"{self.index_json}: entry {key!r} holds indices outside the {num_samples} images")

    def plan(self, num_samples: int) -> np.ndarray:
        """The (epoch, batch) of every stored batch, in order."""
        bpe = self.batches_per_epoch(num_samples)
        out = np.asarray([(e, b) for e, b, _ in self.files], dtype=np.int64).reshape(-1, 2)
        if (out[:, 1] >= bpe).any():
            e, b, path = self.files[int(np.argmax(out[:, 1] >= bpe))]
            raise InteropError(
                f"{path}: batch {b} does not exist in an epoch of {num_samples} images in batches of {self.batch_size} "
                "(check --images)"
            )
        return out


def _epoch_files(root: str) -> list[tuple[int, int, str]]:
    epochs = _numbered(_listdir(root), _EPOCH_DIR)
    if not epochs:
        return []
    files = []
    for e in sorted(epochs):
        d = os.path.join(root, epochs[e])
        batches = _numbered(_listdir(d), _BATCH_FILE)
        others = [n for n in _listdir(d) if not _BATCH_FILE.match(n)]
        if others:
            raise InteropError(f"{os.path.join(d, others[0])}: not a batch file (batch_<i>.tar); the folder is mixed")
        if sorted(batches) != list(range(len(batches))):
            missing = sorted(set(range(max(batches, default=-1) + 1)) - set(batches))
            raise InteropError(f"{d}: batch files are not numbered 0..{len(batches) - 1} (missing batch_{missing[0]}.tar)")
        files += [(e, b, os.path.join(d, batches[b])) for b in sorted(batches)]
    if sorted(epochs) != list(range(len(epochs))):
        missing = sorted(set(range(max(epochs) + 1)) - set(epochs))
        raise InteropError(f"{root}: epoch folders are not numbered 0..{len(epochs) - 1} (missing epoch_{missing[0]})")
    return files


def detect_format(root: str) -> str:
    """The format of the label folder ``root`` (one of :data:`FORMATS`), from its layout and first file."""
    names = _listdir(root)
    if any(_EPOCH_DIR.match(n) for n in names):
        first = os.path.join(root, "epoch_0", "batch_0.tar")
        obj = load_label_file(first)
        if isinstance(obj, (list, tuple)) and len(obj) == 7:
            return "gvbsm"
        if LPLD_INDEX_JSON in names:
            return "lpld"
        if isinstance(obj, (list, tuple)) and len(obj) == 6:
            second = _np(obj[1], first, "element 2")
            return "lpld" if second.ndim == 2 else "sre2l"
        raise InteropError(f"{first}: a list of {len(obj) if isinstance(obj, (list, tuple)) else type(obj).__name__} "
                           "is none of the known batch layouts (SRe2L/LPLD: 6, G-VBSM: 7)")
    if any(_BATCH_FILE.match(n) for n in names):
        return "lpqld"
    for dirpath, _dirs, files in os.walk(root):
        if any(f.endswith(".tar") for f in files):
            return "fkd"
    raise InteropError(f"{root}: holds no label files of SRe2L, LPLD, LPQLD, G-VBSM or FKD (no epoch_* folders, batch_*.tar or per-image .tar)")


def open_folder(root: str | os.PathLike, fmt: str = "auto") -> LabelFolder:
    """Open a label folder of format ``fmt`` (or detect it with ``auto``)."""
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        raise InteropError(f"{root}: no such folder")
    if fmt == "auto":
        fmt = detect_format(root)
    if fmt not in FORMATS:
        raise InteropError(f"unknown label folder format {fmt!r}; choose one of {FORMATS} or auto")
    if fmt == "fkd":
        return _open_fkd(root)
    names = _listdir(root)
    if fmt == "lpqld":
        batches = _numbered(names, _BATCH_FILE)
        if not batches:
            raise InteropError(f"{root}: an LPQLD folder holds batch_<g>.tar files; found none")
        if sorted(batches) != list(range(len(batches))):
            missing = sorted(set(range(max(batches) + 1)) - set(batches))
            raise InteropError(f"{root}: batch files are not numbered 0..{len(batches) - 1} (missing batch_{missing[0]}.tar)")
        index_json = os.path.join(root, LPQLD_INDEX_JSON)
        if not os.path.exists(index_json):
            raise InteropError(f"{root}: an LPQLD folder holds {LPQLD_INDEX_JSON}; it is missing")
        files = [(0, g, os.path.join(root, batches[g])) for g in sorted(batches)]  # (epoch, batch) set once N is known
        others = [n for n in names if not _BATCH_FILE.match(n) and n != LPQLD_INDEX_JSON]
    else:
        files = _epoch_files(root)
        if not files:
            raise InteropError(f"{root}: a {fmt} folder holds epoch_<e>/batch_<b>.tar; found no epoch folders")
        index_json = os.path.join(root, LPLD_INDEX_JSON) if fmt == "lpld" else None
        if index_json and not os.path.exists(index_json):
            index_json = None
        others = [n for n in names if not _EPOCH_DIR.match(n) and n != LPLD_INDEX_JSON]
    if others:
        raise InteropError(f"{os.path.join(root, others[0])}: not part of a {fmt} label folder; the folder is mixed")
    first = parse_batch(load_label_file(files[0][2]), files[0][2], fmt, 0, 0)
    batch_size = first.count
    num_classes = None if first.value_index is not None else int(first.values.shape[1])
    folder = LabelFolder(root=root, fmt=fmt, batch_size=batch_size, num_classes=num_classes, files=files,
                         index_json=index_json)
    folder.details = {
        "mix": first.mix_kind, "cutout": first.cutout is not None,
        "randaug_layers": 0 if first.randaug is None else first.randaug.shape[1] // 3,
        "values": "topk_logits" if first.value_index is not None else "logits", "values_dtype": str(first.values.dtype),
        "coords_dtype": str(first.coords.dtype), "stored_indices": first.sample_ids is not None or index_json is not None,
    }
    return folder


def resolve_layout(folder: LabelFolder, num_samples: int) -> None:
    """Fix what depends on the image count: LPQLD's global batch numbers, and ``drop_last`` (a pruned
    LPLD/LPQLD relabel drops the short last batch of each epoch)."""
    B = folder.batch_size
    if num_samples < B:
        raise InteropError(f"{folder.root}: batches of {B} rows but --images holds only {num_samples} images")
    short = num_samples % B != 0
    if folder.fmt == "lpqld":
        index = _read_json(folder.index_json)
        sizes = [len(v) for v in index.values()]
        folder.drop_last = short and bool(sizes) and min(sizes) == B
        bpe = folder.batches_per_epoch(num_samples)
        counts = []
        for _, g, path in folder.files:
            ids = index.get(str(g))
            if not isinstance(ids, list):
                raise InteropError(f"{folder.index_json}: holds no image indices for {path}")
            counts.append(len(ids))
        positions = lpqld_positions(counts, bpe, B, num_samples, folder.drop_last)
        if positions is None:
            raise InteropError(
                f"{folder.root}: the {len(counts)} batches (sizes from {LPQLD_INDEX_JSON}) do not fit LPQLD's relabel "
                f"loop over {num_samples} images in batches of {B}; check --images"
            )
        folder.files = [(e, b, p) for (e, b), (_, _g, p) in zip(positions, folder.files)]
    elif short and folder.fmt in ("lpld", "gvbsm", "sre2l"):
        per_epoch: dict[int, int] = {}
        for e, _b, _p in folder.files:
            per_epoch[e] = per_epoch.get(e, 0) + 1
        full = max(per_epoch.values())
        folder.drop_last = full == num_samples // B  # every full epoch lacks the short batch: drop_last
    folder.details["drop_last"] = folder.drop_last


def _lpqld_loop(total_steps: int, bpe: int, limit: int) -> list[tuple[int, int]]:
    """The (epoch, batch) of each file LPQLD's generator writes for an initial ``total_steps``:
    ``for epoch in range(total_steps // bpe + 1)``, each epoch saving batches until the global counter
    equals ``total_steps``, which it then decrements once per epoch (its ``args.total_steps -= 1``)."""
    out: list[tuple[int, int]] = []
    counter, ts = 0, total_steps
    for epoch in range(total_steps // bpe + 1):
        for b in range(bpe):
            out.append((epoch, b))
            counter += 1
            if counter == ts or len(out) > limit:
                break
        ts -= 1
        if len(out) > limit:
            break
    return out


def lpqld_positions(counts: list[int], bpe: int, B: int, n: int, drop_last: bool) -> list[tuple[int, int]] | None:
    """(epoch, batch) of LPQLD's global batch files ``0 .. G-1`` (``G = len(counts)``): the generator's
    loop replayed for the initial step budget that writes exactly ``G`` files whose sizes are the
    json's (the budget ``int(epochs * batches * (1 - prune_ratio))`` is not recorded in the folder)."""
    G = len(counts)
    last = B if drop_last else n - (bpe - 1) * B
    for total in range(max(1, G - bpe - 1), G + G // max(1, bpe) + 2):
        pos = _lpqld_loop(total, bpe, G)
        if len(pos) != G:
            continue
        if all(c == (last if b == bpe - 1 else B) for (e, b), c in zip(pos, counts)):
            return pos
    return None


# --- FKD: per-image files ----------------------------------------------------------------------------
@dataclass
class FKDFolder:
    root: str
    fmt: str = "fkd"
    files: dict = field(default_factory=dict)  # (class dir, stem) -> path
    num_crops: int = 0
    k: int = 0
    details: dict = field(default_factory=dict)

    def source_bytes(self) -> int:
        return sum(os.path.getsize(p) for p in self.files.values())


def _open_fkd(root: str) -> FKDFolder:
    files = {}
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            if not n.endswith(".tar"):
                raise InteropError(f"{p}: not an FKD label file (<class>/<image stem>.tar); the folder is mixed")
            key = (os.path.basename(dirpath), n[: -len(".tar")])
            if key in files:
                raise InteropError(f"{p}: a second label file for image {key[0]}/{key[1]} (also {files[key]})")
            files[key] = p
    if not files:
        raise InteropError(f"{root}: an FKD folder holds <class>/<image>.tar files; found none")
    first = parse_fkd(load_label_file(next(iter(files.values()))), next(iter(files.values())))
    folder = FKDFolder(root=root, files=files, num_crops=len(first[0]), k=first[2].shape[-1])
    folder.details = {"num_crops": folder.num_crops, "k": folder.k, "values_dtype": str(first[3].dtype)}
    return folder


def parse_fkd(obj: Any, path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One FKD file ``[coords [crops, 4], flips [crops], labels [crops, 2, k]]`` (marginal smoothing
    top-k: row 0 class indices, row 1 probabilities) -> (coords, flips, indices int64, probs)."""
    if not isinstance(obj, (list, tuple)) or len(obj) != 3:
        raise InteropError(f"{path}: an FKD label file holds a list of 3 (coords, flips, labels)")
    coords = _np(obj[0], path, "the crop coordinates")
    flips = _np(obj[1], path, "the flips").astype(bool).reshape(-1)
    lab = _np(obj[2], path, "the labels")
    n = len(coords)
    if coords.shape != (n, 4) or len(flips) != n:
        raise InteropError(f"{path}: coords {coords.shape} and flips {flips.shape} do not describe the same crops")
    if lab.ndim != 3 or lab.shape[:2] != (n, 2):
        raise InteropError(
            f"{path}: labels {lab.shape} are not FKD's marginal-smoothing top-k [crops, 2, k] "
            "('hard' and 'smoothing' label types are not imported)"
        )
    idx = lab[:, 0, :]
    if not np.all(idx == np.rint(idx)) or idx.min() < 0:
        raise InteropError(f"{path}: the label class indices are not non-negative integers")
    return coords, flips, idx.astype(np.int64), lab[:, 1, :]
