"""Was this store labelled by this teacher? Two checks, one cheap and one that re-runs the teacher.

- :func:`check_teacher_hash`: the store records the sha256 of its teacher's weights
  (``spec.teacher_hash``); a given teacher (or ensemble) with another hash is refused with one line
  (:class:`~ddpipe.evaluate.errors.TeacherMismatchError`) saying which hash the store records and
  which the teacher has.
- :func:`check_teacher`: re-runs the teacher on ``sample`` random units of the store, through the
  same replay loader training uses (the stored crops, flips, cutouts and CutMix/Mixup applied to the
  same images), and compares the teacher's softmax at the store's temperature with the stored
  top-k: each stored value must match the teacher's probability of that class within the codec's
  error bound (:meth:`ddpipe.labelstore.ValueCodec.max_error`) plus a small numerical slack
  (``rtol``, ``atol``: another device or loader backend computes slightly different logits), and no
  class left out may beat the smallest kept one by more than that. The result names every
  mismatching unit.

Wiring: ``ddpipe verify STORE --teacher CKPT --images DIR --sample N`` is
``check_teacher(STORE, [CKPT], DIR, sample=N)``, or ``run(TeacherCheckConfig(store=STORE, teacher=(CKPT,),
images=DIR, sample=N))`` whose fields are the flags (exit 1 unless ``result.ok``; a
:class:`TeacherMismatchError` is one line, exit 2; :func:`check_teacher_text` prints it), and
``ddpipe train --check-teacher`` calls :func:`check_teacher` on the store and images it trains on
before the first epoch. Teachers are anything
:func:`ddpipe.evaluate.teacher.open_teacher` accepts, with the same keyword facts (``model``,
``num_classes``, ``input_size`` ... for plain state dicts).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..pipeline.backends import BACKENDS as LOADERS
from ddpipe.config import Result, check_int, option
from ._phase import RunOptions
from .errors import TeacherError
from .teacher import TeacherOptions
from ..pipeline.feed import StoreFeed

__all__ = ["TeacherCheckConfig", "TeacherCheckResult", "check_teacher", "check_teacher_hash", "check_teacher_text",
           "run", "summary_text"]


@dataclass(frozen=True, kw_only=True)
class TeacherCheckConfig(TeacherOptions, RunOptions):
    """``ddpipe verify STORE --teacher CKPT --images DIR --sample N``: the flags of the teacher check.

    The teacher fields are :class:`~ddpipe.evaluate.teacher.TeacherOptions`; bad values raise
    :class:`~ddpipe.evaluate.errors.TeacherError` naming the field.
    """

    error = TeacherError

    store: str = option(positional=True, help="the label store to check (a path or a URL)")
    images: str = option(help="the image set the store was built for (checked by content hash)")
    sample: int = option(8, help="units re-run by the teacher, drawn at random; 0 = every unit (default 8)")
    sample_seed: int = option(0, help="seed of the random choice of units (default 0)")
    check_hash: bool = option(True, help="refuse a teacher whose hash is not the one the store records "
                                         "(--no-check-hash: re-run it anyway and compare the labels)")
    loader: str = option("torch", choices=LOADERS, help="image backend: torch (the reference), dali or batched (docs/pipeline.md; default torch)")
    workers: int = option(0, flags=("-j",), help="loader workers, >= 0 (default 0)")
    backend: str = option("auto", choices=("auto", "tensorstore", "zarr"),
                          help="store read path (default auto: tensorstore when installed)")

    def validate(self) -> None:
        super().validate()
        e = self.error
        check_int(e, "sample", self.sample, min=0)
        check_int(e, "sample_seed", self.sample_seed, min=0)
        check_int(e, "workers", self.workers, min=0)


@dataclass(frozen=True, kw_only=True)
class TeacherCheckResult(Result):
    """What :func:`check_teacher` found. ``ok`` is True when every checked unit matched."""

    ok: bool
    store: str
    teacher_hash: str  # the given teacher's (ensemble's) hash
    store_teacher_hash: str  # what the store records ("" when nothing)
    hash_matches: bool | None  # None when the store records no hash
    units: int  # units in the store
    checked_units: list  # store positions re-run, in order
    samples_checked: int
    mismatches: list  # one dict per mismatching unit: unit, epoch, batch, samples (bad/of), worst excess, first bad sample
    max_excess: float  # largest |difference| beyond the tolerance over all checked entries (0 when ok)
    tolerance: dict  # codec, rtol, atol


def _store_spec(store: Any):
    if hasattr(store, "spec") and hasattr(store, "read_slab"):
        return store.spec
    from ..labelstore import open_store

    return open_store(store).spec


def check_teacher_hash(store: Any, teachers: Any, **facts: Any) -> str:
    """Refuse a teacher the store was not made with: one :class:`TeacherMismatchError` line naming both hashes.

    ``store`` is a path, URL or open reader; ``teachers`` one teacher or a sequence (an ensemble), in
    any form :func:`~ddpipe.evaluate.teacher.open_teachers` accepts (already opened :class:`Teacher`
    objects are not reloaded). Returns the teacher's hash; a store that records no hash passes.
    """
    from .errors import TeacherMismatchError
    from .teacher import Teacher, open_teachers, teacher_hash

    opened = teachers if _all_opened(teachers) else open_teachers(teachers, **facts)
    given = teacher_hash(list(opened) if isinstance(opened, (list, tuple)) else [opened])
    recorded = _store_spec(store).teacher_hash
    if recorded and recorded != given:
        names = ", ".join(t.source for t in (opened if isinstance(opened, (list, tuple)) else [opened])
                          if isinstance(t, Teacher))
        where = getattr(store, "path", store)
        raise TeacherMismatchError(
            f"{os.fspath(where)} was labelled by teacher {recorded[:16]}…, not by {names or 'the given teacher'} "
            f"({given[:16]}…); give the teacher it was made with, or relabel with this one"
        )
    return given


def _all_opened(teachers: Any) -> bool:
    from .teacher import Teacher

    items = teachers if isinstance(teachers, (list, tuple)) else [teachers]
    return bool(items) and all(isinstance(t, Teacher) for t in items)


def check_teacher(
    store: Any,
    teachers: Any,
    images: Any,
    *,
    sample: int = 8,
    seed: int = 0,
    check_hash: bool = True,
    device: Any = "cpu",
    loader: str = "torch",
    workers: int = 0,
    store_backend: str = "auto",
    rtol: float = 1e-3,
    atol: float = 1e-6,
    units: Any = None,
    **facts: Any,
) -> TeacherCheckResult:
    """Re-run ``teachers`` on ``sample`` random committed units of ``store`` and compare with its top-k.

    ``store``: a path or URL; ``teachers``: one teacher or several (G-VBSM ensemble, combined as at
    relabel time) as paths, modules or :class:`~ddpipe.evaluate.teacher.Teacher` objects, with
    ``facts`` (``model``, ``num_classes``, ``input_size``, ``mean``, ``std`` ...) for the forms that
    need them; ``images``: the image set the store was built for (checked by content hash).
    ``sample``: how many units (all committed ones when fewer; ``0`` = all), drawn with ``seed``.
    ``check_hash``: first refuse a teacher whose hash differs from the store's
    (:func:`check_teacher_hash`); ``False`` re-runs it anyway and lets the numbers speak.
    ``units``: check these store positions instead of a random sample (e.g. the first units a
    training run replays). ``loader``/``workers``: the replay backend (``torch`` or ``dali``). Raises
    :class:`TeacherMismatchError` for a hash or an input-size / class-count mismatch; returns a
    :class:`TeacherCheckResult` whose ``mismatches`` name every unit whose labels differ.
    """
    import torch

    from .errors import EvaluateError, TeacherMismatchError
    from .teacher import Ensemble, open_teachers, teacher_hash
    from ..labelstore import get_codec, open_store, softmax_at
    from ..pipeline import LoaderConfig, open_source
    from ..pipeline.loader import Loader
    from ..pipeline.schedule import ScheduleConfig

    if isinstance(sample, bool) or not isinstance(sample, int) or sample < 0:
        raise EvaluateError(f"sample must be a whole number >= 0, got {sample!r}")
    reader = open_store(store, backend=store_backend)
    spec = reader.spec
    device = torch.device(device)
    opened = list(teachers) if _all_opened(teachers) else open_teachers(teachers, device=device, **facts)
    if not isinstance(opened, list):
        opened = [opened]
    for t in opened:
        t.to(device)
    if check_hash:
        check_teacher_hash(reader, opened)
    t = opened[0]
    size = tuple((spec.augmentation or {}).get("output_size") or ())
    if t.num_classes != spec.num_classes:
        raise TeacherMismatchError(f"{reader.path} holds labels over {spec.num_classes} classes but the teacher "
                                   f"{t.source} predicts {t.num_classes}; it was labelled by another teacher")
    if size and tuple(size) != (t.input_size, t.input_size):
        raise TeacherMismatchError(f"{reader.path} was labelled on {size[0]}x{size[1]} px crops but the teacher "
                                   f"{t.source} takes {t.input_size} px inputs; give the teacher's input size "
                                   "the store was made with")

    # the units to re-run: a seeded draw from the committed shards
    committed = np.concatenate([np.arange(r.start, r.stop) for r in
                                (reader.shard_units(s) for s in np.flatnonzero(reader.committed))] or
                               [np.zeros(0, np.int64)]).astype(np.int64)
    if units is not None:
        chosen = np.asarray(list(units), dtype=np.int64).reshape(-1)
        missing = np.setdiff1d(chosen, committed)
        if len(missing):
            raise EvaluateError(f"{reader.path}: unit(s) {', '.join(map(str, missing[:5]))} are not written yet "
                                f"or outside the store's {reader.num_units} units")
    elif sample and sample < len(committed):
        chosen = np.sort(np.random.default_rng(seed).choice(committed, size=sample, replace=False))
    else:
        chosen = committed

    source = open_source(images)
    sched = ScheduleConfig.from_dict(spec.augmentation) if spec.augmentation else ScheduleConfig()
    feed = _UnitsFeed(reader.path, chosen, store_backend, source.sizes)
    cfg = LoaderConfig(backend=loader, channels=t.in_chans, mean=tuple(t.mean), std=tuple(t.std),
                       num_workers=workers, targets="topk", mix=True)
    codec = get_codec(spec.value_codec)
    ensemble = Ensemble(opened, device)
    mismatches, worst, samples = [], 0.0, 0
    with Loader(source, feed, cfg, sched) as ld:
        for images_b, (idx, val), meta in ld.epoch(0):
            probs = softmax_at(np.asarray(ensemble(images_b), dtype=np.float32), spec.temperature)
            idx = idx.numpy().astype(np.int64)
            val = val.numpy().astype(np.float32)
            excess = _excess(probs, idx, val, codec, rtol, atol)  # [b]: how far beyond the tolerance, 0 = fine
            samples += len(excess)
            bad = np.flatnonzero(excess > 0)
            if len(bad):
                worst = max(worst, float(excess.max()))
                u = int(meta.unit)
                e, b = (int(x) for x in reader.plan[u])
                mismatches.append({"unit": u, "epoch": e, "batch": b, "bad_samples": int(len(bad)),
                                   "samples": int(len(excess)), "max_excess": float(excess.max()),
                                   "first_bad_slot": int(bad[0])})
    given = teacher_hash(opened)
    return TeacherCheckResult(
        ok=not mismatches, store=str(reader.path), teacher_hash=given, store_teacher_hash=spec.teacher_hash,
        hash_matches=(spec.teacher_hash == given) if spec.teacher_hash else None, units=int(reader.num_units),
        checked_units=[int(u) for u in chosen], samples_checked=samples, mismatches=mismatches, max_excess=worst,
        tolerance={"codec": spec.value_codec, "rtol": rtol, "atol": atol},
    )


def run(config: TeacherCheckConfig) -> "TeacherCheckResult":
    """:func:`check_teacher` as ``config`` says."""
    from ._phase import resolve_device, torch_threads

    with torch_threads(config.threads):
        return check_teacher(config.store, list(config.teacher), config.images, sample=config.sample,
                             seed=config.sample_seed, check_hash=config.check_hash,
                             device=resolve_device(config.device), loader=config.loader, workers=config.workers,
                             store_backend=config.backend, **config.teacher_facts())


def _excess(probs: np.ndarray, idx: np.ndarray, val: np.ndarray, codec, rtol: float, atol: float) -> np.ndarray:
    """Per sample, how far the stored top-k is from the teacher's probabilities beyond the tolerance:
    the stored values against the teacher's at the stored classes, and the best class left out
    against the smallest one kept (ties may be stored in either order)."""
    b = len(idx)
    p = probs[:b]
    at = np.take_along_axis(p, idx, axis=1)
    tol = codec.max_error(val) + rtol * np.abs(at) + atol
    value_excess = (np.abs(at - val) - tol).max(axis=1)
    left_out = p.copy()
    np.put_along_axis(left_out, idx, -np.inf, axis=1)
    best_out = left_out.max(axis=1) if p.shape[1] > idx.shape[1] else np.full(b, -np.inf)
    kept_min = at.min(axis=1)
    order_excess = best_out - kept_min - (rtol * np.abs(kept_min) + atol)
    return np.maximum(np.maximum(value_excess, order_excess), 0.0)


class _UnitsFeed(StoreFeed):
    """A store feed whose one pass (epoch 0) is the store's units at ``units``, in that order."""

    def __init__(self, path: str, units: np.ndarray, backend: str = "auto", sizes: np.ndarray | None = None):
        super().__init__(path, backend=backend, sizes=sizes)
        self.units = np.asarray(units, dtype=np.int64)

    def keys(self, epoch: int) -> np.ndarray:
        return self.units if epoch == 0 else np.zeros(0, np.int64)

    def num_epochs(self) -> int:
        return 1


def summary_text(result: "TeacherCheckResult | dict") -> str:
    """The human-readable lines of a :class:`TeacherCheckResult` (= :func:`check_teacher_text`)."""
    return check_teacher_text(result)


def check_teacher_text(result: TeacherCheckResult | dict) -> str:
    """The human-readable lines of a :class:`TeacherCheckResult`."""
    r = result.to_dict() if hasattr(result, "to_dict") else result
    head = (f"teacher {r['teacher_hash'][:16]}… re-run on {len(r['checked_units'])} of {r['units']} units "
            f"({r['samples_checked']} samples) of {r['store']}")
    if r["ok"]:
        return f"ok: {head}: the stored top-k matches within the {r['tolerance']['codec']} codec's tolerance"
    rows = [f"{len(r['mismatches'])} unit(s) do not match: {head}"]
    for m in r["mismatches"]:
        rows.append(f"  unit {m['unit']} (epoch {m['epoch']}, batch {m['batch']}): {m['bad_samples']} of "
                    f"{m['samples']} samples differ (worst by {m['max_excess']:.3g} beyond tolerance)")
    return "\n".join(rows)
