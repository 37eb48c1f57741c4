"""``ddpipe bench logits``: the store benchmark's teacher-logit model against a trained teacher's soft labels.

Every byte count of ``ddpipe bench store`` comes from :mod:`ddpipe.bench.teacher_model`, a seeded
model of teacher logits. This benchmark puts the model next to real soft labels, at the one shape
this machine can afford a real teacher for, and calibrates it:

- **Real.** A teacher trained on Fashion-MNIST by ddpipe's own ``squeeze`` phase (default
  ``convnet_d3_w32_bn``, 2 epochs; the folder is reused when a finished one is there), then ddpipe's
  own ``relabel`` phase at ``k = 10`` (every class), ``fp32``, temperature 1 over a small image set:
  ``ipc`` **real training images** per class (:func:`ddpipe.evaluate.datasets.real_subset`, in class
  order) standing in for a synthetic set, replayed for ``epochs`` epochs under the ``sre2l`` recipe
  (RandomResizedCrop 0.08-1, flips, CutMix; :mod:`ddpipe.pipeline.schedule`). The store holds the
  teacher's full softmax per sample-epoch. These images were in the teacher's training set, so the
  teacher may be surer of them than of unseen images (as of recovered images, which are optimised
  to be confidently classified).
- **Model.** :class:`~ddpipe.bench.teacher_model.TeacherModel` at the same ``num_classes`` and
  ``ipc``, on the very units (crops, flips, CutMix partner and lambda) the relabel run recorded:
  its defaults (``model-default``) and the parameters fitted here (``model-fitted``).

**Statistics** per label source, over every sample-epoch: the mean sorted-probability profile
``p_(1) ... p_(C)``, the mean entropy (nats), the top-k mass for k in (1, 3, 5), the share of
sample-epochs whose top-1 is the image's class, and how one image's top-k set moves across crops
and epochs: the mean Jaccard index of its top-k sets over all pairs of epochs (``jaccard_k``) and
the mean number of distinct classes that ever enter its top-k over all epochs (``distinct_k``;
grows with ``epochs``).

**Compressibility.** Each source's top-k (k in ``store_k``) is written into a format-4 store,
value codec ``abs512`` (every probability within 1/512), crops on the 28-pixel source grid, exactly
as ``ddpipe bench store --side-by-side`` writes its ddpipe stores
(:func:`ddpipe.bench.store_layouts.write_ddpipe`), read back (same classes, values within the bound)
and measured: bytes on disk per sample-epoch, the same without what the store holds created empty
(metadata: ``data``), and that for the label arrays alone (``label``).

**The ImageNet shape, model only.** The first ``imagenet_units`` units of ``bench store``'s
``imagenet1k-ipc50`` preset labelled by the model with the default and the fitted parameters, in the
same abs512 store at k = 10 (:func:`imagenet_rows`): what the fit does to the store benchmark's labels
(there is no real teacher at that shape here).

**Calibration.** A multi-start coordinate search (:func:`calibrate`) over a grid of ``margin``,
``margin_per_log_area``, ``margin_noise``, ``tail_sigma`` and ``affinity`` (the others keep their defaults),
minimising the loss of :func:`fit_loss` between the model's and the real statistics. The fitted
values are reported next to the defaults; the defaults themselves are not changed (the store
benchmark's recorded numbers depend on them). ``TeacherModel.calibrated`` builds the model with the
recorded fit (``FASHION_MNIST_FIT``); the run says whether its own fit is that one.

**Published ImageNet statistics** found for this comparison are listed in :data:`PUBLISHED` with
their sources; no published per-sample profile, entropy or top-k mass of an ImageNet teacher's soft
labels was found.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass, replace

import numpy as np

from . import common
from ..labelstore import create_store, open_store, store_info
from ..labelstore.spec import parse_plan
from .store import PRESETS
from .store_layouts import write_ddpipe
from .teacher_model import FASHION_MNIST_FIT, TeacherModel
from ddpipe._progress import say
from ddpipe.config import option
from ddpipe.errors import DDPipeError

DESCRIPTION = (
    "The teacher-logit model of `bench store` against a trained Fashion-MNIST teacher's soft labels on the "
    "same replay units: profile, entropy, top-k mass, top-k set stability, abs512 store bytes; fits the model."
)
TAG = "logits"
MASS_K = (1, 3, 5)
SET_K = (1, 3, 5)
VALUE_CODEC = "abs512"
VALUE_BOUND = 1.0 / 512  # abs512: every decoded probability within this of the written one
FIT_GRID = {
    "margin": (3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 16.0, 18.0, 20.0),
    "margin_per_log_area": (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0),
    "margin_noise": (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0),
    "tail_sigma": (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0),
    "affinity": (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 12.0, 15.0),
}
FIT_STARTS = 60  # random grid points scored before the descents
FIT_DESCENTS = 3  # coordinate descents, from the best starts
FIT_MAX_PASSES = 8
IMAGENET_PRESET = "imagenet1k-ipc50"  # bench store's preset the fitted model is also shown at
FLOOR = 1e-6  # probabilities below this count as this in the log terms of the loss

QUICK = dict(teacher_model="convnet_d2_w32_bn", teacher_epochs=1, teacher_samples=3000, ipc=20, epochs=2, imagenet_units=1)

PUBLISHED = (
    {
        "source": "naver-ai/relabel_imagenet README (Yun et al., CVPR 2021), https://github.com/naver-ai/relabel_imagenet",
        "found": "the ReLabel label maps of the ImageNet training set are distributed as relabel_imagenet.tar, "
                 "12 GB (one .pt label map per training image)",
    },
    {
        "source": "szq0214/FKD FKD/README.md (Shen & Xing, ECCV 2022), https://github.com/szq0214/FKD",
        "found": "the recommended released soft labels are 'Marginal Smoothing Top-5 (500-crop)': the top-5 "
                 "probabilities of each crop are kept",
    },
    {
        "source": "microsoft/Cream TinyViT/docs/SAVE_TEACHER_LOGITS.md, https://github.com/microsoft/Cream",
        "found": "TinyViT stores 'sparse logits' of CLIP-ViT-Large/14-22k per epoch (its teacher: 85.894 top-1 on "
                 "IN-1k); the document gives no statistics of the stored values",
    },
    {
        "source": "searched (search tool, corpora docs and pages): ReLabel, FKD, TinyViT, LPQLD, ImageNet teacher "
                  "softmax statistics",
        "found": "no published mean sorted-probability profile, entropy or top-k mass of an ImageNet teacher's "
                 "per-crop soft labels was found",
    },
)


# --- the configuration -----------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Config:
    """``ddpipe bench logits``'s settings (flags ``--field-name``); checked when the run starts."""

    data_root: str | None = option(None, group="teacher", help="where Fashion-MNIST's IDX files are (default: Debian's)")
    teacher_model: str = option("convnet_d3_w32_bn", group="teacher", help="teacher (default convnet_d3_w32_bn)")
    teacher_epochs: int = option(2, group="teacher", help="teacher training epochs (default 2)")
    teacher_samples: int | None = option(None, group="teacher",
                                         help="train the teacher on a seeded random subset of N training images "
                                              "(default all 60,000)")
    ipc: int = option(10, group="relabel",
                      help="real training images per class standing in for the synthetic set (default 10)")
    epochs: int = option(100, group="relabel", help="relabel epochs: crops per image (default 100)")
    batch_size: int = option(50, flags=("-b",), group="relabel", help="relabel = replay batch, CutMix partners (default 50)")
    schedule: str = option("sre2l", group="relabel", help="schedule recipe (default sre2l: RRC 0.08-1, flip, CutMix)")
    schedule_seed: int = option(42, group="relabel", help="relabel schedule seed (default 42)")
    seed: int = option(0, group="relabel", help="seed of the image draw, the teacher and the logit model (default 0)")
    store_k: tuple[int, ...] = option((3, 5, 10), parse=common.int_list, group="stores",
                                      help="comma-separated k of the abs512 format-4 stores (default 3,5,10)")
    fit: bool = option(True, group="stores", help="no calibration of the model (fit=False)")
    imagenet_units: int = option(8, group="stores",
                                 help="units of bench store's imagenet1k-ipc50 shape the default and fitted model label "
                                      "into the same abs512 store, model only (default 8 = 8,192 sample-epochs; 0: none)")
    threads: int | None = option(None, group="run", help="torch threads (default: torch's choice)")
    workdir: str | None = option(None, group="run",
                                 help="teacher, image set and stores (default bench/work/logits under the current "
                                      "directory)")
    results_dir: str | None = option(None, group="run",
                                     help="where the results JSON goes (default bench/results under the current directory)")
    progress: bool = option(True, group="run", help="no progress lines on stderr (progress=False)")
    quick: bool = option(False, group="run",
                         help="tiny run for tests: convnet_d2_w32_bn teacher, 1 epoch on 3,000 images, 20 images per "
                              "class, 2 relabel epochs, 1 ImageNet-shape unit (settings given explicitly still win)")
    json: bool = option(False, cli=False, help="print the rows as one JSON object on stdout (the CLI's --json)")


def resolve(config: Config):
    """The run's settings: ``quick`` applied to the fields left at their defaults, the rest checked."""
    args = common.resolved_args(config, QUICK)
    for name in ("teacher_epochs", "ipc", "epochs", "batch_size"):
        if int(getattr(args, name)) < 1:
            raise DDPipeError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.epochs < 2:
        raise DDPipeError(f"--epochs must be at least 2 (top-k sets are compared between epochs), got {args.epochs}")
    args.store_k = sorted(set(int(k) for k in args.store_k))
    if not args.store_k or min(args.store_k) < 1:
        raise DDPipeError(f"--store-k needs positive integers, got {config.store_k}")
    args.workdir = common.work_dir(args.workdir, "logits")
    return args


# --- statistics -----------------------------------------------------------------------------------
def dense(idx: np.ndarray, values: np.ndarray, num_classes: int) -> np.ndarray:
    """Top-k ``(indices [b, k], values [b, k])`` as float64 rows ``[b, num_classes]`` (zeros elsewhere)."""
    out = np.zeros((len(idx), num_classes))
    np.put_along_axis(out, np.asarray(idx, np.int64), np.asarray(values, np.float64), axis=1)
    return out


def label_stats(probs: np.ndarray, labels: np.ndarray) -> dict:
    """Statistics of ``probs`` ``[samples, epochs, classes]`` (one distribution per sample-epoch) whose
    images have classes ``labels`` ``[samples]``: see the module docstring."""
    s, e, c = probs.shape
    srt = -np.sort(-probs, axis=2)
    profile = srt.reshape(-1, c).mean(axis=0)
    entropy = -(probs * np.log(np.maximum(probs, 1e-300))).sum(axis=2)
    out = {
        "profile": profile.tolist(),
        "profile_sum": float(profile.sum()),
        "entropy": float(entropy.mean()),
        "top1_is_class": float((probs.argmax(axis=2) == labels[:, None]).mean()),
        "class_prob": float(probs[np.arange(s), :, labels].mean()),
    }
    for k in MASS_K:
        out[f"mass_{k}"] = float(srt[..., : min(k, c)].sum(axis=2).mean())
    order = np.argsort(-probs, axis=2, kind="stable")
    pairs = np.triu_indices(e, 1)
    for k in SET_K:
        k = min(k, c)
        member = np.zeros(probs.shape, np.float32)
        np.put_along_axis(member, order[..., :k], 1.0, axis=2)
        inter = np.einsum("sec,sfc->sef", member, member)  # shared classes of two epochs' top-k sets
        jac = inter / (2 * k - inter)
        out[f"jaccard_{k}"] = float(jac[:, pairs[0], pairs[1]].mean())
        out[f"distinct_{k}"] = float((member.max(axis=1) > 0).sum(axis=1).mean())
    return out


def fit_loss(model: dict, real: dict) -> float:
    """How far the model's statistics are from the real ones: the mean squared difference of the log
    sorted profiles, plus the squared entropy difference (nats), plus for k in (1, 3, 5) the squared
    differences of the log mass outside the top-k and of the top-k Jaccard between epochs, plus the
    squared difference of the top-1-is-class share. Logs floor at 1e-6, so the tail entries and the
    residual masses count relatively."""
    lp = lambda v: np.log(np.maximum(np.asarray(v, np.float64), FLOOR))  # noqa: E731
    loss = float(np.mean((lp(model["profile"]) - lp(real["profile"])) ** 2))
    loss += (model["entropy"] - real["entropy"]) ** 2
    for k in MASS_K:
        loss += float((lp(1.0 - model[f"mass_{k}"]) - lp(1.0 - real[f"mass_{k}"])) ** 2)
    for k in SET_K:
        loss += (model[f"jaccard_{k}"] - real[f"jaccard_{k}"]) ** 2
    loss += (model["top1_is_class"] - real["top1_is_class"]) ** 2
    return loss


# --- the real side: teacher, image set, relabel ------------------------------------------------------
def train_teacher(args) -> tuple[str, dict]:
    """The Fashion-MNIST teacher (ddpipe's squeeze phase), reused when a finished one is in the work dir."""
    from ..evaluate import squeeze

    cfg = dict(dataset="fashion-mnist", model=args.teacher_model, epochs=args.teacher_epochs,
               max_train_samples=args.teacher_samples, seed=args.seed)
    out = os.path.join(args.workdir, f"teacher-{common.folder_key(cfg)}")
    res = common.finished(squeeze.SqueezeResult, os.path.join(out, "results.json"))
    computed = res is None or not os.path.exists(os.path.join(out, "teacher.pt"))
    if computed:
        say(args.progress, f"teacher: {args.teacher_model}, {args.teacher_epochs} epochs on Fashion-MNIST ...", TAG)
        res = common.timed(out + ".bench.json", lambda: squeeze.run(squeeze.SqueezeConfig(
            out=out, dataset="fashion-mnist", data_root=args.data_root, model=args.teacher_model,
            epochs=args.teacher_epochs, max_train_samples=args.teacher_samples, seed=args.seed, resume=True,
            threads=args.threads, progress=False)))
    say(args.progress, f"teacher: top-1 {res.final['top1']:.2f}% ({'trained' if computed else 'reused'}: {out})", TAG)
    info = dict(cfg, top1=res.final["top1"], dir=out, computed_now=computed,
                cpu_s=common.sidecar_cpu_s(out + ".bench.json"), teacher_hash=res.teacher_hash)
    return os.path.join(out, "teacher.pt"), info


def image_set(args) -> tuple[str, np.ndarray, int]:
    """``ipc`` real training images per class as a ``.npz`` (class order); its path, labels and side."""
    from ..evaluate.datasets import load_dataset, real_subset

    ds = load_dataset("fashion-mnist", args.data_root)
    split = real_subset(ds, args.ipc, seed=args.seed)
    images = np.stack([split.image(i) for i in range(len(split))]).astype(np.uint8)
    labels = np.asarray(split.labels, np.int64)
    if not np.array_equal(labels, np.arange(len(labels)) // args.ipc):
        raise DDPipeError("the real subset is not in class order (the logit model needs class = sample // ipc)")
    path = os.path.join(args.workdir, f"images-ipc{args.ipc}-seed{args.seed}.npz")
    np.savez(path, images=images, labels=labels)
    if images.shape[1] != images.shape[2]:
        raise DDPipeError(f"expected square images, got {images.shape[1:3]}")
    return path, labels, int(images.shape[1])


def relabel_real(args, teacher_pt: str, images: str, num_classes: int) -> tuple[str, float]:
    """ddpipe's relabel phase: the teacher's full softmax (k = classes, fp32, T = 1) per sample-epoch."""
    from ..evaluate import relabel

    out = os.path.join(args.workdir, "real-labels.zarr")
    shutil.rmtree(out, ignore_errors=True)  # a left-over store of an interrupted run
    t0 = time.perf_counter()
    relabel.run(relabel.RelabelConfig(
        images=images, teacher=(teacher_pt,), out=out, epochs=args.epochs, batch_size=args.batch_size,
        schedule=args.schedule, k=num_classes, value_codec="fp32", temperature=1.0, seed=args.schedule_seed,
        workers=0, device="cpu", threads=args.threads, progress=False))
    return out, time.perf_counter() - t0


def read_units(store: str, grid: int) -> list:
    """The store's units in order, crops snapped to the ``grid``-pixel source (RandomResizedCrop boxes
    are whole source pixels; formats before 4 keep them in fixed point)."""
    units = []
    for u in open_store(store).iter_units(prefetch=False):
        crops = np.round(np.asarray(u.crops, np.float64) * grid) / grid
        units.append(replace(u, crops=crops.astype(np.float32)))
    return units


def to_array(units, topks, num_samples: int, epochs: int, num_classes: int) -> np.ndarray:
    """``[samples, epochs, classes]`` dense probabilities from each unit's top-k."""
    out = np.full((num_samples, epochs, num_classes), np.nan)
    for u, (idx, p) in zip(units, topks):
        out[np.asarray(u.sample_ids, np.int64), int(u.epoch)] = dense(idx, p, num_classes)
    if np.isnan(out).any():
        raise DDPipeError("the relabel store does not cover every sample-epoch")
    return out


# --- the model side -----------------------------------------------------------------------------------
def model_topks(units, num_classes: int, ipc: int, seed: int, **params) -> list:
    model = TeacherModel(num_classes, ipc, seed, **params)
    return [model.topk(u, num_classes) for u in units]


def calibrate(units, real: dict, labels, shape, ipc: int, seed: int, progress: bool) -> dict:
    """Multi-start coordinate search over :data:`FIT_GRID`: :data:`FIT_STARTS` random grid points
    (seeded) and the defaults are scored, the best :data:`FIT_DESCENTS` of them start a coordinate
    search (one parameter at a time over its grid values, until a full pass gains nothing). Returns
    the fitted parameters, the loss at the defaults and at the fit, and the number of model evaluations."""
    s, e, c = shape
    defaults = {name: float(getattr(TeacherModel(c, ipc), name)) for name in FIT_GRID}
    cache: dict = {}

    def loss_at(params: dict) -> float:
        key = tuple(sorted(params.items()))
        if key not in cache:
            probs = to_array(units, model_topks(units, c, ipc, seed, **params), s, e, c)
            cache[key] = fit_loss(label_stats(probs, labels), real)
        return cache[key]

    rng = np.random.default_rng([seed, 11])
    starts = [defaults] + [{n: float(v[rng.integers(len(v))]) for n, v in FIT_GRID.items()} for _ in range(FIT_STARTS)]
    starts = sorted(starts, key=loss_at)[:FIT_DESCENTS]
    best, best_loss = None, math.inf
    for i, point in enumerate(starts):
        point_loss = loss_at(point)
        for _ in range(FIT_MAX_PASSES):
            before = point_loss
            for name, values in FIT_GRID.items():
                for v in values:
                    trial = dict(point, **{name: float(v)})
                    if loss_at(trial) < point_loss - 1e-12:
                        point, point_loss = trial, loss_at(trial)
            if point_loss >= before - 1e-12:
                break
        say(progress, f"fit descent {i + 1}/{len(starts)}: loss {point_loss:.4f} at {point}", TAG)
        if point_loss < best_loss:
            best, best_loss = point, point_loss
    return {"defaults": defaults, "fitted": best, "loss_default": loss_at(defaults), "loss_fitted": best_loss,
            "evaluations": len(cache), "grid": {k: list(v) for k, v in FIT_GRID.items()},
            "search": f"{FIT_STARTS} random grid points + the defaults, coordinate descent from the best {FIT_DESCENTS}"}


# --- stores ---------------------------------------------------------------------------------------------
def _label_bytes(info: dict) -> int:
    return sum(v for name, v in info["bytes_by_array"].items() if name.startswith("label_"))


def store_row(source: str, units, topks, k: int, base_spec, grid: int, workdir: str, plan=None) -> dict:
    """``topks`` truncated to ``k`` in a format-4 ``abs512`` store: written, read back, measured.
    ``data_bytes`` leaves out what the same store holds created empty (metadata, zarr.json files);
    ``label_bytes`` is that for the ``label_*`` arrays alone."""
    spec = base_spec.replace(k=k, value_codec=VALUE_CODEC, format_version=4, crop_grid=grid)
    path = os.path.join(workdir, f"store-{source}-k{k}.zarr")
    with create_store(path, spec, plan, overwrite=True):
        pass
    empty = store_info(path)
    kept = [replace(u, topk=(idx[:, :k].astype(np.int64), p[:, :k].astype(np.float32))) for u, (idx, p) in zip(units, topks)]
    write_ddpipe(path, spec, plan, kept, logits=False)
    err, same = 0.0, True
    for u, got in zip(kept, open_store(path).iter_units(prefetch=False)):
        same &= bool(np.array_equal(got.topk[0], u.topk[0]) and np.array_equal(got.sample_ids, u.sample_ids))
        err = max(err, float(np.abs(got.topk[1] - u.topk[1]).max()))
    info = store_info(path)
    samples = int(sum(u.count for u in kept))
    shutil.rmtree(path, ignore_errors=True)
    return {"source": source, "k": k, "codec": VALUE_CODEC, "format": 4, "units": len(kept), "samples": samples,
            "bytes": int(info["bytes_on_disk"]), "bytes_per_sample_epoch": info["bytes_on_disk"] / samples,
            "data_bytes_per_sample_epoch": (info["bytes_on_disk"] - empty["bytes_on_disk"]) / samples,
            "label_bytes_per_sample_epoch": (_label_bytes(info) - _label_bytes(empty)) / samples,
            "max_prob_error": err, "roundtrip": bool(same and err <= VALUE_BOUND + 1e-7)}


def imagenet_rows(n_units: int, seed: int, fitted: dict | None, workdir: str) -> list[dict]:
    """The model alone at ``bench store``'s ImageNet-1K IPC 50 shape (1,000 classes, batch 1,024, CutMix,
    224 px): its first ``n_units`` units at k = 10 with the default and the fitted parameters, the top-1
    and top-10 mass and the same format-4 abs512 store row. No real teacher here: this shows what the fit
    does to the store benchmark's labels, not how real ImageNet labels compress."""
    preset = PRESETS[IMAGENET_PRESET]
    sched = preset.relabel_schedule(seed)
    base = sched.store_spec(preset.num_classes, 10, value_codec="fp16", temperature=1.0, teacher_hash="bench.teacher_model")
    plan = parse_plan(base, None)[:n_units]
    units = [sched.unit(int(e), int(b)) for e, b in plan]
    models = {"model-default": {}, **({"model-fitted": fitted} if fitted else {})}
    rows = []
    for name, params in models.items():
        model = TeacherModel(preset.num_classes, preset.ipc, seed, **params)
        topks = [model.topk(u, 10) for u in units]
        vals = np.concatenate([p for _i, p in topks]).astype(np.float64)
        row = store_row(name, units, topks, 10, base, preset.image_size, workdir, plan=plan)
        rows.append(dict(row, preset=preset.name, num_classes=preset.num_classes, mass_1=float(vals[:, 0].mean()),
                         mass_10=float(vals.sum(axis=1).mean())))
    return rows


# --- the run ----------------------------------------------------------------------------------------------
STAT_COLUMNS = [
    ("source", "source", ""), ("entropy", "entropy", ".3f"), ("mass_1", "mass@1", ".4f"), ("mass_3", "mass@3", ".4f"),
    ("mass_5", "mass@5", ".5f"), ("top1_is_class", "top1=class", ".3f"), ("jaccard_1", "J@1", ".3f"),
    ("jaccard_3", "J@3", ".3f"), ("jaccard_5", "J@5", ".3f"), ("distinct_3", "distinct@3", ".2f"),
    ("distinct_5", "distinct@5", ".2f"),
]
STORE_COLUMNS = [
    ("source", "source", ""), ("k", "k", ""), ("codec", "codec", ""), ("bytes", "bytes", ",d"),
    ("bytes_per_sample_epoch", "B/sample-ep", ".2f"), ("data_bytes_per_sample_epoch", "data B/s-e", ".2f"),
    ("label_bytes_per_sample_epoch", "label B/s-e", ".2f"), ("label_vs_real", "label vs real", ".3f"),
    ("max_prob_error", "max prob err", ".2e"), ("roundtrip", "round-trip", ""),
]

IMAGENET_COLUMNS = [
    ("source", "source", ""), ("num_classes", "classes", ",d"), ("mass_1", "mass@1", ".4f"), ("mass_10", "mass@10", ".4f"),
    ("bytes_per_sample_epoch", "B/sample-ep", ".2f"), ("data_bytes_per_sample_epoch", "data B/s-e", ".2f"),
    ("label_bytes_per_sample_epoch", "label B/s-e", ".2f"), ("max_prob_error", "max prob err", ".2e"),
    ("roundtrip", "round-trip", ""),
]


def profile_rows(stats: list[dict], num_classes: int) -> tuple[list[dict], list]:
    rows = [dict({"source": s["source"]}, **{f"p{i + 1}": v for i, v in enumerate(s["profile"])}) for s in stats]
    cols = [("source", "source", "")] + [(f"p{i + 1}", f"p({i + 1})", ".2e") for i in range(num_classes)]
    return rows, cols


def run(config: Config) -> int:
    """Train/reuse the teacher, relabel, model, fit, stores: print the tables, write the results JSON."""
    import json

    args = resolve(config)
    out = common.table_stream(config.json)
    t_start = time.perf_counter()
    os.makedirs(args.workdir, exist_ok=True)
    teacher_pt, teacher = train_teacher(args)
    images, labels, side = image_set(args)
    num_classes = int(labels.max()) + 1
    say(args.progress, f"relabel: {len(labels)} real training images, {args.epochs} epochs, batch {args.batch_size} ...", TAG)
    store, relabel_s = relabel_real(args, teacher_pt, images, num_classes)
    base_spec = open_store(store).spec
    units = read_units(store, side)
    shape = (len(labels), args.epochs, num_classes)
    real_topks = [u.topk for u in units]
    real = dict(source="real", **label_stats(to_array(units, real_topks, *shape), labels))
    sources = {"real": real_topks, "model-default": model_topks(units, num_classes, args.ipc, args.seed)}
    fit = None
    if args.fit:
        t0 = time.perf_counter()
        fit = calibrate(units, real, labels, shape, args.ipc, args.seed, args.progress)
        fit["wall_s"] = time.perf_counter() - t0
        fit["named_set"] = dict(FASHION_MNIST_FIT)  # TeacherModel.calibrated's parameters
        fit["fitted_equals_named_set"] = fit["fitted"] == fit["named_set"]
        sources["model-fitted"] = model_topks(units, num_classes, args.ipc, args.seed, **fit["fitted"])
    stats = [real] + [dict(source=name, **label_stats(to_array(units, t, *shape), labels))
                      for name, t in sources.items() if name != "real"]
    if fit:
        for s in stats:
            s["fit_loss"] = 0.0 if s["source"] == "real" else fit_loss(s, real)
    say(args.progress, f"stores: format 4, {VALUE_CODEC}, k in {args.store_k} ...", TAG)
    stores = [store_row(name, units, t, k, base_spec, side, args.workdir)
              for k in args.store_k for name, t in sources.items() if k <= num_classes]
    for r in stores:
        ref = next(x for x in stores if x["source"] == "real" and x["k"] == r["k"])
        r["data_vs_real"] = r["data_bytes_per_sample_epoch"] / ref["data_bytes_per_sample_epoch"]
        r["label_vs_real"] = r["label_bytes_per_sample_epoch"] / ref["label_bytes_per_sample_epoch"]
    shutil.rmtree(store, ignore_errors=True)
    imagenet = imagenet_rows(args.imagenet_units, args.seed, fit["fitted"] if fit else None, args.workdir) \
        if args.imagenet_units > 0 else []

    prof_rows, prof_cols = profile_rows(stats, num_classes)
    print(f"ddpipe bench logits: teacher {args.teacher_model} ({teacher['top1']:.2f}% top-1) vs bench/teacher_model.py "
          f"on the same {len(units)} units ({len(labels)} real training images standing in for a synthetic set, "
          f"{args.epochs} epochs, {args.schedule}, T=1)", file=out)
    print("\nmean sorted-probability profile", file=out)
    print(common.format_table(prof_rows, prof_cols), file=out)
    print("\nentropy (nats), top-k mass, top-1 = image's class, top-k set Jaccard between epochs, distinct classes "
          f"in a sample's top-k over {args.epochs} epochs", file=out)
    print(common.format_table(stats, STAT_COLUMNS), file=out)
    print(f"\nformat-4 stores ({VALUE_CODEC}: probabilities within 1/512), {len(units)} units", file=out)
    print(common.format_table(stores, STORE_COLUMNS), file=out)
    if imagenet:
        print(f"\nthe model alone at bench store's {IMAGENET_PRESET} shape (k = 10, {VALUE_CODEC}, format 4, "
              f"{imagenet[0]['units']} units): no real teacher at this shape", file=out)
        print(common.format_table(imagenet, IMAGENET_COLUMNS), file=out)
    if fit:
        print(f"\ncalibration ({fit['search']}; loss: bench/logit_profile.py fit_loss)", file=out)
        print(common.format_table(
            [dict(parameter=n, default=fit["defaults"][n], fitted=fit["fitted"][n]) for n in FIT_GRID],
            [("parameter", "parameter", ""), ("default", "default", ".3g"), ("fitted", "fitted", ".3g")]), file=out)
        print(f"loss {fit['loss_default']:.4f} at the defaults, {fit['loss_fitted']:.4f} fitted "
              f"({fit['evaluations']} model evaluations); TeacherModel.calibrated (FASHION_MNIST_FIT) "
              f"{'is' if fit['fitted_equals_named_set'] else 'is NOT'} this fit", file=out)
    print("\npublished ImageNet soft-label statistics:", file=out)
    for p in PUBLISHED:
        print(f"  - {p['found']} [{p['source']}]", file=out)
    payload = {
        "benchmark": "logits",
        "quick": bool(args.quick),
        "question": "how do bench/teacher_model.py's synthetic labels compare with a trained teacher's, and what "
                    "does that do to the store's bytes?",
        "teacher": teacher,
        "relabel": dict(images=f"{args.ipc} real Fashion-MNIST training images per class (real_subset, seed {args.seed}) "
                               "standing in for a synthetic set", num_samples=len(labels), num_classes=num_classes,
                        epochs=args.epochs, batch_size=args.batch_size, schedule=args.schedule,
                        schedule_seed=args.schedule_seed, temperature=1.0, units=len(units), wall_s=relabel_s),
        "stats": stats,
        "stores": stores,
        "imagenet_model": imagenet,
        "calibration": fit,
        "published": list(PUBLISHED),
        "wall_time_s": time.perf_counter() - t_start,
        "machine": common.machine_info(),
    }
    path = common.write_results("logits", payload, args.results_dir)
    print(f"\nresults: {path}", file=out, flush=True)
    if config.json:
        print(json.dumps(payload, default=common.json_default))
    return 0
