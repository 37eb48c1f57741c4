"""``ddpipe bench store``: label-store bytes and read throughput at real shapes, against SRe2L.

For each preset it runs a relabel pass the way a user would (ddpipe's own replay schedule,
:class:`ddpipe.pipeline.schedule.Schedule`, and the teacher's top-k for every unit, written into one store per value codec; a pruned store is planned before
relabel so only kept units are computed), measures the bytes on disk, the sequential and random
read rates on one core, and, in the same run, SRe2L's layout: the same labels as per-batch
``torch.save`` files (full fp16 logits), read back with ``torch.load``. Labels come from the
seeded teacher-logit model in :mod:`ddpipe.bench.teacher_model`; there is no real teacher here.

``--side-by-side`` (``--quick`` for a tiny shape) runs the content grid of :mod:`ddpipe.bench.store_layouts`
instead: the same labels and crop records in ddpipe's format 3 and 4 and in LPQLD's, TinyViT's and
SRe2L's own layouts, bytes and random reads side by side.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace

import numpy as np

from . import common
from ddpipe._format import keep_fraction
from ddpipe._progress import progress_bar, say
from ddpipe.config import check_choice, check_int, check_range, config_to_dict, option
from ddpipe.errors import DDPipeError

DESCRIPTION = (
    "Label-store bytes and one-core read throughput at real dataset shapes (teacher-logit model), "
    "against SRe2L's per-batch torch.save files."
)


@dataclass(frozen=True)
class Preset:
    name: str
    num_classes: int
    ipc: int
    epochs: int
    batch_size: int
    image_size: int  # source images (crops are on this pixel grid) and network input
    schedule: str  # ddpipe.pipeline.schedule recipe the relabel run uses
    mix: str  # cutmix | none: the recipe's mix
    source: str  # where the relabel configuration comes from

    @property
    def num_samples(self) -> int:
        return self.num_classes * self.ipc

    def relabel_schedule(self, seed: int):
        """The relabel run's schedule: ddpipe's own, over square source images of ``image_size``."""
        from .teacher_model import square_schedule

        size = (self.image_size, self.image_size)
        return square_schedule(self.num_samples, self.image_size, self.batch_size, self.epochs, seed, self.schedule,
                               output_size=size, mix=self.mix)


PRESETS = {
    p.name: p
    for p in [
        Preset("imagenet1k-ipc10", 1000, 10, 300, 1024, 224, "sre2l", "cutmix", "SRe2L relabel.sh: batch 1024, 300 epochs, cutmix"),
        Preset("imagenet1k-ipc50", 1000, 50, 300, 1024, 224, "sre2l", "cutmix", "SRe2L relabel.sh: batch 1024, 300 epochs, cutmix"),
        Preset("imagenet1k-ipc200", 1000, 200, 300, 1024, 224, "sre2l", "cutmix", "SRe2L relabel.sh: batch 1024, 300 epochs, cutmix"),
        Preset(
            "imagenet21k-ipc20", 10450, 20, 300, 1024, 224, "sre2l", "cutmix",
            "CDA/LPLD IN-21K-P shape (10,450 classes, 209,000 images, 300 epochs); batch 1024 and cutmix "
            "as SRe2L's IN-1K relabel (LPLD's own IN-21K config uses batch 32, no mix)",
        ),
        Preset("tiny-ipc50", 200, 50, 100, 64, 64, "lpld-tiny", "none", "LPLD Tiny relabel config: batch 64, 100 epochs, 64 px, no mix"),
    ]
}

# Targets of the issue (benchmark, not a test). Bytes in decimal GB/MB, stricter than LPLD's GiB.
BYTES_TARGETS = {
    ("imagenet1k-ipc50", 1.0): 1.0e9,
    ("imagenet1k-ipc50", 1 / 40): 30e6,
    ("imagenet21k-ipc20", 1.0): 5.0e9,
    ("imagenet21k-ipc20", 1 / 40): 130e6,
}
SRE2L_MAX_FILES = 2000  # small batches: a few thousand files are plenty to time torch.load
SEQ_TARGET = 2_000_000
RANDOM_TARGET = 300_000
CODECS = ("fp16", "uint8", "fp32")

ONE_CORE_NOTE = (
    "one core = every thread of the process (reader prefetch, tensorstore pool, torch) pinned to "
    "one CPU with sched_setaffinity; files are in the page cache (just written), so reads measure "
    "decode + assembly, not the disk"
)


# --- the configuration -----------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Config:
    """``ddpipe bench store``'s settings; bad values raise :class:`DDPipeError` naming the field."""

    preset: tuple[str, ...] = option(
        ("all",), metavar="NAME", help=f"preset to run, repeatable, or 'all' (default all): {', '.join(PRESETS)}")
    codec: tuple[str, ...] = option(("fp16", "uint8"), choices=CODECS, help="value codec, repeatable (default fp16 and uint8)")
    keep: tuple[float, ...] = option(
        (1.0, 1 / 40), parse=keep_fraction, help="kept fraction of units, repeatable: 1, 1/40, 40x (default 1 and 1/40)")
    k: int = option(10, help="top-k entries per sample (default 10)")
    epochs: int | None = option(None, help="override the preset's epochs (quick runs, tests)")
    workdir: str | None = option(None, help="where stores are written (default a temp dir under bench/work of the current directory, else /tmp)")
    keep_stores: bool = option(False, help="do not delete the stores after measuring")
    backend: str = option("tensorstore", choices=("tensorstore", "zarr"), help="read backend (default tensorstore)")
    workers: int = option(min(2, os.cpu_count() or 1), help="relabel processes writing disjoint shards (default min(2, cores))")
    core: int = option(0, help="CPU the one-core measurements are pinned to (default 0)")
    repeats: int = option(3, help="timed repeats per read measurement; the median is reported (default 3)")
    seq_samples: int = option(4_000_000, help="samples read per sequential repeat, at most the store (default 4,000,000)")
    random_units: int = option(300, help="random units read per repeat (default 300)")
    sre2l_mb: float = option(
        300.0, help="MB of SRe2L-format batch files written for the baseline, at most 2,000 files (default 300)")
    results_dir: str | None = option(None, help="where the results JSON goes (default bench/results under the current directory)")
    seed: int = option(0, help="seed of the schedule, teacher model and pruning (default 0)")
    side_by_side: bool = option(
        False, help="the content grid instead: the same labels in ddpipe's format 3 and 4 and in LPQLD's, TinyViT's "
                    "and SRe2L's layouts, bytes and random reads side by side (bench/store_layouts.py)")
    max_units: int = option(
        200, help="--side-by-side: units written per cell, the first of its kept plan, held in memory (default 200; "
                  "0 = all); projected_bytes = bytes per sample-epoch x the kept schedule's sample-epochs")
    quick: bool = option(False, help="--side-by-side at a tiny shape (1,000 classes, k 10 and 50; tests)")
    json: bool = option(False, help="print the rows as one JSON object on stdout", cli=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        names = list(dict.fromkeys(self.preset or ("all",)))
        if "all" in names:
            names = list(PRESETS)
        unknown = [n for n in names if n not in PRESETS]
        if unknown:
            raise DDPipeError(f"preset: unknown store preset {unknown[0]!r}; choose from {', '.join(PRESETS)} or all")
        set_(self, "preset", tuple(names))
        for c in self.codec:
            check_choice(DDPipeError, "codec", c, CODECS)
        set_(self, "codec", tuple(dict.fromkeys(self.codec)) or ("fp16", "uint8"))
        keeps = []
        for v in self.keep:
            try:
                keeps.append(keep_fraction(v))
            except ValueError as e:
                raise DDPipeError(f"keep: {e}") from None
        set_(self, "keep", tuple(dict.fromkeys(keeps)) or (1.0, 1 / 40))
        check_int(DDPipeError, "epochs", self.epochs, min=1, allow_none=True)
        check_int(DDPipeError, "k", self.k, min=1, max=min(PRESETS[n].num_classes for n in names))
        check_int(DDPipeError, "max_units", self.max_units, min=0)
        for name in ("workers", "repeats", "seq_samples", "random_units"):
            check_int(DDPipeError, name, getattr(self, name), min=1)
        check_int(DDPipeError, "core", self.core, min=0)
        check_range(DDPipeError, "sre2l_mb", self.sre2l_mb, min=0, min_exclusive=True)
        check_choice(DDPipeError, "backend", self.backend, ("tensorstore", "zarr"))
        check_int(DDPipeError, "seed", self.seed, min=0)

    @property
    def presets(self) -> list[Preset]:
        """The presets to run, with ``epochs`` applied."""
        out = [PRESETS[n] for n in self.preset]
        return [replace(p, epochs=self.epochs) for p in out] if self.epochs is not None else out


# --- relabel: teacher model -> stores ------------------------------------------------------------
def _relabel_shard(task) -> tuple[int, int, float, dict]:
    """Compute a run of whole writer shards with ddpipe's schedule and the teacher model, and write
    them into every store; returns (units, samples, teacher seconds, write seconds per codec).

    Everything is built here, per task (a worker process keeps nothing between tasks)."""
    from .teacher_model import TeacherModel
    from ..labelstore import open_writer

    preset, seed, k, paths, rows = task
    sched = preset.relabel_schedule(seed)
    teacher = TeacherModel(preset.num_classes, preset.ipc, seed)
    writers = {codec: open_writer(p) for codec, p in paths.items()}
    t_teacher, t_write, samples = 0.0, dict.fromkeys(paths, 0.0), 0
    try:
        for e, b in rows:
            t0 = time.perf_counter()
            unit = sched.unit(int(e), int(b))
            unit = replace(unit, topk=teacher.topk(unit, k))
            t_teacher += time.perf_counter() - t0
            samples += unit.count
            for codec, w in writers.items():
                t0 = time.perf_counter()
                w.write(unit)
                t_write[codec] += time.perf_counter() - t0
    finally:
        for w in writers.values():
            w.close()
    return len(rows), samples, t_teacher, t_write


def relabel(preset: Preset, specs: dict, plan, workdir: str, tag: str, config: Config, progress: bool) -> RelabelTiming:
    """Create one store per codec for ``plan`` (None = every unit) and fill it; return timings."""
    from ..labelstore import create_store
    from ..labelstore.spec import parse_plan

    paths = {}
    for codec, spec in specs.items():
        paths[codec] = os.path.join(workdir, f"{preset.name}-{tag}-{codec}.zarr")
        create_store(paths[codec], spec, plan, overwrite=True, provenance={"bench": "store", "labels": "bench.teacher_model"}).close()
    spec0 = next(iter(specs.values()))
    units = parse_plan(spec0, plan)
    # Tasks of whole shards (processes write disjoint shards), about four per worker, so that building
    # the schedule and the teacher model once per task costs little next to the units it computes.
    shards = -(-len(units) // spec0.units_per_shard)
    workers = max(1, min(config.workers, shards))
    step = spec0.units_per_shard * -(-shards // (4 * workers))
    tasks = [(preset, config.seed, config.k, paths, units[s : s + step].tolist()) for s in range(0, len(units), step)]
    t_teacher, t_write, samples = 0.0, dict.fromkeys(paths, 0.0), 0
    bar = progress_bar(total=int(len(units)), desc=f"relabel {preset.name} {tag}", unit="unit", enabled=progress)
    t0 = time.perf_counter()
    if workers == 1:
        results = map(_relabel_shard, tasks)
        pool = None
    else:
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(workers)
        results = pool.imap_unordered(_relabel_shard, tasks)
    try:
        for nu, n, tt, tw in results:
            samples += n
            t_teacher += tt
            for c in tw:
                t_write[c] += tw[c]
            bar.update(nu)
        if pool is not None:
            pool.close()
            pool.join()
    finally:
        if pool is not None:
            pool.terminate()
        bar.close()
    return RelabelTiming(paths=paths, samples=samples, wall_s=time.perf_counter() - t0, teacher_s=t_teacher,
                         write_s=t_write, workers=workers)


@dataclass(frozen=True)
class RelabelTiming:
    """One relabel of a preset into a store per codec: the stores' paths and the seconds spent
    (``to_dict``: the JSON's ``presets.<name>.relabel.<tag>``, the paths left out)."""

    paths: dict  # codec -> store path
    samples: int
    wall_s: float
    teacher_s: float
    write_s: dict  # codec -> writer seconds
    workers: int

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "paths"}


# --- reads ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reads:
    """Samples/s of one store, read sequentially and at random (median over repeats; all repeats kept)."""

    seq: float
    seq_all: list
    seq_cpu: float
    random: float
    random_all: list
    random_cpu: float
    backend: str
    loadavg: float


def measure_reads(path: str, config: Config) -> Reads:
    """Sequential (``iter_units``) and random (``read_unit``) samples/s, whole process on one core."""
    from ..labelstore import open_store

    with common.pinned(config.core):
        reader = open_store(path, backend=config.backend)
        n_units = reader.num_units

        ups = reader.spec.units_per_shard

        def seq() -> tuple[int, float, float]:
            # Whole slabs only (a slab is decoded at once), and the clock stops before the
            # prefetched next slab is drained: every decoded sample is counted, nothing more.
            got = 0
            t0, c0 = time.perf_counter(), time.process_time()
            it = reader.iter_units()
            for u in it:
                got += u.count
                if got >= config.seq_samples and (u.unit + 1) % ups == 0:
                    break
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            it.close()
            return got, dt, dc

        rng = np.random.default_rng(config.seed)

        def rand() -> tuple[int, float, float]:
            picks = rng.integers(0, n_units, config.random_units)
            got = 0
            t0, c0 = time.perf_counter(), time.process_time()
            for u in picks:
                got += reader.read_unit(int(u)).count
            return got, time.perf_counter() - t0, time.process_time() - c0

        rand()  # warm-up: first touch of each shard checks its objects once
        load = os.getloadavg()[0]
        seq_rate, seq_all, seq_cpu = common.median_rates(seq, config.repeats)
        rnd_rate, rnd_all, rnd_cpu = common.median_rates(rand, config.repeats)
        backend = reader.backend
    return Reads(seq=seq_rate, seq_all=seq_all, seq_cpu=seq_cpu, random=rnd_rate, random_all=rnd_all,
                 random_cpu=rnd_cpu, backend=backend, loadavg=load)


# --- SRe2L's layout ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sre2lBaseline:
    """SRe2L's layout for the same units: its files' bytes and ``torch.load`` rate on one core
    (``asdict``: the JSON's ``presets.<name>.sre2l``)."""

    files: int
    samples: int
    bytes: int
    bytes_per_sample_epoch: float
    write_samples_per_s: float | None
    load_samples_per_s: float
    load_cpu_samples_per_s: float
    load_all: list


def sre2l_baseline(preset: Preset, spec, workdir: str, config: Config, progress: bool) -> Sre2lBaseline:
    """Write the first units of the schedule as SRe2L files and time ``torch.load`` of them on one core."""
    import torch

    from .teacher_model import TeacherModel

    sched = preset.relabel_schedule(config.seed)
    teacher = TeacherModel(preset.num_classes, preset.ipc, config.seed)
    file_bytes = preset.batch_size * (2 * preset.num_classes + 25)
    n_files = int(max(2, min(spec.full_units, SRE2L_MAX_FILES, config.sre2l_mb * 1e6 // file_bytes)))
    root = os.path.join(workdir, f"{preset.name}-sre2l")
    files, samples, t_write = [], 0, 0.0
    for i in progress_bar(range(n_files), desc=f"sre2l files {preset.name}", unit="file", enabled=progress):
        e, b = divmod(i, spec.batches_per_epoch)
        su = sched.unit(e, b)
        logits = teacher.dense_logits(su, config.k)
        obj = [
            torch.from_numpy(np.asarray(su.crops, np.float32)),
            torch.from_numpy(su.flips.copy()),
            torch.from_numpy(su.mix_perm.astype(np.int64)) if su.mix_kind != "none" else None,
            float(su.mix_lambda) if su.mix_kind != "none" else None,
            [int(v) for v in su.mix_box] if su.mix_kind != "none" else None,
            torch.from_numpy(logits).half(),
        ]
        d = os.path.join(root, f"epoch_{e}")
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, f"batch_{b}.tar")
        t0 = time.perf_counter()
        torch.save(obj, path)
        t_write += time.perf_counter() - t0
        files.append(path)
        samples += len(su.sample_ids)
    on_disk = sum(os.path.getsize(f) for f in files)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with common.pinned(config.core):

            def load_all() -> tuple[int, float, float]:
                got = 0
                t0, c0 = time.perf_counter(), time.process_time()
                for f in files:
                    got += torch.load(f)[5].shape[0]
                return got, time.perf_counter() - t0, time.process_time() - c0

            load_all()  # warm-up
            rate, rates, cpu_rate = common.median_rates(load_all, config.repeats)
    finally:
        torch.set_num_threads(threads)
        if not config.keep_stores:
            shutil.rmtree(root, ignore_errors=True)
    return Sre2lBaseline(files=n_files, samples=samples, bytes=on_disk, bytes_per_sample_epoch=on_disk / samples,
                         write_samples_per_s=samples / t_write if t_write else None, load_samples_per_s=rate,
                         load_cpu_samples_per_s=cpu_rate, load_all=rates)


# --- one preset -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One (preset, codec, keep) row of the table and of the JSON's ``rows`` (``asdict``, the same keys)."""

    preset: str
    k: int
    codec: str
    keep: float
    units: int
    samples: int
    bytes: int
    sre2l_bytes: int
    ratio: float
    seq_samples_per_s: float
    random_samples_per_s: float
    sre2l_samples_per_s: float
    write_samples_per_s: float | None
    relabel_wall_s: float
    bytes_per_sample_epoch: float
    gib: float
    sre2l_gib: float
    bytes_by_array: dict
    backend: str
    seq_all: list
    random_all: list
    seq_cpu_samples_per_s: float
    random_cpu_samples_per_s: float
    loadavg_1min: float
    epochs: int
    sre2l_cpu_samples_per_s: float
    target_bytes: int | None  # the size target (None: none, or not the full preset shape)
    bytes_ok: bool | None
    seq_ok: bool
    random_ok: bool


def _row(preset: Preset, config: Config, codec: str, keep: float, rel: RelabelTiming, si: dict, reads: Reads,
         sre: Sre2lBaseline) -> Row:
    """The row of one store (``si``: its ``store_info``), with the issue's targets and whether it meets them."""
    t_bytes = None
    if preset.epochs == PRESETS[preset.name].epochs:  # targets apply at the full shape only
        t_bytes = next((limit for (name, k), limit in BYTES_TARGETS.items()
                        if name == preset.name and math.isclose(k, keep)), None)
    wt = rel.write_s[codec]
    return Row(
        preset=preset.name, k=config.k, codec=codec, keep=keep, units=si["units"], samples=rel.samples,
        bytes=si["bytes_on_disk"], sre2l_bytes=si["sre2l_equivalent_bytes"],
        ratio=si["sre2l_equivalent_bytes"] / si["bytes_on_disk"],
        seq_samples_per_s=reads.seq, random_samples_per_s=reads.random, sre2l_samples_per_s=sre.load_samples_per_s,
        write_samples_per_s=rel.samples / wt if wt else None, relabel_wall_s=rel.wall_s,
        bytes_per_sample_epoch=si["bytes_per_sample_epoch"], gib=si["bytes_on_disk"] / 2**30,
        sre2l_gib=si["sre2l_equivalent_bytes"] / 2**30, bytes_by_array=si["bytes_by_array"], backend=reads.backend,
        seq_all=reads.seq_all, random_all=reads.random_all, seq_cpu_samples_per_s=reads.seq_cpu,
        random_cpu_samples_per_s=reads.random_cpu, loadavg_1min=reads.loadavg, epochs=preset.epochs,
        sre2l_cpu_samples_per_s=sre.load_cpu_samples_per_s, target_bytes=t_bytes,
        bytes_ok=None if t_bytes is None else si["bytes_on_disk"] <= t_bytes,
        seq_ok=reads.seq >= SEQ_TARGET, random_ok=reads.random >= RANDOM_TARGET)


def run_preset(preset: Preset, codecs: list[str], keeps: list[float], workdir: str, config: Config, out, progress: bool) -> tuple[list[dict], dict]:
    """Every (codec, keep) store of ``preset`` and SRe2L's files for it: the rows and the preset's info (JSON)."""
    from ..labelstore import plan_units, store_info
    from ..labelstore.prune import pruned_spec

    base = preset.relabel_schedule(config.seed).store_spec(
        preset.num_classes, config.k, value_codec=codecs[0], temperature=1.0, teacher_hash="bench.teacher_model",
    )
    relabels, measured = {}, []  # tag -> RelabelTiming; (codec, keep, relabel, store_info, reads) per store
    for keep in keeps:
        tag = "full" if keep == 1.0 else f"keep{keep:.4g}"
        if keep == 1.0:
            plan, specs = None, {c: base.replace(value_codec=c) for c in codecs}
        else:  # planned before relabel: the teacher only computes kept units
            plan = plan_units(base, keep, "batch", config.seed)
            specs = {c: pruned_spec(base.replace(value_codec=c), keep, "batch", config.seed) for c in codecs}
        rel = relabels[tag] = relabel(preset, specs, plan, workdir, tag, config, progress)
        print(
            f"[{preset.name} keep={keep:.4g}] relabel wrote {rel.samples:,} sample-epochs into {len(codecs)} store(s) "
            f"in {rel.wall_s:.1f} s wall ({rel.workers} process(es); teacher model {rel.teacher_s:.1f} s, "
            + ", ".join(f"{c} writer {t:.1f} s" for c, t in rel.write_s.items()) + ")",
            file=out, flush=True,
        )
        for codec, path in rel.paths.items():
            measured.append((codec, keep, rel, store_info(path), measure_reads(path, config)))
            if not config.keep_stores:
                shutil.rmtree(path, ignore_errors=True)
    sre = sre2l_baseline(preset, base, workdir, config, progress)
    rows = [asdict(_row(preset, config, codec, keep, rel, si, reads, sre)) for codec, keep, rel, si, reads in measured]
    info = {
        "preset": asdict(preset), "num_samples": preset.num_samples, "full_units": base.full_units,
        "batches_per_epoch": base.batches_per_epoch, "sample_epochs": preset.num_samples * preset.epochs,
        "relabel": {tag: rel.to_dict() for tag, rel in relabels.items()}, "sre2l": asdict(sre),
    }
    return rows, info


COLUMNS = [
    ("preset", "preset", ""),
    ("codec", "codec", ""),
    ("keep", "keep", ".4g"),
    ("units", "units", ",d"),
    ("bytes", "bytes", ",d"),
    ("sre2l_bytes", "sre2l_bytes", ",d"),
    ("ratio", "ratio", ".1f"),
    ("bytes_per_sample_epoch", "B/sample-ep", ".1f"),
    ("bytes_ok", "size ok", ""),
    ("seq_samples_per_s", "seq/s", ",.0f"),
    ("random_samples_per_s", "random/s", ",.0f"),
    ("sre2l_samples_per_s", "sre2l load/s", ",.0f"),
    ("seq_cpu_samples_per_s", "seq/cpu-s", ",.0f"),
    ("random_cpu_samples_per_s", "random/cpu-s", ",.0f"),
    ("write_samples_per_s", "write/s", ",.0f"),
    ("seq_ok", "seq ok", ""),
    ("random_ok", "rand ok", ""),
]


def _workdir(config: Config) -> tuple[str, bool]:
    if config.workdir:
        os.makedirs(config.workdir, exist_ok=True)
        return tempfile.mkdtemp(prefix="store-", dir=config.workdir), True
    for parent in (common.work_dir(), None):
        try:
            if parent:
                os.makedirs(parent, exist_ok=True)
            return tempfile.mkdtemp(prefix="store-", dir=parent), True
        except OSError:
            continue
    raise DDPipeError("cannot create a work directory for the stores; pass --workdir")


def _payload(rows: list, infos: dict, t_start: float, config: Config, complete: bool) -> dict:
    from .teacher_model import MODEL_NOTE

    return {
        "benchmark": "store",
        "complete": complete,
        "labels": MODEL_NOTE,
        "one_core": ONE_CORE_NOTE,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "elapsed_s": time.time() - t_start,
        "machine": common.machine_info(),
        "args": config_to_dict(config),
        "targets": {
            "bytes": {f"{n} keep={k:.4g}": v for (n, k), v in BYTES_TARGETS.items()},
            "seq_samples_per_s": SEQ_TARGET,
            "random_samples_per_s": RANDOM_TARGET,
        },
        "presets": infos,
        "rows": rows,
    }


QUICK_PRESET = Preset("quick-1k", 1000, 1, 2, 250, 32, "sre2l", "cutmix", "tiny side-by-side shape for tests")


def side_by_side_cells(config: Config) -> list:
    """The content grid (``store_layouts.SIDE_GRID`` x ``SIDE_KEEPS``), or ``--quick``'s tiny one."""
    from .store_layouts import SIDE_GRID, SIDE_KEEPS, Cell

    if config.quick:
        return [Cell(QUICK_PRESET, k, keep) for k in (10, 50) for keep in (1.0, 0.5)]
    grid = [(PRESETS[n], k) for n, k in SIDE_GRID]
    if config.epochs is not None:
        grid = [(replace(p, epochs=config.epochs), k) for p, k in grid]
    return [Cell(p, k, keep) for p, k in grid for keep in SIDE_KEEPS]


def run_side_by_side(config: Config) -> int:
    """``--side-by-side``: every cell's rows (``store_layouts.run_cell``), the table and the results JSON."""
    import json

    from .store_layouts import SIDE_COLUMNS, run_cell
    from .teacher_model import MODEL_NOTE

    out = common.table_stream(config.json)
    workdir, _ = _workdir(config)
    rows, t_start = [], time.time()
    try:
        for cell in side_by_side_cells(config):
            say(True, f"side-by-side: {cell.preset.name} k={cell.k} keep={cell.keep:.4g}")
            rows += run_cell(cell, workdir, config, config.max_units)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(common.format_table(rows, SIDE_COLUMNS), file=out)
    payload = {**_payload(rows, {}, t_start, config, True), "benchmark": "store-side-by-side", "labels": MODEL_NOTE}
    path = common.write_results("store-side-by-side", payload, config.results_dir)
    print(f"wrote {path}", file=out)
    if config.json:
        sys.stdout.write(json.dumps(payload, default=common.json_default) + "\n")
    return 0


def run(config: Config) -> int:
    """Run the presets of ``config``: print the table, write the results JSON; returns 0."""
    import json

    if config.side_by_side or config.quick:
        return run_side_by_side(config)

    from .teacher_model import MODEL_NOTE

    presets, codecs, keeps = config.presets, list(config.codec), list(config.keep)
    out = common.table_stream(config.json)
    progress = sys.stderr.isatty()
    workdir, _ = _workdir(config)
    print(f"ddpipe bench store: {MODEL_NOTE}", file=out)
    print(f"  work dir {workdir} ({common.human_bytes(common.disk_free_bytes(workdir))} free)", file=out, flush=True)
    rows, infos = [], {}
    t_start = time.time()
    try:
        for p in presets:
            r, info = run_preset(p, codecs, keeps, workdir, config, out, progress)
            rows += r
            infos[p.name] = info
            print(
                f"[{p.name}] SRe2L layout: {info['sre2l']['files']} batch files, "
                f"{info['sre2l']['bytes_per_sample_epoch']:.0f} B/sample-epoch on disk, torch.load "
                f"{info['sre2l']['load_samples_per_s']:,.0f} samples/s on one core",
                file=out,
            )
            print(common.format_table(r, COLUMNS), file=out, flush=True)
    except BaseException:
        if rows:  # keep what was measured before the failure or interrupt
            path = common.write_results("store-partial", _payload(rows, infos, t_start, config, False), config.results_dir)
            say(True, f"wrote the rows measured so far to {path}")
        raise
    finally:
        if not config.keep_stores:
            shutil.rmtree(workdir, ignore_errors=True)
    presets_table = [
        {"preset": p.name, "classes": p.num_classes, "images": p.num_samples, "epochs": p.epochs, "batch": p.batch_size,
         "mix": p.mix, "source": p.source}
        for p in presets
    ]
    print("\npresets:", file=out)
    print(common.format_table(presets_table, [(c, c, ",d" if c == "images" else "") for c in presets_table[0]]), file=out)
    print("\nresults:", file=out)
    print(common.format_table(rows, COLUMNS), file=out)
    print(
        f"\nnote: {MODEL_NOTE}.\nnote: {ONE_CORE_NOTE}.\nnote: sre2l_bytes = SRe2L's per-batch full fp16 logits "
        "for the same units (for keep < 1 that is LPLD's pruned label size); ratio = sre2l_bytes / bytes. "
        "write/s = store-side write rate per writer (teacher model excluded). seq/s, random/s, sre2l load/s are "
        "wall-clock rates; /cpu-s columns divide by the process's CPU time instead, which stays meaningful when "
        "other processes share the core (loadavg is recorded per row). Byte targets apply at the full preset shape only.",
        file=out,
    )
    payload = _payload(rows, infos, t_start, config, True)
    path = common.write_results("store", payload, config.results_dir)
    print(f"wrote {path}", file=out)
    if config.json:
        sys.stdout.write(json.dumps(payload, default=common.json_default) + "\n")
    return 0
