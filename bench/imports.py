"""``ddpipe bench import``: importing an SRe2L label folder into ddpipe stores (bytes and speed).

It writes an SRe2L folder the way SRe2L's relabel lays it out (``epoch_<e>/batch_<b>.tar`` lists of
``[coords, flips, mix_index, lam, numpy int64 box, fp16 logits]``, batches in ``RandomSampler``
order with seed 42), with crops, flips and CutMix from ddpipe's ``sre2l-torch`` schedule and logits
from the seeded teacher-logit model (:mod:`ddpipe.bench.teacher_model`; no real teacher here), then
imports it with ``ddpipe import`` losslessly (every fp16 logit, k = C) and at k = 10 (logits, and
probabilities at T = 20), one row each: ``{source, source_bytes, store_bytes, ratio, seconds,
samples_per_s}``. Import time includes reading and unpickling every file (one core's worth of
``torch.load``), the sampler replay and writing the store.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from . import common
from ddpipe._progress import say
from ddpipe.config import check_int, config_to_dict, option
from ddpipe.errors import DDPipeError

DESCRIPTION = "Import an SRe2L label folder (teacher-logit model) into ddpipe stores: bytes, ratio and samples/s."


@dataclass(frozen=True)
class Preset:
    name: str
    num_classes: int
    ipc: int
    epochs: int
    batch_size: int

    @property
    def num_samples(self) -> int:
        return self.num_classes * self.ipc


PRESETS = {
    # default: about a minute on 2 cores (10 epochs of 10 batches of 1024 at 1,000 classes, 205 MB of files)
    "quick": Preset("quick", 1000, 10, 10, 1024),
    # SRe2L's released IN-1K IPC50 shape (relabel.sh: batch 1024, 1,000 classes), 20 of its 300 epochs
    "imagenet1k-ipc50": Preset("imagenet1k-ipc50", 1000, 50, 20, 1024),
}

VARIANTS = (
    # (row name, import options)
    ("lossless logits (k=C, fp16)", dict(values="logits", value_codec="fp16")),
    ("top-10 logits (fp16)", dict(values="logits", value_codec="fp16", k=10)),
    ("top-10 probs T=20 (fp16)", dict(values="probs", value_codec="fp16", k=10, temperature=20.0)),
)


@dataclass(frozen=True, kw_only=True)
class Config:
    """``ddpipe bench import``'s settings."""

    preset: str = option("quick", choices=tuple(PRESETS), help="folder shape: quick (default, ~1 min) or imagenet1k-ipc50")
    epochs: int | None = option(None, help="override the preset's epochs")
    workdir: str | None = option(None, help="where the folder and stores are written (default a temp dir)")
    keep_files: bool = option(False, help="do not delete the folder and stores")
    results_dir: str | None = option(None, help="where the results JSON goes (default bench/results under the current directory)")
    seed: int = option(0, help="seed of the teacher-logit model (default 0)")
    json: bool = option(False, help="print the rows as one JSON object on stdout", cli=False)

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise DDPipeError(f"preset: unknown import preset {self.preset!r}; choose from {', '.join(PRESETS)}")
        check_int(DDPipeError, "epochs", self.epochs, min=1, allow_none=True)
        check_int(DDPipeError, "seed", self.seed, min=0)


def write_sre2l_folder(root: str, preset: Preset, seed: int) -> tuple[int, float]:
    """An SRe2L-layout folder for ``preset`` (see the module docstring); returns (bytes, seconds)."""
    import torch

    from .teacher_model import TeacherModel, square_schedule

    t0 = time.perf_counter()
    sched = square_schedule(preset.num_samples, 224, preset.batch_size, preset.epochs, 42, "sre2l-torch",
                            output_size=(224, 224))
    teacher = TeacherModel(preset.num_classes, preset.ipc, seed)
    total = 0
    for e in range(preset.epochs):
        d = os.path.join(root, f"epoch_{e}")
        os.makedirs(d, exist_ok=True)
        for b in range(sched.batches_per_epoch):
            u = sched.unit(e, b)
            logits = teacher.dense_logits(u, 10)
            # SRe2L: bbx1..bby2 with images[:, :, bbx1:bbx2, bby1:bby2] = ddpipe's (y0, x0, y1, x1)
            record = [torch.from_numpy(u.crops.astype(np.float32)), torch.from_numpy(u.flips.astype(bool)),
                      torch.from_numpy(u.mix_perm.astype(np.int64)), float(u.mix_lambda),
                      [np.int64(v) for v in u.mix_box], torch.from_numpy(logits).half()]
            path = os.path.join(d, f"batch_{b}.tar")
            torch.save(record, path)
            total += os.path.getsize(path)
    return total, time.perf_counter() - t0


def run(config: Config) -> int:
    from ..pipeline.interop import ImportConfig, run_import

    preset = PRESETS[config.preset]
    if config.epochs is not None:
        preset = Preset(preset.name, preset.num_classes, preset.ipc, config.epochs, preset.batch_size)
    out = common.table_stream(config.json)
    base = config.workdir or tempfile.gettempdir()
    os.makedirs(base, exist_ok=True)
    work = tempfile.mkdtemp(prefix="ddpipe-bench-import-", dir=base)
    rows = []
    try:
        folder = os.path.join(work, "sre2l")
        say(True, f"writing an SRe2L folder: {preset.num_samples} images, {preset.num_classes} classes, "
                  f"batch {preset.batch_size}, {preset.epochs} epochs ...")
        src_bytes, write_s = write_sre2l_folder(folder, preset, config.seed)
        for name, opts in VARIANTS:
            store = os.path.join(work, f"{len(rows)}.zarr")
            res = run_import(ImportConfig(format="sre2l", src=folder, num_samples=preset.num_samples, out=store,
                                          progress=not config.json, **opts))
            rows.append({
                "source": f"sre2l {preset.name}", "store": name, "source_bytes": res.source_bytes,
                "store_bytes": res.store_bytes, "ratio": res.ratio, "seconds": res.seconds,
                "samples_per_s": res.samples_per_s, "samples": res.samples, "lossy": res.lossy,
            })
            if not config.keep_files:
                shutil.rmtree(store, ignore_errors=True)
    finally:
        if not config.keep_files:
            shutil.rmtree(work, ignore_errors=True)
    cols = [("store", "store", "s"), ("source_bytes", "source B", ",d"), ("store_bytes", "store B", ",d"),
            ("ratio", "ratio", ".1f"), ("seconds", "s", ".1f"), ("samples_per_s", "samples/s", ",.0f")]
    print(common.format_table(rows, cols), file=out)
    payload = {
        "benchmark": "import", "config": config_to_dict(config), "preset": preset.__dict__,
        "folder_write_seconds": write_s, "machine": common.machine_info(), "rows": rows,
        "note": "labels from bench/teacher_model.py (a seeded model of teacher logits), not a real teacher; "
                "the folder follows SRe2L's relabel layout (written here, not by SRe2L's script)",
    }
    path = common.write_results("import", payload, config.results_dir)
    print(f"results: {path}", file=out)
    if config.json:
        import json

        sys.stdout.write(json.dumps(payload, default=common.json_default) + "\n")
    return 0
