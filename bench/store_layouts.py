"""``ddpipe bench store --side-by-side``: the same labels and crop records in ddpipe's store and in
each anchor's own layout, at equal content, read back: bytes and random-access read rate.

For each cell of the content grid (classes, top-k ``k``, kept fraction of the units) the units of
ddpipe's relabel schedule get the teacher model's top-k (:mod:`ddpipe.bench.teacher_model`), and are
written as:

- ``ddpipe``: a label store, format 3 (``fp16``, today's default) and format 4 (bit-packed indices,
  crops as whole source pixels, and the value codecs of ``DDPIPE_CODECS``: ``fp16``, the lossless
  ``fp16-logits`` (value_kind logits: top-k fp16 logits kept bit for bit, their row's log-sum-exp)
  and the quantised ``abs512``/``abs512d`` (every probability within 1/512)); ``fields`` ``stored``
  keeps the sample order, crops, flips and mix, ``derived`` (``derived_fields``) only their digest per
  unit, the reader recomputing them from the schedule (its random reads include that work); ``indices``
  ``packed`` (bit-packed, probability order) or ``gaps`` (class-sorted gaps, read back in class order);
- ``lpqld``: one ``torch.save`` file per batch holding the crop coordinates (fp16), flips, the mix
  permutation (uint8), lambda and box, the top-k logits (fp16) and indices (int16), plus one JSON file
  of each batch's sample ids (its ``generate_soft_label_pruning_batch.py`` with label quantisation);
- ``tinyvit``: TinyViT's ``save_logits`` record per sample-epoch, fixed size: a 4-byte augmentation
  seed, ``k`` int16 indices and ``k`` fp16 values, one file per epoch in sample-id order;
- ``sre2l``: one ``torch.save`` file per batch with full fp16 logits (the teacher model's dense
  logits, whose top-k are the same classes), crops (float32), flips, mix index, lambda and box.

``max_prob_error``: the largest ``|decoded - exact|`` over the stored top-k probabilities (for
``sre2l``: softmax of the fp16 logits against softmax of the float32 ones, at the top-k classes).
``random_samples_per_s``: random batch reads (ddpipe: ``read_unit``; lpqld, sre2l: ``torch.load`` of
a batch file; tinyvit: one record per read, its natural access), one core, page cache warm.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, replace

import numpy as np

from . import common

SIDE_KEEPS = (1.0, 0.1, 0.025)
SIDE_GRID = (("imagenet1k-ipc50", 10), ("imagenet1k-ipc50", 50), ("imagenet1k-ipc50", 100),
             ("imagenet21k-ipc20", 100), ("imagenet21k-ipc20", 200))
DDPIPE_CODECS = ((3, "fp16", False, "packed"), (4, "fp16", False, "packed"), (4, "fp16-logits", False, "packed"),
                 (4, "abs512", False, "packed"), (4, "abs512d", False, "packed"), (4, "fp16-logits", True, "packed"),
                 (4, "abs512", True, "packed"), (4, "abs512d", True, "packed"), (4, "fp16-logits", True, "gaps"),
                 (4, "abs512", True, "gaps"))
"""(format, codec, derived_fields, index_coding) of the ddpipe stores of each cell; ``fp16-logits`` is codec fp16
with value_kind logits; ``derived_fields``: the schedule fields are recomputed from the schedule (only their digest
is stored); ``index_coding`` ``gaps``: class-sorted gaps instead of bit-packed indices (docs/format.md §3.1)."""


@dataclass(frozen=True)
class Cell:
    preset: object  # bench.store.Preset
    k: int
    keep: float


def _labelled_units(cell: Cell, plan: np.ndarray, seed: int):
    """The cell's units of ddpipe's schedule with the teacher model's top-k (probabilities)."""
    from .teacher_model import TeacherModel

    sched = cell.preset.relabel_schedule(seed)
    teacher = TeacherModel(cell.preset.num_classes, cell.preset.ipc, seed)
    out = []
    for e, b in plan:
        u = sched.unit(int(e), int(b))
        out.append(replace(u, topk=teacher.topk(u, cell.k)))
    return sched, teacher, out


def _dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _d, fs in os.walk(path) for f in fs)


def _rate(fn, repeats: int, core: int) -> float:
    with common.pinned(core):
        fn()  # warm-up
        rate, _all, _cpu = common.median_rates(fn, repeats)
    return rate


def _timed_reads(read_one, picks) -> callable:
    def go():
        got = 0
        t0, c0 = time.perf_counter(), time.process_time()
        for p in picks:
            got += read_one(p)
        return got, time.perf_counter() - t0, time.process_time() - c0

    return go


# --- ddpipe ---------------------------------------------------------------------------------------
def write_ddpipe(path: str, spec, plan, units, logits: bool) -> None:
    from ..labelstore import create_store

    with create_store(path, spec, plan, overwrite=True, provenance={"bench": "store side-by-side"}) as w:
        for u in units:
            if logits:  # log-probabilities are logits whose full row has log-sum-exp 0 at T = 1
                idx, p = u.topk
                z = np.log(np.maximum(p, np.float32(1e-30))).astype(np.float16).astype(np.float32)
                u = replace(u, topk=None, topk_logits=(idx, z), lse=np.zeros(len(idx)))
            w.write(u)


def ddpipe_rows(cell: Cell, base_spec, sched, plan, units, workdir: str, config) -> list[dict]:
    from ..labelstore import open_store
    from ..labelstore.packing import class_order

    rows = []
    for fmt, name, derived, coding in DDPIPE_CODECS:
        logits = name == "fp16-logits"
        kw = {"value_codec": "fp16" if logits else name, "format_version": fmt}
        if coding != "packed":
            kw["index_coding"] = coding
        if logits:
            kw["value_kind"] = "logits"
        if derived:
            kw["derived_fields"] = True
        elif fmt >= 4:
            kw["crop_grid"] = cell.preset.image_size
        spec = base_spec.replace(**kw)
        path = os.path.join(workdir, f"ddpipe-f{fmt}-{name}{'-derived' if derived else ''}-{coding}.zarr")
        write_ddpipe(path, spec, plan, units, logits)
        reader = open_store(path, backend=config.backend, fields=sched.unit if derived else None)
        err = 0.0
        for u, got in zip(units, reader.iter_units(prefetch=False)):
            want_idx, want_val = u.topk if coding == "packed" else class_order(*u.topk)  # gaps: class order
            assert np.array_equal(got.topk[0], want_idx), "ddpipe store returned other classes"
            err = max(err, float(np.abs(got.topk[1] - want_val).max()))
        rng = np.random.default_rng(config.seed)
        picks = rng.integers(0, reader.num_units, config.random_units)
        rate = _rate(_timed_reads(lambda i: reader.read_unit(int(i)).count, picks), config.repeats, config.core)
        from ..labelstore import store_info

        rows.append(_row(cell, "ddpipe", name, fmt, units, store_info(path)["bytes_on_disk"], err, rate,
                         "derived" if derived else "stored", coding))
        if not config.keep_stores:
            shutil.rmtree(path, ignore_errors=True)
    return rows


# --- the anchors' layouts -------------------------------------------------------------------------------
def lpqld_row(cell: Cell, units, workdir: str, config) -> dict:
    """LPQLD's ``generate_soft_label_pruning_batch.py`` with ``--label_quantization``: one flat folder of
    ``batch_<counter>.tar`` files, each ``torch.save([coords fp16, flip bool, mix_index uint8, lam,
    [bbox uint8 x4], top-k logits fp16, indices int16])``, and ``sampler_indices_batch.json`` mapping each
    batch counter to its sample ids. The logits here are ``log p`` (the row's log-sum-exp is 0)."""
    import torch

    root = os.path.join(workdir, "lpqld")
    os.makedirs(root, exist_ok=True)
    files, sampler, err = [], {}, 0.0
    for counter, u in enumerate(units):
        idx, p = u.topk
        mixed = u.mix_kind != "none"
        z = torch.from_numpy(np.log(np.maximum(p, np.float32(1e-30)))).half()
        obj = [
            torch.from_numpy(np.asarray(u.crops, np.float32)).half(),
            torch.from_numpy(np.asarray(u.flips, bool).copy()),
            torch.from_numpy(np.asarray(u.mix_perm, np.int64)).to(torch.uint8) if mixed else None,
            float(u.mix_lambda) if mixed else None,
            [torch.tensor(int(v), dtype=torch.uint8) for v in np.minimum(u.mix_box, 255)] if mixed else None,
            z,
            torch.from_numpy(idx.astype(np.int16)),
        ]
        path = os.path.join(root, f"batch_{counter}.tar")
        torch.save(obj, path)
        files.append(path)
        sampler[str(counter)] = np.asarray(u.sample_ids, np.int64).tolist()
        err = max(err, float(np.abs(np.exp(z.float().numpy().astype(np.float64)) - p).max()))
    with open(os.path.join(root, "sampler_indices_batch.json"), "w") as f:
        json.dump(sampler, f)
    picks = np.random.default_rng(config.seed).integers(0, len(files), config.random_units)
    rate = _rate(_timed_reads(lambda i: torch.load(files[i])[6].shape[0], picks), config.repeats, config.core)
    row = _row(cell, "lpqld", "fp16 logits+int16", None, units, _dir_bytes(root), err, rate)
    shutil.rmtree(root, ignore_errors=True)
    return row


def tinyvit_row(cell: Cell, units, workdir: str, config) -> dict:
    k = cell.k
    rec = np.dtype([("seed", "<u4"), ("index", "<i2", (k,)), ("value", "<f2", (k,))])
    root = os.path.join(workdir, "tinyvit")
    os.makedirs(root, exist_ok=True)
    n = cell.preset.num_samples
    epochs: dict[int, np.ndarray] = {}
    err = 0.0
    for u in units:  # records in sample-id order, one file per epoch
        arr = epochs.setdefault(int(u.epoch), np.zeros(n, rec))
        idx, p = u.topk
        ids = np.asarray(u.sample_ids, np.int64)
        arr["seed"][ids] = np.random.default_rng([config.seed, u.epoch, u.batch]).integers(0, 2**32, len(ids), dtype=np.uint32)
        arr["index"][ids] = idx.astype(np.int16)
        arr["value"][ids] = p.astype(np.float16)
        err = max(err, float(np.abs(p.astype(np.float16).astype(np.float32) - p).max()))
    paths = {}
    for e, arr in epochs.items():
        # only the sample-epochs the kept units hold: a pruned run keeps the records of its kept batches
        ids = np.concatenate([np.asarray(u.sample_ids, np.int64) for u in units if u.epoch == e])
        paths[e] = os.path.join(root, f"logits_epoch{e}.bin")
        arr[np.sort(ids)].tofile(paths[e])
    fds = {e: os.open(p, os.O_RDONLY) for e, p in paths.items()}
    sizes = {e: os.path.getsize(p) // rec.itemsize for e, p in paths.items()}
    rng = np.random.default_rng(config.seed)
    es = list(fds)
    picks = [(es[int(rng.integers(len(es)))], None) for _ in range(config.random_units * 64)]
    picks = [(e, int(rng.integers(sizes[e]))) for e, _ in picks]

    def read_one(pick) -> int:
        e, i = pick
        r = np.frombuffer(os.pread(fds[e], rec.itemsize, i * rec.itemsize), rec)
        return len(r)

    try:
        rate = _rate(_timed_reads(read_one, picks), config.repeats, config.core)
    finally:
        for fd in fds.values():
            os.close(fd)
    row = _row(cell, "tinyvit", "seed+int16+fp16", None, units, _dir_bytes(root), err, rate)
    shutil.rmtree(root, ignore_errors=True)
    return row


def sre2l_row(cell: Cell, teacher, units, workdir: str, config) -> dict:
    import torch

    from ..labelstore.topk import softmax_at

    root = os.path.join(workdir, "sre2l")
    per_file = cell.preset.batch_size * (2 * cell.preset.num_classes + 25)
    n_files = int(max(1, min(len(units), config.sre2l_mb * 1e6 // per_file)))
    files, err = [], 0.0
    for u in units[:n_files]:
        d = os.path.join(root, f"epoch_{u.epoch}")
        os.makedirs(d, exist_ok=True)
        z = teacher.dense_logits(u, cell.k)
        mixed = u.mix_kind != "none"
        obj = [
            torch.from_numpy(np.asarray(u.crops, np.float32)),
            torch.from_numpy(np.asarray(u.flips, bool).copy()),
            torch.from_numpy(np.asarray(u.mix_perm, np.int64)) if mixed else None,
            float(u.mix_lambda) if mixed else None,
            [int(v) for v in u.mix_box] if mixed else None,
            torch.from_numpy(z).half(),
        ]
        path = os.path.join(d, f"batch_{u.batch}.tar")
        torch.save(obj, path)
        files.append(path)
        exact = softmax_at(z, 1.0)
        got = softmax_at(z.astype(np.float16).astype(np.float32), 1.0)
        top = np.argsort(-exact, axis=1, kind="stable")[:, : cell.k]
        err = max(err, float(np.abs(np.take_along_axis(got - exact, top, axis=1)).max()))
    picks = np.random.default_rng(config.seed).integers(0, len(files), max(1, min(config.random_units, 4 * len(files))))
    rate = _rate(_timed_reads(lambda i: torch.load(files[i])[5].shape[0], picks), config.repeats, config.core)
    written = units[:n_files]
    row = _row(cell, "sre2l", "fp16 logits", None, written, _dir_bytes(root), err, rate)
    shutil.rmtree(root, ignore_errors=True)
    return row


# --- one cell, the grid --------------------------------------------------------------------------------
def _row(cell: Cell, layout: str, codec: str, fmt, units, nbytes: int, err: float, rate: float,
         fields: str = "stored", index_coding: str = "") -> dict:
    samples = int(sum(u.count for u in units))
    kept = cell.keep * cell.preset.num_samples * cell.preset.epochs
    per = nbytes / samples
    return {
        "preset": cell.preset.name, "num_classes": cell.preset.num_classes, "k": cell.k, "keep": cell.keep,
        "layout": layout, "codec": codec, "format": fmt, "fields": fields, "index_coding": index_coding,
        "units": len(units), "samples": samples,
        "bytes": int(nbytes), "bytes_per_sample_epoch": per, "projected_bytes": per * kept,
        "max_prob_error": err, "random_samples_per_s": rate,
    }


def run_cell(cell: Cell, workdir: str, config, max_units: int) -> list[dict]:
    """Every layout's row of one cell; ``ratio_vs_lpqld`` = bytes per sample-epoch / LPQLD's."""
    from ..labelstore import plan_units

    base = cell.preset.relabel_schedule(config.seed).store_spec(
        cell.preset.num_classes, cell.k, value_codec="fp16", temperature=1.0, teacher_hash="bench.teacher_model")
    plan = plan_units(base, cell.keep, "batch", config.seed) if cell.keep < 1 else None
    from ..labelstore.spec import parse_plan

    plan = parse_plan(base, plan)[:max_units] if max_units else parse_plan(base, plan)
    sched, teacher, units = _labelled_units(cell, plan, config.seed)
    d = os.path.join(workdir, f"{cell.preset.name}-k{cell.k}-keep{cell.keep:.4g}")
    os.makedirs(d, exist_ok=True)
    try:
        rows = ddpipe_rows(cell, base, sched, plan, units, d, config)
        rows.append(lpqld_row(cell, units, d, config))
        rows.append(tinyvit_row(cell, units, d, config))
        rows.append(sre2l_row(cell, teacher, units, d, config))
    finally:
        shutil.rmtree(d, ignore_errors=True)
    lpqld = next(r["bytes_per_sample_epoch"] for r in rows if r["layout"] == "lpqld")
    for r in rows:
        r["ratio_vs_lpqld"] = r["bytes_per_sample_epoch"] / lpqld
    return rows


SIDE_COLUMNS = [
    ("preset", "preset", ""), ("k", "k", ""), ("keep", "keep", ".4g"), ("layout", "layout", ""),
    ("codec", "codec", ""), ("format", "fmt", ""), ("fields", "fields", ""), ("index_coding", "indices", ""), ("units", "units", ",d"), ("bytes", "bytes", ",d"),
    ("bytes_per_sample_epoch", "B/sample-ep", ".1f"), ("ratio_vs_lpqld", "vs lpqld", ".3f"),
    ("max_prob_error", "max prob err", ".2e"), ("random_samples_per_s", "random/s", ",.0f"),
]
