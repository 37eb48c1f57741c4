"""DD-Ranking's label-robust metrics for ``ddpipe bench table``'s rows.

DD-Ranking (NUS-HPC-AI-Lab/DD-Ranking, README "Label-Robust Score") ranks distilled sets by two
differences of test accuracy, in points:

- hard-label recovery ``HLR = acc(real, hard) - acc(syn, hard)``: how far the synthetic images with
  hard labels stay from the whole real training set with hard labels (lower is better);
- improvement over random ``IOR = acc(syn, any) - acc(random, any)``: the method's images against
  randomly selected real images of the same count under the identical evaluation (higher is better);

and their combination ``LRS = (exp(a) - exp(-1)) / (e - exp(-1))`` with ``a = w * IOR - (1 - w) * HLR``
(``w = 0.5`` on their leaderboard), which lies in ``[0, 1]`` when the accuracies are fractions: this
module takes them as fractions (points / 100), as the README's normalisation needs. (The repository's
code at b8b0966 passes percentages, for which ``exp(a)`` leaves ``[0, 1]``.)

Here: ``IOR`` is the shared recipe's paired difference to random (``delta_vs_random``: the same draw
and student seed, the identical evaluation); ``acc(syn, hard)`` is the ``hlr`` part's row (the shared
recipe's student on the method's images with hard labels); ``acc(real, hard)`` is the teacher's test
accuracy: the same architecture as the student, trained by ``ddpipe squeeze`` on the whole training
set with hard labels (its epochs are in ``table.json``).
"""

from __future__ import annotations

import math

W = 0.5
"""DD-Ranking's leaderboard weight of IOR against HLR."""


def lrs(ior: float, hlr: float, w: float = W) -> float:
    """DD-Ranking's label-robust score from ``ior`` and ``hlr`` in points (percent of the test set)."""
    a = w * ior / 100.0 - (1.0 - w) * hlr / 100.0
    return (math.exp(a) - math.exp(-1.0)) / (math.e - math.exp(-1.0))


def _syn_hard(rows: list[dict], method: str, ipc: int) -> dict | None:
    """The hard-label row of ``method``'s images at ``ipc`` under the shared recipe (the ``hlr`` part, or the
    label-settings part's ``hard`` setting at its IPC)."""
    for part in ("hlr", "labels"):
        for r in rows:
            if (r["part"], r["method"], r["ipc"], r["label_setting"]) == (part, method, ipc, "hard") \
                    and r.get("top1_mean") is not None:
                return r
    return None


def annotate(payload: dict) -> dict:
    """``payload`` with ``hlr``, ``ior`` and ``lrs`` (None where a number is missing) on every row of the
    shared recipe's main student, and ``ddranking`` saying where each number comes from."""
    rows = payload.get("rows") or []
    real = (payload.get("teacher") or {}).get("top1")
    out = []
    for r in rows:
        r = dict(r)
        if r.get("part") == "shared":
            ior = 0.0 if r["method"] == "random" else r.get("delta_vs_random")
            syn = _syn_hard(rows, r["method"], r["ipc"])
            hlr = None if real is None or syn is None else real - syn["top1_mean"]
            r.update(ior=ior, hlr=hlr, lrs=None if ior is None or hlr is None else lrs(ior, hlr))
        out.append(r)
    note = ("DD-Ranking (NUS-HPC-AI-Lab/DD-Ranking): HLR = acc(real, hard) - acc(syn, hard), IOR = acc(syn) - "
            "acc(random) under the identical evaluation, LRS = (exp(a) - exp(-1)) / (e - exp(-1)), a = 0.5 IOR - "
            "0.5 HLR with accuracies as fractions. Here IOR is the shared recipe's paired difference to random; "
            "acc(syn, hard) the hlr part (the shared recipe with hard labels); acc(real, hard) the teacher's test "
            "accuracy (the student's architecture trained on the whole training set with hard labels)")
    return {**payload, "rows": out, "ddranking": {"w": W, "real_hard_top1": real, "note": note}}
