"""The one recover engine: every method is a :class:`~ddpipe.synth.config.RecoverConfig` run through it.

The engine owns the synthetic pixels and their initialisation (noise, random real, or real images
ranked by the teacher as in DELT), the optimiser (Adam with SRe2L's betas and cosine lr, or SGD
with momentum for DM), per-iteration augmentation (random resized crop, flip, roll jitter, CDA's
crop-scale curriculum, DM's DSA), clamping to the valid pixel range, batch composition, DELT's
early-late iteration budgets, and the loss as a weighted sum of registered terms fed by hooks on
the teacher(s) (round-robin when there are several, as G-VBSM). :func:`recover` adds the output
folder, the manifest, resume, progress bars and, under torchrun, the batches dealt round-robin to the ranks.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ddpipe._progress import progress_bar
from ._registry import create_loss, create_method
from .augment import DSA, cda_min_scale, sre2l_augment
from .config import RecoverConfig
from .errors import RunStateError, SynthConfigError
from .losses import Step
from .stats import (Recorder, class_buffers, collect_class_bn_stats, collect_conv_stats, has_class_buffers,
                                module_hash)
from .writer import FORMAT, ImageFolderWriter, read_manifest, to_uint8

__all__ = ["RealData", "Batch", "Engine", "recover", "delt_schedule", "delt_start_rounds", "rank_order",
           "medium_order"]


# --- inputs ------------------------------------------------------------------------------------------
@dataclass
class RealData:
    """Real training images: uint8 ``[N, H, W, C]`` in memory, or a ``fetch(indices) -> uint8 [n, H, W, C]``."""

    labels: np.ndarray
    images: np.ndarray | None = None
    fetch: Callable[[np.ndarray], np.ndarray] | None = None

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if (self.images is None) == (self.fetch is None):
            raise SynthConfigError("RealData needs either images (uint8 [N, H, W, C]) or fetch(indices)")
        if self.images is not None:
            self.images = np.asarray(self.images)
            if self.images.ndim == 3:
                self.images = self.images[..., None]
            if len(self.images) != len(self.labels):
                raise SynthConfigError(f"RealData has {len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def get(self, indices) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64)
        return self.images[idx] if self.images is not None else np.asarray(self.fetch(idx))

    def class_indices(self, c: int) -> np.ndarray:
        return np.flatnonzero(self.labels == c)


@dataclass(frozen=True)
class Batch:
    """One optimisation problem: images ``(classes[j], indices[j])`` optimised together."""

    key: str
    classes: tuple[int, ...]
    indices: tuple[int, ...]  # index of each image within its class (0 .. ipc-1)


# --- schedules -------------------------------------------------------------------------------------
def delt_schedule(ipc: int, iterations: int, round_iterations: int) -> list[tuple[int, int, int]]:
    """DELT's early-late rounds: ``[(size, start_round, iterations)]`` per subset.

    ``R = iterations // round_iterations``; the ipc images of a class split into R consecutive
    subsets of ``ipc // R`` images (+1 for the first ``ipc % R``); subset k joins at round k and
    gets ``(R - k) * round_iterations`` iterations. Empty subsets (ipc < R: image i is subset i) are
    left out, but the run keeps all R rounds: the images that joined go on being optimised, as in
    VILA-Lab/DELT ``recover/recover.py`` (it deletes only rounds in which no image of the batch is
    active, i.e. rounds before a batch's first image: :meth:`Engine.optimise` skips those).
    """
    rounds = max(1, iterations // round_iterations)
    sizes = [ipc // rounds + (1 if k < ipc % rounds else 0) for k in range(rounds)]
    return [(s, k, (rounds - k) * round_iterations) for k, s in enumerate(sizes) if s > 0]


def delt_start_rounds(ipc: int, iterations: int, round_iterations: int) -> list[int]:
    """The round at which each in-class image index 0..ipc-1 joins."""
    out = []
    for size, start, _ in delt_schedule(ipc, iterations, round_iterations):
        out += [start] * size
    return out


def medium_order(n: int) -> list[int]:
    """DELT's ``medium`` order over n items sorted by ascending score: mid, mid+1, mid-1, mid+2, ...
    with ``mid = ceil(n / 2)`` (0-based index into the sorted list), skipping indices out of range."""
    mid, out, k = math.ceil(n / 2), [], 0
    while len(out) < n:
        sign = -1 if k % 2 == 0 else 1
        i = mid + int(sign * (k + 1) / 2)
        if 0 <= i < n and i not in out:
            out.append(i)
        k += 1
        if k > 4 * n + 4:
            break
    return out


def rank_order(scores: np.ndarray, mode: str) -> np.ndarray:
    """Positions of ``scores`` in DELT's order: ``top`` (highest first), ``min`` (lowest first), ``medium``."""
    asc = np.argsort(scores, kind="stable")
    if mode == "top":
        return asc[::-1].copy()
    if mode == "min":
        return asc
    if mode == "medium":
        return asc[medium_order(len(asc))]
    raise SynthConfigError(f"unknown ranking {mode!r}; choose top, min or medium")


# --- the engine --------------------------------------------------------------------------------------
class Engine:
    """Holds a run's inputs and optimises one :class:`Batch` at a time; see the module docstring."""

    def __init__(self, cfg: RecoverConfig, *, teachers: Sequence[nn.Module] = (), real: RealData | None = None,
                 num_classes: int, ipc: int, mean: Sequence[float], std: Sequence[float],
                 input_size: int | None = None, in_chans: int | None = None,
                 model_fn: Callable[[], nn.Module] | None = None, device: str | torch.device = "cpu",
                 stats_cache: str | None = None, teacher_ids: Sequence[str] | None = None):
        self.cfg = cfg
        self.teachers = list(teachers)
        self.real = real
        self.num_classes, self.ipc = int(num_classes), int(ipc)
        self.device = torch.device(device)
        self.mean = torch.tensor(list(mean), dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        if real is not None and (input_size is None or in_chans is None):
            sample = real.get([0])
            input_size = input_size or int(sample.shape[1])
            in_chans = in_chans or int(sample.shape[3])
        if input_size is None or in_chans is None:
            raise SynthConfigError("give input_size and in_chans, or real data to read them from")
        self.input_size, self.in_chans = int(input_size), int(in_chans)
        if self.mean.shape[1] != self.in_chans or self.std.shape[1] != self.in_chans:
            raise SynthConfigError(f"mean/std have {self.mean.shape[1]}/{self.std.shape[1]} values for {self.in_chans} channels")
        if self.ipc < 1:
            raise SynthConfigError(f"ipc must be >= 1, got {ipc}")
        self.model_fn = model_fn
        self.stats_cache = stats_cache
        self.save_stats_cache = True  # False: read stats_cache, never write it (torchrun ranks other than 0)
        for t in self.teachers:  # teachers are used in place: moved to the device, eval mode, frozen
            t.to(self.device).eval()
            for p in t.parameters():
                p.requires_grad_(False)
        self.teacher_ids = list(teacher_ids) if teacher_ids else [module_hash(t) for t in self.teachers]
        self.terms = {name: create_loss(name) for name in cfg.loss} if cfg.select is None else {}
        self.uses_teacher = any(t.uses_teacher for t in self.terms.values())
        self.needs_conv = any(t.needs_conv for t in self.terms.values())
        self.notes: dict[str, object] = {}  # facts about the run for the manifest (e.g. where targets came from)
        self._class_bn: dict[int, dict] = {}
        self._conv: dict[int, dict] = {}
        self._ranking: dict[int, np.ndarray] = {}
        self._real_perm: dict[int, np.ndarray] = {}
        self._check()

    # -- checks and one-off preparation -------------------------------------------------------------
    def _check(self) -> None:
        cfg = self.cfg
        needs_teacher = self.uses_teacher or cfg.init in ("top", "min", "medium") or cfg.select == "herding"
        if needs_teacher and not self.teachers:
            raise SynthConfigError(f"{cfg.recipe or cfg.method} needs at least one teacher")
        needs_real = (cfg.init != "noise" or cfg.select is not None or "dm_mean" in self.terms
                      or "class_bn_stats" in self.terms and not all(has_class_buffers(t) for t in self.teachers)
                      or "conv_stats" in self.terms)
        if needs_real and self.real is None:
            raise SynthConfigError(f"{cfg.recipe or cfg.method} needs the real training data (init {cfg.init!r}, "
                                   f"terms {sorted(self.terms)})")
        if "dm_mean" in self.terms and self.model_fn is None:
            raise SynthConfigError(f"{cfg.recipe or cfg.method} draws a fresh network every iteration: pass model_fn, "
                                   "a function returning a new nn.Module (DM's ConvNet is ddpipe.evaluate.models' "
                                   "'convnet'; ddpipe recover passes it)")

    def prepare(self) -> None:
        """Run each term's one-off preparation (class BN statistics, conv statistics)."""
        for term in self.terms.values():
            term.prepare(self)

    def normalise(self, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        return (x - self.mean) / self.std

    def real_batches(self, batch_size: int | None = None):
        """(normalised images, labels) over the whole real set, in order."""
        bs = batch_size or self.cfg.stats_batch_size
        for s in range(0, len(self.real), bs):
            idx = np.arange(s, min(s + bs, len(self.real)))
            yield self.normalise(self.real.get(idx)), torch.from_numpy(self.real.labels[idx]).to(self.device)

    def class_bn_targets(self, t: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Class-wise BN statistics of teacher ``t``: its LPLD buffers, else one exact pass over the real data."""
        if t not in self._class_bn:
            teacher = self.teachers[t]
            if has_class_buffers(teacher):
                stats = class_buffers(teacher)
                self.notes[f"class_bn_stats_teacher{t}"] = "teacher buffers class_running_mean/var"
            else:
                stats = collect_class_bn_stats(teacher, self.real_batches(), self.num_classes)
                self.notes[f"class_bn_stats_teacher{t}"] = f"exact per-class statistics of {len(self.real)} real images"
            self._class_bn[t] = {k: (m.to(self.device), v.to(self.device)) for k, (m, v) in stats.items()}
        return self._class_bn[t]

    def conv_targets(self, t: int) -> dict[str, dict[str, torch.Tensor]]:
        """G-VBSM's conv statistics of teacher ``t``, computed once from the real data and cached in
        ``stats_cache`` (a ``.pt`` file keyed by teacher hash and patch size) when one is given."""
        if t in self._conv:
            return self._conv[t]
        key = f"{self.teacher_ids[t]}:patch{self.cfg.patch_size}:n{len(self.real)}"
        store = {}
        if self.stats_cache and os.path.exists(self.stats_cache):
            store = torch.load(self.stats_cache, map_location="cpu", weights_only=True)
        if key not in store:
            store[key] = collect_conv_stats(self.teachers[t], self.real_batches(), len(self.real), self.cfg.patch_size)
            if self.stats_cache and self.save_stats_cache:
                os.makedirs(os.path.dirname(os.path.abspath(self.stats_cache)), exist_ok=True)
                tmp = self.stats_cache + ".tmp"
                torch.save(store, tmp)
                os.replace(tmp, self.stats_cache)
        self._conv[t] = {n: {k: v.to(self.device) for k, v in d.items()} for n, d in store[key].items()}
        return self._conv[t]

    def new_embedding_net(self, gen: torch.Generator) -> nn.Module:
        """A freshly initialised network for DM, built by ``model_fn`` (seeded from the batch's stream),
        frozen, in train mode."""
        seed = int(torch.randint(0, 2**62, (), generator=gen).item())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = self.model_fn()
        net = net.to(self.device).train()
        for p in net.parameters():
            p.requires_grad_(False)
        return net

    def dsa(self, gen: torch.Generator) -> DSA:
        return DSA(self.cfg.dsa, gen)

    def real_batch(self, c: int, n: int, gen: torch.Generator) -> torch.Tensor:
        """DM's ``get_images(c, n)``: n random real images of class c (all of them if fewer), normalised."""
        idx = self.real.class_indices(c)
        if len(idx) == 0:
            raise SynthConfigError(f"the real data has no image of class {c}")
        pick = idx[torch.randperm(len(idx), generator=gen).numpy()[:n]]
        return self.normalise(self.real.get(np.sort(pick)))

    # -- batches and initialisation ------------------------------------------------------------------
    def batches(self) -> list[Batch]:
        cfg, ipc, k = self.cfg, self.ipc, self.num_classes
        out: list[Batch] = []
        if cfg.batching == "all":
            pairs = [(c, i) for c in range(k) for i in range(ipc)]
            out.append(Batch("all", tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)))
        elif cfg.batching == "mixed":  # SRe2L: for each ipc index, chunks of batch_size classes
            for i in range(ipc):
                for s in range(0, k, cfg.batch_size):
                    cls = tuple(range(s, min(s + cfg.batch_size, k)))
                    out.append(Batch(f"id{i:04d}_c{s:05d}", cls, (i,) * len(cls)))
        else:  # class: whole classes together (LPLD, G-VBSM, DELT); a class larger than a batch is split
            if cfg.classes_per_batch is None and ipc > cfg.batch_size:
                for c in range(k):
                    for s in range(0, ipc, cfg.batch_size):
                        ids = tuple(range(s, min(s + cfg.batch_size, ipc)))
                        out.append(Batch(f"c{c:05d}_id{s:04d}", (c,) * len(ids), ids))
            else:
                per = cfg.classes_per_batch or max(1, cfg.batch_size // ipc)
                for s in range(0, k, per):
                    cls = range(s, min(s + per, k))
                    out.append(Batch(f"c{s:05d}", tuple(c for c in cls for _ in range(ipc)),
                                     tuple(i for _ in cls for i in range(ipc))))
        return out

    def class_order(self, c: int) -> np.ndarray:
        """Real images of class c in the order init (and ``random`` selection) takes them: seeded
        random, or DELT's ranking."""
        if self.cfg.init == "real" or self.cfg.select == "random":
            if c not in self._real_perm:
                g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + c)
                idx = self.real.class_indices(c)
                self._real_perm[c] = idx[torch.randperm(len(idx), generator=g).numpy()]
            return self._real_perm[c]
        if c not in self._ranking:
            self._ranking[c] = self.rank_class(c, self.cfg.init)
        return self._ranking[c]

    @torch.no_grad()
    def rank_class(self, c: int, mode: str) -> np.ndarray:
        """DELT's ranking: the first teacher's softmax probability of the true class, ordered by ``mode``."""
        idx = self.real.class_indices(c)
        if len(idx) == 0:
            raise SynthConfigError(f"the real data has no image of class {c}")
        scores = []
        for s in range(0, len(idx), self.cfg.stats_batch_size):
            x = self.normalise(self.real.get(idx[s:s + self.cfg.stats_batch_size]))
            scores.append(torch.softmax(self.teachers[0](x).float(), dim=1)[:, c].cpu())
        return idx[rank_order(torch.cat(scores).numpy(), mode)]

    def init_images(self, batch: Batch, gen: torch.Generator) -> torch.Tensor:
        n = len(batch.classes)
        if self.cfg.init == "noise":
            return torch.randn(n, self.in_chans, self.input_size, self.input_size, generator=gen).to(self.device)
        picks = []
        for c, i in zip(batch.classes, batch.indices):
            order = self.class_order(c)
            if len(order) == 0:
                raise SynthConfigError(f"the real data has no image of class {c} to initialise from")
            picks.append(order[i % len(order)])
        return self.normalise(self.real.get(np.asarray(picks)))

    # -- one batch -------------------------------------------------------------------------------------
    def _loss(self, step: Step, ti: int, recorders: list[Recorder]) -> tuple[torch.Tensor, dict]:
        """The weighted sum of the terms for one step (teacher ``ti`` forward first if a term needs it)."""
        if self.uses_teacher:
            rec = recorders[ti]
            rec.clear()
            step.teacher_index, step.teacher, step.recorder = ti, self.teachers[ti], rec
            step.logits = self.teachers[ti](step.x)
        values, total = {}, step.x_syn.new_zeros(())
        for name, weight in self.cfg.loss.items():
            v = self.terms[name](step)
            values[name] = float(v.detach())
            total = total + weight * v
        values["total"] = float(total.detach())
        return total, values

    def evaluate_loss(self, batch: Batch, x: torch.Tensor, seed: int = 0) -> dict:
        """The terms on images ``x`` of ``batch`` without augmentation, averaged over the teachers
        (random parts, e.g. DM's network and real batch, drawn from ``seed``): compare init and result."""
        labels = torch.tensor(batch.classes, dtype=torch.long, device=self.device)
        out: dict[str, float] = {}
        n = max(1, len(self.teachers)) if self.uses_teacher else 1
        recorders = [Recorder(t, bn=True, conv=self.needs_conv) for t in self.teachers] if self.uses_teacher else []
        for r in recorders:
            r.__enter__()
        try:
            with torch.no_grad():
                for ti in range(n):
                    for term in self.terms.values():
                        term.start_batch(self)
                    gen = torch.Generator().manual_seed(seed)
                    step = Step(engine=self, it=0, iterations=1, x=x, x_syn=x, labels=labels, gen=gen)
                    _, values = self._loss(step, ti, recorders)
                    for k, v in values.items():
                        out[k] = out.get(k, 0.0) + v / n
        finally:
            for r in recorders:
                r.__exit__(None, None, None)
        return out

    def batch_generator(self, batch_number: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + 7919 * batch_number + 17)

    def _clamp(self, x: torch.Tensor) -> None:
        lo, hi = -self.mean / self.std, (1 - self.mean) / self.std
        x.data = torch.maximum(torch.minimum(x.data, hi), lo)

    def batch_iterations(self) -> int:
        """Iterations per batch: ``iterations``, or DELT's R rounds x ROUND_ITR (fewer for a batch holding
        only later subsets of its classes: :meth:`optimise` skips the rounds before its first image)."""
        cfg = self.cfg
        if cfg.select is not None:
            return 0
        if cfg.round_iterations:
            return max(1, cfg.iterations // cfg.round_iterations) * cfg.round_iterations
        return cfg.iterations

    def optimise(self, batch: Batch, batch_number: int = 0,
                 on_step: Callable[[dict], None] | None = None) -> tuple[torch.Tensor, list[dict]]:
        """Optimise one batch; returns (normalised images [B, C, H, W], per-iteration loss values)."""
        cfg = self.cfg
        gen = self.batch_generator(batch_number)
        x = self.init_images(batch, gen).detach().clone().requires_grad_(True)
        labels = torch.tensor(batch.classes, dtype=torch.long, device=self.device)
        iterations = self.batch_iterations()
        start_round = torch.zeros(len(batch.classes), dtype=torch.long)
        if cfg.round_iterations:
            rounds = delt_start_rounds(self.ipc, cfg.iterations, cfg.round_iterations)
            start_round = torch.tensor([rounds[i] for i in batch.indices], dtype=torch.long)
            # rounds before the batch's first image are empty: DELT deletes them (and their iterations)
            skip = int(start_round.min())
            start_round -= skip
            iterations -= skip * cfg.round_iterations
        if cfg.optimizer == "adam":
            opt = torch.optim.Adam([x], lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
        else:
            opt = torch.optim.SGD([x], lr=cfg.lr, momentum=cfg.momentum)
        for term in self.terms.values():
            term.start_batch(self)
        history: list[dict] = []
        recorders = [Recorder(t, bn=True, conv=self.needs_conv) for t in self.teachers] if self.uses_teacher else []
        for r in recorders:
            r.__enter__()
        try:
            for it in range(iterations):
                lr = cfg.lr * (0.5 * (1 + math.cos(math.pi * it / iterations)) if cfg.lr_schedule == "cosine" else 1.0)
                for group in opt.param_groups:
                    group["lr"] = lr
                active = (start_round <= it // cfg.round_iterations).nonzero().flatten() if cfg.round_iterations else None
                xs = x if active is None else x[active.to(self.device)]
                ys = labels if active is None else labels[active.to(self.device)]
                if self.uses_teacher and not cfg.dsa:
                    min_scale = (cda_min_scale(it, iterations, cfg.min_scale, cfg.milestone)
                                 if cfg.crop_curriculum == "cosine" else cfg.min_scale)
                    xa = sre2l_augment(xs, gen, random_crop=cfg.random_crop, min_scale=min_scale, flip=cfg.flip,
                                       jitter=cfg.jitter, two_sided=cfg.jitter_two_sided)
                else:
                    xa = xs
                ti = it % len(self.teachers) if self.teachers else 0  # G-VBSM: one backbone per iteration, round-robin
                step = Step(engine=self, it=it, iterations=iterations, x=xa, x_syn=xs, labels=ys, gen=gen)
                total, values = self._loss(step, ti, recorders)
                opt.zero_grad(set_to_none=True)
                total.backward()
                opt.step()
                if cfg.clamp:
                    self._clamp(x)
                history.append(values)
                if on_step is not None:
                    on_step(values)
        finally:
            for r in recorders:
                r.__exit__(None, None, None)
        return x.detach(), history


# --- the run -------------------------------------------------------------------------------------------
def _summary(history: list[dict]) -> dict:
    if not history:
        return {}
    w = max(1, len(history) // 10)
    return {k: {"start": float(np.mean([h[k] for h in history[:w]])), "end": float(np.mean([h[k] for h in history[-w:]]))}
            for k in history[0]}


class _Group:
    """The torchrun group a :func:`recover` runs in (``world_size`` 1: alone, and every call a no-op)."""

    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = int(rank), int(world_size)
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise SynthConfigError(f"rank must be in 0 .. world_size - 1, got rank {rank} of {world_size}")
        if self.world_size > 1:
            import torch.distributed as dist

            if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() != self.world_size:
                raise SynthConfigError(f"recover with world_size {world_size} needs an initialised process group of "
                                       "that size (torchrun; ddpipe.pipeline.distributed.init_distributed)")

    def from_rank0(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if self.world_size == 1:
            return obj
        import torch.distributed as dist

        box = [obj if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def _wait(ready: Callable[[], object], poll_s: float = 0.2):
    """Poll ``ready()`` until it returns something (torchrun ends every rank if another one fails)."""
    while True:
        value = ready()
        if value is not None:
            return value
        time.sleep(poll_s)


def _finished_parts(writer: ImageFolderWriter, run: int, world_size: int) -> list[dict] | None:
    """Every rank's part of run ``run`` once each says it is finished, else None."""
    parts = [p for p in writer.read_parts() if p.get("run") == run and p.get("status") != "running"]
    return parts if {p.get("rank") for p in parts} >= set(range(world_size)) else None


def _merged_manifest(writer: ImageFolderWriter, run: int) -> dict | None:
    """The manifest once rank 0 has merged run ``run``'s parts into it, else None."""
    manifest = read_manifest(writer.out)
    return manifest if manifest is not None and manifest.get("parts_merged_run", 0) >= run else None


def _in_batch_order(manifest: dict, batches: list[Batch]) -> None:
    """List the finished batches (and their losses) in batch order, whichever rank or run finished them."""
    order = {b.key: n for n, b in enumerate(batches)}
    manifest["batches_done"].sort(key=lambda k: order.get(k, len(order)))
    manifest["losses"] = dict(sorted(manifest["losses"].items(), key=lambda kv: order.get(kv[0], len(order))))


def _merge_parts(manifest: dict, parts: list[dict], batches: list[Batch]) -> None:
    """Fold the ranks' records of one run (``manifest.rank{r}.json``) into ``manifest``: their finished batches
    (in batch order), the counts, losses and notes, and the run's wall time (its slowest rank's). Parts of a run
    merged before (a kill between saving the manifest and deleting them) are left out."""
    fresh = [p for p in parts if int(p.get("run", 0)) > int(manifest.get("parts_merged_run", 0))]
    if not fresh:
        return
    by_key = {b.key: b for b in batches}
    done = set(manifest["batches_done"])
    for part in fresh:
        for key in part.get("batches_done", []):
            if key not in by_key:
                raise RunStateError(f"{manifest.get('out', 'the output folder')}: rank {part.get('rank')}'s part "
                                    f"lists batch {key!r}, which this run does not have; pass overwrite to start "
                                    "afresh")
            if key in done:
                continue
            done.add(key)
            manifest["batches_done"].append(key)
            for c in by_key[key].classes:
                manifest["counts"][c] += 1
            if key in (part.get("losses") or {}):
                manifest["losses"][key] = part["losses"][key]
        manifest.setdefault("notes", {}).update(part.get("notes") or {})
    _in_batch_order(manifest, batches)
    manifest["wall_time_s"] = round(manifest["wall_time_s"] + max(float(p.get("wall_time_s", 0.0)) for p in fresh), 3)
    manifest["parts_merged_run"] = max(int(p.get("run", 0)) for p in fresh)


def recover(method: str | RecoverConfig, *, teachers: Sequence[nn.Module] = (), real: RealData | None = None,
            num_classes: int, ipc: int, mean: Sequence[float], std: Sequence[float], out: str,
            input_size: int | None = None, in_chans: int | None = None, model_fn: Callable[[], nn.Module] | None = None,
            teacher_ids: Sequence[str] | None = None, device: str = "cpu", image_format: str = "png",
            jpeg_quality: int = 95, overwrite: bool = False, progress: bool = True,
            stop_after_batches: int | None = None, stats_cache: str | None = None, extra: dict | None = None,
            rank: int = 0, world_size: int = 1, **overrides) -> dict:
    """Run a recover method (or selection baseline) and write the set to ``out``; returns the manifest.

    ``method`` is a recipe name (``sre2l``, ``cda.in1k``, ``lpld.test`` ...) with ``overrides`` applied
    (None values ignored), or a ready :class:`RecoverConfig`. ``teachers`` are modules taking normalised
    ``[B, C, H, W]`` input (they are moved to ``device``, put in eval mode and frozen, in place);
    ``real`` the real training images; ``model_fn`` builds DM's random network. A rerun with the same config
    skips the batches the manifest lists as done; ``stop_after_batches`` stops early (for tests; per rank).

    ``rank`` / ``world_size`` (an initialised torchrun process group): rank r optimises the batches
    n with ``n % world_size == r`` on its own ``device``, into the same ``out``. Rank 0 prepares the folder and
    manifest before the others start (the one collective, a broadcast); each rank records its finished
    batches in ``manifest.rank{r}.json``; when every rank's part says it has finished, rank 0 merges them into
    ``manifest.json`` (as the start of the next run does after a kill), and every rank returns that manifest
    (the ranks wait for each other by polling the folder, so no collective timeout limits a batch's length).
    Only rank 0 writes ``stats_cache``. Every batch's randomness comes from its number
    (:meth:`Engine.batch_generator`), so the images equal a single process's whatever the world size, and a
    run resumes under any world size.
    """
    cfg = method if isinstance(method, RecoverConfig) else create_method(method, **overrides)
    if isinstance(method, RecoverConfig) and overrides:
        cfg = RecoverConfig.from_dict({**cfg.to_dict(), **{k: v for k, v in overrides.items() if v is not None}})
    group = _Group(rank, world_size)
    engine = Engine(cfg, teachers=teachers, real=real, num_classes=num_classes, ipc=ipc, mean=mean, std=std,
                    input_size=input_size, in_chans=in_chans, model_fn=model_fn, device=device,
                    stats_cache=stats_cache or (os.path.join(out, "gvbsm_stats.pt") if "conv_stats" in cfg.loss else None),
                    teacher_ids=teacher_ids)
    writer = ImageFolderWriter(out, num_classes, ipc, mean, std, image_format, jpeg_quality)
    fingerprint = {
        "config": cfg.to_dict(), "teachers": engine.teacher_ids, "num_classes": engine.num_classes, "ipc": engine.ipc,
        "input_size": engine.input_size, "in_chans": engine.in_chans, "mean": [float(v) for v in mean],
        "std": [float(v) for v in std], "image_format": image_format,
        "jpeg_quality": jpeg_quality if image_format == "jpeg" else None, "real_size": len(real) if real is not None else 0,
    }
    batches = engine.batches()
    manifest, failure = None, None
    if group.rank == 0:  # rank 0 alone prepares the folder; the others wait for its manifest (or its error)
        try:
            manifest = writer.start(fingerprint, overwrite=overwrite)
            if manifest is None:
                manifest = {
                    "format": FORMAT, "method": cfg.method, "recipe": cfg.recipe, "fingerprint": fingerprint,
                    "config": cfg.to_dict(), "teacher_hashes": engine.teacher_ids, "num_classes": engine.num_classes,
                    "ipc": engine.ipc, "input_size": engine.input_size, "in_chans": engine.in_chans,
                    "mean": fingerprint["mean"], "std": fingerprint["std"], "image_format": image_format,
                    "layout": "new{class}/class{class}_id{index}", "batches_total": len(batches), "batches_done": [],
                    "counts": [0] * engine.num_classes, "losses": {}, "wall_time_s": 0.0, "status": "running",
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "torch_version": str(torch.__version__), "runs": 0, **({"extra": extra} if extra else {}),
                }
            parts = writer.read_parts()  # a killed torchrun run's finished batches
            _merge_parts(manifest, parts, batches)
            if group.world_size > 1:
                manifest["runs"] = manifest.get("runs", 0) + 1
            if group.world_size > 1 or "world_size" in manifest:  # the latest run's (a plain run records none)
                manifest["world_size"] = group.world_size
            writer.save_manifest(manifest)  # the folder is ours from now on, even if killed before the first batch
            if parts:
                writer.remove_parts()
        except Exception as e:  # noqa: BLE001 - every rank raises it
            if group.world_size == 1:
                raise
            failure = e
    shared = group.from_rank0((manifest, None if failure is None else f"{type(failure).__name__}: {failure}"))
    if failure is not None:
        raise failure
    if shared[1] is not None:
        raise RunStateError(f"rank 0 could not start the recover run in {writer.out}: {shared[1]}")
    manifest = shared[0]
    done = set(manifest["batches_done"])
    todo = [(n, b) for n, b in enumerate(batches) if b.key not in done and n % group.world_size == group.rank]
    if group.world_size == 1:
        manifest["runs"] = manifest.get("runs", 0) + 1
    manifest["resumed_batches"] = len(done)
    part = {"rank": group.rank, "world_size": group.world_size, "run": manifest["runs"], "batches_done": [],
            "losses": {}, "notes": {}, "wall_time_s": 0.0, "status": "running"}
    t0 = time.time()
    # G-VBSM's statistics cache is one file: only rank 0 writes it (the others compute the same statistics
    # alongside, rather than wait at a barrier that a long first pass over the real data would time out)
    engine.save_stats_cache = group.rank == 0
    if todo:
        engine.prepare()
    if todo:
        manifest.setdefault("notes", {}).update(engine.notes)
        part["notes"] = dict(engine.notes)
    iters_each = engine.batch_iterations() if cfg.select is None else 1
    bar = progress_bar(total=len(todo) * max(1, iters_each), desc=f"recover {cfg.recipe}", unit="it",
                       enabled=progress and group.rank == 0)
    stopped = False
    orders: dict[int, np.ndarray] = {}  # selection baselines: each class's order, computed once per run
    try:
        for count, (n, batch) in enumerate(todo):
            if stop_after_batches is not None and count >= stop_after_batches:
                stopped = True
                break
            if cfg.select is not None:
                from .select import select_batch

                images = select_batch(engine, batch, orders)
                history: list[dict] = []
                bar.update(1)
            else:
                def on_step(values: dict) -> None:
                    bar.update(1)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)

                x, history = engine.optimise(batch, n, on_step)
                images = to_uint8(x, mean, std)
            writer.write(images, batch.classes, batch.indices)
            if group.world_size > 1:  # this rank's own record; rank 0 merges the parts
                part["batches_done"].append(batch.key)
                if history:
                    part["losses"][batch.key] = _summary(history)
                part["wall_time_s"] = round(time.time() - t0, 3)
                part["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                writer.save_part(group.rank, part)
                continue
            manifest["batches_done"].append(batch.key)
            for c in batch.classes:
                manifest["counts"][c] += 1
            if history:
                manifest["losses"][batch.key] = _summary(history)
            manifest["wall_time_s"] = round(manifest["wall_time_s"] + time.time() - t0, 3)
            t0 = time.time()
            manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            writer.save_manifest(manifest)
    finally:
        bar.close()
    if group.world_size > 1:
        part["wall_time_s"] = round(time.time() - t0, 3)
        part["status"] = "stopped" if stopped else "complete"
        writer.save_part(group.rank, part)
        # the ranks meet through the folder, not at a barrier: one rank may finish a batch (minutes at
        # ImageNet scale) after the others, longer than a collective's timeout (NCCL's is 10 minutes)
        run = manifest["runs"]
        if group.rank == 0:
            parts = _wait(lambda: _finished_parts(writer, run, group.world_size))
            _merge_parts(manifest, parts, batches)
            manifest["status"] = "complete" if len(manifest["batches_done"]) == len(batches) else "stopped"
            manifest["out"] = writer.out
            manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            writer.save_manifest(manifest)
            writer.remove_parts()
            return manifest
        return _wait(lambda: _merged_manifest(writer, run))
    manifest["wall_time_s"] = round(manifest["wall_time_s"] + time.time() - t0, 3)
    manifest["status"] = "stopped" if stopped else "complete"
    manifest["out"] = writer.out
    _in_batch_order(manifest, batches)  # a run resumed from a torchrun run's parts may have finished them out of order
    writer.save_manifest(manifest)
    return manifest
