"""``ddpipe recover``: synthesise (or select) an image set from teacher(s) with a ``ddpipe.synth`` method.

The library call is ``run(RecoverRunConfig(...)) -> RecoverResult``. It opens the teacher(s)
(:func:`ddpipe.evaluate.teacher.open_teachers`: a ``ddpipe squeeze`` teacher file, or a plain state
dict with ``model`` and ``input_size``) and the real training split
(:func:`ddpipe.evaluate.datasets.load_dataset`), then calls :func:`ddpipe.synth.recover`, which writes
``out`` as an ImageFolder plus ``manifest.json`` and resumes a killed run from its last finished
batch; the phase adds ``results.json`` (the result below). Under ``torchrun`` each rank joins the group
(:func:`ddpipe.pipeline.distributed.init_distributed`, its own GPU ``cuda:LOCAL_RANK`` or the CPU) and
optimises every ``world_size``-th batch into the same ``out``; rank 0 keeps the manifest and writes
``results.json``, and the images are those of one process with the same seed. DM's random networks are
DM's ConvNet from ``ddpipe.evaluate.models`` (``dm_model``). The module imports no torch at import time.

Why two config classes: :class:`ddpipe.synth.RecoverConfig` is the *method* (a recipe's loss
weights, optimiser, iterations ...: what ``synth`` runs); :class:`RecoverRunConfig` is this *phase*
(which recipe, which teachers and data, where to write, the few recipe fields a user overrides).
``run`` turns the second into the first with :func:`ddpipe.synth.create_method`.

Defaults fit the data: a method family given without a tag (``sre2l``) runs the dataset's own
recipe when ``synth`` has one (``sre2l.fmnist`` on Fashion-MNIST, :data:`DATASET_RECIPE_TAGS`),
else the family's default recipe, and the result (and stderr) says which and why.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ddpipe._progress import say
from ddpipe.config import Result, check_int, check_out_path, check_range, check_resume, config_to_dict, option, \
    result_values
from ._phase import RunOptions
from .errors import RecoverError
from .teacher import TeacherOptions

__all__ = ["RecoverRunConfig", "RecoverResult", "run", "summary_text", "resolve_recipe", "check_continuation",
           "MATCH_TERMS", "DATASET_RECIPE_TAGS"]

# the loss terms whose weight r_bn sets (SRe2L's r_bn, G-VBSM's r_loss)
MATCH_TERMS = ("bn_stats", "class_bn_stats", "bn_stats_ema", "conv_stats")
# dataset -> the recipe tag made for it (synth/config.py); datasets missing here use each family's default
DATASET_RECIPE_TAGS = {"fashion-mnist": "fmnist"}
INITS = ("noise", "real", "top", "min", "medium")


@dataclass(frozen=True, kw_only=True)
class RecoverRunConfig(TeacherOptions, RunOptions):
    """Everything ``ddpipe recover`` does, as one value (``None``: the recipe's value). Bad values
    raise :class:`RecoverError` here. (The method record itself is :class:`ddpipe.synth.RecoverConfig`.)
    The teacher fields (``teacher``, and ``model``, ``input_size`` ... for plain state dicts) are
    :class:`ddpipe.evaluate.teacher.TeacherOptions`'; selections and DM need no teacher. Rerunning into
    an ``out`` that holds a run continues it, if every field that changes the images (all but those marked
    ``changes_result=False``) is as it was."""

    error = RecoverError
    teacher_required = False

    out: str = option(help="output folder (ImageFolder new000/... plus manifest.json and results.json)", group="output",
                      changes_result=False)
    method: str = option("sre2l", group="method",
                         help="sre2l, cda, lpld, gvbsm, delt, dm, random, herding, or a recipe such as sre2l.in1k "
                              "(ddpipe.synth.list_methods()); a family runs the dataset's recipe when there is one "
                              "(sre2l.fmnist on fashion-mnist), else its default (default sre2l)")
    teacher: tuple[str, ...] = option((), metavar="CKPT", group="teacher",
                                      help="teacher.pt from `ddpipe squeeze`, or a plain state dict with --model and "
                                           "--input-size; repeat for several (G-VBSM uses them round-robin); none "
                                           "for random, herding and dm")
    ipc: int = option(10, group="method", help="images per class (default 10)")
    iterations: int | None = option(None, group="method", help="optimisation steps per batch (default: recipe)")
    lr: float | None = option(None, group="method", help="learning rate on the pixels (default: recipe)")
    batch_size: int | None = option(None, flags=("-b",), group="method", help="images per batch (default: recipe)")
    r_bn: float | None = option(None, group="method",
                                help="weight of the statistic-matching terms (SRe2L r_bn, G-VBSM r_loss; default: recipe)")
    first_bn_multiplier: float | None = option(None, group="method",
                                               help="first layer's statistic weight (default: recipe)")
    init: str | None = option(None, choices=INITS, group="method",
                              help="initialisation: noise, random real, or DELT's ranked real images (default: recipe)")
    jitter: int | None = option(None, group="method", help="roll jitter in pixels (default: recipe)")
    min_scale: float | None = option(None, group="method", help="RandomResizedCrop minimum scale (default: recipe)")
    flip: bool | None = option(None, group="method",
                               help="random horizontal flips (default: the recipe's, off for datasets whose flips "
                                    "change the label, e.g. digits)")
    round_iterations: int | None = option(None, group="method", help="DELT's ROUND_ITR (default: recipe)")
    dm_model: str = option("convnet", group="method", help="DM: the random network's registered model (default convnet)")
    stats_cache: str | None = option(None, group="method", changes_result=False,  # a cache of the same statistics
                                     help="G-VBSM: .pt file caching the real-data conv statistics "
                                          "(default OUT/gvbsm_stats.pt)")
    # data
    dataset: str | None = option(None, group="data",
                                 help="real data: fashion-mnist, digits, imagefolder:<path> (default: the teacher's dataset)")
    data_root: str | None = option(None, group="data", help="directory holding the dataset's files",
                                   changes_result=False)
    # output
    image_format: str = option("png", flags=("--format",), choices=("png", "jpeg"), group="output",
                               help="image files: png (lossless, default) or jpeg (SRe2L wrote PIL's default quality 75)")
    jpeg_quality: int = option(95, group="output", help="JPEG quality (default 95)")
    overwrite: bool = option(False, group="output", help="replace a different earlier run in --out",
                             changes_result=False)
    seed: int | None = option(None, group="run", help="seed of initialisation and augmentation (default: recipe, 0)")
    stop_after_batches: int | None = option(None, metavar="N", group="run", changes_result=False,
                                            help="stop after N batches (per rank under torchrun) as if killed; "
                                                 "for testing resume")

    def validate(self) -> None:
        super().validate()
        e = self.error
        check_out_path(e, "out", self.out)
        if not isinstance(self.method, str) or not self.method.strip():
            raise e("method is required")
        check_int(e, "ipc", self.ipc, min=1)
        check_int(e, "iterations", self.iterations, min=1, allow_none=True)
        check_range(e, "lr", self.lr, min=0, min_exclusive=True, allow_none=True)
        check_int(e, "batch_size", self.batch_size, min=1, allow_none=True)
        check_range(e, "r_bn", self.r_bn, min=0, allow_none=True)
        check_range(e, "first_bn_multiplier", self.first_bn_multiplier, min=0, allow_none=True)
        check_int(e, "jitter", self.jitter, min=0, allow_none=True)
        check_range(e, "min_scale", self.min_scale, min=0, max=1, min_exclusive=True, allow_none=True)
        check_int(e, "round_iterations", self.round_iterations, min=1, allow_none=True)
        check_int(e, "jpeg_quality", self.jpeg_quality, min=1, max=100)
        check_int(e, "seed", self.seed, min=0, allow_none=True)
        check_int(e, "stop_after_batches", self.stop_after_batches, min=0, allow_none=True)


@dataclass(frozen=True)
class RecoverResult(Result):
    """What a recover run wrote to ``results.json`` (the image folder's ``manifest.json`` is synth's own record)."""

    phase: str
    status: str
    out: str
    method: str
    recipe: str
    recipe_note: str | None
    dataset: str
    ipc: int
    num_classes: int
    counts: list
    input_size: int
    in_chans: int
    image_format: str
    batches_total: int
    batches_done: list
    resumed_batches: int
    runs: int
    wall_time_s: float
    losses: dict
    notes: dict
    teachers: list
    teacher_hashes: list
    method_config: dict  # the synth.RecoverConfig that ran (recipe plus overrides)
    config: dict  # this phase's RecoverRunConfig
    versions: dict
    manifest: str
    extra: dict


def resolve_recipe(method: str, dataset: str | None) -> tuple[str, str | None]:
    """``(recipe, note)``: a family name runs ``family.<dataset tag>`` when registered, else the family's
    default recipe (the note says so); a full recipe name runs as given."""
    from ..synth import default_recipe, is_method

    if "." in method:
        return default_recipe(method), None
    tag = DATASET_RECIPE_TAGS.get(dataset or "")
    if tag and is_method(f"{method}.{tag}"):
        return f"{method}.{tag}", f"{method} on {dataset}: the dataset's recipe {method}.{tag}"
    recipe = default_recipe(method)
    if recipe.split(".", 1)[1] in ("default", "test"):
        return recipe, None
    return recipe, (f"{method}: no recipe made for {dataset or 'this dataset'}; running {recipe} (its default) - "
                    f"pass --method {method}.<tag> to choose (ddpipe.synth.list_methods())")


def _real_data(split, input_size: int, in_chans: int):
    """``synth.RealData`` over a split: the array itself, or lazily decoded files resized and centre-cropped."""
    import numpy as np

    from ..synth import RealData

    if split.in_memory:
        return RealData(split.labels, images=split.images)

    def fetch(indices):
        from PIL import Image

        out = []
        for i in indices:
            with Image.open(split.paths[int(i)]) as img:
                img = img.convert("L" if in_chans == 1 else "RGB")
                w, h = img.size
                s = input_size / min(w, h)
                img = img.resize((max(input_size, round(w * s)), max(input_size, round(h * s))), Image.BILINEAR)
                w, h = img.size
                left, top = (w - input_size) // 2, (h - input_size) // 2
                arr = np.asarray(img.crop((left, top, left + input_size, top + input_size)), dtype=np.uint8)
            out.append(arr[..., None] if arr.ndim == 2 else arr)
        return np.stack(out)

    return RealData(split.labels, fetch=fetch)


# the manifest's record of the phase options that made the images (under "extra", which synth keeps as given)
RUN_OPTIONS = "run_options"


def _options(config: RecoverRunConfig) -> dict:
    """The config's fields that change the images, JSON-ready (teachers given as objects by their description)."""
    return {**result_values(config), "teacher": config.teacher_texts()}


def check_continuation(config: RecoverRunConfig, out: str) -> None:
    """Refuse, in one line naming each changed flag with its old and new value, to continue the run that
    ``out`` holds with other options that change the images (``overwrite`` replaces it instead). A manifest
    without the record (written before it existed) is left to synth's own check of its fingerprint."""
    from ..synth import read_manifest
    from ..synth.errors import RunStateError

    if config.overwrite or not os.path.isdir(out):
        return
    manifest = read_manifest(out)
    recorded = ((manifest or {}).get("extra") or {}).get(RUN_OPTIONS)
    if isinstance(recorded, dict):
        check_resume(RecoverRunConfig, recorded, _options(config), RunStateError, f"the recover run in {out}",
                     hint="rerun with the original values, choose another --out or pass --overwrite to replace it")


def run(config: RecoverRunConfig) -> RecoverResult:
    """Run recover as ``config`` says; returns the result (also in ``out/results.json``)."""
    from ddpipe.phase import run_phase

    return run_phase(config, RecoverRunConfig, _run, "recover")


def _run(config: RecoverRunConfig) -> RecoverResult:
    from ._phase import RESULTS, versions
    from .checkpoint import write_json_atomic
    from .distributed import init_distributed
    from .datasets import load_dataset
    from .models import create_model
    from .teacher import open_teachers
    from ..synth import create_method, recover

    out = os.path.abspath(os.path.expanduser(config.out))
    check_continuation(config, out)  # before any teacher or data is loaded
    dist = init_distributed(config.device, announce=config.progress)  # one process: config.device as given
    device = dist.device
    teachers = []
    if config.teacher:
        teachers = open_teachers(list(config.teacher), device=device, **config.teacher_facts())
    recorded = (teachers[0].meta.get("dataset") or {}).get("name") if teachers else None
    dataset_name = config.dataset or recorded
    if dataset_name is None:
        raise RecoverError("recover needs dataset (--dataset), or a teacher file that records its dataset")
    dataset = load_dataset(dataset_name, data_root=config.data_root)
    for t in teachers:
        if t.num_classes != dataset.num_classes:
            raise RecoverError(f"teacher {t.source} predicts {t.num_classes} classes but {dataset.name} has "
                               f"{dataset.num_classes}; use teachers squeezed on {dataset.name}")
    first = teachers[0] if teachers else None
    input_size = first.input_size if first else dataset.input_size
    in_chans = first.in_chans if first else dataset.in_chans
    mean = list(first.mean) if first else list(dataset.mean)
    std = list(first.std) if first else list(dataset.std)

    recipe, note = resolve_recipe(config.method, dataset.name)
    say(config.progress and bool(note), f"recover: {note}")
    cfg = create_method(recipe)
    overrides = dict(iterations=config.iterations, lr=config.lr, batch_size=config.batch_size, init=config.init,
                     jitter=config.jitter, min_scale=config.min_scale, round_iterations=config.round_iterations,
                     first_bn_multiplier=config.first_bn_multiplier, seed=config.seed,
                     flip=dataset.hflip and cfg.flip if config.flip is None else config.flip)
    if config.r_bn is not None:
        overrides["loss"] = {k: (config.r_bn if k in MATCH_TERMS else w) for k, w in cfg.loss.items()}
    cfg = create_method(recipe, **overrides)

    def model_fn():
        return create_model(config.dm_model, dataset.num_classes, in_chans, input_size)

    manifest = recover(
        cfg, teachers=[t.model for t in teachers], real=_real_data(dataset.train, input_size, in_chans),
        num_classes=dataset.num_classes, ipc=config.ipc, mean=mean, std=std, out=out, input_size=input_size,
        in_chans=in_chans, model_fn=model_fn if cfg.method == "dm" else None,
        teacher_ids=[t.teacher_hash for t in teachers] or None, device=device, image_format=config.image_format,
        jpeg_quality=config.jpeg_quality, overwrite=config.overwrite, progress=config.progress,
        stop_after_batches=config.stop_after_batches, stats_cache=config.stats_cache,
        rank=dist.rank, world_size=dist.world_size,
        extra={"dataset": dataset.name, "classes": list(dataset.classes), "teachers": [t.source for t in teachers],
               "dm_model": config.dm_model if cfg.method == "dm" else None, RUN_OPTIONS: _options(config)},
    )
    from ..synth import MANIFEST

    res = RecoverResult(
        phase="recover", status=manifest["status"], out=manifest["out"], method=cfg.method, recipe=cfg.recipe,
        recipe_note=note, dataset=dataset.name, ipc=manifest["ipc"], num_classes=manifest["num_classes"],
        counts=list(manifest["counts"]), input_size=manifest["input_size"], in_chans=manifest["in_chans"],
        image_format=manifest["image_format"], batches_total=manifest["batches_total"],
        batches_done=list(manifest["batches_done"]),
        resumed_batches=manifest.get("resumed_batches", 0), runs=manifest.get("runs", 1),
        wall_time_s=manifest["wall_time_s"], losses=manifest.get("losses", {}), notes=manifest.get("notes", {}),
        teachers=[t.source for t in teachers], teacher_hashes=[t.teacher_hash for t in teachers],
        method_config=cfg.to_dict(), config={**config_to_dict(config), "teacher": config.teacher_texts()},
        versions=versions(),
        manifest=os.path.join(manifest["out"], MANIFEST),
        extra={k: v for k, v in manifest.get("extra", {}).items() if k != RUN_OPTIONS})
    if dist.rank == 0:
        write_json_atomic(res.to_dict(), os.path.join(manifest["out"], RESULTS))
    return res


def summary_text(res: RecoverResult) -> str:
    """The human-readable result lines of a run."""
    if isinstance(res, dict):  # a results.json read back
        res = RecoverResult.from_dict(res)
    n = sum(res.counts)
    lines = [f"recover {res.status}: {res.recipe} wrote {n} images ({res.num_classes} classes x ipc "
             f"{res.ipc}) in {res.wall_time_s:.1f} s -> {res.out}"]
    if res.recipe_note:
        lines.append(f"  {res.recipe_note}")
    if res.resumed_batches:
        lines.append(f"  resumed: {res.resumed_batches} of {res.batches_total} batches were already done")
    ends = [v for v in res.losses.values() if v]
    if ends:
        last = ends[-1]
        lines.append("  last batch loss: " + ", ".join(f"{k} {v['start']:.4g} -> {v['end']:.4g}" for k, v in last.items()))
    lines.append(f"  results {os.path.join(res.out, 'results.json')}")
    return "\n".join(lines)
