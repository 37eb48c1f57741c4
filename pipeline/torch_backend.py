"""The torch backend (the reference): a stock ``torch.utils.data.DataLoader`` with workers.

The sampler runs in the main process and hands each worker one whole unit (its schedule and
labels, read from the store there), so workers never touch the store; the worker decodes, crops,
flips and normalises with the reference stages, applies the ``mix`` stage (cutout, CutMix/Mixup)
and returns the batch with its unit. Nothing in
torch is patched: the batch is the dataset's item (``batch_size=None``).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ddpipe.pipeline.schedule import UnitParams, crop_pixels
from ddpipe.pipeline.stages import Normalize, SampleContext, Stage


class UnitImages(Dataset):
    """Map-style dataset whose "index" is a :class:`UnitParams`; returns ``(images, unit)``."""

    def __init__(self, source, stages: Sequence[Stage], mix=None):
        self.source = source
        self.stages = list(stages)
        self.mix = mix
        self._per_sample = [s for s in self.stages if not isinstance(s, Normalize)]
        self._normalize = next(s for s in self.stages if isinstance(s, Normalize))

    def __len__(self) -> int:  # not used by the sampler-driven loader
        return 0

    def __getitem__(self, unit: UnitParams):
        ids = np.asarray(unit.sample_ids)
        boxes = crop_pixels(unit.crops, self.source.sizes[ids])
        out = []
        for i, sid in enumerate(ids):
            ctx = SampleContext(self.source, int(sid), boxes[i], bool(unit.flips[i]))
            x = None
            for st in self._per_sample:
                x = st.apply(x, ctx)
            a = np.asarray(x)
            out.append(a[:, :, None] if a.ndim == 2 else a)
        images = self._normalize.apply_batch(torch.from_numpy(np.stack(out)))
        if self.mix is not None:
            images = self.mix(images, unit)
        return images, unit


class UnitSampler(Sampler):
    """Yields the units of ``keys`` from ``feed`` (read in the main process)."""

    def __init__(self, feed, keys: np.ndarray):
        self.feed = feed
        self.keys = np.asarray(keys)

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[UnitParams]:
        for k in self.keys:
            yield self.feed.get(int(k))


def _first(x):
    return x


def _default_start_method() -> str | None:
    """``forkserver`` inside an initialised process group, else the platform default.

    Workers forked from a rank that already joined a gloo group share its sockets, and their exit
    can close the group's connections under the parent (seen here as "Connection closed by peer"
    in the next collective); a forkserver child never holds them.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return "forkserver"
    return None


class TorchBackend:
    name = "torch"

    def __init__(self, source, feed, stages: Sequence[Stage], mix=None, *, num_workers: int = 2, prefetch: int = 2,
                 start_method: str | None = None):
        self.source = source
        self.feed = feed
        self.dataset = UnitImages(source, stages, mix)
        self.num_workers = int(num_workers)
        self.prefetch = max(1, int(prefetch))
        self.start_method = start_method

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, UnitParams]]:
        keys = self.feed.keys(epoch)[start:]
        if len(keys) == 0:
            return iter(())
        kw = {}
        workers = min(self.num_workers, len(keys))
        if workers > 0:
            kw["prefetch_factor"] = self.prefetch
            method = self.start_method or _default_start_method()
            if method:
                import multiprocessing as mp

                kw["multiprocessing_context"] = mp.get_context(method)
        loader = DataLoader(
            self.dataset, batch_size=None, sampler=UnitSampler(self.feed, keys),
            num_workers=workers, collate_fn=_first, **kw,
        )
        return iter(loader)

    def state(self) -> dict:
        return {}

    def restore(self, state: dict) -> None:
        pass

    def close(self) -> None:
        pass
