"""``ddpipe bench loader``: training-loader throughput against SRe2L's loader, with decode-only ceilings.

The bench makes its own image set (>= 5,000 JPEGs of 224x224 in an ImageFolder, 1,000 classes),
one ddpipe store for it (the SRe2L recipe: RandomResizedCrop + flip + CutMix, top-k labels of a
seeded random teacher, 1,000 classes) and the same schedule as SRe2L's per-batch ``torch.save``
files with full fp16 logits. Each row then replays one epoch in a fresh process on the same cores:

- ``sre2l-baseline``: torchvision ImageFolder + PIL ``resized_crop`` / flip / ToTensor / Normalize
  per image, and one ``torch.load`` of the batch's label file per batch, as SRe2L's loader does
  (its fetcher patch is reproduced as a dataset whose item is a whole batch: torch is not patched);
- ``torch`` and ``dali-cpu``: ddpipe's loaders over the JPEGs (mix and dense targets included);
- ``cache-cpu``: the batched backend over the decoded uint8 cache (``ddpipe cache``, built once
  before the rows and timed apart): per-sample SIMD uint8 resize in threads, normalise per slice;
- ``cache-dali``: the DALI backend over the same cache (``slice`` of raw arrays, no decoding);
- ``gpu`` (with ``--device gpu``): the batched backend with the cache resident on the GPU and one
  batched crop-resize-flip (two matmuls) + normalise + mix per batch, the epoch replayed
  ``--gpu-passes`` times; ``dali-gpu``: the DALI backend on the GPU (nvJPEG mixed decoder) over the
  JPEGs, where DALI is installed;
- ``decode-only-pil`` / ``decode-only-dali``: JPEG decoding alone, the ceilings on this machine.

Beside images/s each row reports where its loader spends its time (summed over its threads or
workers): the shares of decode, crop-resize (with the flip), collate (stack / HWC -> CHW + normalise)
and mix (cutout, CutMix), of the time in those stages plus labels. DALI's graph is opaque: its
rows have labels only.

Rows: images/s over the epoch after the first batch (worker start-up excluded; the median of
``--repeats`` rounds, rows interleaved in rotating order, since the machine may be shared), label time per
batch in the main process (ddpipe: store reads + dense targets; SRe2L: ``torch.load``, timed in
the workers), and peak RSS (the row's main process plus its largest worker).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace

import numpy as np

from . import common
from ddpipe.config import check_int, config_from_dict, config_to_dict, option
from ddpipe.errors import DDPipeError
from ..pipeline.stages import IMAGENET_MEAN as MEAN
from ..pipeline.stages import IMAGENET_STD as STD

DESCRIPTION = "Loader throughput: SRe2L's loader vs ddpipe torch and DALI (CPU), with decode-only ceilings."

ROWS = ("sre2l-baseline", "torch", "dali-cpu", "cache-cpu", "cache-dali", "gpu", "dali-gpu", "decode-only-pil",
        "decode-only-dali")
CPU_ROWS = ("sre2l-baseline", "torch", "dali-cpu", "cache-cpu", "cache-dali", "decode-only-pil", "decode-only-dali")
GPU_ROWS = ("sre2l-baseline", "cache-cpu", "gpu", "dali-gpu", "decode-only-dali")
DALI_ROWS = ("dali-cpu", "cache-dali", "dali-gpu", "decode-only-dali")
CUDA_ROWS = ("gpu", "dali-gpu")
LOADER_ROWS = ("torch", "dali-cpu", "cache-cpu", "cache-dali", "gpu", "dali-gpu")
TARGET_SPEEDUP = 3.0  # dali-cpu (issue 1)
TARGET_CPU_SPEEDUP = 4.0  # the fastest CPU path (issue 13)
TARGET_GPU_IMAGES_PER_S = 20_000.0
TARGET_LABEL_SHARE = 0.05
SHARES = ("decode", "crop_resize", "collate", "mix")

COLUMNS = [
    ("backend", "backend", ""),
    ("images_per_s", "images/s", ",.0f"),
    ("speedup", "x baseline", ".2f"),
    ("label_ms_per_batch", "label ms/batch", ".2f"),
    ("label_share", "label share", ".1%"),
    ("share_decode", "decode", ".0%"),
    ("share_crop_resize", "crop-resize", ".0%"),
    ("share_collate", "collate", ".0%"),
    ("share_mix", "mix", ".0%"),
    ("peak_rss_mb", "peak RSS MB", ",.0f"),
    ("config", "config", ""),
]


def _row_names(text: str) -> list[str]:
    """``--rows torch,dali-cpu``: comma-separated row names."""
    return [r.strip() for r in str(text).split(",") if r.strip()]


def _dali_installed() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except (ImportError, ValueError):
        return False


def default_rows(device: str) -> tuple[str, ...]:
    """The rows run without ``--rows``: the CPU set, or with ``--device gpu`` the GPU comparison;
    DALI's rows only where DALI is installed."""
    rows = GPU_ROWS if device == "gpu" else CPU_ROWS
    return tuple(r for r in rows if r not in DALI_ROWS or _dali_installed())


@dataclass(frozen=True, kw_only=True)
class Config:
    """``ddpipe bench loader``'s settings; bad values raise :class:`DDPipeError` naming the field."""

    images: int = option(5000, help="JPEGs in the image set (default 5000, at least 5000 for the README)")
    classes: int = option(1000, help="classes of the image set and the store (default 1000)")
    size: int = option(224, help="image and output size (default 224)")
    batch_size: int = option(128, help="relabel = replay batch size (default 128, LPLD's IN-1K)")
    k: int = option(10, help="top-k kept per sample (default 10)")
    quality: int = option(
        75, help="JPEG quality of the generated images (default 75: PIL's default, which SRe2L's recover writes)")
    workers: int = option(2, help="loader workers / DALI threads (default 2 = this machine)")
    rows: tuple[str, ...] | None = option(
        None, parse=_row_names,
        help=f"rows to run, comma-separated, of {','.join(ROWS)} (default: {','.join(CPU_ROWS)}; with --device gpu: "
             f"{','.join(GPU_ROWS)}; DALI's rows only where DALI is installed)")
    device: str = option("cpu", choices=("cpu", "gpu"), help="cpu (default) or gpu: adds the GPU rows (needs CUDA)")
    gpu_passes: int = option(4, help="epochs replayed per gpu row (one epoch of 5,000 images is too short to time)")
    repeats: int = option(
        3, help="rounds over all rows, row order rotated each round; each row reports its median round (default 3)")
    workdir: str | None = option(None, help="where images and labels are made (default bench/work under the current directory)")
    keep_work: bool = option(False, help="keep the generated images and labels")
    results_dir: str | None = option(None, help="where the JSON goes (default bench/results under the current directory)")
    json: bool = option(False, help="print the rows as one JSON object on stdout", cli=False)
    row: str | None = option(None, help="run one row in this process (internal: each row's child process)", cli=False)

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "gpu"):
            raise DDPipeError(f"device must be cpu or gpu, got {self.device!r}")
        given = default_rows(self.device) if self.rows is None else (
            (self.rows,) if isinstance(self.rows, str) else self.rows)  # names, or "a,b" strings
        rows = tuple(dict.fromkeys(name for text in given for name in _row_names(text)))
        bad = sorted(set(rows) - set(ROWS))
        if bad or not rows:
            raise DDPipeError(f"rows: unknown rows {bad}; choose from {list(ROWS)}")
        object.__setattr__(self, "rows", rows)
        for name in ("images", "classes", "size", "batch_size", "k", "workers", "repeats", "gpu_passes"):
            check_int(DDPipeError, name, getattr(self, name), min=1)
        check_int(DDPipeError, "quality", self.quality, min=1, max=100)
        if self.k > self.classes:
            raise DDPipeError(f"k must be at most classes ({self.classes}), got {self.k}")
        if self.row is not None and self.row not in ROWS:
            raise DDPipeError(f"row: unknown row {self.row!r}; choose from {list(ROWS)}")


# --- the data --------------------------------------------------------------------------------------
def make_images(root: str, n: int, classes: int, size: int, quality: int) -> None:
    """Smooth random colour fields with noise (distilled images look like this), as JPEGs."""
    from PIL import Image

    rng = np.random.default_rng(0)
    per = -(-n // classes)
    for i in range(n):
        c = i // per
        d = os.path.join(root, f"new{c:04d}")
        os.makedirs(d, exist_ok=True)
        low = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(low).resize((size, size), Image.BICUBIC)
        arr = np.asarray(img).astype(np.int16) + rng.integers(-24, 25, size=(size, size, 3), dtype=np.int16)
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(os.path.join(d, f"class{c:04d}_id{i % per:03d}.jpg"), quality=quality)


def make_labels(workdir: str, config: Config) -> None:
    """One ddpipe store and SRe2L's per-batch files for the same epoch of the SRe2L recipe."""
    import torch

    from ..labelstore import create_store
    from ..pipeline import open_source, recipe
    from ..pipeline.relabel import relabel_spec

    source = open_source(os.path.join(workdir, "images"))
    sched, spec = relabel_spec(source, recipe("sre2l", output_size=(config.size, config.size)), epochs=1,
                               batch_size=config.batch_size, num_classes=config.classes, k=config.k)
    rng = np.random.default_rng(1)
    sre2l = os.path.join(workdir, "sre2l_labels")
    with create_store(os.path.join(workdir, "store"), spec, overwrite=True) as w:
        for e in range(spec.epochs):
            os.makedirs(os.path.join(sre2l, f"epoch_{e}"), exist_ok=True)
            for b in range(spec.batches_per_epoch):
                u = sched.unit(e, b)
                logits = (rng.standard_normal((u.count, config.classes)) * 3).astype(np.float32)
                w.write(replace(u, logits=logits))
                bbox = [int(u.mix_box[0]), int(u.mix_box[1]), int(u.mix_box[2]), int(u.mix_box[3])]
                torch.save([torch.from_numpy(u.crops), torch.from_numpy(u.flips), torch.from_numpy(u.mix_perm),
                            u.mix_lambda, bbox, torch.from_numpy(logits).half(), torch.from_numpy(u.sample_ids)],
                           os.path.join(sre2l, f"epoch_{e}", f"batch_{b}.tar"))


# --- rows (each runs in its own process) --------------------------------------------------------------
class _SRe2LBatches:
    """SRe2L's loader without the torch patch: the dataset item is one whole batch."""

    def __init__(self, root: str, labels: str, size: int):
        from torchvision import datasets

        self.folder = datasets.ImageFolder(root)
        self.labels = labels
        self.size = size

    def __getitem__(self, key):
        import torch
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        e, b = key
        clock = time.perf_counter
        t0 = clock()
        coords, flips, mix_index, mix_lam, mix_bbox, soft, ids = torch.load(
            os.path.join(self.labels, f"epoch_{e}", f"batch_{b}.tar"), weights_only=False)
        label_s = clock() - t0
        spent = dict.fromkeys(SHARES, 0.0)
        out = []
        for i, sid in enumerate(ids.tolist()):
            path, _ = self.folder.samples[sid]
            t0 = clock()
            img = self.folder.loader(path)
            t1 = clock()
            W, H = img.size
            top, left, h, w = coords[i].tolist()
            img = F.resized_crop(img, top * H, left * W, h * H, w * W, [self.size, self.size], InterpolationMode.BILINEAR)
            if flips[i]:
                img = F.hflip(img)
            t2 = clock()
            out.append(F.normalize(F.to_tensor(img), MEAN, STD))
            t3 = clock()
            spent["decode"] += t1 - t0
            spent["crop_resize"] += t2 - t1
            spent["collate"] += t3 - t2
        t0 = clock()
        images = torch.stack(out)
        t1 = clock()
        if mix_bbox is not None:  # SRe2L's mix_aug (cutmix) in the training loop
            y0, x0, y1, x1 = mix_bbox
            images[:, :, y0:y1, x0:x1] = images[mix_index, :, y0:y1, x0:x1]
        spent["collate"] += t1 - t0
        spent["mix"] += clock() - t1
        spent["labels"] = label_s
        return images, soft.float(), label_s, spent


def _first(x):
    return x


def _timed(batches, count, sync=None):
    """Images/s after the first batch, and the number of batches (``sync``: wait for the device
    before reading the clock, for rows whose batches are computed asynchronously on a GPU)."""
    it = iter(batches)
    first = next(it)
    if sync:
        sync()
    n_img, n_b = 0, 0
    t0 = time.perf_counter()
    for b in it:
        n_img += count(b)
        n_b += 1
    if sync:
        sync()
    dt = time.perf_counter() - t0
    return n_img / dt, n_b + 1, first


def _shares(seconds: dict | None) -> dict:
    """Each stage's share of the time in the stages and the labels together (``None`` when unknown)."""
    if not seconds:
        return {f"share_{k}": None for k in SHARES}
    known = {k: float(seconds.get(k, 0.0)) for k in (*SHARES, "labels")}
    total = sum(known.values())
    if total <= 0 or sum(known[k] for k in SHARES) <= 0:
        return {f"share_{k}": None for k in SHARES}
    return {f"share_{k}": known[k] / total for k in SHARES}


def row_sre2l(wd: str, config: Config) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from ..labelstore import open_store

    spec = open_store(os.path.join(wd, "store")).spec
    keys = [(0, b) for b in range(spec.batches_per_epoch)]
    ds = _SRe2LBatches(os.path.join(wd, "images"), os.path.join(wd, "sre2l_labels"), config.size)
    label_s = []
    spent: dict[str, float] = {}

    def count(x):
        label_s.append(x[2])
        for k, v in x[3].items():
            spent[k] = spent.get(k, 0.0) + v
        return x[0].shape[0]

    dl = DataLoader(ds, batch_size=None, sampler=keys, num_workers=config.workers, collate_fn=_first)
    rate, nb, _ = _timed(dl, count)
    torch.set_num_threads(1)
    return {"images_per_s": rate, "label_ms_per_batch": 1000 * float(np.mean(label_s)), "stage_seconds": spent,
            **_shares(spent),
            "config": f"torchvision ImageFolder + PIL, {config.workers} DataLoader workers, torch.load per batch"}


def _row_loader(name: str, wd: str, config: Config):
    """The loader a ddpipe row times, and its description."""
    from ..pipeline import open_source
    from ..pipeline.loader import make_loader

    cache = os.path.join(wd, "cache")
    images = os.path.join(wd, "images")
    dali = dict(num_workers=1, threads=config.workers)
    kw, cfg = {
        "torch": (dict(backend="torch", num_workers=config.workers), f"{config.workers} DataLoader workers"),
        "dali-cpu": (dict(backend="dali", device="cpu", **dali),
                     f"{config.workers} DALI threads, 1 parallel external_source worker, image_slice ROI decode, "
                     "normalise then float resize"),
        "cache-cpu": (dict(backend="batched", device="cpu", num_workers=config.workers, cache=cache),
                      f"batched backend, decoded uint8 cache in RAM, {config.workers} threads: torch uint8 antialiased "
                      "resize per sample + flip into a uint8 batch, normalise per slice, reused output buffers"),
        "cache-dali": (dict(backend="dali", device="cpu", cache=cache, **dali),
                       f"DALI over the decoded cache ({config.workers} threads): slice, normalise, float resize"),
        "gpu": (dict(backend="batched", device="gpu", num_workers=config.workers, cache=cache),
                "batched backend on the GPU: the decoded set resident as uint8, one gather + two batched matmuls "
                "(crop-resize-flip) + normalise + CutMix per batch"),
        "dali-gpu": (dict(backend="dali", device="gpu", num_workers=1, threads=config.workers),
                     "DALI on the GPU over the JPEGs: nvJPEG mixed image_slice, GPU resize + crop_mirror_normalize"),
    }[name]
    src = open_source(images)
    return make_loader(src, os.path.join(wd, "store"), mean=MEAN, std=STD, **kw), cfg


def row_ddpipe(wd: str, config: Config, name: str) -> dict:
    import itertools

    ld, cfg = _row_loader(name, wd, config)
    gpu = name in CUDA_ROWS
    sync = None
    if gpu:
        import torch

        sync = torch.cuda.synchronize
    passes = config.gpu_passes if gpu else 1
    t0 = ld.label_seconds
    before = ld.stage_seconds()
    batches = itertools.chain.from_iterable(ld.epoch(0) for _ in range(passes))
    rate, nb, _ = _timed(batches, lambda b: b.images.shape[0], sync)
    label = (ld.label_seconds - t0) / nb
    after = ld.stage_seconds()
    ld.close()
    spent = {k: v - before.get(k, 0.0) for k, v in after.items()}
    if set(spent) == {"labels"}:  # DALI: no stage times
        spent = {}
    return {"images_per_s": rate, "label_ms_per_batch": 1000 * label, "stage_seconds": spent or None,
            **_shares(spent), "config": cfg + (f"; {passes} epochs" if passes > 1 else "")}


class _DecodePIL:
    def __init__(self, src):
        self.src = src

    def __getitem__(self, ids):
        return [np.asarray(self.src.pil(int(i), 3)) for i in ids]


def _epoch_batches(wd: str, bs: int):
    from ..labelstore import open_store

    r = open_store(os.path.join(wd, "store"))
    return [u.sample_ids for u in r.iter_units()]


def row_decode_pil(wd: str, config: Config) -> dict:
    from torch.utils.data import DataLoader

    from ..pipeline import open_source

    src = open_source(os.path.join(wd, "images"))
    dl = DataLoader(_DecodePIL(src), batch_size=None, sampler=_epoch_batches(wd, config.batch_size),
                    num_workers=config.workers, collate_fn=_first)
    rate, _, _ = _timed(dl, len)
    return {"images_per_s": rate, "label_ms_per_batch": None, "config": f"PIL decode only, {config.workers} workers"}


def row_decode_dali(wd: str, config: Config) -> dict:
    from nvidia.dali import fn, types
    from nvidia.dali.pipeline import Pipeline

    from ..pipeline import open_source

    src = open_source(os.path.join(wd, "images"))
    batches = _epoch_batches(wd, config.batch_size)

    def cb(info):
        if info.iteration >= len(batches):
            raise StopIteration
        return [src.item(int(i)) for i in batches[info.iteration]]

    pipe = Pipeline(batch_size=config.batch_size, num_threads=config.workers, device_id=None, prefetch_queue_depth=2)
    with pipe:
        enc = fn.external_source(source=cb, batch=True, batch_info=True, dtype=types.UINT8, ndim=1)
        pipe.set_outputs(fn.decoders.image(enc, output_type=types.RGB))
    pipe.build()

    def run():
        while True:
            try:
                (out,) = pipe.run()
            except StopIteration:
                return
            yield out

    rate, _, _ = _timed(run(), len)
    del pipe
    return {"images_per_s": rate, "label_ms_per_batch": None, "config": f"DALI CPU decoders.image only, {config.workers} threads"}


def run_row(config: Config) -> int:
    wd = config.workdir
    name = config.row
    if name == "sre2l-baseline":
        out = row_sre2l(wd, config)
    elif name in LOADER_ROWS:
        out = row_ddpipe(wd, config, name)
    elif name == "decode-only-pil":
        out = row_decode_pil(wd, config)
    else:
        out = row_decode_dali(wd, config)
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    sys.stdout.write(json.dumps({**out, "peak_rss_mb": (me + kids) / 1024}) + "\n")
    return 0


# --- driver ---------------------------------------------------------------------------------------------
def _median_row(name: str, runs: list[dict]) -> dict:
    """The round with the median images/s; all rounds' rates kept; peak RSS is the largest seen.
    A row whose every round failed keeps its error (and no rate)."""
    ok = [r for r in runs if r.get("images_per_s") is not None]
    if not ok:
        return {"backend": name, "images_per_s": None, "label_ms_per_batch": None, "peak_rss_mb": None,
                "error": runs[-1].get("error") if runs else "not run"}
    ordered = sorted(ok, key=lambda r: r["images_per_s"])
    failed = {"failed_rounds": len(runs) - len(ok)} if len(ok) < len(runs) else {}
    return {"backend": name, **ordered[(len(ordered) - 1) // 2],
            "images_per_s_rounds": [round(r["images_per_s"], 1) for r in ok],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in ok), **failed}


def _compared(row: dict, base_rate: float | None, batch_size: int) -> dict:
    """``row`` with its speedup over sre2l-baseline and the share of a batch's time its labels take."""
    if row["images_per_s"] is None:
        return {**row, "speedup": None, "label_share": None}
    batch_ms = 1000 * batch_size / row["images_per_s"]
    return {**row, "speedup": row["images_per_s"] / base_rate if base_rate else None,
            "label_share": row["label_ms_per_batch"] / batch_ms if row["label_ms_per_batch"] is not None else None}


def _checks(rows: list[dict], base_rate: float | None) -> dict:
    """Which of the issue's targets the rows meet (a target whose rows did not run is left out)."""
    checks = {}
    dali = next((r for r in rows if r["backend"] == "dali-cpu"), None)
    if dali and base_rate:
        checks.update(dali_speedup_vs_sre2l=dali["speedup"], dali_speedup_target_met=dali["speedup"] >= TARGET_SPEEDUP)
    cpu_rows = [r for r in rows if r["backend"] in LOADER_ROWS and r["backend"] not in CUDA_ROWS
                and r["images_per_s"] is not None]
    if cpu_rows and base_rate:
        best = max(cpu_rows, key=lambda r: r["images_per_s"])
        checks.update(fastest_cpu_row=best["backend"], fastest_cpu_speedup=best["speedup"],
                      cpu_speedup_target_met=best["speedup"] >= TARGET_CPU_SPEEDUP)
    gpu = next((r for r in rows if r["backend"] == "gpu" and r["images_per_s"] is not None), None)
    if gpu:
        checks.update(gpu_images_per_s=gpu["images_per_s"],
                      gpu_target_met=gpu["images_per_s"] >= TARGET_GPU_IMAGES_PER_S)
    checks["label_share_target_met"] = all(
        r["label_share"] < TARGET_LABEL_SHARE for r in rows if r["backend"] in LOADER_ROWS and r["label_share"] is not None
    )
    return checks


def _child(name: str, wd: str, config: Config) -> dict:
    cmd = [sys.executable, "-m", "ddpipe.bench.loader", json.dumps(config_to_dict(replace(config, row=name, workdir=wd)))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"row {name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(config: Config) -> int:
    """Make the data, run every row ``repeats`` times in fresh processes, print the table, write the JSON; returns 0."""
    if config.row:
        return run_row(config)
    out = common.table_stream(config.json)
    rows_wanted = list(config.rows)
    if any(r in CUDA_ROWS for r in rows_wanted):
        import torch

        if not torch.cuda.is_available():
            raise DDPipeError(f"rows {[r for r in rows_wanted if r in CUDA_ROWS]} need CUDA, which is not available here")
    missing = [r for r in rows_wanted if r in DALI_ROWS and not _dali_installed()]
    if missing:
        raise DDPipeError(f"rows {missing} need NVIDIA DALI, which is not installed")
    base = common.work_dir(config.workdir)
    os.makedirs(base, exist_ok=True)
    wd = tempfile.mkdtemp(prefix="loader-", dir=base)
    t_start = time.time()
    load_start = os.getloadavg()
    try:
        print(f"ddpipe bench loader: making {config.images} JPEGs ({config.size}px, {config.classes} classes) in {wd}", file=out, flush=True)
        t0 = time.time()
        make_images(os.path.join(wd, "images"), config.images, config.classes, config.size, config.quality)
        make_labels(wd, config)
        print(f"  data ready in {time.time() - t0:.1f} s", file=out, flush=True)
        cache_build = None
        if any(r in ("cache-cpu", "cache-dali", "gpu") for r in rows_wanted):
            from ..pipeline.cache import build_cache

            t0 = time.perf_counter()
            cached = build_cache(os.path.join(wd, "images"), os.path.join(wd, "cache"), channels=3,
                                 workers=config.workers, in_memory=False)
            dt = time.perf_counter() - t0
            cache_build = {"seconds": dt, "images_per_s": len(cached) / dt, "bytes": cached.nbytes,
                           "threads": config.workers}
            print(f"  decoded cache: {len(cached)} images, {cached.nbytes / 2**20:.0f} MiB in {dt:.1f} s "
                  f"({len(cached) / dt:,.0f} images/s, once)", file=out, flush=True)
        runs: dict[str, list[dict]] = {name: [] for name in rows_wanted}
        for rep in range(max(1, config.repeats)):
            k = rep % len(rows_wanted)
            for name in rows_wanted[k:] + rows_wanted[:k]:  # rotate, so no row always runs first
                try:
                    r = _child(name, wd, config)
                except RuntimeError as e:
                    if name not in CUDA_ROWS + DALI_ROWS:
                        raise
                    # a GPU or DALI row that fails (a driver, a DALI build) is reported, not fatal
                    r = {"images_per_s": None, "error": str(e)[-1500:]}
                    print(f"  round {rep + 1} {name}: failed: {str(e).strip().splitlines()[-1]}", file=out, flush=True)
                    runs[name].append(r)
                    continue
                runs[name].append(r)
                print(f"  round {rep + 1} {name}: {r['images_per_s']:,.0f} images/s", file=out, flush=True)
        rows = [_median_row(name, runs[name]) for name in rows_wanted]
    finally:
        if not config.keep_work:
            shutil.rmtree(wd, ignore_errors=True)
    base_rate = next((r["images_per_s"] for r in rows if r["backend"] == "sre2l-baseline"), None)
    rows = [_compared(r, base_rate, config.batch_size) for r in rows]
    print("", file=out)
    print(common.format_table(rows, COLUMNS), file=out)
    checks = _checks(rows, base_rate)
    print(f"\ntargets: dali-cpu >= {TARGET_SPEEDUP:.0f}x and the fastest CPU loader >= {TARGET_CPU_SPEEDUP:.0f}x "
          f"sre2l-baseline, gpu >= {TARGET_GPU_IMAGES_PER_S:,.0f} images/s, label share < {TARGET_LABEL_SHARE:.0%}: "
          f"{checks}", file=out)
    payload = {
        "benchmark": "loader",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "elapsed_s": time.time() - t_start,
        "machine": common.machine_info(),
        "args": {k: v for k, v in config_to_dict(config).items() if k != "row"},
        "notes": {
            "images_per_s": "one epoch, timed after the first batch (worker start-up excluded); the median of "
                            "--repeats rounds, rows interleaved with rotating order (the machine may be shared)",
            "label_ms_per_batch": "ddpipe: store reads + dense targets in the main process; sre2l: torch.load in the worker",
            "peak_rss_mb": "peak RSS of the row's process plus the largest of its finished workers",
            "shares": "share_<stage>: the stage's seconds (summed over the row's threads or workers) over the "
                      "seconds of decode + crop_resize + collate + mix + labels; DALI rows: not measurable (None)",
            "cache_build": "the decoded cache, built once before the rows (not part of any row's time)",
        },
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "cache_build": cache_build,
        "targets": {"dali_speedup": TARGET_SPEEDUP, "cpu_speedup": TARGET_CPU_SPEEDUP,
                    "gpu_images_per_s": TARGET_GPU_IMAGES_PER_S, "label_share": TARGET_LABEL_SHARE, **checks},
        "rows": rows,
    }
    path = common.write_results("loader", payload, config.results_dir)
    print(f"wrote {path}", file=out)
    if config.json:
        sys.stdout.write(json.dumps(payload, default=common.json_default) + "\n")
    return 0


if __name__ == "__main__":  # one row in a fresh process: the config as JSON (see _child)
    raise SystemExit(run(config_from_dict(Config, json.loads(sys.argv[1]))))
