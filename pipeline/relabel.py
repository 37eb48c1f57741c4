"""The relabel step: generate the schedule, show the teacher exactly what the student will see,
write the teacher's soft labels and the schedule into a store.

This module is the one owner of relabel's spec (:func:`relabel_spec`: the schedule and the store
spec recording it, pruned at generation with ``keep``), its prune plan, the store's creation and the
rank logic (rank 0 creates, the other ranks join, each rank writes its own writer shards). A run is
two calls::

    schedule, spec = relabel_spec(source, "sre2l", epochs=300, batch_size=1024, num_classes=1000, k=10)
    relabel("labels.zarr", source, teacher, schedule, spec)

:func:`relabel` takes what the store will hold as that spec (and the schedule it records) and only
*how* to run as arguments (a ``plan``, the loader, ranks, progress, ``resume``, provenance). It is
what ``ddpipe relabel`` (:mod:`ddpipe.evaluate.relabel`, which only loads the teachers) calls, once;
it depends on nothing above ``ddpipe.pipeline``. Resuming is creating the same store again
(``resume=True``): committed shards are skipped, the rest is recomputed (the schedule is a pure
function of the seed, so bytes come out identical). A pruned spec (``keep``), or a ``plan`` of kept
units, makes a pruned store without running the teacher on the units that would be thrown away
(LPLD's pruning at generation).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from typing import Callable

import numpy as np

from ddpipe._progress import progress_bar
from ..labelstore import (FORMAT_VERSION, StoreError, StoreExistsError, StoreSpec, create_store, open_store, open_writer,
                          plan_units)
from ..labelstore.plan import pruned_spec
from .errors import LoaderSpecError
from .loader import LoaderConfig, make_relabel_loader
from .schedule import Schedule, ScheduleConfig, recipe
from .sources import ImageSource, open_source


def relabel_spec(
    source: ImageSource | str | os.PathLike,
    schedule: ScheduleConfig | str,
    *,
    epochs: int,
    batch_size: int,
    num_classes: int,
    k: int,
    seed: int = 0,
    value_codec: str = "fp16",
    temperature: float = 1.0,
    teacher_hash: str = "",
    units_per_shard: int = 0,
    value_kind: str = "probs",
    keep: float | None = None,
    granularity: str = "batch",
    prune_seed: int = 0,
    format_version: int = FORMAT_VERSION,
    derived_fields: bool = False,
    index_coding: str = "packed",
) -> tuple[Schedule, StoreSpec]:
    """The schedule over ``source`` and the store spec recording it (with the source's content hash):
    what :func:`relabel` takes.

    ``value_kind="logits"`` keeps the teacher's top-k logits and each row's log-sum-exp instead of
    probabilities at ``temperature``, so training may choose its own temperature (docs/format.md).
    ``keep`` prunes at generation: the spec of a store holding that fraction of the schedule's units,
    drawn with :func:`ddpipe.labelstore.plan_units` (``granularity``, ``prune_seed``); :func:`relabel`
    then computes only those. ``derived_fields`` (format 4): the store keeps a digest of each unit's
    sample order, crops, flips and mix instead of the fields, which readers recompute from the schedule;
    ``index_coding="gaps"`` (format 4) stores each sample's top-k as class-sorted gaps (docs/format.md §3.1).
    """
    source = open_source(source)
    cfg = recipe(schedule) if isinstance(schedule, str) else schedule
    if not isinstance(cfg, ScheduleConfig):
        raise LoaderSpecError(f"schedule must be a ScheduleConfig or a recipe name, got {type(schedule).__name__}")
    sched = Schedule(cfg, seed, source.sizes, batch_size, epochs)
    spec = sched.store_spec(
        num_classes, k, value_codec=value_codec, temperature=temperature, image_set_hash=source.content_hash(),
        teacher_hash=teacher_hash, units_per_shard=units_per_shard, format_version=format_version,
        **({"value_kind": value_kind} if value_kind != "probs" else {}),  # probs: the spec's default, unrecorded
        **({"derived_fields": True} if derived_fields else {}),
        **({"index_coding": index_coding} if index_coding != "packed" else {}),
    )
    if keep is not None:
        spec = pruned_spec(spec, keep, granularity, prune_seed)
    return sched, spec


def _logits(teacher: Callable, images, teacher_input: str) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = teacher(images.numpy() if teacher_input == "numpy" else images)
    if isinstance(out, torch.Tensor):
        out = out.detach().float().cpu().numpy()
    return np.asarray(out, dtype=np.float32)


# --- teacher logits to stored top-k probabilities -----------------------------------------------------
_FAST_MIN_CLASSES = 256  # below this the full-row reference (labelstore's softmax_at + top_k) is as fast
_CANDIDATE_MARGIN = 16  # candidates per row beyond k: the k-th value must clear the last candidate
_ROWS = 64  # rows per chunk: the float64 buffer stays in cache and is reused (no page faults per batch)


def softmax_top_k(logits: np.ndarray, temperature: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``top_k(softmax_at(logits, temperature), k)`` (:mod:`ddpipe.labelstore.topk`), bit for bit, fast.

    The reference makes five float64 passes over every row (divide, max, exp, normalise, cast) and a
    float32 top-k over all of them. Here the full-row work is one float64 ``exp`` and sum per row in torch
    (vectorised, chunked into a reused buffer) for the normaliser ``s``; the top ``k + 16`` logits are the
    candidates; only their probabilities are computed as the reference does (``float32(exp(x / T - m) / s)``,
    numpy float64) and :func:`~ddpipe.labelstore.top_k` orders them (lower class first among equal values).

    Exactness: torch's sum may differ from numpy's pairwise sum in the last bits; the two are within
    ``(2n + 8) * 2**-52`` relative of each other (1-ulp exps, any summation order of ``n`` positive terms). A
    candidate whose quotient lies that close to a float32 rounding boundary, or a row whose last candidate
    could tie with or beat the k-th value (exp is monotone to within an ulp), takes the reference path for
    that row, so the result never depends on the tolerance being small, only on it being an upper bound.
    """
    from ..labelstore import softmax_at, top_k

    x = np.ascontiguousarray(logits, dtype=np.float32)
    t = float(temperature)
    lead, c = x.shape[:-1], x.shape[-1]
    m_cand = k + _CANDIDATE_MARGIN
    if x.ndim < 1 or c < _FAST_MIN_CLASSES or m_cand * 4 > c or t < 1e-3 or not np.all(np.isfinite(x)):
        return top_k(softmax_at(x, t), k)  # small rows, k near C, odd temperatures, NaN/inf (raises there)
    import torch

    x2 = x.reshape(-1, c)
    n = x2.shape[0]
    idx_out = np.empty((n, k), np.int64)
    val_out = np.empty((n, k), np.float32)
    tol = (2 * c + 8) * 2.0**-52
    xt = torch.from_numpy(x2)
    buf = torch.empty((min(_ROWS, n), c), dtype=torch.float64)
    for r0 in range(0, n, _ROWS):
        xs = x2[r0:r0 + _ROWS]
        rows = xs.shape[0]
        b = buf[:rows]
        b.copy_(xt[r0:r0 + rows])
        b.div_(t)
        m = b.amax(dim=1, keepdim=True)  # = float64(max x) / T: division by T > 0 is monotone
        s = b.sub_(m).exp_().sum(dim=1).numpy()
        m = m.numpy()[:, 0]
        cand = np.argpartition(xs, c - m_cand, axis=-1)[:, c - m_cand:]
        cand.sort(axis=-1)  # class order, so top_k's tie rule (lower position first) is the class rule
        e = np.exp(xs[np.arange(rows)[:, None], cand].astype(np.float64) / t - m[:, None])
        q = e / s[:, None]
        p = q.astype(np.float32)
        # quotients near a float32 rounding boundary (a midpoint between neighbours) may round the other
        # way with numpy's sum: those rows are recomputed by the reference
        lo = np.nextafter(p, np.float32(-np.inf)).astype(np.float64)
        hi = np.nextafter(p, np.float32(np.inf)).astype(np.float64)
        pd = p.astype(np.float64)
        near = (np.abs(q - (pd + lo) / 2) <= tol * q) | (np.abs(q - (pd + hi) / 2) <= tol * q)
        ci, cv = top_k(p, k)
        kth = cv[:, -1].astype(np.float64)
        qmin = q.min(axis=-1)
        # every non-candidate has a logit <= the smallest candidate's, so a quotient <= qmin (1 + 4 eps);
        # that must round below the k-th value (half an ulp below p is >= p 2**-26 for normal p)
        safe = (qmin * (1 + 8 * 2.0**-52 + tol) < kth * (1 - 2.0**-23)) & (kth > np.finfo(np.float32).tiny)
        bad = ~safe | near.any(axis=-1)
        idx_out[r0:r0 + rows] = np.take_along_axis(cand, ci, axis=-1)
        val_out[r0:r0 + rows] = cv
        for r in np.flatnonzero(bad):
            ri, rv = top_k(softmax_at(xs[r:r + 1], t), k)
            idx_out[r0 + r], val_out[r0 + r] = ri[0], rv[0]
    return idx_out.reshape(*lead, k), val_out.reshape(*lead, k)


def relabel(
    store: str | os.PathLike,
    source: ImageSource | str | os.PathLike,
    teacher: Callable,
    schedule: Schedule,
    spec: StoreSpec,
    *,
    plan: np.ndarray | None = None,
    loader: LoaderConfig | None = None,
    teacher_input: str = "torch",
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
    resume: bool = True,
    provenance: dict | None = None,
) -> dict:
    """Relabel ``source`` with ``teacher`` into the store ``spec`` describes, at ``store``; returns a summary dict.

    ``schedule`` and ``spec`` are :func:`relabel_spec`'s (a schedule that is not the one the spec records
    is one :class:`~ddpipe.pipeline.errors.LoaderSpecError`). ``teacher`` maps a float32 batch
    ``[b, C, H, W]`` (a torch tensor, or numpy with ``teacher_input="numpy"``) to logits
    ``[b, num_classes]`` (torch or numpy). A pruned spec (``relabel_spec(keep=...)``) computes only its
    kept units; ``plan`` is instead an explicit (epoch, batch) array of the units to keep (with an
    unpruned spec, the store records ``keep = len(plan) / full_units``; pass a pruned spec to record
    how the plan was drawn). With
    ``world_size > 1`` each rank writes whole writer shards of its own (shard ``s`` goes to rank
    ``s % world_size``). ``resume=False`` refuses a store that already exists at ``store`` (``True``:
    resume it). ``provenance`` is recorded in the store's attributes next to the source's description.

    The summary: ``store``, ``units`` (in the store), ``units_written`` and ``images_labelled`` (by this
    rank), ``units_written_all`` and ``images_labelled_all`` (by this call over all ranks of a process
    group), ``units_skipped`` (committed before), ``seconds``, ``image_set_hash`` and ``spec`` (the
    store's spec as a dict).
    Inside a process group every rank returns once all ranks have written their shards.
    """
    if teacher_input not in ("torch", "numpy"):
        raise LoaderSpecError(f"teacher_input must be 'torch' or 'numpy', got {teacher_input!r}")
    source = open_source(source)
    _check_schedule(schedule, spec, source)
    if plan is not None:
        plan = np.asarray(plan, dtype=np.int64)
        if len(plan) != spec.full_units and not spec.pruning:
            existing = _existing_spec(store)
            if existing is not None and existing.pruning and existing.replace(pruning=None) == spec:
                spec = existing  # a store created beforehand for this plan (e.g. by rank 0 with pruned_spec)
            else:
                spec = spec.replace(pruning={"keep": len(plan) / spec.full_units, "granularity": "batch",
                                             "seed": 0, "source_units": spec.full_units})
    elif spec.pruning:
        plan = _kept_units(spec)
    prov = {"relabel": {"source": repr(source)}, **(provenance or {})}
    writer = _create_shared(store, spec, plan, rank, world_size, prov, resume)
    rows = writer.pending_units(rank, world_size)
    total = writer.num_units
    t0 = time.perf_counter()
    written = labelled = 0
    bar = progress_bar(total=len(rows), desc="relabel", unit="batch", enabled=progress)
    probs = writer.spec.value_kind == "probs"
    with writer, _LabelThread() as labels:
        if len(rows):
            cfg = loader or LoaderConfig()
            with make_relabel_loader(source, schedule, rows, cfg) as ld:
                for images, _, meta in ld.epoch(0):
                    u = meta.params
                    bar.update(1)
                    # another live writer (a second --resume on the same store) holds this unit's
                    # shard: it computes those labels, this one moves on to the next free shard
                    if not writer.claim(u.epoch, u.batch):
                        continue
                    logits = _logits(teacher, images, teacher_input)
                    if probs:  # the writer's softmax + top-k, computed here faster, beside the next batch's images
                        done = labels.submit(u, softmax_top_k, logits, writer.spec.temperature, writer.spec.k)
                    else:
                        done = [(u, {"logits": logits})]
                    for unit, lab in done:  # in order: the schedule's unit record, labels added
                        writer.write(replace(unit, **lab))
                    written += 1
                    labelled += int(images.shape[0])
            for unit, lab in labels.drain():
                writer.write(replace(unit, **lab))
    bar.close()
    # every rank's shards are written when any rank returns; the counts are over all ranks
    all_written, all_labelled, all_pending = _sum_over_ranks(world_size, (written, labelled, len(rows)))
    return {
        "store": os.fspath(store), "units": total, "units_written": written, "images_labelled": labelled,
        "units_written_all": all_written, "images_labelled_all": all_labelled, "units_skipped": total - all_pending,
        "seconds": time.perf_counter() - t0, "image_set_hash": spec.image_set_hash, "spec": spec.to_dict(),
    }


def _check_schedule(schedule: Schedule, spec: StoreSpec, source: ImageSource) -> None:
    """``schedule`` must be the one ``spec`` records, over ``source``'s images: one error line otherwise."""
    if not isinstance(schedule, Schedule) or not isinstance(spec, StoreSpec):
        raise LoaderSpecError(f"relabel takes relabel_spec's schedule and spec, got {type(schedule).__name__} "
                              f"and {type(spec).__name__}")
    ours = {"num_samples": schedule.num_samples, "epochs": schedule.epochs, "batch_size": schedule.batch_size,
            "seed": schedule.seed, "augmentation": _json(schedule.config.to_dict())}
    for name, value in ours.items():
        if (_json(spec.augmentation) if name == "augmentation" else getattr(spec, name)) != value:
            raise LoaderSpecError(f"the schedule is not the one the spec records: {name} {value!r} != "
                                  f"{getattr(spec, name)!r}; build both with relabel_spec")
    if not np.array_equal(schedule.sizes, source.sizes) or spec.image_set_hash != source.content_hash():
        raise LoaderSpecError("the schedule and spec were built for other images than source; build them with "
                              "relabel_spec(source, ...)")


def _json(value):
    """``value`` as JSON reads it back (tuples as lists), so a spec read from a store compares equal."""
    return json.loads(json.dumps(value))


def _kept_units(spec: StoreSpec) -> np.ndarray:
    """The units a spec pruned at generation (``relabel_spec(keep=...)``) keeps, drawn as it records."""
    p = spec.pruning
    return plan_units(spec.replace(pruning=None), p["keep"], p["granularity"], p["seed"])


class _LabelThread:
    """Top-k labels of batch ``i`` computed in one background thread while the loop loads and labels
    batch ``i + 1`` (numpy and torch release the GIL); units come back in submission order."""

    def __init__(self):
        self._pool = None
        self._pending = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        return False

    def submit(self, unit, fn, *args) -> list:
        """Start ``fn(*args)`` for ``unit``; return the previous unit with its labels (if any)."""
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ddpipe-labels")
        done = self.drain()
        self._pending = (unit, self._pool.submit(fn, *args))
        return done

    def drain(self) -> list:
        if self._pending is None:
            return []
        unit, fut = self._pending
        self._pending = None
        return [(unit, {"topk": fut.result()})]


def _existing_spec(store) -> StoreSpec | None:
    try:
        return open_store(store).spec
    except (StoreError, OSError):
        return None


def _create(store, spec, plan, provenance: dict, resume: bool):
    """Create the store, or reopen it to continue it (``resume``, the same word as labelstore's ``create_store``); an existing
    store otherwise is one error."""
    try:
        return create_store(store, spec, plan, resume=resume, provenance=provenance)
    except StoreExistsError:
        if not resume and _existing_spec(store) is not None:
            raise StoreExistsError(
                f"{os.fspath(store)} already holds a label store; continue it with --resume (resume=True) "
                "or choose another output"
            ) from None
        raise


def _create_shared(store, spec, plan, rank: int, world_size: int, provenance: dict, resume: bool = True):
    """Create (rank 0) or join (other ranks) the store: ranks never race on its creation.

    Inside a torch process group rank 0 creates it and tells the others whether that worked (so a
    refusal is raised on every rank, none waits forever); separate processes without one retry
    until rank 0's store is complete on disk (up to a minute).
    """
    if world_size <= 1:
        return _create(store, spec, plan, provenance, resume)
    if _in_group():
        import torch.distributed as dist

        writer, failure, error = None, [None], None
        if rank == 0:
            try:
                writer = _create(store, spec, plan, provenance, resume)
            except Exception as e:  # noqa: BLE001 - re-raised below, after telling the other ranks
                failure, error = [(type(e), str(e))], e
        dist.broadcast_object_list(failure, src=0)
        if failure[0] is not None:
            if error is not None:
                raise error
            kind, message = failure[0]
            raise (kind if issubclass(kind, StoreError) else StoreError)(message)
        return writer or create_store(store, spec, plan, resume=True, provenance=provenance)
    if rank == 0:
        return _create(store, spec, plan, provenance, resume)
    deadline = time.monotonic() + 60
    while True:
        try:
            open_writer(store).close()  # rank 0's store exists, with its attributes
            return create_store(store, spec, plan, resume=True, provenance=provenance)
        except StoreError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _in_group() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:
        return False
    return dist.is_available() and dist.is_initialized()


def _sum_over_ranks(world_size: int, counts: tuple[int, ...]) -> tuple[int, ...]:
    """``counts`` summed over the process group (which doubles as a barrier); this rank's alone outside one."""
    if world_size <= 1 or not _in_group():
        return tuple(counts)
    import torch.distributed as dist

    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, tuple(int(c) for c in counts))
    return tuple(sum(g[i] for g in gathered) for i in range(len(counts)))
