"""``ddpipe prune``: write a standalone store holding a random subset of a store's units (LPLD).

The library call is ``run(PruneConfig(src=..., out=..., keep=...)) -> PruneResult``; it calls
:func:`ddpipe.labelstore.prune_store` and writes ``results.json`` inside the new store, locally or at
its URL (:func:`ddpipe.labelstore.location.write_results`; zarr ignores files it does not know). ``keep`` accepts 0.025, ``"1/40"`` or ``"40x"``.
``dry_run`` only counts the units that would be kept. To prune *before* relabelling, so the
teacher never computes the dropped units, give ``keep`` to relabel instead. No torch needed.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from ddpipe._format import keep_fraction
from ddpipe.config import Result, check_choices, check_int, config_to_dict, option
from ddpipe.errors import DDPipeError
from .errors import PruneError
from ..labelstore.location import is_url, redact_storage_options, results_path, store_location, write_results

__all__ = ["PruneConfig", "PruneResult", "run", "summary_text"]

GRANULARITIES = ("batch", "epoch")


def _norm(path: str) -> str:
    """The store's location in labelstore's normal form (relative, ``~``, trailing slash, ``file://`` resolved)."""
    return store_location(path)


@dataclass(frozen=True, kw_only=True)
class PruneConfig:
    """What ``ddpipe prune`` keeps and where it writes. Bad values raise :class:`PruneError` here."""

    src: str = option(positional=True, help="path of the source store")
    out: str = option(help="path of the new store")
    keep: float = option(parse=keep_fraction, help="fraction of units to keep: 0.025, 1/40 or 40x")
    granularity: str = option("batch", choices=GRANULARITIES, help="keep random batches (default) or whole epochs")
    seed: int = option(0, help="seed of the random choice (default 0)")
    overwrite: bool = option(False, help="replace whatever is at --out")
    dry_run: bool = option(False, help="only report how many units would be kept")
    progress: bool = option(True, help="no progress on stderr (progress=False)")
    storage_options: dict | None = option(None, cli=False, help="Python only: fsspec options of a store behind a URL (s3://: s3fs's, e.g. {'client_kwargs': {'endpoint_url': ...}}); the CLI takes them from the environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID ...)")
    out_storage_options: dict | None = option(None, cli=False, help="Python only: those of --out (default: "
                                              "storage_options when out is a URL too)")

    def __post_init__(self) -> None:
        e = PruneError
        if not self.src or not self.out:
            raise e("src and out are required")
        try:
            object.__setattr__(self, "keep", keep_fraction(self.keep))
        except ValueError as err:
            raise e(f"keep: {err}") from None
        check_choices(self, e)
        check_int(e, "seed", self.seed, min=0)
        try:
            same = _norm(self.src) == _norm(self.out)
        except DDPipeError as err:
            raise e(f"src/out: {err}") from None
        if same:
            raise e(f"out {self.out} is the source store; prune writes a new store, choose another --out")
        out = os.path.expanduser(os.fspath(self.out))
        if not is_url(out) and os.path.isfile(out):
            raise e(f"out {self.out} is an existing file, not a store; choose another path")


@dataclass(frozen=True)
class PruneResult(Result):
    """The new store's ``ddpipe info`` fields (``info``) plus what was pruned; ``to_dict()`` puts the
    info fields at the top level, as ``ddpipe prune --json`` always printed them."""

    phase: str
    src: str
    out: str
    keep: float
    granularity: str
    seed: int
    dry_run: bool
    units: int  # the source's units
    kept_units: int
    wall_time_s: float
    config: dict
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = super().to_dict()
        info = d.pop("info")
        return {**info, **{k: v for k, v in d.items() if not (k == "units" and info)}, "source_units": self.units}


def run(config: PruneConfig) -> PruneResult:
    """Prune as ``config`` says; returns the result (also ``out/results.json``)."""
    from ddpipe.phase import run_phase

    return run_phase(config, PruneConfig, _run, "prune")


def _run(config: PruneConfig) -> PruneResult:
    from ..labelstore import open_store, prune_store, store_info
    from ..labelstore.prune import select_units

    t0 = time.perf_counter()
    reader = open_store(config.src, storage_options=config.storage_options)
    recorded = config_to_dict(config)
    for name in ("storage_options", "out_storage_options"):
        recorded[name] = redact_storage_options(recorded[name])
    common = dict(phase="prune", src=config.src, out=config.out, keep=config.keep, granularity=config.granularity,
                  seed=config.seed, dry_run=config.dry_run, units=reader.num_units, config=recorded)
    if config.dry_run:
        kept = select_units(reader.plan, config.keep, config.granularity, config.seed)
        return PruneResult(kept_units=int(len(kept)), wall_time_s=time.perf_counter() - t0, **common)
    out_opts = config.out_storage_options
    if out_opts is None and is_url(_norm(config.out)):
        out_opts = config.storage_options
    prune_store(config.src, config.out, config.keep, granularity=config.granularity, seed=config.seed,
                overwrite=config.overwrite, progress=config.progress, storage_options=config.storage_options,
                dst_storage_options=out_opts)
    info = store_info(config.out, storage_options=out_opts)
    res = PruneResult(kept_units=int(info["units"]), wall_time_s=time.perf_counter() - t0, info=info, **common)
    write_results(config.out, res, out_opts)  # inside the new store, locally or at its URL, as relabel does
    return res


def summary_text(res: PruneResult) -> str:
    if res.dry_run:
        return f"would keep {res.kept_units} of {res.units} units into {res.out}"
    from ddpipe._format import human_bytes

    info = res.info
    return (f"prune: kept {res.kept_units} of {res.units} units (keep {res.keep:.4g}, {res.granularity}) -> {res.out}\n"
            f"  {human_bytes(info.get('bytes_on_disk'))} on disk, "
            f"{info.get('compression_vs_sre2l') or 0:.1f}x smaller than SRe2L's layout\n"
            f"  results {results_path(res.out)}")
