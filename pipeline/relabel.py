"""The relabel step: generate the schedule, show the teacher exactly what the student will see,
write the teacher's soft labels and the schedule into a store.

:func:`relabel` is what ``ddpipe relabel`` (``ddpipe.evaluate``) calls; it depends on nothing above
``ddpipe.pipeline``. Resuming is creating the same store again: committed shards are skipped,
the rest is recomputed (the schedule is a pure function of the seed, so bytes come out identical).
A ``plan`` (or ``keep``) of kept units makes a pruned store without running the teacher on the
units that would be thrown away (LPLD's pruning at generation).
"""

from __future__ import annotations

import os
import time
from typing import Callable

import numpy as np

from ddpipe.labelstore import StoreError, StoreSpec, Unit, create_store, open_store, open_writer, plan_units
from ddpipe.labelstore.prune import pruned_spec
from ddpipe.pipeline.errors import LoaderSpecError
from ddpipe.pipeline.loader import LoaderConfig, make_relabel_loader
from ddpipe.pipeline.schedule import Schedule, ScheduleConfig, recipe
from ddpipe.pipeline.sources import ImageSource, open_source


def relabel_spec(
    source: ImageSource,
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
) -> tuple[Schedule, StoreSpec]:
    """The schedule over ``source`` and the store spec recording it (with the source's content hash)."""
    cfg = recipe(schedule) if isinstance(schedule, str) else schedule
    if not isinstance(cfg, ScheduleConfig):
        raise LoaderSpecError(f"schedule must be a ScheduleConfig or a recipe name, got {type(schedule).__name__}")
    sched = Schedule(cfg, seed, source.sizes, batch_size, epochs)
    spec = sched.store_spec(
        num_classes, k, value_codec=value_codec, temperature=temperature, image_set_hash=source.content_hash(),
        teacher_hash=teacher_hash, units_per_shard=units_per_shard,
    )
    return sched, spec


def _logits(teacher: Callable, images, teacher_input: str) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = teacher(images.numpy() if teacher_input == "numpy" else images)
    if isinstance(out, torch.Tensor):
        out = out.detach().float().cpu().numpy()
    return np.asarray(out, dtype=np.float32)


def relabel(
    store: str | os.PathLike,
    source: ImageSource | str | os.PathLike,
    teacher: Callable,
    *,
    schedule: ScheduleConfig | str = "sre2l",
    epochs: int,
    batch_size: int,
    num_classes: int,
    k: int,
    seed: int = 0,
    value_codec: str = "fp16",
    temperature: float = 1.0,
    teacher_hash: str = "",
    plan: np.ndarray | None = None,
    keep: float | None = None,
    granularity: str = "batch",
    prune_seed: int = 0,
    units_per_shard: int = 0,
    loader: LoaderConfig | None = None,
    teacher_input: str = "torch",
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
) -> dict:
    """Relabel ``source`` with ``teacher`` into ``store``; returns a summary dict.

    ``teacher`` maps a float32 batch ``[b, C, H, W]`` (a torch tensor, or numpy with
    ``teacher_input="numpy"``) to logits ``[b, num_classes]`` (torch or numpy). ``plan`` is an
    (epoch, batch) array of the units to keep, or ``keep`` a fraction drawn with
    :func:`ddpipe.labelstore.plan_units` (``granularity``, ``prune_seed``). With ``world_size > 1``
    each rank writes whole writer shards of its own (shard ``s`` goes to rank ``s % world_size``).
    """
    if teacher_input not in ("torch", "numpy"):
        raise LoaderSpecError(f"teacher_input must be 'torch' or 'numpy', got {teacher_input!r}")
    source = open_source(source)
    sched, spec = relabel_spec(
        source, schedule, epochs=epochs, batch_size=batch_size, num_classes=num_classes, k=k, seed=seed,
        value_codec=value_codec, temperature=temperature, teacher_hash=teacher_hash, units_per_shard=units_per_shard,
    )
    if keep is not None:
        if plan is not None:
            raise LoaderSpecError("give either plan or keep, not both")
        plan = plan_units(spec, keep, granularity, prune_seed)
        spec = pruned_spec(spec, keep, granularity, prune_seed)
    elif plan is not None:
        plan = np.asarray(plan, dtype=np.int64)
        if len(plan) != spec.full_units:
            existing = _existing_spec(store)
            if existing is not None and existing.pruning and existing.replace(pruning=None) == spec:
                spec = existing  # a store created beforehand for this plan (e.g. by rank 0 with pruned_spec)
            else:
                spec = spec.replace(pruning={"keep": len(plan) / spec.full_units, "granularity": granularity,
                                             "seed": prune_seed, "source_units": spec.full_units})
    writer = _create_shared(store, spec, plan, rank, world_size, {"relabel": {"source": repr(source)}})
    rows = writer.pending_units(rank, world_size)
    total = writer.num_units
    t0 = time.perf_counter()
    written = 0
    bar = _progress(len(rows), progress)
    with writer:
        if len(rows):
            cfg = loader or LoaderConfig()
            with make_relabel_loader(source, sched, rows, cfg) as ld:
                for images, _, meta in ld.epoch(0):
                    u = meta.params
                    logits = _logits(teacher, images, teacher_input)
                    writer.write(Unit(
                        epoch=u.epoch, batch=u.batch, sample_ids=u.sample_ids, crops=u.crops, flips=u.flips,
                        mix_kind=u.mix_kind, mix_perm=u.mix_perm, mix_lambda=u.mix_lambda, mix_box=u.mix_box,
                        cutout=u.cutout, cutout_fill=u.cutout_fill, logits=logits,
                    ))
                    written += 1
                    bar.update(1)
    bar.close()
    return {
        "store": os.fspath(store), "units": total, "units_written": written,
        "units_skipped": total - len(rows) if world_size == 1 else None,
        "seconds": time.perf_counter() - t0, "image_set_hash": spec.image_set_hash,
    }


def _existing_spec(store) -> StoreSpec | None:
    try:
        return open_store(store).spec
    except (StoreError, OSError):
        return None


def _create_shared(store, spec, plan, rank: int, world_size: int, provenance: dict):
    """Create (rank 0) or join (other ranks) the store: ranks never race on its creation.

    Inside a torch process group the other ranks wait at a barrier; separate processes without
    one retry until rank 0's store is complete on disk (up to a minute).
    """
    if world_size <= 1:
        return create_store(store, spec, plan, exist_ok=True, provenance=provenance)
    try:
        import torch.distributed as dist

        in_group = dist.is_available() and dist.is_initialized()
    except ImportError:
        in_group = False
    if in_group:
        writer = create_store(store, spec, plan, exist_ok=True, provenance=provenance) if rank == 0 else None
        dist.barrier()
        return writer or create_store(store, spec, plan, exist_ok=True, provenance=provenance)
    if rank == 0:
        return create_store(store, spec, plan, exist_ok=True, provenance=provenance)
    deadline = time.monotonic() + 60
    while True:
        try:
            open_writer(store).close()  # rank 0's store exists, with its attributes
            return create_store(store, spec, plan, exist_ok=True, provenance=provenance)
        except StoreError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="relabel", unit="batch", disable=not enabled, leave=False)
