"""``ddpipe relabel``: run the teacher(s) over the replay schedule and write the label store.

The library call is ``run(RelabelConfig(...)) -> RelabelResult``::

    from .relabel import RelabelConfig, run
    res = run(RelabelConfig(images="runs/images", teacher=("runs/teacher/teacher.pt",), out="runs/labels.zarr",
                            epochs=300, batch_size=100, k=10, temperature=4.0))

This module only loads the teachers (:mod:`ddpipe.evaluate.teacher`: ddpipe teacher files, squeeze
checkpoints, plain torchvision/timm state dicts with ``model``/``num_classes``/``input_size``, or
``nn.Module`` objects), builds the store's spec once with :func:`ddpipe.pipeline.relabel.relabel_spec`
and passes it to :func:`ddpipe.pipeline.relabel.relabel`; that module owns the schedule and store
spec, the prune plan (``keep``), the store's creation and the rank logic. The
schedule's output size is the teacher's input size, so a 32 px teacher is shown 32 px crops.
Several teachers form G-VBSM's ensemble (:class:`~ddpipe.evaluate.teacher.Ensemble`). ``keep``
plans the kept units first, so the teacher only computes those. Resuming is the same config
with ``resume=True`` (``--resume``): committed shards are skipped; every field that changes the
labels must be as the store's creation recorded it (its provenance, ``relabel_options``), or the
resume is refused in one line naming the changed flags. Under ``torchrun`` rank 0
creates the store and every rank writes its own shards.

**Outputs.** The store at ``out``: a local path (relative, absolute, ``~``, with or without a trailing
slash) or a URL zarr accepts (``file://``, ``memory://``, ``s3://`` ...; written at the URL, never
under the current directory). The run's ``results.json`` (the :class:`RelabelResult`, with the full
config) is written *inside* the store, ``<out>/results.json`` (as ``ddpipe prune`` does for its
output): a file at the group's root that is not Zarr metadata. tensorstore, ``ddpipe info``,
``ddpipe verify`` and training ignore it and it travels with the store when the folder is copied;
zarr-python reads the store as before and only warns (``ZarrUserWarning: Object at results.json is
not recognized as a component of a Zarr hierarchy``) when it lists the group's members. It is
written last, by rank 0, once every rank's shards are committed; a resumed run rewrites it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, fields
from typing import Any

from ddpipe._format import keep_fraction
from ddpipe.config import Result, check_int, check_out_path, check_range, check_resume, option, result_values
from ._phase import ResumeOption, RunOptions
from .errors import RelabelError
from .teacher import TeacherOptions
from ..labelstore.codecs import get_codec, list_codecs
from ..labelstore.location import results_path, write_results
from ..labelstore.spec import FORMAT_VERSION, MIX_KINDS, WRITE_FORMAT_VERSIONS
from ..pipeline.backends import BACKENDS as LOADERS

__all__ = ["RelabelConfig", "RelabelResult", "run", "summary_text", "results_path", "check_continuation"]

GRANULARITIES = ("batch", "epoch")


@dataclass(frozen=True, kw_only=True)
class RelabelConfig(TeacherOptions, ResumeOption, RunOptions):
    """Everything ``ddpipe relabel`` takes; every field is a flag (``--field-name``) of the same meaning.
    The teacher fields (``teacher``, ``model``, ``num_classes``, ``input_size`` ...) are
    :class:`~ddpipe.evaluate.teacher.TeacherOptions`; ``device``, ``threads``, ``progress`` and ``resume``
    the shared run options.

    Bad values raise :class:`~ddpipe.evaluate.errors.RelabelError` naming the field when the config is built.
    ``k`` and ``value_codec`` are the store spec's names (the flags ``--topk`` and ``--codec`` still work).
    """

    error = RelabelError

    images: str = option(help="the image set: an ImageFolder, a .npz of uint8 images, or .tar shards", group="inputs")
    # --- schedule and labels ------------------------------------------------------------------------
    out: str = option(help="the label store to write: a path or a URL (file://, memory://, s3:// ...)",
                      group="schedule and labels", changes_result=False)
    epochs: int = option(300, help="student epochs the labels cover (default 300, SRe2L)", group="schedule and labels")
    batch_size: int = option(1024, flags=("-b",), group="schedule and labels",
                             help="relabel = replay batch size (default 1024, SRe2L)")
    schedule: str = option("sre2l", group="schedule and labels",
                           help="schedule recipe: sre2l, sre2l-mixup, lpld-in21k, ... (default sre2l)")
    mix: str | None = option(None, choices=MIX_KINDS, group="schedule and labels", help="override the recipe's mix")
    min_scale: float | None = option(None, group="schedule and labels",
                                     help="override the recipe's smallest crop area, in (0, 1] (e.g. 0.08)")
    k: int = option(10, flags=("--topk",), group="schedule and labels",
                    help="soft-label entries kept per sample (top-k), 1 .. the teacher's classes (default 10)")
    value_codec: str = option("fp16", flags=("--codec",), choices=list_codecs, group="schedule and labels",
                              help="value codec: fp32, fp16 or uint8 (default fp16); with --format-version 4 also "
                                   "absM / absMd (probabilities to within 1/M, docs/format.md)")
    format_version: int = option(FORMAT_VERSION, choices=WRITE_FORMAT_VERSIONS, group="schedule and labels",
                                 help=f"store format written: {FORMAT_VERSION} (default) or 4 (class indices bit-packed, "
                                      "the quantised abs* codecs; docs/format.md)")
    index_coding: str = option("packed", choices=("packed", "gaps"), group="schedule and labels",
                               help="format 4: class indices bit-packed (packed, default) or as class-sorted gaps "
                                    "(gaps: smaller from k of about 20 up, e.g. 51 instead of 70 B per sample at k 50 of "
                                    "1,000 classes; each sample's top-k then reads back in class order)")
    derived_fields: bool = option(False, group="schedule and labels",
                                  help="format 4: keep a digest of each batch's sample order, crops, flips and mix "
                                       "instead of the fields (about 7 B per sample-epoch less); readers recompute them "
                                       "from the schedule and the images and check the digest (docs/format.md)")
    value_kind: str = option("probs", group="schedule and labels", choices=("probs", "logits"),
                             help="store softmax(logits / T) (probs, default) or the top-k logits and each row's "
                             "log-sum-exp, so `ddpipe train -T` chooses the temperature (logits; fp16 or fp32 codec)")
    temperature: float = option(20.0, flags=("-T",), group="schedule and labels",
                                help="stored values are softmax(logits / T), T > 0; train with the same T "
                                     "(default 20, SRe2L)")
    seed: int = option(42, group="schedule and labels", help="schedule seed, >= 0 (default 42, SRe2L's --fkd-seed)")
    # --- pruning (LPLD) -----------------------------------------------------------------------------
    keep: float | None = option(None, parse=keep_fraction, group="pruning (LPLD)",
                                help="keep this fraction of units, in (0, 1] (0.025, 1/40 or 40x); the teacher "
                                     "computes only those")
    granularity: str = option("batch", choices=GRANULARITIES, group="pruning (LPLD)",
                              help="prune batches or whole epochs (default batch)")
    prune_seed: int = option(0, group="pruning (LPLD)", help="seed of the random choice of kept units, >= 0 (default 0)")
    # --- run ------------------------------------------------------------------------------------------
    # the backends show the teacher the same crops, flips and mixes (pixels within 1/255, docs/pipeline.md), like
    # --device; the schedule, not the worker count, draws them
    loader: str = option("torch", choices=LOADERS, group="run", changes_result=False,
                         help="image backend: torch (the reference; default), batched (the fastest on the CPU: no worker "
                              "processes, -j threads, each image decoded once) or dali (docs/pipeline.md)")
    workers: int = option(2, flags=("-j",), group="run", help="loader workers, >= 0 (default 2)", changes_result=False)

    def validate(self) -> None:
        super().validate()
        e = self.error
        for name in ("images", "out"):
            value = getattr(self, name)
            if not isinstance(value, (str, os.PathLike)) or not os.fspath(value).strip():
                raise e(f"{name} must be a path, got {value!r}")
        check_out_path(e, "out", self.out, kind="label store (a directory)")
        check_int(e, "epochs", self.epochs, min=1)
        check_int(e, "batch_size", self.batch_size, min=1)
        check_int(e, "k", self.k, min=1)
        if self.num_classes is not None and self.k > self.num_classes:
            raise e(f"k (--topk) must be <= num_classes ({self.num_classes}), got {self.k}")
        check_range(e, "temperature", self.temperature, min=0.0, min_exclusive=True)
        check_int(e, "seed", self.seed, min=0)
        check_int(e, "prune_seed", self.prune_seed, min=0)
        check_int(e, "workers", self.workers, min=0)
        check_range(e, "min_scale", self.min_scale, min=0.0, max=1.0, min_exclusive=True, allow_none=True)
        check_range(e, "keep", self.keep, min=0.0, max=1.0, min_exclusive=True, allow_none=True)
        needs = get_codec(self.value_codec).min_format
        if needs > self.format_version:
            raise e(f"value_codec {self.value_codec} needs format_version {needs} (--format-version {needs}), "
                    f"got {self.format_version}")
        for name, off in (("derived_fields", False), ("index_coding", "packed")):
            if getattr(self, name) != off and self.format_version < 4:
                raise e(f"{name} needs format_version 4 (--format-version 4), got {self.format_version}")
        if self.value_kind == "logits" and self.value_codec == "uint8":
            raise e("value_kind logits needs the fp16 or fp32 codec, not uint8")
        if not isinstance(self.schedule, str) or not self.schedule:
            raise e(f"schedule must be a recipe name, got {self.schedule!r}")

    def to_dict(self) -> dict:
        """The config as JSON (teachers given as objects are recorded by their description)."""
        out = {f.name: list(getattr(self, f.name)) if isinstance(getattr(self, f.name), tuple) else getattr(self, f.name)
               for f in fields(self)}
        out["teacher"] = self.teacher_texts()
        return out


@dataclass(frozen=True, kw_only=True)
class RelabelResult(Result):
    """What a relabel run did; :meth:`to_dict` is what ``<store>/results.json`` holds."""

    phase: str = "relabel"
    store: str  # the store written: an absolute path, or the URL as given
    results: str | None  # where results.json was written (None on ranks other than 0)
    units: int  # units in the store
    units_written: int  # units computed and written by this run, over all ranks (the rest were committed already)
    teacher_forward_calls: int  # one (ensemble) forward pass per unit written
    images_labelled: int  # images shown to the teacher(s), over all ranks
    samples_per_s: float | None
    wall_time_s: float
    teachers: list  # each teacher's description (source, kind, hash, facts)
    teacher_hash: str  # the store's teacher_hash (an ensemble's combined hash)
    image_set_hash: str
    spec: dict  # the store's spec
    world_size: int
    config: dict
    versions: dict


def resolve_out(out: Any) -> str:
    """The store's location in labelstore's normal form (:func:`ddpipe.labelstore.location.store_location`):
    an absolute local path (relative paths, ``~``, trailing slashes and ``file://`` URLs resolved), or a
    URL (``memory://``, ``s3://`` ...) left a URL."""
    from ..labelstore.location import store_location

    return store_location(out)


# the store's provenance record of the phase options that made its labels
RUN_OPTIONS = "relabel_options"


def _options(config: RelabelConfig) -> dict:
    """The config's fields that change the labels, JSON-ready (teachers given as objects by their description)."""
    return {**result_values(config), "teacher": config.teacher_texts()}


def check_continuation(config: RelabelConfig, out: str) -> None:
    """With ``resume``, refuse in one line (naming each changed flag with its old and new value) to continue
    the store at ``out`` with other options that change the labels than its creation recorded. A store
    without the record (made before it existed, or by another tool) is left to the spec check on reopening."""
    from ..labelstore import StoreError
    from ..labelstore.metadata import read_meta

    if not config.resume:
        return
    try:
        _, meta = read_meta(out)
    except (StoreError, OSError):
        return  # no store yet: resuming creates it
    recorded = meta.provenance.get(RUN_OPTIONS)
    if isinstance(recorded, dict):
        check_resume(RelabelConfig, recorded, _options(config), RelabelError, f"the store {out}",
                     hint="rerun with the original values or write another --out")


def run(config: RelabelConfig) -> RelabelResult:
    """Relabel as ``config`` says; returns the result also written to ``<store>/results.json``."""
    from ddpipe.phase import run_phase

    return run_phase(config, RelabelConfig, _run, "relabel")


def _run(config: RelabelConfig) -> RelabelResult:
    import torch

    from ._phase import versions
    from .distributed import init_distributed, is_main_process
    from .errors import ClassCountMismatchError
    from .teacher import Ensemble, open_teachers, teacher_hash
    from ..pipeline import LoaderConfig, open_source, recipe
    from ..pipeline.relabel import relabel, relabel_spec

    t0 = time.perf_counter()
    out = resolve_out(config.out)
    check_continuation(config, out)  # before any teacher or image is loaded
    dist = init_distributed(config.device, announce=config.progress)
    device = torch.device(dist.device)

    # 1. teachers and images
    teachers = open_teachers(list(config.teacher), device=device, **config.teacher_facts())
    t = teachers[0]
    if config.k > t.num_classes:
        raise RelabelError(f"k (--topk) must be <= the teacher's {t.num_classes} classes, got {config.k}")
    source = open_source(config.images)
    n_classes_seen = int(source.labels.max()) + 1 if len(source.labels) else 0
    if n_classes_seen > t.num_classes:
        raise ClassCountMismatchError(
            f"the images at {config.images} have labels up to class {n_classes_seen - 1} but the teacher predicts "
            f"{t.num_classes} classes; relabel with a teacher of the same dataset"
        )

    # 2. the schedule at the teacher's input size and normalisation; pipeline.relabel does the rest
    overrides: dict[str, Any] = {"output_size": (t.input_size, t.input_size)}
    if config.mix:
        overrides["mix"] = config.mix
    if config.min_scale is not None:
        overrides["scale"] = (config.min_scale, 1.0)
    schedule = recipe(config.schedule, **overrides)
    thash = teacher_hash(teachers)
    ensemble = Ensemble(teachers, device)
    loader = LoaderConfig(backend=config.loader, channels=t.in_chans, mean=tuple(t.mean), std=tuple(t.std),
                          num_workers=config.workers, mix=True)
    described = [x.describe() for x in teachers]
    sched, spec = relabel_spec(
        source, schedule, epochs=config.epochs, batch_size=config.batch_size, num_classes=t.num_classes,
        k=config.k, seed=config.seed, value_codec=config.value_codec, temperature=config.temperature,
        teacher_hash=thash, value_kind=config.value_kind, keep=config.keep, granularity=config.granularity,
        prune_seed=config.prune_seed, format_version=config.format_version, derived_fields=config.derived_fields,
        index_coding=config.index_coding,
    )
    summary = relabel(
        out, source, ensemble, sched, spec, loader=loader, rank=dist.rank, world_size=dist.world_size,
        progress=config.progress and is_main_process(), resume=config.resume,
        provenance={"teachers": [{k: d[k] for k in ("source", "kind", "teacher_hash")} for d in described],
                    RUN_OPTIONS: _options(config)},
    )
    main = is_main_process()
    result = RelabelResult(
        store=out, results=results_path(out) if main else None, units=summary["units"],
        units_written=summary["units_written_all"], teacher_forward_calls=summary["units_written_all"],
        images_labelled=summary["images_labelled_all"],
        samples_per_s=summary["images_labelled_all"] / summary["seconds"] if summary["seconds"] > 0 else None,
        wall_time_s=time.perf_counter() - t0, teachers=described, teacher_hash=thash,
        image_set_hash=summary["image_set_hash"], spec=summary["spec"], world_size=dist.world_size,
        config=config.to_dict(), versions=versions(),
    )
    if main:
        write_results(out, result)  # result.results: inside the store, beside zarr.json
    return result


def summary_text(result: RelabelResult | dict) -> str:
    """The human-readable lines of a result."""
    r = RelabelResult.from_dict(result) if isinstance(result, dict) else result  # a results.json read back
    rate = f"{r.samples_per_s:.0f} samples/s" if r.samples_per_s else "-"
    lines = [f"relabel: {r.units_written} of {r.units} units computed by the teacher "
             f"({r.teacher_forward_calls} forward passes, {r.images_labelled} images, {rate}) "
             f"in {r.wall_time_s:.1f} s", f"  store {r.store}"]
    if r.results:
        lines.append(f"  results {r.results}")
    return "\n".join(lines)
