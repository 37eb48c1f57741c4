"""``ddpipe export sre2l``: a ddpipe store as the label folder SRe2L's unmodified ``train_FKD.py`` reads.

The folder holds ``epoch_<e>/batch_<b>.tar`` and nothing else (``get_FKD_info`` counts every entry
as an epoch), each a ``torch.save`` of the list SRe2L's relabel writes::

    [coords FloatTensor [b, 4], flip_status BoolTensor [b], mix_index LongTensor [b] | None,
     mix_lam float | None, mix_bbox [numpy.int64 x 4] | None, soft_label HalfTensor [b, C]]

SRe2L's trainer never reads which images a batch holds: it replays
``RandomSampler(generator=manual_seed(42))`` (seed hard-coded) and takes the first image of each
batch to find its file. A store is exported only when every unit holds exactly the images that
replay gives (a relabel with the ``torch-sampler`` order and seed 42, or an import of such a
folder), when it is unpruned and complete, has no cutout (element 2 is the flips), and stores
logits. Anything else is refused with the reason. The store is never written to.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass

import numpy as np

from ddpipe._progress import progress_bar
from ddpipe.config import Result, check_choices, option
from ...labelstore import check_distinct_locations, dense_logits, open_store
from ..schedule import SamplerReplay
from .errors import InteropError
from .folders import SRE2L_SAMPLER_SEED

EXPORT_FORMATS = ("sre2l",)


@dataclass(frozen=True, kw_only=True)
class ExportConfig:
    """``ddpipe export sre2l STORE --out DIR``."""

    format: str = option(positional=True, choices=EXPORT_FORMATS, metavar="FORMAT",
                         help="the layout to write: sre2l (the folder SRe2L's train_FKD.py reads)")
    store: str = option(positional=True, metavar="STORE", help="the ddpipe store to export")
    out: str = option(help="the folder to create (must not exist, or be empty)")
    progress: bool = option(True, help="no progress bar on stderr")
    json: bool = option(False, help="print the result as one JSON object", cli=False)
    storage_options: dict | None = option(
        None, cli=False, help="Python only: fsspec options of a STORE behind a URL (s3://: s3fs's, e.g. "
        "{'client_kwargs': {'endpoint_url': ...}}); the CLI takes them from the environment (AWS_ENDPOINT_URL ...)")

    def __post_init__(self) -> None:
        check_choices(self, InteropError)


@dataclass(frozen=True, kw_only=True)
class ExportResult(Result):
    """What ``ddpipe export`` wrote; ``to_dict()`` is ``--json``'s object."""

    format: str  # the layout written (sre2l)
    store: str  # the store read
    out: str  # the folder written (absolute path)
    files: int  # batch files written
    samples: int  # label rows written
    epochs: int
    batch_size: int
    num_classes: int
    exact: bool  # every logit as the store holds it (k = C and the fp16 codec)
    note: str | None  # why not exact, else None
    seconds: float


def export_refusal(reader) -> str | None:
    """Why the store behind ``reader`` cannot be exported to SRe2L's layout, or None."""
    spec = reader.spec
    if getattr(spec, "value_kind", "probs") != "logits":
        return ("it stores probabilities (softmax at T={:g}), not logits; SRe2L's trainer applies its own "
                "temperature to logits. Relabel or import with --values logits".format(spec.temperature))
    if spec.pruning is not None or reader.num_units != spec.full_units:
        return "it is pruned; SRe2L's train_FKD.py reads every batch of every epoch (LPLD's trainer reads pruned folders)"
    if getattr(spec, "derived_fields", False):
        return ("it keeps no crops, flips or mixes (derived_fields: recomputed from the schedule and the images); "
                "SRe2L's files hold them: relabel without --derived-fields to export")
    if reader.complete_units != reader.num_units:
        return f"it is incomplete ({reader.complete_units} of {reader.num_units} units written); finish the relabel first"
    if spec.seed != SRE2L_SAMPLER_SEED:
        return (f"its schedule seed is {spec.seed}; SRe2L's train_FKD.py replays RandomSampler with seed "
                f"{SRE2L_SAMPLER_SEED} (hard-coded) to find each batch's images")
    order = (spec.augmentation or {}).get("order", "ddpipe")
    if order != "torch-sampler":
        return (f"its batches are in ddpipe's own order ({order!r}), not SRe2L's: relabel with the torch-sampler "
                "order (schedule recipe sre2l-torch, seed 42)")
    return None


def _dense_logits(unit, spec) -> tuple[np.ndarray, bool]:
    """The unit's full logit rows ``float16 [b, C]``: exact when ``k = C``; with ``k < C`` the other
    classes get the tail logit (:func:`ddpipe.labelstore.dense_logits`), so SRe2L's softmax at the
    store's temperature gives the stored top-k probabilities and the tail mass spread evenly."""
    idx, val = unit.topk_logits
    if spec.k == spec.num_classes:
        out = np.empty((len(idx), spec.num_classes), np.float16)
        np.put_along_axis(out, idx, val.astype(np.float16), axis=-1)
        return out, spec.value_codec == "fp16"  # fp32 logits are rounded to SRe2L's fp16
    return dense_logits(idx, val, unit.lse, spec.num_classes, spec.temperature).astype(np.float16), False


def run_export(config: ExportConfig) -> ExportResult:
    """Write ``config.store`` as an SRe2L label folder at ``config.out``; what was written."""
    from ddpipe.phase import run_phase

    return run_phase(config, ExportConfig, _export, "export")


def _export(config: ExportConfig) -> ExportResult:
    import torch

    t0 = time.perf_counter()
    check_distinct_locations(config.store, config.out, "export")
    reader = open_store(config.store, storage_options=config.storage_options)
    spec = reader.spec
    why = export_refusal(reader)
    if why:
        raise InteropError(f"{reader.path}: cannot export to SRe2L's layout: {why}")
    out = os.path.abspath(config.out)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise InteropError(f"{out}: exists and is not an empty folder; choose a new --out")
    B = spec.batch_size
    tmp = out + ".ddpipe-exporting"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    exact = True
    written = samples = 0
    bar = progress_bar(total=reader.num_units, desc="export sre2l", unit="batch", enabled=config.progress)
    try:
        replay = SamplerReplay(spec.num_samples, SRE2L_SAMPLER_SEED)
        for epoch in range(spec.epochs):
            order = replay.order(epoch)
            d = os.path.join(tmp, f"epoch_{epoch}")
            os.makedirs(d)
            for unit in reader.read_epoch(epoch):
                b = unit.batch
                want = order[b * B : (b + 1) * B]
                if not np.array_equal(unit.sample_ids, want):
                    raise InteropError(
                        f"{reader.path}: unit (epoch {epoch}, batch {b}) holds other images than SRe2L's sampler "
                        "replay gives for that batch; the store is not in SRe2L's order"
                    )
                cut = np.asarray(unit.cutout)
                if np.any((cut[:, 2] > cut[:, 0]) & (cut[:, 3] > cut[:, 1])):
                    raise InteropError(f"{reader.path}: unit (epoch {epoch}, batch {b}) has cutout boxes, which "
                                       "SRe2L's layout cannot hold (LPLD's ImageNet-21K layout can)")
                logits, ok = _dense_logits(unit, spec)
                exact &= ok
                if unit.mix_kind == "none":
                    mix_index = lam = bbox = None
                else:
                    mix_index = torch.from_numpy(np.asarray(unit.mix_perm, dtype=np.int64))
                    lam = float(unit.mix_lambda)
                    bbox = [np.int64(v) for v in unit.mix_box] if unit.mix_kind == "cutmix" else None
                record = [
                    torch.from_numpy(np.ascontiguousarray(unit.crops, dtype=np.float32)),
                    torch.from_numpy(np.asarray(unit.flips, dtype=bool)),
                    mix_index, lam, bbox,
                    torch.from_numpy(logits),
                ]
                torch.save(record, os.path.join(d, f"batch_{b}.tar"))
                written += 1
                samples += unit.count
                bar.update(1)
        if os.path.isdir(out):
            os.rmdir(out)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    return ExportResult(
        format="sre2l", store=reader.path, out=out, files=written, samples=samples,
        epochs=spec.epochs, batch_size=B, num_classes=spec.num_classes, exact=exact,
        note=None if exact else (
            f"k={spec.k} < {spec.num_classes}: the other classes get the tail logit (docs/interop.md)"
            if spec.k < spec.num_classes else "fp32 logits rounded to SRe2L's fp16"),
        seconds=seconds,
    )


run = run_export  # the phase entry point the CLI calls (ddpipe export)


def summary_text(result: ExportResult | dict) -> str:
    """The line(s) ``ddpipe export`` prints; takes the result or a dict read back from its JSON."""
    r = ExportResult.from_dict(result) if isinstance(result, dict) else result
    note = "" if r.exact else f"\n  note: {r.note}"
    return (f"exported {r.store} -> {r.out} (SRe2L train_FKD.py layout): {r.epochs} epochs, "
            f"{r.files} batch files of {r.batch_size}, {r.num_classes} classes, {r.seconds:.1f} s{note}")
