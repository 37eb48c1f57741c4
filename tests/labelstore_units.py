"""Deterministic units for label-store tests: the same (spec, seed) always gives the same units.

Importable from test processes (SIGKILL and concurrency tests run writers in subprocesses).
"""

from __future__ import annotations

import numpy as np

from ddpipe.labelstore import StoreSpec, Unit


def make_unit(spec: StoreSpec, epoch: int, batch: int, seed: int = 0, label_mode: str = "logits") -> Unit:
    """One unit of a fake relabel run: a per-epoch permutation, random crops, cutmix, normal logits."""
    order = np.random.default_rng([seed, epoch]).permutation(spec.num_samples)
    ids = order[batch * spec.batch_size : (batch + 1) * spec.batch_size]
    b = len(ids)
    rng = np.random.default_rng([seed, epoch, batch, 1])
    h = rng.uniform(0.1, 1.0, b)
    w = rng.uniform(0.1, 1.0, b)
    crops = np.stack([rng.uniform(0, 1 - h), rng.uniform(0, 1 - w), h, w], axis=1)
    flips = rng.random(b) < 0.5
    kind = ("none", "cutmix", "mixup")[(epoch + batch) % 3]
    perm = rng.permutation(b)
    lam = float(rng.beta(1.0, 1.0))
    box = np.sort(rng.integers(0, 224, 4).reshape(2, 2), axis=0).T.reshape(-1)[[0, 2, 1, 3]]
    cutout = np.zeros((b, 4), np.int64)
    cutout[:, :2] = rng.integers(0, 100, (b, 2))
    cutout[:, 2:] = cutout[:, :2] + rng.integers(0, 100, (b, 2))
    kw: dict = {}
    if label_mode == "logits":
        kw["logits"] = rng.normal(0, 3, (b, spec.num_classes)).astype(np.float32)
    elif label_mode == "topk":
        idx = np.stack([rng.choice(spec.num_classes, spec.k, replace=False) for _ in range(b)])
        vals = np.sort(rng.dirichlet(np.ones(spec.k + 1), b)[:, : spec.k], axis=1)[:, ::-1].astype(np.float32)
        kw["topk"] = (idx, vals)
    else:
        raise ValueError(label_mode)
    # per-sample cutout colours on every other unit; the rest store the spec's constant (or zeros)
    if (epoch + batch) % 2 == 0:
        kw["cutout_fill"] = rng.integers(0, 256, (b, 3))
    return Unit(epoch, batch, ids, crops, flips, kind, perm, lam, box, cutout, **kw)


def all_units(spec: StoreSpec, plan=None, seed: int = 0, label_mode: str = "logits"):
    rows = plan if plan is not None else [(e, b) for e in range(spec.epochs) for b in range(spec.batches_per_epoch)]
    for e, b in rows:
        yield make_unit(spec, int(e), int(b), seed, label_mode)


def raw_arrays(path: str) -> dict[str, np.ndarray]:
    """Every array of a store as zarr-python decodes it (for exact comparisons)."""
    import zarr

    g = zarr.open_group(path, mode="r")
    return {name: np.asarray(arr[:]) for name, arr in g.arrays()}


def downgrade_to_format_1(path: str) -> None:
    """Turn a store into what format 1 wrote: no ``sample_cutout_fill`` array, ``format_version`` 1
    (every other array and the attributes are the same in both formats)."""
    import zarr

    g = zarr.open_group(path, mode="r+")
    del g["sample_cutout_fill"]
    attrs = dict(g.attrs["ddpipe"])
    attrs["format_version"] = 1
    g.attrs["ddpipe"] = attrs
