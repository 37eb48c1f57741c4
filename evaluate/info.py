"""``ddpipe info STORE``: a label store's shape, completeness, bytes and ratio to SRe2L's layout.

The library call is ``run(InfoConfig(store=...))``, which returns
:func:`ddpipe.labelstore.store_info`'s dict (``docs/format.md`` §info). No torch needed.
"""

from __future__ import annotations

from dataclasses import dataclass

from ddpipe.config import check_choice, option
from .errors import EvaluateError

__all__ = ["InfoConfig", "run", "summary_text", "BACKENDS"]

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
        check_choice(EvaluateError, "backend", self.backend, BACKENDS)


def run(config: InfoConfig) -> dict:
    from ..labelstore import store_info

    return store_info(config.store, backend=config.backend, storage_options=config.storage_options)


def summary_text(info: dict) -> str:
    from ddpipe._format import human_bytes

    keys = ["path", "format_version", "num_samples", "num_classes", "epochs", "batch_size", "k", "value_codec",
            "value_kind", "temperature", "units", "complete_units", "keep"]
    lines = [f"{k:>26}: {info[k]}" for k in keys]
    lines.append(f"{'bytes_on_disk':>26}: {info['bytes_on_disk']} ({human_bytes(info['bytes_on_disk'])})")
    bpse = info["bytes_per_sample_epoch"]
    lines.append(f"{'bytes_per_sample_epoch':>26}: {bpse:.2f}" if bpse is not None else f"{'bytes_per_sample_epoch':>26}: -")
    lines.append(f"{'sre2l_equivalent_bytes':>26}: {info['sre2l_equivalent_bytes']} "
                 f"({human_bytes(info['sre2l_equivalent_bytes'])})")
    ratio = info["compression_vs_sre2l"]
    lines.append(f"{'compression_vs_sre2l':>26}: {ratio:.1f}x" if ratio else f"{'compression_vs_sre2l':>26}: -")
    return "\n".join(lines)
