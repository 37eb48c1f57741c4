"""``ddpipe bench loader``: training-loader throughput against SRe2L's loader, with decode-only ceilings.

The bench makes its own image set (>= 5,000 JPEGs of 224x224 in an ImageFolder, 1,000 classes),
one ddpipe store for it (the SRe2L recipe: RandomResizedCrop + flip + CutMix, top-k labels of a
seeded random teacher, 1,000 classes) and the same schedule as SRe2L's per-batch ``torch.save``
files with full fp16 logits. Each row then replays one epoch in a fresh process on the same cores:

- ``sre2l-baseline``: torchvision ImageFolder + PIL ``resized_crop`` / flip / ToTensor / Normalize
  per image, and one ``torch.load`` of the batch's label file per batch, as SRe2L's loader does
  (its fetcher patch is reproduced as a dataset whose item is a whole batch: torch is not patched);
- ``torch`` and ``dali-cpu``: ddpipe's loaders (mix and dense targets included);
- ``decode-only-pil`` / ``decode-only-dali``: JPEG decoding alone, the ceilings on this machine.

Rows: images/s over the epoch after the first batch (worker start-up excluded; the median of
``--repeats`` rounds, rows interleaved in rotating order, since the machine may be shared), label time per
batch in the main process (ddpipe: store reads + dense targets; SRe2L: ``torch.load``, timed in
the workers), and peak RSS (the row's main process plus its largest worker).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from ddpipe.bench import common

DESCRIPTION = "Loader throughput: SRe2L's loader vs ddpipe torch and DALI (CPU), with decode-only ceilings."

ROWS = ("sre2l-baseline", "torch", "dali-cpu", "decode-only-pil", "decode-only-dali")
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
TARGET_SPEEDUP = 3.0
TARGET_LABEL_SHARE = 0.05

COLUMNS = [
    ("backend", "backend", ""),
    ("images_per_s", "images/s", ",.0f"),
    ("speedup", "x baseline", ".2f"),
    ("label_ms_per_batch", "label ms/batch", ".2f"),
    ("label_share", "label share", ".1%"),
    ("peak_rss_mb", "peak RSS MB", ",.0f"),
    ("config", "config", ""),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", type=int, default=5000, help="JPEGs in the image set (default 5000, at least 5000 for the README)")
    p.add_argument("--classes", type=int, default=1000, help="classes of the image set and the store (default 1000)")
    p.add_argument("--size", type=int, default=224, help="image and output size (default 224)")
    p.add_argument("--batch-size", type=int, default=128, help="relabel = replay batch size (default 128, LPLD's IN-1K)")
    p.add_argument("--k", type=int, default=10, help="top-k kept per sample (default 10)")
    p.add_argument("--quality", type=int, default=75,
                   help="JPEG quality of the generated images (default 75: PIL's default, which SRe2L's recover writes)")
    p.add_argument("--workers", type=int, default=2, help="loader workers / DALI threads (default 2 = this machine)")
    p.add_argument("--rows", default=",".join(ROWS), help=f"rows to run (default all: {','.join(ROWS)})")
    p.add_argument("--repeats", type=int, default=3,
                   help="rounds over all rows, row order rotated each round; each row reports its median round (default 3)")
    p.add_argument("--workdir", default=None, help="where images and labels are made (default bench/work)")
    p.add_argument("--keep-work", action="store_true", help="keep the generated images and labels")
    p.add_argument("--results-dir", default=None, help="where the JSON goes (default bench/results)")
    p.add_argument("--row", default=None, help=argparse.SUPPRESS)  # internal: run one row in this process


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


def make_labels(workdir: str, args) -> None:
    """One ddpipe store and SRe2L's per-batch files for the same two epochs of the SRe2L recipe."""
    import torch

    from ddpipe.labelstore import Unit, create_store
    from ddpipe.pipeline import open_source, recipe
    from ddpipe.pipeline.relabel import relabel_spec

    source = open_source(os.path.join(workdir, "images"))
    sched, spec = relabel_spec(source, recipe("sre2l", output_size=(args.size, args.size)), epochs=1,
                               batch_size=args.batch_size, num_classes=args.classes, k=args.k)
    rng = np.random.default_rng(1)
    sre2l = os.path.join(workdir, "sre2l_labels")
    with create_store(os.path.join(workdir, "store"), spec, overwrite=True) as w:
        for e in range(spec.epochs):
            os.makedirs(os.path.join(sre2l, f"epoch_{e}"), exist_ok=True)
            for b in range(spec.batches_per_epoch):
                u = sched.unit(e, b)
                logits = (rng.standard_normal((u.count, args.classes)) * 3).astype(np.float32)
                w.write(Unit(e, b, u.sample_ids, u.crops, u.flips, u.mix_kind, u.mix_perm, u.mix_lambda, u.mix_box,
                             u.cutout, logits=logits))
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
        t0 = time.perf_counter()
        coords, flips, mix_index, mix_lam, mix_bbox, soft, ids = torch.load(
            os.path.join(self.labels, f"epoch_{e}", f"batch_{b}.tar"), weights_only=False)
        label_s = time.perf_counter() - t0
        out = []
        for i, sid in enumerate(ids.tolist()):
            path, _ = self.folder.samples[sid]
            img = self.folder.loader(path)
            W, H = img.size
            top, left, h, w = coords[i].tolist()
            img = F.resized_crop(img, top * H, left * W, h * H, w * W, [self.size, self.size], InterpolationMode.BILINEAR)
            if flips[i]:
                img = F.hflip(img)
            out.append(F.normalize(F.to_tensor(img), MEAN, STD))
        images = torch.stack(out)
        if mix_bbox is not None:  # SRe2L's mix_aug (cutmix) in the training loop
            y0, x0, y1, x1 = mix_bbox
            images[:, :, y0:y1, x0:x1] = images[mix_index, :, y0:y1, x0:x1]
        return images, soft.float(), label_s


def _first(x):
    return x


def _timed(batches, count):
    """Images/s after the first batch, and the number of batches."""
    it = iter(batches)
    first = next(it)
    n_img, n_b = 0, 0
    t0 = time.perf_counter()
    for b in it:
        n_img += count(b)
        n_b += 1
    dt = time.perf_counter() - t0
    return n_img / dt, n_b + 1, first


def row_sre2l(wd: str, args) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from ddpipe.labelstore import open_store

    spec = open_store(os.path.join(wd, "store")).spec
    keys = [(0, b) for b in range(spec.batches_per_epoch)]
    ds = _SRe2LBatches(os.path.join(wd, "images"), os.path.join(wd, "sre2l_labels"), args.size)
    label_s = []

    def count(x):
        label_s.append(x[2])
        return x[0].shape[0]

    dl = DataLoader(ds, batch_size=None, sampler=keys, num_workers=args.workers, collate_fn=_first)
    rate, nb, _ = _timed(dl, count)
    torch.set_num_threads(1)
    return {"images_per_s": rate, "label_ms_per_batch": 1000 * float(np.mean(label_s)),
            "config": f"torchvision ImageFolder + PIL, {args.workers} DataLoader workers, torch.load per batch"}


def row_ddpipe(wd: str, args, backend: str) -> dict:
    from ddpipe.pipeline import open_source
    from ddpipe.pipeline.loader import make_loader

    src = open_source(os.path.join(wd, "images"))
    kw = dict(num_workers=args.workers) if backend == "torch" else dict(num_workers=1, threads=args.workers)
    ld = make_loader(src, os.path.join(wd, "store"), backend=backend, mean=MEAN, std=STD, **kw)
    t0 = ld.label_seconds
    rate, nb, _ = _timed(ld.epoch(0), lambda b: b.images.shape[0])
    label = (ld.label_seconds - t0) / nb
    ld.close()
    cfg = (f"{args.workers} DataLoader workers" if backend == "torch"
           else f"{args.workers} DALI threads, 1 parallel external_source worker, image_slice ROI decode, "
                "normalise then float resize")
    return {"images_per_s": rate, "label_ms_per_batch": 1000 * label, "config": cfg}


class _DecodePIL:
    def __init__(self, src):
        self.src = src

    def __getitem__(self, ids):
        return [np.asarray(self.src.pil(int(i), 3)) for i in ids]


def _epoch_batches(wd: str, bs: int):
    from ddpipe.labelstore import open_store

    r = open_store(os.path.join(wd, "store"))
    return [u.sample_ids for u in r.iter_units()]


def row_decode_pil(wd: str, args) -> dict:
    from torch.utils.data import DataLoader

    from ddpipe.pipeline import open_source

    src = open_source(os.path.join(wd, "images"))
    dl = DataLoader(_DecodePIL(src), batch_size=None, sampler=_epoch_batches(wd, args.batch_size),
                    num_workers=args.workers, collate_fn=_first)
    rate, _, _ = _timed(dl, len)
    return {"images_per_s": rate, "label_ms_per_batch": None, "config": f"PIL decode only, {args.workers} workers"}


def row_decode_dali(wd: str, args) -> dict:
    from nvidia.dali import fn, types
    from nvidia.dali.pipeline import Pipeline

    from ddpipe.pipeline import open_source

    src = open_source(os.path.join(wd, "images"))
    batches = _epoch_batches(wd, args.batch_size)

    def cb(info):
        if info.iteration >= len(batches):
            raise StopIteration
        return [src.item(int(i)) for i in batches[info.iteration]]

    pipe = Pipeline(batch_size=args.batch_size, num_threads=args.workers, device_id=None, prefetch_queue_depth=2)
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
    return {"images_per_s": rate, "label_ms_per_batch": None, "config": f"DALI CPU decoders.image only, {args.workers} threads"}


def run_row(args) -> int:
    wd = args.workdir
    name = args.row
    if name == "sre2l-baseline":
        out = row_sre2l(wd, args)
    elif name == "torch":
        out = row_ddpipe(wd, args, "torch")
    elif name == "dali-cpu":
        out = row_ddpipe(wd, args, "dali")
    elif name == "decode-only-pil":
        out = row_decode_pil(wd, args)
    else:
        out = row_decode_dali(wd, args)
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out["peak_rss_mb"] = (me + kids) / 1024
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


# --- driver ---------------------------------------------------------------------------------------------
def _median_row(name: str, runs: list[dict]) -> dict:
    """The round with the median images/s; all rounds' rates kept; peak RSS is the largest seen."""
    ordered = sorted(runs, key=lambda r: r["images_per_s"])
    mid = dict(ordered[(len(ordered) - 1) // 2])
    mid["images_per_s_rounds"] = [round(r["images_per_s"], 1) for r in runs]
    mid["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    return {"backend": name, **mid}
def _child(name: str, wd: str, args) -> dict:
    cmd = [sys.executable, "-m", "ddpipe.bench.loader", "--row", name, "--workdir", wd, "--size", str(args.size),
           "--batch-size", str(args.batch_size), "--workers", str(args.workers)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"row {name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(args) -> int:
    if args.row:
        return run_row(args)
    out = common.table_stream(args.json)
    rows_wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
    bad = sorted(set(rows_wanted) - set(ROWS))
    if bad:
        from ddpipe.errors import DDPipeError

        raise DDPipeError(f"unknown rows {bad}; choose from {list(ROWS)}")
    base = args.workdir or common.WORK_DIR
    os.makedirs(base, exist_ok=True)
    wd = tempfile.mkdtemp(prefix="loader-", dir=base)
    t_start = time.time()
    try:
        print(f"ddpipe bench loader: making {args.images} JPEGs ({args.size}px, {args.classes} classes) in {wd}", file=out, flush=True)
        t0 = time.time()
        make_images(os.path.join(wd, "images"), args.images, args.classes, args.size, args.quality)
        make_labels(wd, args)
        print(f"  data ready in {time.time() - t0:.1f} s", file=out, flush=True)
        runs: dict[str, list[dict]] = {name: [] for name in rows_wanted}
        for rep in range(max(1, args.repeats)):
            k = rep % len(rows_wanted)
            for name in rows_wanted[k:] + rows_wanted[:k]:  # rotate, so no row always runs first
                r = _child(name, wd, args)
                runs[name].append(r)
                print(f"  round {rep + 1} {name}: {r['images_per_s']:,.0f} images/s", file=out, flush=True)
        rows = [_median_row(name, runs[name]) for name in rows_wanted]
    finally:
        if not args.keep_work:
            shutil.rmtree(wd, ignore_errors=True)
    base_rate = next((r["images_per_s"] for r in rows if r["backend"] == "sre2l-baseline"), None)
    for r in rows:
        r["speedup"] = r["images_per_s"] / base_rate if base_rate else None
        batch_ms = 1000 * args.batch_size / r["images_per_s"]
        r["label_share"] = r["label_ms_per_batch"] / batch_ms if r["label_ms_per_batch"] is not None else None
    print("", file=out)
    print(common.format_table(rows, COLUMNS), file=out)
    dali = next((r for r in rows if r["backend"] == "dali-cpu"), None)
    checks = {}
    if dali and base_rate:
        checks["dali_speedup_vs_sre2l"] = dali["speedup"]
        checks["dali_speedup_target_met"] = dali["speedup"] >= TARGET_SPEEDUP
    checks["label_share_target_met"] = all(
        r["label_share"] < TARGET_LABEL_SHARE for r in rows if r["backend"] in ("torch", "dali-cpu") and r["label_share"] is not None
    )
    print(f"\ntargets: dali-cpu >= {TARGET_SPEEDUP:.0f}x sre2l-baseline, label share < {TARGET_LABEL_SHARE:.0%}: {checks}", file=out)
    payload = {
        "benchmark": "loader",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "elapsed_s": time.time() - t_start,
        "machine": common.machine_info(),
        "args": {k: v for k, v in vars(args).items() if k not in ("func", "bench_run", "row")},
        "notes": {
            "images_per_s": "one epoch, timed after the first batch (worker start-up excluded); the median of "
                            "--repeats rounds, rows interleaved with rotating order (the machine may be shared)",
            "label_ms_per_batch": "ddpipe: store reads + dense targets in the main process; sre2l: torch.load in the worker",
            "peak_rss_mb": "peak RSS of the row's process plus the largest of its finished workers",
        },
        "targets": {"dali_speedup": TARGET_SPEEDUP, "label_share": TARGET_LABEL_SHARE, **checks},
        "rows": rows,
    }
    path = common.write_results("loader", payload, args.results_dir)
    print(f"wrote {path}", file=out)
    if args.json:
        sys.stdout.write(json.dumps(payload, default=common.json_default) + "\n")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="ddpipe bench loader", description=DESCRIPTION)
    parser.add_argument("--json", action="store_true")
    add_arguments(parser)
    raise SystemExit(run(parser.parse_args()))
