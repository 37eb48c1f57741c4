"""The unit plan: which (epoch, batch) units a store holds, in training order.

A store holds the full schedule (:func:`ddpipe.labelstore.spec.full_plan`) or a random ``keep``
fraction of it (LPLD's pruning): :func:`select_units` draws that fraction, :func:`plan_units` plans
it before relabel (so the teacher skips everything else), :func:`pruned_spec` records it in the
spec, and :func:`recomputed_plan` recomputes a store's plan from its spec alone. Copying the kept
units of an existing store is :func:`ddpipe.labelstore.prune.prune_store`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ddpipe._format import keep_fraction
from .binding import plan_sha256
from .errors import SpecError
from .spec import PRUNE_GRANULARITIES, StoreSpec, full_plan

__all__ = ["plan_units", "pruned_spec", "recomputed_plan", "select_units"]


def _parse_keep(keep: Any) -> float:
    """``keep`` read by the one parser of keep fractions (:func:`ddpipe._format.keep_fraction`: 0.025,
    1/40 or 40x); anything else is a :class:`SpecError`."""
    try:
        return keep_fraction(keep)
    except (TypeError, ValueError):
        raise SpecError(f"keep must be a fraction in (0, 1] (0.025, 1/40 or 40x), got {keep!r}") from None


def select_units(plan: np.ndarray, keep: float, granularity: str = "batch", seed: int = 0) -> np.ndarray:
    """Keep a random ``keep`` fraction of the rows of ``plan`` (at least one unit or epoch).

    ``batch``: units drawn uniformly without replacement. ``epoch``: whole epochs drawn the same
    way (LPLD's epoch granularity). The result stays in training order.
    """
    keep = _parse_keep(keep)
    if granularity not in PRUNE_GRANULARITIES:
        raise SpecError(f"granularity must be one of {PRUNE_GRANULARITIES}, got {granularity!r}")
    rng = np.random.default_rng(seed)
    if granularity == "batch":
        n = max(1, int(round(keep * len(plan))))
        rows = np.sort(rng.choice(len(plan), size=n, replace=False))
        return plan[rows]
    epochs = np.unique(plan[:, 0])
    n = max(1, int(round(keep * len(epochs))))
    chosen = np.sort(rng.choice(epochs, size=n, replace=False))
    return plan[np.isin(plan[:, 0], chosen)]


def plan_units(spec: StoreSpec, keep: float, granularity: str = "batch", seed: int = 0) -> np.ndarray:
    """The (epoch, batch) units a pruned relabel run must compute, in training order: int64 ``[n, 2]``."""
    return select_units(full_plan(spec), keep, granularity, seed)


def pruned_spec(spec: StoreSpec, keep: float, granularity: str, seed: int, source_units: int | None = None) -> StoreSpec:
    """The spec of a pruned store: ``pruning.keep`` is the fraction of the *full* schedule kept."""
    keep = _parse_keep(keep)
    prior = spec.pruning["keep"] if spec.pruning else 1.0
    return spec.replace(
        pruning={
            "keep": prior * keep,
            "granularity": granularity,
            "seed": seed,
            "source_units": source_units or spec.full_units,
        }
    )


def recomputed_plan(spec: StoreSpec, num_units: int, recorded_sha: str | None = None) -> np.ndarray | None:
    """The plan a store of this spec holds, recomputed from the spec alone: the full schedule, or
    for a pruned store the units :func:`plan_units` draws with its pruning record. None when the
    spec does not determine it (a prune of a pruned store, an explicit plan): then the plan arrays,
    checked against ``plan_sha256``, are the reference."""
    full = full_plan(spec)
    if spec.pruning is None:
        plan = full
    else:
        p = spec.pruning
        try:
            plan = select_units(full, p["keep"], p["granularity"], p["seed"])
        except SpecError:
            return None
    if len(plan) != num_units:
        return None
    if recorded_sha is not None and plan_sha256(plan) != recorded_sha:
        return None
    return plan
