"""``ddpipe info STORE``: a label store's shape, completeness, bytes and ratio to SRe2L's layout.

The library call is ``run(InfoConfig(store=...)) -> InfoResult``: the fields of
:func:`ddpipe.labelstore.store_info` (``docs/format.md`` §info) as a typed result whose ``to_dict()``
is that dict, key for key (``ddpipe info --json``). No torch needed.
"""

from __future__ import annotations

from dataclasses import dataclass

from typing import Any

from ddpipe.config import Result, check_choices, option
from .errors import EvaluateError

__all__ = ["InfoConfig", "InfoResult", "run", "summary_text", "BACKENDS"]

BACKENDS = ("auto", "tensorstore", "zarr")


@dataclass(frozen=True, kw_only=True)
class InfoConfig:
    """Which store ``ddpipe info`` summarises, read how."""

    store: str = option(positional=True, help="path (or URL) of the store")
    backend: str = option("auto", choices=BACKENDS,
                          help="read path: tensorstore when installed (default auto), or zarr-python")
    storage_options: dict | None = option(None, cli=False, help="Python only: fsspec options of a store behind a URL (s3://: s3fs's, e.g. {'client_kwargs': {'endpoint_url': ...}}); the CLI takes them from the environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID ...)")

    def __post_init__(self) -> None:
        if not self.store:
            raise EvaluateError("store is required")
        check_choices(self, EvaluateError)


@dataclass(frozen=True, kw_only=True)
class InfoResult(Result):
    """A store's summary: :func:`ddpipe.labelstore.store_info`'s fields (``docs/format.md`` §info)."""

    path: str  # the store's location (absolute path or URL)
    format_version: int
    num_samples: int
    num_classes: int
    epochs: int
    batch_size: int
    batches_per_epoch: int
    k: int
    value_codec: str
    value_kind: str
    exact_fields: Any
    index_coding: str  # format 4: packed or gaps (format 3: packed, 16/32-bit indices)
    derived_fields: bool  # format 4: the schedule fields are recomputed from the schedule (digest stored)
    temperature: float
    seed: int
    units: int  # units in the store (a pruned store: the kept ones)
    complete_units: int  # units in committed shards
    shards: int
    complete_shards: int
    pruning: dict | None
    keep: float  # fraction of the full schedule kept (1.0 unpruned)
    bytes_on_disk: int
    bytes_by_array: dict
    bytes_per_sample_epoch: float | None
    sre2l_equivalent_bytes: int
    sre2l_full_schedule_bytes: int
    compression_vs_sre2l: float | None
    image_set_hash: str
    teacher_hash: str
    augmentation: dict | None
    provenance: dict | None
    read_backend: str


def run(config: InfoConfig) -> InfoResult:
    """Summarise the store ``config`` names."""
    from ddpipe.phase import run_phase

    return run_phase(config, InfoConfig, _run, "info")


def _run(config: InfoConfig) -> InfoResult:
    from ..labelstore import store_info

    return InfoResult(**store_info(config.store, backend=config.backend, storage_options=config.storage_options))


def summary_text(info: InfoResult) -> str:
    from ddpipe._format import human_bytes

    keys = ["path", "format_version", "num_samples", "num_classes", "epochs", "batch_size", "k", "value_codec",
            "value_kind", "index_coding", "derived_fields", "temperature", "units", "complete_units", "keep"]
    lines = [f"{k:>26}: {getattr(info, k)}" for k in keys]
    lines.append(f"{'bytes_on_disk':>26}: {info.bytes_on_disk} ({human_bytes(info.bytes_on_disk)})")
    bpse = info.bytes_per_sample_epoch
    lines.append(f"{'bytes_per_sample_epoch':>26}: {bpse:.2f}" if bpse is not None else f"{'bytes_per_sample_epoch':>26}: -")
    lines.append(f"{'sre2l_equivalent_bytes':>26}: {info.sre2l_equivalent_bytes} "
                 f"({human_bytes(info.sre2l_equivalent_bytes)})")
    ratio = info.compression_vs_sre2l
    lines.append(f"{'compression_vs_sre2l':>26}: {ratio:.1f}x" if ratio else f"{'compression_vs_sre2l':>26}: -")
    return "\n".join(lines)
