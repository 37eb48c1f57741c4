"""The DALI backend: a parallel, batch-mode ``fn.external_source`` feeding the declared image stages.

The source callback is a pure function of DALI's ``BatchInfo(iteration, epoch_idx)``: it maps
them to this rank's unit of training epoch ``base_epoch + epoch_idx`` (the feed's ``keys``), and
returns the encoded bytes (or raw arrays) of the unit's images with their stored crop boxes and
flips. The stages then build ``decoders.image_slice`` (ROI decode of the stored box) or
``slice`` for raw arrays, ``resize`` and ``crop_mirror_normalize`` (stored flip + normalise).

It runs CPU-only (``device_id=None``) where there is no GPU and with the mixed decoder and GPU
operators where CUDA is present: the same graph, with ``device`` chosen once. Each worker re-opens
the store itself through zarr-python (whose IO thread is reset after a fork), so no tensorstore or
zarr thread state is shared across the fork; ``dali_start_method="spawn"`` is there for platforms
without fork (it re-imports the main module, so scripts need an ``if __name__ == "__main__"`` guard). With ``enable_checkpointing`` the pipeline's progress is part of the loader's state, so a
run resumes mid-epoch from ``Loader.state_dict()``.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from .device import device_index, resolve_device
from .errors import LoaderSpecError
from .schedule import crop_pixels
from .stages import DaliContext, Decode


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


class DaliSourceCallback:
    """Stateless batch callback: ``BatchInfo -> (images, anchors, shapes, flips, sample_ids)``."""

    def __init__(self, source, feed, base_epoch: int, start: int, channels: int):
        self.source = source
        self.feed = feed
        self.base_epoch = int(base_epoch)
        self.start = int(start)
        self.channels = int(channels)

    def __call__(self, info):
        epoch = self.base_epoch + int(info.epoch_idx)
        keys = self.feed.keys(epoch)
        it = int(info.iteration) + (self.start if int(info.epoch_idx) == 0 else 0)
        if it >= len(keys):
            raise StopIteration
        unit = self.feed.get(int(keys[it]))
        ids = np.asarray(unit.sample_ids, dtype=np.int64)
        boxes = crop_pixels(unit.crops, self.source.sizes[ids]).astype(np.int32)
        if self.source.encoded:
            images = [self.source.item(int(i)) for i in ids]
        else:
            images = [self.source.array(int(i), self.channels) for i in ids]
        return (
            images,
            np.ascontiguousarray(boxes[:, :2]),
            np.ascontiguousarray(boxes[:, 2:]),
            np.asarray(unit.flips, dtype=np.int32),
            ids,
        )


def _default_start_method() -> str:
    """``fork`` (fast), except inside an initialised torch process group: forked children share the
    group's sockets and can break its connections when they exit, so workers are spawned there."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return "spawn"
    except ImportError:
        pass
    return "fork"


def _worker_feed(feed):
    """The feed as DALI workers get it: pickled without its open reader, re-opened in the worker
    through zarr-python (which resets its IO thread after a fork; tensorstore's thread pools are
    not fork-safe)."""
    import copy

    if not getattr(feed, "with_labels", False):
        return feed
    wf = copy.copy(feed)
    wf.__dict__.update(feed.__getstate__())
    wf.backend = "zarr"
    return wf


class DaliBackend:
    name = "dali"

    def __init__(self, source, feed, stages, config, mix=None):
        if not dali_available():
            raise LoaderSpecError("backend 'dali' needs NVIDIA DALI (pip install nvidia-dali-cuda120); use backend 'torch'")
        self.source, self.feed, self.stages, self.config = source, feed, list(stages), config
        self.mix = mix
        dev = resolve_device(config.device)  # cpu | cuda | cuda:N (pipeline/device.py)
        self.device = "cpu" if dev == "cpu" else "gpu"  # DALI's spelling of its operators' placement
        self.device_id = (device_index(dev) or 0) if self.device == "gpu" else None  # cuda: GPU 0, as before
        self.batch_size = feed.spec.batch_size if feed.with_labels else feed.schedule.batch_size
        self.channels = next((s.channels for s in self.stages if isinstance(s, Decode)), 3)
        self._pipe = None
        self._iter = None
        self._hwc = False
        self._base = 0
        self._start = 0
        self._next_epoch = None  # the epoch the live pipeline will produce next (after a reset)
        self._needs_reset = False
        self._finished = True  # the live pipeline's last epoch ran to its end (so reset() is safe)
        self._restore_ckpt: dict | None = None

    # --- building ---------------------------------------------------------------------------------
    def _build(self, base_epoch: int, start: int, checkpoint: str | None = None) -> None:
        from nvidia.dali import fn, types
        from nvidia.dali.pipeline import Pipeline
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        self.close()
        cfg = self.config
        parallel = bool(cfg.dali_parallel) and cfg.num_workers > 0
        kw = dict(py_num_workers=cfg.num_workers, py_start_method=cfg.dali_start_method or _default_start_method()) if parallel else {}
        if checkpoint is not None:
            kw["checkpoint"] = checkpoint
        pipe = Pipeline(
            batch_size=self.batch_size, num_threads=max(1, cfg.threads),
            device_id=self.device_id, prefetch_queue_depth=max(1, cfg.prefetch),
            enable_checkpointing=True, exec_dynamic=True, **kw,
        )
        encoded = bool(self.source.encoded)
        callback = DaliSourceCallback(self.source, _worker_feed(self.feed), base_epoch, start, self.channels)
        with pipe:
            images, anchor, shape, flip, ids = fn.external_source(
                source=callback, num_outputs=5, batch=True, batch_info=True, parallel=parallel,
                dtype=[types.UINT8, types.INT32, types.INT32, types.INT32, types.INT64],
                ndim=[1 if encoded else 3, 1, 1, 0, 0],
                layout=["" if encoded else "HWC", "", "", "", ""],
            )
            ctx = DaliContext(encoded=encoded, device=self.device, anchor=anchor, shape=shape, flip=flip)
            ctx.pending["channels"] = self.channels
            node = images
            for st in self.stages:
                node = st.dali(node, ctx)
            pipe.set_outputs(node, ids)
        self._hwc = ctx.pending.get("output_layout") == "HWC"
        pipe.build()
        self._pipe = pipe
        self._iter = DALIGenericIterator(
            [pipe], ["images", "ids"], last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=False,
            prepare_first_batch=False,
        )
        self._base, self._start = base_epoch, start
        self._next_epoch = base_epoch
        self._needs_reset = False
        self._finished = True

    # --- iteration --------------------------------------------------------------------------------
    def batches(self, epoch: int, start: int = 0) -> Iterator:
        keys = self.feed.keys(epoch)
        ckpt = self._restore_ckpt
        self._restore_ckpt = None
        if start >= len(keys):
            return iter(())
        if ckpt is not None and ckpt.get("checkpoint"):
            self._build(int(ckpt["base_epoch"]), int(ckpt["start"]), ckpt["checkpoint"])
            self._next_epoch = epoch
        elif self._pipe is None or start != 0 or epoch != self._next_epoch or not self._finished:
            self._build(epoch, start)
        elif self._needs_reset:
            self._iter.reset()
        return self._run(epoch, keys, start)

    def _run(self, epoch: int, keys: np.ndarray, start: int):
        pos = start
        self._needs_reset = True
        self._finished = False
        self._next_epoch = epoch + 1
        for data in self._outputs(keys, start):
            out = data[0]
            if pos >= len(keys):
                raise LoaderSpecError(f"DALI produced more batches than epoch {epoch} has ({len(keys)})")
            unit = self.feed.get(int(keys[pos]))
            ids = out["ids"].cpu().numpy().reshape(-1)
            if not np.array_equal(ids, np.asarray(unit.sample_ids)):
                raise LoaderSpecError(
                    f"DALI batch {pos} of epoch {epoch} holds other samples than unit {unit.unit}; the pipeline is out of step"
                )
            pos += 1
            images = out["images"]
            if self._hwc:  # [b, H, W, C] -> channels-last [b, C, H, W], no copy
                images = images.permute(0, 3, 1, 2)
            yield (self.mix(images, unit) if self.mix is not None else images), unit
        if pos != len(keys):
            raise LoaderSpecError(f"DALI stopped after {pos} of epoch {epoch}'s {len(keys)} batches")
        self._finished = True

    def _outputs(self, keys: np.ndarray, start: int) -> Iterator:
        """DALI's batches; a failure inside the pipeline (a JPEG it cannot decode, say) is looked up
        in the units around it and raised as the one-line :class:`SourceError` naming the file."""
        it = iter(self._iter)
        pos = start
        while True:
            try:
                data = next(it)
            except StopIteration:
                return
            except RuntimeError:
                self._raise_source_error(keys, pos)
                raise
            pos += 1
            yield data

    def _raise_source_error(self, keys: np.ndarray, pos: int) -> None:
        """Decode the images of the units DALI was working on (this one and those prefetched after it)
        with the reference decoder: the first that fails raises its :class:`SourceError`."""
        for k in keys[pos : pos + max(1, self.config.prefetch) + 1]:
            for i in np.asarray(self.feed.get(int(k)).sample_ids):
                self.source.pil(int(i), self.channels)

    # --- resume --------------------------------------------------------------------------------------
    def state(self) -> dict:
        if self._iter is None:
            return {}
        return {"base_epoch": self._base, "start": self._start, "checkpoint": self._iter.checkpoints()[0]}

    def restore(self, state: dict) -> None:
        self._restore_ckpt = dict(state) if state else None

    def close(self) -> None:
        self._iter = None
        if self._pipe is not None:
            pipe, self._pipe = self._pipe, None
            del pipe
