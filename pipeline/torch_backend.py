"""The torch backend (the reference): a stock ``torch.utils.data.DataLoader`` with workers.

The sampler runs in the main process and hands each worker one whole unit (its schedule and
labels, read from the store there), so workers never touch the store; the worker decodes, crops,
flips and normalises with the reference stages, applies the ``mix`` stage (cutout, CutMix/Mixup)
and returns the batch with its unit. Nothing in
torch is patched: the batch is the dataset's item (``batch_size=None``). A ddpipe error in a worker
(an image that cannot be decoded, say) is returned rather than raised and raised again in the main
process as it is: one line naming the file, not torch's re-wrapped worker traceback.
"""

from __future__ import annotations

import time
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ddpipe.errors import DDPipeError
from ..labelstore import Unit
from .schedule import crop_pixels
from .stages import CropResize, Decode, Flip, Normalize, SampleContext, Stage

# which timing bucket each reference stage's time goes to (Loader.stage_seconds)
_STAGE_NAMES = {Decode: "decode", CropResize: "crop_resize", Flip: "crop_resize"}


class UnitImages(Dataset):
    """Map-style dataset whose "index" is a :class:`~ddpipe.labelstore.Unit`; returns ``(images, unit,
    seconds)`` (the time spent per stage on this batch, for :meth:`Loader.stage_seconds`)."""

    def __init__(self, source, stages: Sequence[Stage], mix=None):
        self.source = source
        self.stages = list(stages)
        self.mix = mix
        self._per_sample = [s for s in self.stages if not isinstance(s, Normalize)]
        self._normalize = next(s for s in self.stages if isinstance(s, Normalize))

    def __len__(self) -> int:  # not used by the sampler-driven loader
        return 0

    def __getitem__(self, unit: Unit):
        try:
            return self._images(unit)
        except DDPipeError as e:  # raised again, as it is, by TorchBackend.batches
            return _WorkerError(e)

    def _images(self, unit: Unit):
        ids = np.asarray(unit.sample_ids)
        boxes = crop_pixels(unit.crops, self.source.sizes[ids])
        out = []
        clock = time.perf_counter
        seconds = dict.fromkeys(("decode", "crop_resize", "collate", "mix"), 0.0)
        names = [_STAGE_NAMES.get(type(st), "collate") for st in self._per_sample]
        for i, sid in enumerate(ids):
            ctx = SampleContext(self.source, int(sid), boxes[i], bool(unit.flips[i]))
            x = None
            for st, name in zip(self._per_sample, names):
                t0 = clock()
                x = st.apply(x, ctx)
                seconds[name] += clock() - t0
            a = np.asarray(x)
            out.append(a[:, :, None] if a.ndim == 2 else a)
        t0 = clock()
        images = self._normalize.apply_batch(torch.from_numpy(np.stack(out)))
        t1 = clock()
        seconds["collate"] += t1 - t0
        if self.mix is not None:
            images = self.mix(images, unit)
            seconds["mix"] += clock() - t1
        return images, unit, seconds


class UnitSampler(Sampler):
    """Yields the units of ``keys`` from ``feed`` (read in the main process)."""

    def __init__(self, feed, keys: np.ndarray):
        self.feed = feed
        self.keys = np.asarray(keys)

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[Unit]:
        for k in self.keys:
            yield self.feed.get(int(k))


class _WorkerError:
    """A ddpipe error met in a worker, carried to the main process as the item."""

    def __init__(self, error: DDPipeError):
        self.error = error


def _first(x):
    return x


def _raising(batches: Iterator, seconds: dict) -> Iterator:
    """The workers' ``(images, unit, stage seconds)``: errors raised as they are, the seconds summed."""
    for item in batches:
        if isinstance(item, _WorkerError):
            raise item.error
        images, unit, spent = item
        for k, v in spent.items():
            seconds[k] = seconds.get(k, 0.0) + v
        yield images, unit


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
        self._seconds: dict[str, float] = {}

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, Unit]]:
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
        return _raising(iter(loader), self._seconds)

    def stage_seconds(self) -> dict[str, float]:
        """Seconds per stage summed over the workers (what they spent on the batches received so far)."""
        return dict(self._seconds)

    def state(self) -> dict:
        return {}

    def restore(self, state: dict) -> None:
        pass

    def close(self) -> None:
        pass
