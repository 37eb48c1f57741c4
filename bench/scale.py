"""``ddpipe bench scale``: relabel and training replay at a preset's real image and class counts.

A rehearsal of what large-IPC runs do, on this machine: a synthetic image set at the preset's
image count (times ``--fraction``) and class count, ``--image-size`` px images (``--image-format``:
PNG, or JPEG at ``--jpeg-quality`` with photo-like detail, tens of KB at 224 px) written as an
ImageFolder (one folder per class) and as WebDataset tar shards; a small random-weight teacher
with the preset's class count (real forward passes); then, each phase in its own process so that
its peak RSS is its own:

- **relabel** with 1 rank and with ``torchrun --nproc-per-node 2`` writing one store (the two
  stores' arrays are compared), at the preset's batch size, top-k and codec;
- **replay** through the torch and DALI (CPU) loaders with the dense ``num_classes``-way targets
  and with the top-k targets, a student forward/backward per batch;

at ``F/8, F/4, F/2, F`` of the image count for one epoch, and at ``F`` for 1, 2 and 4 epochs
(``--sweep``, ``--epochs``, ``--phases`` and ``--targets`` choose fewer rows, e.g. the full count and
1/8 only, one epoch, dense targets: ``--fraction 1 --sweep 8 --sweep 1 --epochs 1 --targets dense``).

Row fields: ``samples_per_s`` (images relabelled or replayed per second of the phase's wall time,
over all ranks), ``peak_rss_mb`` (the largest single process's peak RSS: a rank or one of its loader
workers), ``peak_rss_total_mb`` (the peak of the RSS summed over the ranks and their workers, sampled
from ``/proc/<pid>/statm`` every 0.1 s; torchrun's launcher is not counted), ``image_size``,
``image_format``, ``jpeg_quality`` and ``image_bytes_mean`` (the mean encoded file size), ``source_mode``
(whether the source held its images in RAM or read them from the files), ``open_source_s`` (opening the
ImageFolder: listing and reading every file, plus its content hash), ``bytes_per_sample_epoch``
(``ddpipe info``'s), and, for relabel, ``overhead_share``: the share of wall time outside the
teacher's forward and the image work (decode, crop/resize, collate, mix; measured by running the
same relabel loader alone), i.e. schedule, crop parameters, top-k, store writes and leases.
Rows go to stdout as JSON with ``--json`` and to ``bench/results/scale-<time>.json``, with a table
and a PNG plot of throughput and memory against image count.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from . import common
from ddpipe.config import check_choice, check_choices, config_to_dict, option
from ddpipe.errors import DDPipeError

DESCRIPTION = ("Relabel (1 and 2 ranks) and training replay (torch, DALI) at a preset's real image and class "
               "counts: samples/s, peak RSS, source open time, store bytes, ddpipe's overhead share.")


@dataclass(frozen=True)
class ScalePreset:
    name: str
    num_classes: int
    ipc: int
    batch_size: int
    k: int
    codec: str
    source: str

    @property
    def num_samples(self) -> int:
        return self.num_classes * self.ipc


PRESETS = {
    p.name: p
    for p in [
        ScalePreset("imagenet21k-ipc20", 10450, 20, 1024, 100, "fp16",
                    "CDA/LPLD ImageNet-21K-P: 10,450 classes, 209,000 images; SRe2L's batch 1024"),
        ScalePreset("imagenet1k-ipc50", 1000, 50, 1024, 100, "fp16", "SRe2L ImageNet-1K IPC50: 50,000 images, batch 1024"),
    ]
}

COLUMNS = [
    ("preset", "preset", ""), ("fraction", "fraction", ".4g"), ("images", "images", ",d"), ("epochs", "epochs", "d"),
    ("phase", "phase", ""), ("backend", "backend", ""), ("targets", "targets", ""), ("ranks", "ranks", "d"),
    ("image_size", "px", "d"), ("image_format", "format", ""),
    ("samples_per_s", "samples/s", ",.0f"), ("peak_rss_mb", "peak RSS MB", ",.0f"),
    ("peak_rss_total_mb", "RSS sum MB", ",.0f"),
    ("open_source_s", "open s", ".2f"), ("bytes_per_sample_epoch", "B/sample-epoch", ".1f"),
    ("overhead_share", "overhead", ".1%"),
]


@dataclass(frozen=True, kw_only=True)
class Config:
    """``ddpipe bench scale``'s settings; bad values raise :class:`DDPipeError` naming the field."""

    preset: str = option("imagenet21k-ipc20", choices=tuple(PRESETS), help="preset (default imagenet21k-ipc20)")
    fraction: float = option(1.0, help="largest fraction of the preset's images (default 1); the sweep runs F/8, F/4, F/2, F")
    sweep: tuple[int, ...] = option((8, 4, 2, 1), help="divisors of F for the 1-epoch sweep, repeatable (default 8 4 2 1: "
                                    "F/8, F/4, F/2, F; --sweep 8 --sweep 1 runs F/8 and F only)")
    phases: tuple[str, ...] = option(("relabel", "replay"), help="phases, repeatable: relabel (always runs: it writes "
                                     "the store replay reads) and replay (default both)")
    targets: tuple[str, ...] = option(("dense", "topk"), help="replay targets at F, 1 epoch, repeatable (default dense "
                                      "and topk; other rows replay dense)")
    epochs: tuple[int, ...] = option((1, 2, 4), help="epoch counts of the epoch sweep at F, repeatable (default 1 2 4)")
    image_size: int = option(32, help="side of the synthetic images and of the crops in px (default 32; 224 for "
                             "SRe2L-family sets)")
    image_format: str = option("png", choices=("png", "jpeg"), help="encoding of the synthetic images: png "
                               "(default) or jpeg (photo-like detail, tens of KB at 224 px)")
    jpeg_quality: int = option(90, help="JPEG quality of --image-format jpeg (default 90)")
    backends: tuple[str, ...] = option(("torch", "dali"), help="replay loaders, repeatable (default torch and dali)")
    ranks: int = option(2, help="ranks of the torchrun relabel (default 2; 1 skips it)")
    quick: bool = option(False, help="a one-minute run for tests: 1/200 of imagenet1k-ipc50 (F/2 and F), epochs 1 2, torch loader")
    workdir: str | None = option(None, help="where images and stores go (default a temp dir under bench/work of the current directory)")
    keep_work: bool = option(False, help="keep images and stores afterwards")
    results_dir: str | None = option(None, help="where the results JSON and plot go (default bench/results under the current directory)")
    seed: int = option(0, help="seed of the images, teacher, student and schedule (default 0)")
    json: bool = option(False, help="print the rows as one JSON object on stdout", cli=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.quick:
            set_(self, "preset", "imagenet1k-ipc50")
            set_(self, "fraction", 1 / 200 if self.fraction == 1.0 else self.fraction)
            set_(self, "sweep", (2, 1) if tuple(self.sweep) == (8, 4, 2, 1) else tuple(self.sweep))
            set_(self, "epochs", (1, 2) if tuple(self.epochs) == (1, 2, 4) else tuple(self.epochs))
            set_(self, "backends", ("torch",) if tuple(self.backends) == ("torch", "dali") else tuple(self.backends))
        check_choice(DDPipeError, "preset", self.preset, tuple(PRESETS))
        if not 0 < float(self.fraction) <= 1:
            raise DDPipeError(f"fraction must be in (0, 1], got {self.fraction}")
        for b in self.backends:
            check_choice(DDPipeError, "backends", b, ("torch", "dali"))
        if not self.sweep or any(int(d) < 1 for d in self.sweep):
            raise DDPipeError(f"sweep must be positive integers, got {self.sweep}")
        for ph in self.phases:
            check_choice(DDPipeError, "phases", ph, ("relabel", "replay"))
        if not self.targets:
            raise DDPipeError("targets must name dense, topk or both")
        for t in self.targets:
            check_choice(DDPipeError, "targets", t, ("dense", "topk"))
        if not self.epochs or any(int(e) < 1 for e in self.epochs):
            raise DDPipeError(f"epochs must be positive integers, got {self.epochs}")
        if self.ranks < 1 or self.image_size < 8:
            raise DDPipeError("ranks must be >= 1 and image_size >= 8")
        check_choices(self, DDPipeError)
        if not 1 <= self.jpeg_quality <= 100:
            raise DDPipeError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")


# --- images ---------------------------------------------------------------------------------------
def make_images(root: str, n: int, num_classes: int, size: int, seed: int, fmt: str = "png",
                quality: int = 90) -> tuple[str, str, float]:
    """``n`` random ``size``-px RGB images over ``num_classes`` classes (image ``i`` of class ``i % C``;
    class folders ``c00000``…, every class has a folder), as an ImageFolder and as tar shards of
    10,000 samples in the same order; returns both and the mean encoded size in bytes. PNGs are
    smooth blobs (a 4x4 base upsampled); JPEGs (``fmt="jpeg"``, ``quality``) have photo-like detail
    (a ``size/4`` base upsampled), tens of KB at 224 px. Reused when already there."""
    folder, shards = os.path.join(root, "imagefolder"), os.path.join(root, "shards")
    done = os.path.join(root, "done.json")
    if os.path.isfile(done):
        with open(done) as f:
            return folder, shards, float(json.load(f).get("mean_bytes", 0.0))
    import io

    from PIL import Image

    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(shards)
    width = max(5, len(str(num_classes - 1)))
    for c in range(num_classes):
        os.makedirs(os.path.join(folder, f"c{c:0{width}d}"))
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    order = np.argsort(labels, kind="stable")  # the ImageFolder's sample order: by class, then file
    tar, total = None, 0
    ext = "jpg" if fmt == "jpeg" else "png"
    side = max(4, size // 4) if fmt == "jpeg" else 4
    for j, i in enumerate(order):
        # smooth blobs compress like photos more than noise does; small, so writing stays cheap
        base = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(base).resize((size, size), Image.BILINEAR))
        buf = io.BytesIO()
        if fmt == "jpeg":
            Image.fromarray(img).save(buf, format="JPEG", quality=quality)
        else:
            Image.fromarray(img).save(buf, format="PNG", compress_level=1)
        data = buf.getvalue()
        total += len(data)
        c = int(labels[i])
        with open(os.path.join(folder, f"c{c:0{width}d}", f"img{i:07d}.{ext}"), "wb") as f:
            f.write(data)
        if j % 10000 == 0:
            if tar is not None:
                tar.close()
            tar = tarfile.open(os.path.join(shards, f"shard-{j // 10000:05d}.tar"), "w")
        for member, payload in ((ext, data), ("cls", str(c).encode())):
            info = tarfile.TarInfo(f"s{j:07d}.{member}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    if tar is not None:
        tar.close()
    with open(done, "w") as f:
        json.dump({"images": n, "classes": num_classes, "size": size, "format": fmt, "quality": quality,
                   "mean_bytes": total / max(1, n)}, f)
    return folder, shards, total / max(1, n)


# --- models ---------------------------------------------------------------------------------------
def small_net(num_classes: int, seed: int, width: int = 32):
    """Three strided 3x3 convolutions, global average pooling and a linear head over ``num_classes``."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, width // 2, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(width // 2, width, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
    )


class TimedTeacher:
    """The teacher as relabel calls it, timing its forward passes (logits as float32 numpy)."""

    def __init__(self, net):
        self.net = net.eval()
        self.seconds = 0.0

    def __call__(self, x):
        import torch

        t0 = time.perf_counter()
        with torch.no_grad():
            out = self.net(x).float()
        self.seconds += time.perf_counter() - t0
        return out


# --- phases (each in its own process) -------------------------------------------------------------
def _peak_rss_mb() -> float:
    return common.peak_rss_bytes() / 1e6


def _loader_kw() -> dict:
    return dict(channels=3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def phase_relabel(job: dict) -> dict:
    """Relabel ``job['images']`` into ``job['store']`` (this rank's shards under torchrun)."""
    import torch

    torch.set_num_threads(1)  # ranks share the cores; 1 rank and 2 ranks compute identical logits
    rank, world = 0, 1
    if "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    from ..pipeline import LoaderConfig, open_source, recipe
    from ..pipeline.loader import make_relabel_loader
    from ..pipeline.relabel import relabel, relabel_spec

    t0 = time.perf_counter()
    source = open_source(job["images"])
    source.content_hash()
    open_s = time.perf_counter() - t0
    teacher = TimedTeacher(small_net(job["num_classes"], job["seed"]))
    schedule = recipe("sre2l", output_size=(job["image_size"], job["image_size"]))
    loader = LoaderConfig(num_workers=0, **_loader_kw())
    sched, spec = relabel_spec(source, schedule, epochs=job["epochs"], batch_size=job["batch_size"],
                               num_classes=job["num_classes"], k=job["k"], seed=job["seed"], value_codec=job["codec"])
    t0 = time.perf_counter()
    out = relabel(job["store"], source, teacher, sched, spec, loader=loader, rank=rank, world_size=world)
    wall = time.perf_counter() - t0
    image_s = None
    if job.get("measure_images"):  # the same relabel loader alone: the image work inside relabel's wall time
        with make_relabel_loader(source, sched, None, loader) as ld:
            for _ in ld.epoch(0):
                pass
            st = ld.stage_seconds()
        image_s = sum(v for k, v in st.items() if k != "labels")
    return {"rank": rank, "world": world, "wall_s": wall, "open_source_s": open_s, "teacher_s": teacher.seconds,
            "image_s": image_s, "images": out["images_labelled"], "peak_rss_mb": _peak_rss_mb(),
            "source_mode": getattr(source, "mode", None)}


def phase_replay(job: dict) -> dict:
    """Train a student for every epoch of ``job['store']`` through one loader."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(2)
    from ..pipeline import LoaderConfig, open_source
    from ..pipeline.loader import make_loader

    t0 = time.perf_counter()
    source = open_source(job["images"])
    source.content_hash()
    open_s = time.perf_counter() - t0
    student = small_net(job["num_classes"], job["seed"] + 1)
    opt = torch.optim.SGD(student.parameters(), lr=0.01)
    cfg = LoaderConfig(backend=job["backend"], num_workers=0, threads=2, device="cpu", dali_parallel=False,
                       targets=job["targets"], **_loader_kw())
    seen = 0
    t0 = time.perf_counter()
    with make_loader(source, job["store"], cfg) as ld:
        for e in range(ld.epochs):
            for images, targets, _meta in ld.epoch(e):
                logp = F.log_softmax(student(images), dim=1)
                if job["targets"] == "dense":
                    loss = F.kl_div(logp, targets, reduction="batchmean")
                else:
                    idx, val = targets
                    loss = -(val * logp.gather(1, idx.long())).sum(1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                seen += int(images.shape[0])
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "open_source_s": open_s, "images": seen, "peak_rss_mb": _peak_rss_mb(),
            "source_mode": getattr(source, "mode", None)}


def _worker_main(argv: list[str]) -> int:
    """``python -m ddpipe.bench.scale --phase JOB.json``: run one phase, write its result beside."""
    job_path = argv[argv.index("--phase") + 1]
    with open(job_path) as f:
        job = json.load(f)
    res = phase_relabel(job) if job["phase"] == "relabel" else phase_replay(job)
    with open(f"{job_path}.rank{res.get('rank', 0)}.json", "w") as f:
        json.dump(res, f)
    return 0


# --- driver ---------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_phase(job: dict, work: str, name: str, ranks: int = 1) -> list[dict]:
    path = os.path.join(work, f"{name}.job.json")
    for old in os.listdir(work):
        if old.startswith(f"{name}.job.json.rank"):
            os.remove(os.path.join(work, old))
    with open(path, "w") as f:
        json.dump(job, f)
    env = {**os.environ, "OMP_NUM_THREADS": "1" if ranks > 1 else "2"}
    if ranks > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks), "--master-addr",
               "127.0.0.1", "--master-port", str(_free_port()), "--module", "ddpipe.bench.scale", "--phase", path]
    else:
        cmd = [sys.executable, "-m", "ddpipe.bench.scale", "--phase", path]
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)
        peak_one, peak_sum = common.wait_sampling_rss(proc, skip_root=ranks > 1)
        err.seek(0)
        stderr = err.read()
    if proc.returncode != 0:
        raise DDPipeError(f"bench scale: phase {name} failed:\n{stderr[-3000:]}")
    res = [json.load(open(f"{path}.rank{r}.json")) for r in range(ranks)]
    for r in res:  # the ranks' own peaks (ru_maxrss) and the sampled ones of every process of the phase
        r["peak_rss_one_mb"] = max(r["peak_rss_mb"], peak_one / 1e6)
        r["peak_rss_total_mb"] = max(sum(x["peak_rss_mb"] for x in res), peak_sum / 1e6)
    return res


def _arrays_equal(a: str, b: str) -> bool:
    from ..labelstore import open_store

    ra, rb = open_store(a), open_store(b)
    a_arrays = ra.read_slab(0, ra.num_units, check_values=False).arrays
    b_arrays = rb.read_slab(0, rb.num_units, check_values=False).arrays
    return a_arrays.keys() == b_arrays.keys() and all(np.array_equal(a_arrays[n], b_arrays[n]) for n in a_arrays)


def run(config: Config) -> int:
    from ..labelstore import store_info

    out = common.table_stream(config.json)
    p = PRESETS[config.preset]
    fractions = sorted({config.fraction / int(d) for d in config.sweep})
    base = common.work_dir(config.workdir)
    os.makedirs(base, exist_ok=True)
    work = tempfile.mkdtemp(prefix="scale-", dir=base)
    images_root = os.path.join(base, "scale-images")
    rows: list[dict] = []
    t_start = time.time()
    load0 = os.getloadavg()
    print(f"bench scale: {p.name} ({p.num_samples:,} images, {p.num_classes:,} classes) at fractions "
          f"{', '.join(f'{f:.4g}' for f in fractions)}; {config.image_size} px {config.image_format.upper()}"
          f"{f' (quality {config.jpeg_quality})' if config.image_format == 'jpeg' else ''}; work in {work}", file=out)

    mean_bytes = None

    def row(fraction, n, epochs, phase, backend, ranks, res, store, targets=None, **extra):
        images = sum(r["images"] for r in res)
        wall = max(r["wall_s"] for r in res)
        info = store_info(store)
        split = {}  # relabel: the teacher's and the images' seconds, and what neither explains
        if phase == "relabel" and res[0].get("image_s") is not None:
            teacher_s, image_s = res[0]["teacher_s"], res[0]["image_s"]
            share = max(0.0, wall - teacher_s - image_s) / wall
            split = {"overhead_share": share, "teacher_s": teacher_s, "image_s": image_s,
                     "overhead_us_per_sample": 1e6 * share * wall / max(1, images)}
        d = {"preset": p.name, "fraction": fraction, "images": n, "epochs": epochs, "phase": phase,
             "backend": backend, "targets": targets, "ranks": ranks, "samples_per_s": images / wall if wall else None,
             "image_size": config.image_size, "image_format": config.image_format,
             "jpeg_quality": config.jpeg_quality if config.image_format == "jpeg" else None,
             "image_bytes_mean": mean_bytes, "source_mode": res[0].get("source_mode"),
             "peak_rss_mb": max(r["peak_rss_one_mb"] for r in res),
             "peak_rss_total_mb": max(r["peak_rss_total_mb"] for r in res),
             "peak_rss_ranks_mb": [r["peak_rss_mb"] for r in res],
             "open_source_s": max(r["open_source_s"] for r in res),
             "bytes_per_sample_epoch": info["bytes_per_sample_epoch"], "overhead_share": None, "wall_s": wall, **extra,
             **split}
        rows.append(d)
        print(common.format_table([d], COLUMNS).splitlines()[-1], file=out, flush=True)
        return d

    print(common.format_table([], COLUMNS), file=out, flush=True)
    try:
        plan = [(f, 1) for f in fractions] + [(config.fraction, e) for e in sorted(set(config.epochs)) if e != 1]
        for f, epochs in plan:
            n = max(1, round(p.num_samples * f))
            t0 = time.perf_counter()
            where = f"{p.name}-{n}-{config.image_size}px" + (
                f"-jpeg{config.jpeg_quality}" if config.image_format == "jpeg" else "")
            folder, shards, mean_bytes = make_images(os.path.join(images_root, where), n, p.num_classes,
                                                     config.image_size, config.seed, config.image_format,
                                                     config.jpeg_quality)
            make_s = time.perf_counter() - t0
            print(f"  {n:,} images: mean file size {mean_bytes / 1e3:,.1f} KB", file=out, flush=True)
            job = {"phase": "relabel", "images": folder, "num_classes": p.num_classes, "image_size": config.image_size,
                   "batch_size": p.batch_size, "k": min(p.k, p.num_classes), "codec": p.codec, "seed": config.seed,
                   "epochs": epochs}
            store = os.path.join(work, f"n{n}-e{epochs}.zarr")
            res = _run_phase({**job, "store": store, "measure_images": True}, work, f"relabel-n{n}-e{epochs}")
            t0 = time.perf_counter()
            from ..pipeline import open_source

            open_source(shards).content_hash()
            shards_s = time.perf_counter() - t0
            row(f, n, epochs, "relabel", "torch", 1, res, store, make_images_s=make_s, open_shards_s=shards_s)
            if config.ranks > 1 and epochs == 1 and f == config.fraction:
                store2 = os.path.join(work, f"n{n}-e{epochs}-r{config.ranks}.zarr")
                res2 = _run_phase({**job, "store": store2}, work, f"relabel2-n{n}", ranks=config.ranks)
                row(f, n, epochs, "relabel", "torch", config.ranks, res2, store2,
                    arrays_equal_1rank=_arrays_equal(store, store2))
            for backend in config.backends if "replay" in config.phases else ():
                targets_list = tuple(config.targets) if f == config.fraction and epochs == 1 else ("dense",)
                for targets in targets_list:
                    res = _run_phase({"phase": "replay", "images": folder, "store": store, "backend": backend,
                                      "targets": targets, "num_classes": p.num_classes, "seed": config.seed},
                                     work, f"replay-{backend}-{targets}-n{n}-e{epochs}")
                    row(f, n, epochs, "replay", backend, 1, res, store, targets=targets)
    finally:
        if not config.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    payload = {"benchmark": "scale", "config": config_to_dict(config), "machine": common.machine_info(),
               "load_average_start": load0, "load_average_end": os.getloadavg(), "wall_s": time.time() - t_start,
               "command": _command(config), "rows": rows}
    path = common.write_results("scale", payload, config.results_dir)
    plot = _plot(rows, path.removesuffix(".json") + ".png")
    print(f"\nload average {load0[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end; results {path}"
          + (f"; plot {plot}" if plot else ""), file=out)
    for line in _targets_summary(rows):
        print(line, file=out)
    if config.json:
        print(json.dumps(rows, default=common.json_default))
    return 0


def _command(config: Config) -> str:
    cmd = "ddpipe bench scale --quick" if config.quick else (
        f"ddpipe bench scale --preset {config.preset} --fraction {config.fraction:g}")
    for name, default in (("sweep", (2, 1) if config.quick else (8, 4, 2, 1)),
                          ("epochs", (1, 2) if config.quick else (1, 2, 4)), ("phases", ("relabel", "replay")),
                          ("targets", ("dense", "topk")), ("backends", ("torch",) if config.quick else ("torch", "dali"))):
        value = tuple(getattr(config, name))
        if value != tuple(default):
            cmd += "".join(f" --{name} {v}" for v in value)
    if config.ranks != 2:
        cmd += f" --ranks {config.ranks}"
    if config.image_size != 32 or config.image_format != "png":
        cmd += f" --image-size {config.image_size} --image-format {config.image_format}"
        cmd += f" --jpeg-quality {config.jpeg_quality}" if config.image_format == "jpeg" else ""
    return cmd


def _targets_summary(rows: list[dict]) -> list[str]:
    """The issue's targets, read off the rows."""
    lines = []
    one = [r for r in rows if r["epochs"] == 1 and r["ranks"] == 1 and r.get("targets") in (None, "dense")]
    for phase, backend in {(r["phase"], r["backend"]) for r in one}:
        rs = sorted((r for r in one if (r["phase"], r["backend"]) == (phase, backend)), key=lambda r: r["images"])
        if len(rs) > 1:
            lines.append(f"{phase}/{backend}: samples/s at {rs[-1]['images']:,} images = "
                         f"{rs[-1]['samples_per_s'] / rs[0]['samples_per_s']:.0%} of that at {rs[0]['images']:,}")
    top = max((r["images"] for r in rows), default=0)
    for phase, backend in {(r["phase"], r["backend"]) for r in rows}:
        rs = sorted((r for r in rows if r["images"] == top and r["ranks"] == 1 and r["phase"] == phase
                     and r["backend"] == backend and r.get("targets") in (None, "dense")), key=lambda r: r["epochs"])
        if len(rs) > 1:
            lines.append(f"{phase}/{backend}: peak RSS {rs[0]['peak_rss_mb']:.0f} MB at {rs[0]['epochs']} epoch(s), "
                         f"{rs[-1]['peak_rss_mb']:.0f} MB at {rs[-1]['epochs']} ({rs[-1]['peak_rss_mb'] / rs[0]['peak_rss_mb'] - 1:+.0%})")
    return sorted(lines)


def _plot(rows: list[dict], path: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    one = [r for r in rows if r["epochs"] == 1 and r["ranks"] == 1 and r.get("targets") in (None, "dense")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for phase, backend in sorted({(r["phase"], r["backend"]) for r in one}):
        rs = sorted((r for r in one if (r["phase"], r["backend"]) == (phase, backend)), key=lambda r: r["images"])
        x = [r["images"] for r in rs]
        axes[0].plot(x, [r["samples_per_s"] for r in rs], "o-", label=f"{phase} ({backend})")
        axes[1].plot(x, [r["peak_rss_mb"] for r in rs], "o-", label=f"{phase} ({backend})")
    for ax, what in zip(axes, ("samples/s", "peak RSS (MB)")):
        ax.set_xscale("log")
        ax.set_xlabel("images")
        ax.set_ylabel(what)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"ddpipe bench scale: {rows[0]['preset'] if rows else ''}, 1 epoch, 1 rank")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":
    if "--phase" in sys.argv:
        sys.exit(_worker_main(sys.argv))
    from . import run_benchmark

    sys.exit(run_benchmark("scale", quick="--quick" in sys.argv))
