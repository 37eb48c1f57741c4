"""Teacher outputs to top-k soft labels, and top-k back to dense targets.

Both directions are exact and documented in ``docs/format.md``:

- ``softmax_at``: softmax(logits / T) in float64, returned as float32.
- ``top_k``: the k largest values of each row, in descending order; among equal values the lower
  class index comes first (so the result never depends on a sort's tie handling).
- ``densify``: FKD's marginal smoothing. Each row gets its top-k values at their indices and the
  residual mass ``max(0, 1 - sum(top-k))`` spread evenly over the other ``C - k`` classes.
"""

from __future__ import annotations

import numpy as np

from .errors import SpecError


def softmax_at(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    if not np.all(np.isfinite(z)):
        raise SpecError("teacher logits contain NaN or infinity")
    z -= z.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z.astype(np.float32)


def top_k(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(indices int64 [..., k], values float32 [..., k])`` as described above."""
    p = np.asarray(probs, dtype=np.float32)
    c = p.shape[-1]
    if not 1 <= k <= c:
        raise SpecError(f"k must be in [1, {c}], got {k}")
    if not np.all(np.isfinite(p)):
        raise SpecError("teacher probabilities contain NaN or infinity")
    lead = p.shape[:-1]
    p2 = p.reshape(-1, c)
    if k == c:
        idx = np.broadcast_to(np.arange(c), p2.shape)
    else:
        kth = np.partition(p2, c - k, axis=-1)[:, c - k : c - k + 1]  # the k-th largest value
        above = p2 > kth
        tied = p2 == kth
        need = k - above.sum(axis=-1, keepdims=True)
        chosen = above | tied
        # rows with more values equal to the k-th than places left keep the lowest class indices;
        # only those need the running count (a cumsum over every row costs as much as the rest)
        rows = np.flatnonzero(tied.sum(axis=-1) > need[:, 0])
        if rows.size:
            t = tied[rows]
            chosen[rows] = above[rows] | (t & (np.cumsum(t, axis=-1) <= need[rows]))
        idx = np.nonzero(chosen)[1].reshape(-1, k)  # ascending class index within each row
    vals = np.take_along_axis(p2, idx, axis=-1)
    order = np.argsort(-vals, axis=-1, kind="stable")  # stable: equal values keep index order
    idx = np.take_along_axis(idx, order, axis=-1)
    vals = np.take_along_axis(vals, order, axis=-1)
    return idx.reshape(*lead, k).astype(np.int64), vals.reshape(*lead, k)


def densify(indices: np.ndarray, values: np.ndarray, num_classes: int) -> np.ndarray:
    """Dense float32 targets ``[..., num_classes]`` by marginal smoothing (see module docstring)."""
    idx = np.asarray(indices, dtype=np.int64)
    val = np.asarray(values, dtype=np.float32)
    k = idx.shape[-1]
    lead = idx.shape[:-1]
    if k == num_classes:
        fill = np.zeros(lead, dtype=np.float32)
    else:
        fill = np.maximum(np.float32(0), np.float32(1) - val.sum(axis=-1, dtype=np.float32)) / np.float32(
            num_classes - k
        )
    out = np.repeat(fill[..., None], num_classes, axis=-1).astype(np.float32)
    np.put_along_axis(out, idx, val, axis=-1)
    return out


# --- logit stores (value_kind = logits, docs/format.md §5) ---------------------------------------
def logsumexp_at(logits: np.ndarray, temperature: float) -> np.ndarray:
    """``log(sum(exp(logits / T)))`` of each row, float64 (the ``label_lse`` of a full row)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    if not np.all(np.isfinite(z)):
        raise SpecError("teacher logits contain NaN or infinity")
    m = z.max(axis=-1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True)))[..., 0]


def tail_logit(logits: np.ndarray, lse: np.ndarray, num_classes: int, temperature: float) -> np.ndarray:
    """The one logit the ``C - k`` classes outside the top-k share so that the row's log-sum-exp at
    ``temperature`` is ``lse``: ``T * (lse + log(tail / (C - k)))`` with
    ``tail = max(0, 1 - sum(exp(z_j / T - lse)))``; ``-inf`` when nothing is left (or ``k = C``)."""
    z = np.asarray(logits, dtype=np.float64)
    k = z.shape[-1]
    t = float(temperature)
    if k >= num_classes:
        return np.full(z.shape[:-1], -np.inf)
    mass = np.exp(z / t - np.asarray(lse, dtype=np.float64)[..., None]).sum(axis=-1)
    tail = np.maximum(0.0, 1.0 - mass)
    with np.errstate(divide="ignore"):
        return t * (np.asarray(lse, dtype=np.float64) + np.log(tail / (num_classes - k)))


def logit_probs(logits: np.ndarray, lse: np.ndarray, num_classes: int, store_temperature: float,
                temperature: float | None = None) -> np.ndarray:
    """Top-k probabilities (float32) of a logit store's rows at ``temperature`` (default: the store's).

    The row is the top-k logits at their classes and :func:`tail_logit` at every other class. At the
    store's temperature this is exact (``exp(z_j / T - lse)``, the tail mass spread evenly as FKD's
    marginal smoothing does); with ``k = C`` it is exact at every temperature; with ``k < C`` at
    another temperature the tail classes are taken as equal, which they are not (docs/format.md §5).
    """
    z = np.asarray(logits, dtype=np.float64)
    Ts = float(store_temperature)
    T = Ts if temperature is None else float(temperature)
    lse = np.asarray(lse, dtype=np.float64)
    if T == Ts:
        return np.exp(z / Ts - lse[..., None]).astype(np.float32)
    k = z.shape[-1]
    zt = tail_logit(z, lse, num_classes, Ts)
    m = np.maximum(z.max(axis=-1), zt)
    w = np.exp((z - m[..., None]) / T)
    tail = np.where(np.isfinite(zt), (num_classes - k) * np.exp((zt - m) / T), 0.0)
    return (w / (w.sum(axis=-1) + tail)[..., None]).astype(np.float32)


def dense_logits(indices: np.ndarray, logits: np.ndarray, lse: np.ndarray, num_classes: int,
                 temperature: float) -> np.ndarray:
    """Full float32 logit rows ``[..., num_classes]`` of a logit store: the stored top-k logits at their
    classes, :func:`tail_logit` elsewhere (``softmax(row / T)`` is :func:`logit_probs` at ``T``; a
    row with no tail mass gets the lowest finite float32 there)."""
    idx = np.asarray(indices, dtype=np.int64)
    z = np.asarray(logits, dtype=np.float64)
    zt = tail_logit(z, lse, num_classes, temperature)
    zt = np.where(np.isfinite(zt), zt, np.finfo(np.float32).min)
    out = np.repeat(zt[..., None], num_classes, axis=-1).astype(np.float32)
    np.put_along_axis(out, idx, z.astype(np.float32), axis=-1)
    return out
