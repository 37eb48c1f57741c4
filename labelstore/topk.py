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

from ddpipe.labelstore.errors import SpecError


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
        chosen = above | (tied & (np.cumsum(tied, axis=-1) <= need))
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
