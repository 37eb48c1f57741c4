"""The batched backend: crop + resize on decoded uint8 with torch kernels, a batch at a time, on the CPU or a GPU.

``LoaderConfig(backend="batched")`` runs the declared image stages (decode, stored crop, stored
flip, normalise) and the shared ``mix`` stage in this process, with no per-image Python objects
beyond one kernel call, and no worker processes (so no batch is copied through shared memory).
Two kernels compute the same pixels:

- ``per-sample`` (the CPU default): each stored box is cut from the decoded uint8 image (a view)
  and resized by torch's antialiased bilinear uint8 kernel (channels-last, SIMD: the same filter
  as Pillow's ``resize(BILINEAR)``, within one level), straight into a uint8 batch buffer, flipped
  on the way. An encoded image is decoded on first use and kept in RAM for the later epochs when
  the whole decoded set fits in a quarter of the available memory (``resident="auto"``; ``False``
  decodes it every time). A thread pool (``num_workers`` threads; torch releases the GIL) splits
  the batch, and each thread normalises its slice into the float output at once. Output batches come from a small
  pool that is reused only once the consumer has dropped every view of a batch (fresh 77 MB
  buffers per batch cost more in page faults than the resize itself on a VM).
- ``matmul`` (the GPU default): the whole decoded set is resident on the device as one padded
  uint8 tensor (:func:`resident_images`; streamed per batch from host memory when it does not
  fit), and a batch is ``Wy @ X @ Wx^T`` per channel with per-sample resize matrices that hold
  Pillow's antialiased bilinear weights restricted to the stored box (no pixel outside the box is
  sampled; a stored flip reverses ``Wx``'s rows): two batched matmuls for any batch, then normalise
  and mix on the device. The same code runs on the CPU (``device="cpu"``), which is how it is
  tested here.

Both keep the pixel semantics of :mod:`ddpipe.pipeline.stages` (``crop_pixels`` boxes, crop then
resize, bilinear with antialiasing, flip, ``(x/255 - mean)/std``, then cutout and CutMix/Mixup from
the stored parameters) and match the torch reference within a mean of 1/255 per pixel
(``tests/test_pipeline_batched.py``). Images are decoded by the reference decoder (Pillow) or read
from a decoded cache (:mod:`ddpipe.pipeline.cache`), which is what makes this path fast: decoding
is ~0.4 ms of every image's ~1 ms in the reference loader.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .backends import KERNELS
from .device import torch_device
from .errors import LoaderSpecError
from .schedule import crop_pixels
from .stages import CropResize, Decode, Normalize

STAGES = ("decode", "crop_resize", "collate", "mix")


# --- kernel selection (the device: pipeline/device.py) ------------------------------------------------
def resolve_kernel(kernel: str, device: torch.device) -> str:
    if kernel not in KERNELS:
        raise LoaderSpecError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel == "auto":
        return "per-sample" if device.type == "cpu" else "matmul"
    return kernel


# --- Pillow's antialiased bilinear weights as dense matrices ----------------------------------------------
def resize_weights(start: torch.Tensor, length: torch.Tensor, out_size: int, full: int,
                   flip: torch.Tensor | None = None, dtype=torch.float32) -> torch.Tensor:
    """``[b, out_size, full]``: row ``i`` of sample ``s`` holds the weights of output pixel ``i`` over
    the input axis of length ``full`` when the window ``[start, start + length)`` is resized to
    ``out_size`` by Pillow's (and torch's antialiased) bilinear filter: scale ``length / out``,
    support ``max(scale, 1)``, triangle weights around ``(i + 0.5) * scale``, clamped to the window
    and normalised. Rows are reversed where ``flip`` is set."""
    dev = start.device
    start = start.to(torch.float64).reshape(-1, 1, 1)
    length = length.to(torch.float64).reshape(-1, 1, 1)
    scale = length / out_size
    support = torch.clamp(scale, min=1.0)
    i = torch.arange(out_size, device=dev, dtype=torch.float64).view(1, -1, 1)
    if flip is not None:  # output pixel i of a flipped sample is pixel out - 1 - i of the unflipped one
        i = torch.where(flip.to(dev).reshape(-1, 1, 1).bool(), out_size - 1 - i, i)
    centre = (i + 0.5) * scale
    j = torch.arange(full, device=dev, dtype=torch.float64).view(1, 1, -1) - start  # index inside the window
    w = torch.clamp(1.0 - torch.abs(j + 0.5 - centre) / support, min=0.0)
    w = w * ((j >= 0) & (j < length))
    w = w / w.sum(dim=2, keepdim=True)
    return w.to(dtype)  # no host synchronisation anywhere: safe to queue on a GPU


# --- stage timing (CUDA events on a GPU, so nothing waits for the device) ------------------------------
class StageClock:
    """Seconds per stage, summed over threads (CPU time) or measured between CUDA events."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.seconds: dict[str, float] = defaultdict(float)
        self._events: list[tuple[str, object, object]] = []
        self._lock = threading.Lock()

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            self.seconds[name] += seconds

    def mark(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def lap(self, name: str, since):
        now = self.mark()
        if self.cuda:
            self._events.append((name, since, now))
            if len(self._events) > 4096:
                self._resolve()
        else:
            self.add(name, now - since)
        return now

    def _resolve(self) -> None:
        if self._events:
            self._events[-1][2].synchronize()
            for name, a, b in self._events:
                self.seconds[name] += a.elapsed_time(b) / 1000.0
            self._events = []

    def totals(self) -> dict[str, float]:
        self._resolve()
        return dict(self.seconds)


# --- output buffers reused once the consumer let go ---------------------------------------------------
def _storage_free(t: torch.Tensor) -> bool:
    """True when nothing but ``t`` itself holds its storage (every view handed out was dropped)."""
    try:
        return torch._C._storage_Use_Count(t.untyped_storage()._cdata) <= 2  # t + the temporary storage object
    except (AttributeError, RuntimeError):
        return False


class BufferPool:
    """Float output buffers ``[B, C, H, W]``: a batch is a view ``buf[:b]``; a buffer is written again
    only when no view of it is alive, so batches a caller keeps are never overwritten."""

    def __init__(self, shape: tuple[int, ...], device: torch.device, size: int):
        self.shape, self.device, self.size = tuple(shape), device, max(1, int(size))
        self.buffers: list[torch.Tensor] = []
        self.lock = threading.Lock()

    def get(self, b: int) -> torch.Tensor:
        with self.lock:
            for buf in self.buffers:
                if _storage_free(buf):
                    return buf[:b]
            buf = torch.empty(self.shape, dtype=torch.float32, device=self.device)
            if len(self.buffers) < self.size:
                self.buffers.append(buf)
            return buf[:b]


# --- the resident (or streamed) decoded set for the matmul kernel --------------------------------------
def _writable(a: np.ndarray) -> np.ndarray:
    """Pillow's arrays are read-only (torch warns about wrapping them); the cache's and arrays' are not."""
    return a if a.flags.writeable else a.copy()


def _padded_shape(source) -> tuple[int, int]:
    return int(source.sizes[:, 0].max()), int(source.sizes[:, 1].max())


def resident_images(source, channels: int, device: torch.device, chunk: int = 1024, threads: int = 2) -> torch.Tensor:
    """The whole set as uint8 ``[N, Hmax, Wmax, C]`` on ``device`` (smaller images at the top-left,
    zero padding), decoded once by the reference decoder or copied from a decoded cache."""
    n = len(source)
    hm, wm = _padded_shape(source)
    stacked = None
    if getattr(source, "uniform", False) and getattr(source, "channels", None) == channels:
        stacked = source.stacked()
    elif not source.encoded and hasattr(source, "images") and source.images.shape[3] == channels:
        stacked = source.images  # an ArraySource: already [N, H, W, C]
    out = torch.zeros((n, hm, wm, channels), dtype=torch.uint8, device=device)
    pool = None if stacked is not None else ThreadPoolExecutor(threads, thread_name_prefix="ddpipe-decode")
    try:
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            if stacked is not None:
                out[lo:hi].copy_(torch.from_numpy(np.ascontiguousarray(stacked[lo:hi])))
                continue
            # decoded by the reference decoder in threads (Pillow releases the GIL), once
            for i, a in zip(range(lo, hi), pool.map(lambda k: _writable(source.array(k, channels)), range(lo, hi))):
                out[i, : a.shape[0], : a.shape[1]].copy_(torch.from_numpy(np.ascontiguousarray(a)))
    finally:
        if pool is not None:
            pool.shutdown()
    return out


def _fits(nbytes: int, device: torch.device) -> bool:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return nbytes <= free // 2  # leave the other half to the model
    from .decoded import available_bytes

    return nbytes <= available_bytes() // 4


# --- the image batcher: one unit in, one normalised (and mixed) batch out -----------------------------------
class ImageBatcher:
    """Turns a unit into its float32 ``[b, C, H, W]`` batch on ``device`` (see the module doc)."""

    def __init__(self, source, stages, mix=None, *, device: str | torch.device = "auto", kernel: str = "auto",
                 threads: int = 2, batch_size: int = 1, pool_size: int = 4, resident="auto"):
        self.source = source
        self.mix = mix
        self.device = torch_device(device)
        self.kernel = resolve_kernel(kernel, self.device)
        self.channels = next((s.channels for s in stages if isinstance(s, Decode)), 3)
        crop = next((s for s in stages if isinstance(s, CropResize)), None)
        norm = next((s for s in stages if isinstance(s, Normalize)), None)
        if crop is None or norm is None:
            raise LoaderSpecError("the batched backend needs CropResize and Normalize stages")
        self.size = tuple(int(v) for v in crop.size)
        mean, std = norm.stats(self.channels)
        c = self.channels
        # (x/255 - m)/s == x * (1/(255 s)) - m/s: the reference's arithmetic (Normalize.apply_batch)
        self._stats_cpu = (torch.tensor(1.0 / (255.0 * std), dtype=torch.float32).view(1, c, 1, 1),
                           torch.tensor(-mean / std, dtype=torch.float32).view(1, c, 1, 1))
        self.scale, self.shift = (t.to(self.device) for t in self._stats_cpu)
        # the same per-channel factors repeated along one image row (HWC), for contiguous passes
        w = int(crop.size[1])
        self._row_scale, self._row_shift = (t.view(c).repeat(w) for t in self._stats_cpu)
        self.threads = max(0, int(threads))
        self.batch_size = max(1, int(batch_size))
        self.clock = StageClock(self.device)
        self._pool = None
        self._u8 = None
        # the per-sample kernel works on the CPU (then moves the batch to the device, if any)
        self._out = BufferPool((self.batch_size, *self.size, c), torch.device("cpu"), pool_size) \
            if self.kernel == "per-sample" else None  # HWC: batches are channels-last views of [b, C, H, W]
        self._images = None
        self._decoded: list | None = None  # per-sample kernel: each image kept after its first decode
        self._padded = _padded_shape(source)
        if self.kernel == "per-sample" and getattr(source, "encoded", False) and resident is not False:
            need = int((source.sizes[:, 0] * source.sizes[:, 1]).sum()) * c
            if resident is True or _fits(need, torch.device("cpu")):
                self._decoded = [None] * len(source)
        if self.kernel == "matmul":
            hm, wm = self._padded
            need = len(source) * hm * wm * c
            if resident == "auto":
                resident = _fits(need, self.device)
            if resident:
                t0 = time.perf_counter()
                self._images = resident_images(source, c, self.device, threads=max(1, self.threads))
                self.clock.add("decode", time.perf_counter() - t0)  # once, not per epoch
        self.resident = self._images is not None

    # -- per-sample kernel (CPU) --------------------------------------------------------------------------
    def _array(self, i: int) -> np.ndarray:
        """Image ``i`` as uint8 HWC: decoded by the reference decoder once and kept (when the decoded set
        fits, see the module doc), else decoded again. Never written to: crops are copied out of it."""
        kept = self._decoded
        a = kept[i] if kept is not None else None
        if a is None:
            a = _writable(self.source.array(i, self.channels))
            if kept is not None:
                kept[i] = a
        return a

    def _resize_span(self, ids, boxes, flips, cut, colours, lo, hi) -> dict:
        """Samples ``lo:hi``: decode (or read), crop, resize, flip into the uint8 batch; paint cutout."""
        oh, ow = self.size
        c = self.channels
        u8 = self._u8
        t_dec = t_rs = t_mix = 0.0
        for i in range(lo, hi):
            t0 = time.perf_counter()
            a = self._array(int(ids[i]))
            t1 = time.perf_counter()
            y, x, h, w = (int(v) for v in boxes[i])
            crop = torch.from_numpy(a)[y: y + h, x: x + w]
            if (h, w) != (oh, ow):
                crop = crop.permute(2, 0, 1).unsqueeze(0).contiguous(memory_format=torch.channels_last)
                crop = F.interpolate(crop, size=(oh, ow), mode="bilinear", antialias=True, align_corners=False)
                crop = crop[0].permute(1, 2, 0)
            u8[i].copy_(crop.flip(1) if flips[i] else crop)
            t2 = time.perf_counter()
            if cut is not None:
                y0, x0, y1, x1 = (int(v) for v in cut[i])
                if y1 > y0 and x1 > x0:
                    u8[i, y0:y1, x0:x1] = colours[i]
            t_dec += t1 - t0
            t_rs += t2 - t1
            t_mix += time.perf_counter() - t2
        return {"decode": t_dec, "crop_resize": t_rs, "mix": t_mix}

    def _normalise_span(self, src, out, lo, hi) -> dict:
        """uint8 HWC ``src[lo:hi]`` -> normalised float HWC ``out[lo:hi]`` (the reference's arithmetic:
        ``x * 1/(255 s) - m/s``), one row of pixels at a time so every pass is contiguous."""
        t0 = time.perf_counter()
        o = out[lo:hi]
        o.copy_(src[lo:hi])
        rows = o.view(-1, self._row_scale.numel())
        rows.mul_(self._row_scale).add_(self._row_shift)
        return {"collate": time.perf_counter() - t0}

    def _spans(self, fn, b: int) -> None:
        n = max(1, self.threads)
        step = -(-b // n)
        spans = [(lo, min(b, lo + step)) for lo in range(0, b, step)]
        if self.threads > 1 and len(spans) > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="ddpipe-batched")
            times = list(self._pool.map(lambda s: fn(*s), spans))
        else:
            times = [fn(0, b)]
        for t in times:
            for k, v in t.items():
                self.clock.add(k, v)

    def _cutout_colours(self, unit, b: int) -> np.ndarray:
        """Each sample's cutout colour as uint8 ``[b, C]`` (MixStage's rule: one value is grey; a
        1-channel image takes the first)."""
        colours = getattr(unit, "cutout_fill", None)
        if colours is None:
            fill = self.mix.fill
            if isinstance(fill, str):
                self.mix.fill_value(self.channels)  # raises: a random fill needs the unit's colours
            colours = np.asarray(fill).reshape(1, -1)
        c = np.asarray(colours, dtype=np.int64)
        c = np.repeat(c, self.channels, axis=-1) if c.shape[-1] == 1 else c[..., : self.channels]
        return np.broadcast_to(c, (b, self.channels)).astype(np.uint8)

    def _per_sample(self, unit, ids, boxes, flips) -> torch.Tensor:
        """The CPU kernel with the ``mix`` stage fused in: cutout is painted and CutMix pasted on the
        uint8 batch (a quarter of the bytes; both commute with normalisation), then each thread
        normalises its slice; Mixup blends the normalised batch (it commutes too)."""
        b = len(ids)
        if self._u8 is None or self._u8.shape[0] < b:
            self._u8 = torch.empty((max(b, self.batch_size), *self.size, self.channels), dtype=torch.uint8)
        u8 = self._u8
        out = self._out.get(b) if b <= self.batch_size else torch.empty((b, *self.size, self.channels))
        cut = np.asarray(unit.cutout) if self.mix is not None else np.zeros((0, 4))
        has_cut = cut.size > 0 and bool(((cut[:, 2] > cut[:, 0]) & (cut[:, 3] > cut[:, 1])).any())
        colours = torch.from_numpy(self._cutout_colours(unit, b)) if has_cut else None
        self._spans(lambda lo, hi: self._resize_span(ids, boxes, flips, cut if has_cut else None, colours, lo, hi), b)
        kind = unit.mix_kind if self.mix is not None and self.mix.mix else "none"
        if kind == "cutmix":
            t0 = time.perf_counter()
            y0, x0, y1, x1 = (int(v) for v in np.asarray(unit.mix_box))
            if y1 > y0 and x1 > x0:
                perm = torch.as_tensor(np.asarray(unit.mix_perm), dtype=torch.long)
                u8[:b, y0:y1, x0:x1] = u8[:b][perm, y0:y1, x0:x1]  # the partners' boxes gathered first
            self.clock.add("mix", time.perf_counter() - t0)
        self._spans(lambda lo, hi: self._normalise_span(u8, out, lo, hi), b)
        out = out.permute(0, 3, 1, 2)  # [b, C, H, W], channels-last in memory
        if kind not in ("none", "cutmix"):
            from .mix import apply_mix

            t0 = time.perf_counter()
            out = apply_mix(out, kind, unit.mix_perm, unit.mix_lambda, unit.mix_box)
            self.clock.add("mix", time.perf_counter() - t0)
        return out

    # -- matmul kernel (GPU; runs on the CPU too) ------------------------------------------------------------
    def _gather(self, ids: np.ndarray) -> torch.Tensor:
        if self.resident:
            return self._images.index_select(0, torch.as_tensor(ids, dtype=torch.long, device=self.device))
        t0 = time.perf_counter()
        hm, wm = self._padded
        host = torch.zeros((len(ids), hm, wm, self.channels), dtype=torch.uint8,
                           pin_memory=self.device.type == "cuda")
        for j, i in enumerate(ids):
            a = _writable(self.source.array(int(i), self.channels))
            host[j, : a.shape[0], : a.shape[1]].copy_(torch.from_numpy(a))
        self.clock.add("decode", time.perf_counter() - t0)
        return host.to(self.device)

    def _matmul(self, ids, boxes, flips) -> torch.Tensor:
        oh, ow = self.size
        hm, wm = self._padded
        t = self.clock.mark()
        x = self._gather(ids)
        # boxes and flips travel in one small copy
        bx = torch.from_numpy(np.concatenate([boxes, flips.reshape(-1, 1)], axis=1).astype(np.int64)).to(self.device)
        t = self.clock.lap("decode" if self.resident else "transfer", t)
        wy = resize_weights(bx[:, 0], bx[:, 2], oh, hm)  # [b, oh, Hm]
        wx = resize_weights(bx[:, 1], bx[:, 3], ow, wm, bx[:, 4])  # [b, ow, Wm], rows reversed where flipped
        xf = x.permute(0, 3, 1, 2).to(dtype=torch.float32, memory_format=torch.contiguous_format)  # [b, C, Hm, Wm]
        y = torch.matmul(wy.unsqueeze(1), torch.matmul(xf, wx.transpose(1, 2).unsqueeze(1)))  # [b, C, oh, ow]
        t = self.clock.lap("crop_resize", t)
        y = torch.addcmul(self.shift, y, self.scale)
        self.clock.lap("collate", t)
        return y

    # -- one unit ----------------------------------------------------------------------------------------
    def __call__(self, unit) -> torch.Tensor:
        ids = np.asarray(unit.sample_ids, dtype=np.int64)
        boxes = crop_pixels(unit.crops, self.source.sizes[ids])
        flips = np.asarray(unit.flips).astype(bool)
        if self.kernel == "per-sample":  # the mix stage is fused into the kernel
            images = self._per_sample(unit, ids, boxes, flips)
            return images.to(self.device) if self.device.type != "cpu" else images
        images = self._matmul(ids, boxes, flips)
        if self.mix is not None:
            t = self.clock.mark()
            images = self.mix(images, unit)
            self.clock.lap("mix", t)
        return images

    def stage_seconds(self) -> dict[str, float]:
        return self.clock.totals()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


# --- the backend: units from the feed, prefetched by one producer thread ---------------------------------------
_DONE = object()


class BatchedBackend:
    name = "batched"

    def __init__(self, source, feed, stages, config, mix=None):
        self.source, self.feed = source, feed
        self.batch_size = feed.spec.batch_size if feed.with_labels else feed.schedule.batch_size
        self.prefetch = max(1, int(config.prefetch))
        self.threads = max(0, int(config.num_workers))
        self.images = ImageBatcher(source, stages, mix, device=config.device, kernel=config.kernel,
                                   threads=self.threads, batch_size=self.batch_size, pool_size=self.prefetch + 3)
        self.device = self.images.device

        self._active: tuple | None = None  # (stop event, queue, thread) of the live producer

    def batches(self, epoch: int, start: int = 0) -> Iterator:
        self._stop_active()  # an abandoned epoch's producer must not share the buffers with this one
        keys = self.feed.keys(epoch)[start:]
        if self.threads == 0:
            return self._inline(keys)
        return self._prefetched(keys)

    def _stop_active(self) -> None:
        if self._active is None:
            return
        stop, q, th = self._active
        self._active = None
        stop.set()
        while th.is_alive():  # drain so a blocked put returns, then let the thread finish
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass
        th.join()

    def _inline(self, keys) -> Iterator:
        for k in keys:
            unit = self.feed.get(int(k))
            yield self.images(unit), unit

    def _prefetched(self, keys) -> Iterator:
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def produce():
            try:
                for k in keys:
                    if stop.is_set():
                        return
                    unit = self.feed.get(int(k))
                    item = (self.images(unit), unit)
                    while not stop.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                q.put(_DONE)
            except BaseException as e:  # noqa: BLE001 - carried to the consumer and raised there
                q.put(e)

        th = threading.Thread(target=produce, name="ddpipe-batched-producer", daemon=True)
        th.start()
        self._active = (stop, q, th)
        try:
            while True:
                item = q.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):  # a DDPipeError (a bad image) is raised as it is
                    raise item
                yield item
        finally:
            if self._active is not None and self._active[2] is th:
                self._stop_active()

    def stage_seconds(self) -> dict[str, float]:
        return self.images.stage_seconds()

    def state(self) -> dict:
        return {}

    def restore(self, state: dict) -> None:
        pass

    def close(self) -> None:
        self._stop_active()
        self.images.close()


__all__ = ["BatchedBackend", "BufferPool", "ImageBatcher", "StageClock", "resident_images", "resize_weights",
           "resolve_kernel"]
