"""``ddpipe import``: a label folder of SRe2L, LPLD, LPQLD, G-VBSM or FKD into a ddpipe store.

The folder is read one file at a time (:mod:`ddpipe.pipeline.interop.folders`) and written unit by
unit; the writer holds at most one writer shard (about one epoch) in memory, so memory does not grow
with the folder. Every row keeps the image it belongs to (stored indices, or torch's sampler
replayed), its crop, flip or cutout, and its batch's mix. Labels are kept as the teacher's logits
when the store format has logit stores (``value_kind = logits``), else as top-k probabilities at a
chosen temperature; the result (``run_import(ImportConfig(...)) -> ImportResult``) says which fields
were kept exactly and which were rounded.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ddpipe._progress import progress_bar
from ddpipe.config import Result, check_choices, check_int, check_range, config_to_dict, option
from ...labelstore import StoreSpec, Unit, check_distinct_locations, create_store, logsumexp_at, store_info, top_k
from ...labelstore.location import redact_storage_options, store_location, write_results
from ..schedule import DDPIPE_ORDER, TORCH_SAMPLER_ORDER, ScheduleConfig
from ..sources import ImageFolderSource, open_source
from .errors import InteropError
from .folders import (
    FORMATS,
    SRE2L_SAMPLER_SEED,
    FKDFolder,
    LabelFolder,
    open_folder,
    parse_batch,
    parse_fkd,
    resolve_layout,
)
from .safe_load import load_label_file

VALUE_KINDS = ("auto", "logits", "probs")
# The temperature each codebase trains with (train_FKD.sh -T 20; LPQLD starts at 20); probabilities
# imported from logits are taken at it unless --temperature says otherwise. FKD stores probabilities.
TRAIN_TEMPERATURE = {"sre2l": 20.0, "lpld": 20.0, "lpqld": 20.0, "gvbsm": 20.0, "fkd": 1.0}
FKD_MEMORY_BYTES = 256 << 20  # FKD: crops of every image held per pass, at most this many bytes


@dataclass(frozen=True, kw_only=True)
class ImportConfig:
    """``ddpipe import FORMAT SRC --images DIR --out STORE``; bad values raise :class:`InteropError`."""

    format: str = option(positional=True, choices=(*FORMATS, "auto"), metavar="FORMAT",
                         help=f"the folder's codebase: {', '.join(FORMATS)}, or auto to detect it")
    src: str = option(positional=True, metavar="SRC", help="the label folder")
    out: str = option(help="the ddpipe store to create")
    images: str | None = option(
        None, help="the image set the labels refer to (ImageFolder, shards or .npz): its order maps rows to images")
    num_samples: int | None = option(None, help="image count when --images is not given (no image-set hash is recorded)")
    num_classes: int | None = option(
        None, help="class count (default: the logits' width; for top-k folders (LPQLD, FKD) the class folders of --images)")
    k: int | None = option(None, help="top-k entries kept per row (default all the folder holds: lossless)")
    value_codec: str = option("fp16", flags=("--codec",), choices=("fp16", "fp32", "uint8"),
                              help="the store's value codec (default fp16: SRe2L's fp16 logits bit for bit)")
    values: str = option("auto", choices=VALUE_KINDS,
                         help="store logits (temperature chosen at training) or probabilities; auto = logits where the format has them")
    temperature: float | None = option(
        None, help="temperature of stored probabilities (default: the codebase's training T, 20; FKD 1)")
    seed: int = option(SRE2L_SAMPLER_SEED, help="seed of the RandomSampler replayed for folders without stored indices (SRe2L: 42)")
    output_size: int = option(224, help="side of the images the network saw, for cutout boxes (default 224)")
    batch_size: int = option(1024, help="FKD only: units of this many images (default 1024)")
    epochs: int | None = option(None, help="FKD only: crops per image imported, one epoch each (default all)")
    overwrite: bool = option(False, help="replace what is at --out")
    progress: bool = option(True, help="no progress bar on stderr")
    json: bool = option(False, help="print the result as one JSON object", cli=False)
    storage_options: dict | None = option(
        None, cli=False, help="Python only: fsspec options of an --out behind a URL (s3://: s3fs's, e.g. "
        "{'client_kwargs': {'endpoint_url': ...}}); the CLI takes them from the environment (AWS_ENDPOINT_URL ...)")

    def __post_init__(self) -> None:
        check_choices(self, InteropError)
        for name in ("num_samples", "num_classes", "k", "epochs"):
            check_int(InteropError, name, getattr(self, name), min=1, allow_none=True)
        check_int(InteropError, "seed", self.seed, min=0)
        check_int(InteropError, "output_size", self.output_size, min=1)
        check_int(InteropError, "batch_size", self.batch_size, min=1)
        if self.temperature is not None:
            check_range(InteropError, "temperature", self.temperature, min=0, min_exclusive=True)
        if self.images is None and self.num_samples is None:
            raise InteropError("give --images (the image set the labels refer to) or --num-samples")


@dataclass(frozen=True, kw_only=True)
class ImportResult(Result):
    """What ``ddpipe import`` wrote; ``to_dict()`` is ``--json``'s object and the store's ``results.json``
    (which adds the ``config`` the import ran with)."""

    source: str  # the folder's codebase (sre2l, lpld, lpqld, gvbsm, fkd)
    src: str  # the label folder read
    out: str  # the store's location (absolute path or URL)
    units: int  # batches written
    samples: int  # label rows written
    num_samples: int  # images in the image set
    num_classes: int
    k: int  # values kept per row
    value_codec: str  # the store's value codec (fp16, fp32, uint8)
    values: str  # logits or probs: what the store keeps
    temperature: float  # the store's temperature
    order: str  # the batches' order: torch-sampler (SRe2L's RandomSampler replayed) or ddpipe
    pruned: bool  # the folder held a pruned schedule (LPLD --prune_ratio)
    lossy: list  # every rounding that happened, one line each; empty: none
    source_bytes: int
    store_bytes: int
    ratio: float  # source_bytes / store_bytes
    seconds: float
    samples_per_s: float


def logit_stores_supported() -> bool:
    """Whether this ddpipe's store format has ``value_kind = logits`` (format step of issue 12)."""
    return "value_kind" in StoreSpec.__dataclass_fields__


def exact_fields_supported() -> bool:
    return "exact_fields" in StoreSpec.__dataclass_fields__


# --- rows to units ----------------------------------------------------------------------------------
def _sort_topk(idx: np.ndarray, val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ddpipe's top-k order: descending value, the lower class index first among equal values."""
    o1 = np.argsort(idx, axis=-1, kind="stable")
    idx, val = np.take_along_axis(idx, o1, -1), np.take_along_axis(val, o1, -1)
    o2 = np.argsort(-val.astype(np.float64), axis=-1, kind="stable")
    return np.take_along_axis(idx, o2, -1), np.take_along_axis(val, o2, -1)


def _softmax64(z: np.ndarray, t: float) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64) / t
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def cutout_pixels(params: np.ndarray, out_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """LPLD's ImageNet-21K cutout parameters ``[b, 7]`` -> half-open pixel boxes ``[b, 4] (y0, x0, y1, x1)``
    of the output image and colours ``uint8 [b, 3]``: ``CutoutPILWithCoords`` replayed (centre and size
    scaled back, ``centre ± size // 2`` clipped, drawn inclusive by ``ImageDraw.rectangle``)."""
    h, w = out_hw
    p = np.asarray(params, dtype=np.float32)
    yc = p[:, 0] * np.float32(h)
    xc = p[:, 1] * np.float32(w)
    hc = p[:, 2] * np.float32(h)
    wc = p[:, 3] * np.float32(w)
    y0 = np.clip(yc - np.floor(hc / 2), 0, h)
    y1 = np.clip(yc + np.floor(hc / 2), 0, h)
    x0 = np.clip(xc - np.floor(wc / 2), 0, w)
    x1 = np.clip(xc + np.floor(wc / 2), 0, w)
    # PIL rounds float corners of the rectangle to the nearest pixel and draws it inclusive
    y0, x0 = np.floor(y0 + 0.5), np.floor(x0 + 0.5)
    y1, x1 = np.minimum(np.floor(y1 + 0.5) + 1, h), np.minimum(np.floor(x1 + 0.5) + 1, w)
    boxes = np.stack([y0, x0, y1, x1], axis=1).astype(np.int64)
    colours = np.clip(np.rint(p[:, 4:7]), 0, 255).astype(np.uint8)
    return boxes, colours


class _Labels:
    """Turns a record's stored values into the writer's label fields for the chosen store."""

    def __init__(self, kind: str, k: int, num_classes: int, temperature: float):
        self.kind, self.k, self.C, self.T = kind, k, num_classes, temperature

    def __call__(self, values: np.ndarray, index: np.ndarray | None, probs_given: bool) -> dict:
        if self.kind == "logits":
            if index is None:
                return {"logits": values.astype(np.float32)}
            lse = logsumexp_at(values.astype(np.float32), self.T)  # over every stored logit (MR-k)
            idx, val = _sort_topk(index, values.astype(np.float32))
            return {"topk_logits": (idx[:, : self.k], val[:, : self.k]), "lse": lse}
        if probs_given:  # FKD: probabilities already
            idx, val = _sort_topk(index, values.astype(np.float32))
            return {"topk": (idx[:, : self.k], val[:, : self.k])}
        p = _softmax64(values, self.T).astype(np.float32)
        if index is None:
            idx, val = top_k(p, self.k)
            return {"topk": (idx, val)}
        idx, val = _sort_topk(index, p)  # LPQLD's MR-k: softmax over the stored k logits, tail mass zero
        return {"topk": (idx[:, : self.k], val[:, : self.k])}


CUTOUT_AUX = ("cutout_yc", "cutout_xc", "cutout_h", "cutout_w", "cutout_r", "cutout_g", "cutout_b")


def randaug_aux(layers: int) -> tuple[str, ...]:
    return tuple(f"randaug{i}_{f}" for i in range(layers) for f in ("op", "decision", "param"))


def _unit_from_record(rec, labels: _Labels, out_hw, aux_fields: tuple) -> Any:
    kw = labels(rec.values, rec.value_index, probs_given=False)
    cut = fill = None
    if rec.cutout is not None:
        cut, fill = cutout_pixels(rec.cutout, out_hw)
    aux = None
    if aux_fields:
        parts = [a for a in (rec.cutout, rec.randaug) if a is not None]
        aux = np.concatenate([np.asarray(a, dtype=np.float64) for a in parts], axis=1) if parts else None
        if aux is None or aux.shape[1] != len(aux_fields):
            raise InteropError(f"{rec.path}: holds other per-image parameters than the folder's first file ({list(aux_fields)})")
    box = None if rec.mix_bbox is None else np.asarray(rec.mix_bbox, dtype=np.int64)
    return Unit(
        epoch=rec.epoch, batch=rec.batch, sample_ids=rec.sample_ids, crops=rec.coords.astype(np.float32),
        flips=rec.flips, mix_kind=rec.mix_kind, mix_perm=rec.mix_index,
        mix_lambda=1.0 if rec.mix_lam is None else rec.mix_lam, mix_box=box, cutout=cut, cutout_fill=fill, aux=aux, **kw,
    )


# --- the run ------------------------------------------------------------------------------------------
def _image_count(config: ImportConfig) -> tuple[int, str, int | None, list | None]:
    """(images, image-set hash, class folders or None, ImageFolder names or None) of --images, or --num-samples."""
    if config.images is None:
        return int(config.num_samples), "", None, None
    src = open_source(config.images, in_memory=False) if os.path.isdir(config.images) else open_source(config.images)
    n = len(src)
    if config.num_samples is not None and config.num_samples != n:
        raise InteropError(f"--num-samples {config.num_samples} but --images holds {n} images")
    classes = names = None
    if isinstance(src, ImageFolderSource):
        classes, names = len(src.classes), list(src.names)
    return n, src.content_hash(), classes, names


def run_import(config: ImportConfig) -> ImportResult:
    """Import ``config.src`` into a new store at ``config.out``; what was written and what was rounded."""
    from ddpipe.phase import run_phase

    return run_phase(config, ImportConfig, _import, "import")


def _import(config: ImportConfig) -> ImportResult:
    t0 = time.perf_counter()
    check_distinct_locations(config.src, config.out, "import")
    if config.images is not None:
        check_distinct_locations(config.images, config.out, "import")
    folder = open_folder(config.src, config.format)
    n, image_hash, class_dirs, names = _image_count(config)
    fkd = isinstance(folder, FKDFolder)
    if not fkd:
        resolve_layout(folder, n)
    num_classes = config.num_classes or (None if fkd else folder.num_classes) or class_dirs
    if num_classes is None:
        raise InteropError(f"{folder.root}: the folder stores top-k labels only; give --num-classes (or an ImageFolder --images)")
    if not fkd and folder.num_classes is not None and folder.num_classes != num_classes:
        raise InteropError(f"{folder.root}: the logits have {folder.num_classes} classes, --num-classes says {num_classes}")
    stored_k = folder.k if fkd else (num_classes if folder.num_classes is not None else None)
    if stored_k is None:  # LPQLD: the k of its first file
        stored_k = parse_first_k(folder)
    k = config.k or stored_k
    if k > stored_k:
        raise InteropError(f"--k {k} but the folder holds {stored_k} values per row")
    has_logits = not fkd
    kind = config.values
    if kind == "auto":
        kind = "logits" if has_logits and logit_stores_supported() else "probs"
    if kind == "logits" and not has_logits:
        raise InteropError(f"{folder.root}: an FKD folder stores probabilities, not logits; use --values probs")
    if kind == "logits" and not logit_stores_supported():
        raise InteropError("this ddpipe's store format has no logit stores yet; use --values probs")
    if kind == "logits" and config.value_codec == "uint8":
        raise InteropError("logit stores take the fp16 or fp32 codec (uint8 quantises probabilities only)")
    # a logit store's temperature is the reference at which its probabilities are read (and its
    # log-sum-exp taken); training picks its own. Default: the temperature the codebase trains with.
    temperature = config.temperature or TRAIN_TEMPERATURE[folder.fmt]
    out_hw = (config.output_size, config.output_size)

    if fkd:
        epochs = min(config.epochs or folder.num_crops, folder.num_crops)
        batch_size = min(config.batch_size, n)
        plan = None
        details = dict(folder.details)
        order = DDPIPE_ORDER
        aug = ScheduleConfig(output_size=out_hw, flip=0.5, mix="none", order=order).to_dict()
        spec_kw = dict(num_samples=n, num_classes=num_classes, epochs=epochs, batch_size=batch_size)
    else:
        plan = folder.plan(n)
        details = dict(folder.details)
        replayed = not details["stored_indices"]
        order = TORCH_SAMPLER_ORDER if replayed else DDPIPE_ORDER
        mix = details["mix"]
        cutout = details["cutout"]
        aug = ScheduleConfig(
            output_size=out_hw, flip=0.0 if cutout else 0.5, mix=mix, mix_alpha=0.8 if mix == "mixup" else 1.0,
            cutout=0.5 if cutout else 0.0, fill="random" if cutout else (0, 0, 0), order=order,
        ).to_dict()
        spec_kw = dict(num_samples=n, num_classes=num_classes, epochs=folder.epochs, batch_size=folder.batch_size)
    extra_spec: dict = {}
    if logit_stores_supported():
        extra_spec["value_kind"] = kind
    if exact_fields_supported():
        extra_spec["exact_fields"] = True
        aux: tuple = ()
        if not fkd and folder.details.get("cutout"):
            aux += CUTOUT_AUX
        if not fkd and folder.details.get("randaug_layers"):
            aux += randaug_aux(folder.details["randaug_layers"])
        extra_spec["aux_fields"] = aux
    spec = StoreSpec(
        **spec_kw, k=k, value_codec=config.value_codec, temperature=temperature,
        seed=config.seed if order == TORCH_SAMPLER_ORDER else 0, augmentation=aug, image_set_hash=image_hash,
        **extra_spec,
    )
    if plan is not None and len(plan) < spec.full_units:
        spec = spec.replace(pruning={"keep": len(plan) / spec.full_units, "granularity": "batch", "seed": 0,
                                     "source_units": spec.full_units})
    source = {
        "format": folder.fmt, "path": folder.root, "sampler_seed": config.seed if order == TORCH_SAMPLER_ORDER else None,
        "row_to_image": ("torch RandomSampler replay" if order == TORCH_SAMPLER_ORDER else
                         "stored indices" if not fkd else "image order"),
        "details": details,
    }
    lossy = []
    if not exact_fields_supported():
        lossy += ["crops (uint16 fixed point, error <= 7.6e-6)", "mix lambda (float32)"]
    if kind == "probs" and has_logits:
        lossy.append(f"logits -> probabilities at T={temperature:g}")
    if k < stored_k:
        lossy.append(f"top-{k} of {stored_k}")
    src_dtype = folder.details.get("values_dtype")
    codec = config.value_codec
    if codec == "uint8" or (codec == "fp16" and (src_dtype != "float16" or (kind == "probs" and has_logits))):
        lossy.append(f"values rounded to {codec}")
    labels = _Labels(kind, k, num_classes, temperature)
    writer = create_store(config.out, spec, plan, overwrite=config.overwrite,
                          provenance={"imported_from": source, "import_lossy": lossy},
                          storage_options=config.storage_options)
    units = samples = 0
    try:
        if fkd:
            units, samples = _write_fkd(folder, writer, spec, labels, config, n, names)
        else:
            with progress_bar(total=len(folder.files), desc=f"import {folder.fmt}", unit="batch", enabled=config.progress) as bar:
                for rec in folder.records(n, config.seed):
                    writer.write(_unit_from_record(rec, labels, out_hw, spec.aux_fields))
                    units += 1
                    samples += rec.count
                    bar.update(1)
    finally:
        writer.close()
    seconds = time.perf_counter() - t0
    info = store_info(config.out, storage_options=config.storage_options)
    source_bytes = folder.source_bytes()
    store_bytes = int(info["bytes_on_disk"])
    result = ImportResult(
        source=folder.fmt, src=folder.root, out=store_location(config.out), units=units, samples=samples,
        num_samples=n, num_classes=num_classes, k=k, value_codec=config.value_codec, values=kind,
        temperature=temperature, order=order, pruned=spec.pruning is not None, lossy=lossy,
        source_bytes=source_bytes, store_bytes=store_bytes,
        ratio=source_bytes / store_bytes if store_bytes else math.inf, seconds=seconds,
        samples_per_s=samples / seconds if seconds > 0 else math.inf,
    )
    recorded = config_to_dict(config)
    recorded["storage_options"] = redact_storage_options(recorded["storage_options"])
    write_results(result.out, {**result.to_dict(), "config": recorded}, config.storage_options)
    return result


def parse_first_k(folder: LabelFolder) -> int:
    _e, _b, path = folder.files[0]
    rec = parse_batch(load_label_file(path), path, folder.fmt, 0, 0)
    return int(rec.values.shape[1])


def _write_fkd(folder: FKDFolder, writer, spec, labels: _Labels, config: ImportConfig, n: int,
               names: list | None) -> tuple[int, int]:
    """FKD: epoch ``e`` = crop ``e`` of every image, images in --images order, batches of ``batch_size``.
    Each pass reads every file once and keeps a window of epochs whose crops fit the memory budget."""
    keys = _fkd_keys(names, folder)
    per_crop = 4 * 4 + 1 + 2 * 8 * folder.k
    window = max(1, min(spec.epochs, FKD_MEMORY_BYTES // max(1, per_crop * n)))
    units = samples = 0
    B, bpe = spec.batch_size, spec.batches_per_epoch
    with progress_bar(total=spec.full_units, desc="import fkd", unit="batch", enabled=config.progress) as bar:
        for e0 in range(0, spec.epochs, window):
            e1 = min(spec.epochs, e0 + window)
            coords = np.zeros((e1 - e0, n, 4), np.float32)
            flips = np.zeros((e1 - e0, n), bool)
            idx = np.zeros((e1 - e0, n, folder.k), np.int64)
            val = np.zeros((e1 - e0, n, folder.k), np.float32)
            for i, key in enumerate(keys):
                path = folder.files[key]
                c, f, ix, v = parse_fkd(load_label_file(path), path)
                if len(c) < spec.epochs or ix.shape[1] != folder.k:
                    raise InteropError(f"{path}: holds {len(c)} crops of top-{ix.shape[1]}; the folder's first file "
                                       f"{folder.num_crops} of top-{folder.k}")
                if ix.max() >= spec.num_classes:
                    raise InteropError(f"{path}: class index {int(ix.max())} >= --num-classes {spec.num_classes}")
                coords[:, i], flips[:, i], idx[:, i], val[:, i] = c[e0:e1], f[e0:e1], ix[e0:e1], v[e0:e1]
            for e in range(e0, e1):
                for b in range(bpe):
                    sl = slice(b * B, min(n, (b + 1) * B))
                    kw = labels(val[e - e0, sl], idx[e - e0, sl], probs_given=True)
                    writer.write(Unit(epoch=e, batch=b, sample_ids=np.arange(sl.start, sl.stop), crops=coords[e - e0, sl],
                                      flips=flips[e - e0, sl], **kw))
                    units += 1
                    samples += sl.stop - sl.start
                    bar.update(1)
    return units, samples


def _fkd_keys(names: list | None, folder: FKDFolder) -> list:
    """The FKD file of each image, in the image set's order: matched by class folder and file stem
    (FKD's trainer reads ``<class>/<stem>.tar`` for ``<class>/<stem>.<ext>``)."""
    if names is None:
        raise InteropError("FKD import maps files to images by name: give --images as an ImageFolder")
    keys = [(os.path.dirname(n), os.path.splitext(os.path.basename(n))[0]) for n in names]
    missing = [k for k in keys if k not in folder.files]
    if missing:
        raise InteropError(f"{folder.root}: no label file {missing[0][0]}/{missing[0][1]}.tar for image {missing[0][0]}/{missing[0][1]}")
    return keys


run = run_import  # the phase entry point the CLI calls (ddpipe import)


def summary_text(result: ImportResult | dict) -> str:
    """The lines ``ddpipe import`` prints; takes the result or a dict read back from its JSON."""
    r = ImportResult.from_dict(result) if isinstance(result, dict) else result
    lossy = "; ".join(r.lossy) if r.lossy else "none: every field as the folder stored it"
    return (
        f"imported {r.source} folder {r.src} -> {r.out}\n"
        f"  {r.units} batches, {r.samples} samples, {r.num_samples} images, {r.num_classes} classes, "
        f"k={r.k} {r.values} ({r.value_codec}, T={r.temperature:g}), order {r.order}{', pruned' if r.pruned else ''}\n"
        f"  {r.source_bytes / 1e6:.2f} MB -> {r.store_bytes / 1e6:.2f} MB (x{r.ratio:.1f}) "
        f"in {r.seconds:.1f} s ({r.samples_per_s:.0f} samples/s)\n"
        f"  rounded: {lossy}"
    )
