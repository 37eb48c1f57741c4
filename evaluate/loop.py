"""The one training loop of squeeze (teacher) and train (student).

:class:`TrainingRun` owns what both phases share, in the order of a run:

1. distributed setup (torchrun: one process group; otherwise one process, silently), the output
   folder, and the checkpoint a ``resume`` continues from (every setting that changes the result
   must equal this run's: the config's :func:`ddpipe.config.result_fields`);
2. :meth:`TrainingRun.attach`: the model (wrapped in DDP under torchrun), optimiser and schedule,
   restored from the checkpoint when resuming (weights, optimiser, schedule, every RNG);
3. :meth:`TrainingRun.fit`: the epoch loop: one epoch of training, the schedule's step, validation
   every ``val_every`` epochs and after the last, a progress line, the checkpoint (one dict, replaced
   atomically) and ``results.json`` (status ``running``) after every epoch, and ``stop_after_epoch``
   (stop as if killed, for testing resume). Both files are serialised when the epoch ends and made
   durable (fsync, rename) by :class:`~ddpipe.evaluate.checkpoint.Commits`' thread while the next
   epoch runs; ``fit`` returns once they are in place (or leaves that to :meth:`TrainingRun.finish`).

A phase supplies only what differs: how an epoch's batches are made (squeeze reseeds its real-data
loader, train replays a store or labels live), the criterion, and its typed result. Every epoch's
randomness is a pure function of the seed and the epoch, so a resumed run reaches bit-identical weights.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Iterable

from ddpipe._progress import say

__all__ = ["TrainingRun"]

CHECKPOINT = "checkpoint.pth"


class TrainingRun:
    """One run of a training phase writing into ``out`` (see the module docstring).

    ``config`` is the run's full, JSON-safe config (recorded in every checkpoint); a resumed run must
    share every field of ``config_class`` that changes the result (:func:`ddpipe.config.result_fields`;
    :func:`~ddpipe.evaluate.checkpoint.resume_checkpoint`). ``final_file`` is the
    phase's last output (``teacher.pt``, ``student.pt``), removed with the checkpoint and results by
    ``overwrite``.
    """

    def __init__(self, phase: str, out: str, config: dict, config_class: type, *, resume: bool,
                 overwrite: bool, device: str, progress: bool, final_file: str):
        import torch

        from ._phase import RESULTS
        from .checkpoint import resume_checkpoint
        from .distributed import barrier, init_distributed, is_main_process

        self.t_start = time.perf_counter()
        self.phase = phase
        self.dist = init_distributed(device, announce=progress)
        self.main = is_main_process()
        self.say = progress and self.main
        self.progress = progress
        self.out = out
        self.config = config
        self.ckpt_path = os.path.join(out, CHECKPOINT)
        self.results_path = os.path.join(out, RESULTS)
        self.final_path = os.path.join(out, final_file)
        self.ckpt = resume_checkpoint(self.ckpt_path, config, config_class, resume=resume, overwrite=overwrite,
                                      phase=phase)
        if self.ckpt is None and resume:
            self.log(f"{phase}: no checkpoint in {out}, starting afresh")
        if self.main:
            os.makedirs(out, exist_ok=True)
            if overwrite:  # no stale outputs from the run being replaced
                for path in (self.ckpt_path, self.results_path, self.final_path):
                    if os.path.exists(path):
                        os.unlink(path)
        barrier()
        self.device = torch.device(self.dist.device)
        self.start_epoch, self.history, self.elapsed_before = 0, [], 0.0
        self.model = self.model_without_ddp = self.optimizer = self.scheduler = None
        self._commits = None

    # --- helpers -------------------------------------------------------------------------------------
    def log(self, text: str) -> None:
        """One line on stderr from the main rank, unless progress is off."""
        say(self.say, text)

    def elapsed(self) -> float:
        """Seconds this run has computed, summed over the sessions of a resumed run."""
        return self.elapsed_before + time.perf_counter() - self.t_start

    @property
    def resumed(self) -> bool:
        return self.ckpt is not None

    def write_results(self, result: Any, defer: bool = False) -> None:
        """``result`` (a :class:`ddpipe.config.Result` or a dict) to ``out/results.json``, from the main rank;
        ``defer``: after the files :meth:`save` was given, by their thread (in place after :meth:`finish`)."""
        if not self.main:
            return
        if defer:
            self.commits.write_json(result, self.results_path)
            return
        from .checkpoint import write_json_atomic

        self.finish()  # never ahead of a file still being committed
        write_json_atomic(result.to_dict() if hasattr(result, "to_dict") else result, self.results_path)

    @property
    def commits(self):
        """The run's :class:`~ddpipe.evaluate.checkpoint.Commits` (files made durable off the loop's timeline)."""
        if self._commits is None:
            from .checkpoint import Commits

            self._commits = Commits()
        return self._commits

    def save(self, obj: Any, path: str) -> None:
        """``torch.save(obj)`` to ``path`` from the main rank: serialised now, replaced atomically by the
        commit thread (in place after :meth:`finish`)."""
        if self.main:
            self.commits.save(obj, path)

    def finish(self) -> None:
        """Wait until every file given to :meth:`save` / ``write_results(defer=True)`` is in place (raising
        the first failure)."""
        if self._commits is not None:
            self._commits.close()
            self._commits = None

    # --- model and optimiser ---------------------------------------------------------------------
    def attach(self, model, optimizer, scheduler):
        """Wrap ``model`` (already on the device) for DDP under torchrun and restore a resumed run's
        state; returns the model to train."""
        import torch

        from .checkpoint import set_rng_state

        self.model_without_ddp = model
        if self.dist.distributed:
            ids = [self.dist.local_rank] if self.device.type == "cuda" else None
            model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        if self.ckpt is not None:
            ck = self.ckpt
            self.model_without_ddp.load_state_dict(ck["model"])
            optimizer.load_state_dict(ck["optimizer"])
            scheduler.load_state_dict(ck["lr_scheduler"])
            set_rng_state(ck["rng"])
            self.start_epoch, self.history = ck["epoch"] + 1, list(ck["history"])
            self.elapsed_before = float(ck["elapsed_s"])
            self.log(f"{self.phase}: resumed from {self.ckpt_path} at epoch {self.start_epoch}")
        return model

    # --- the epoch loop ------------------------------------------------------------------------------
    def fit(self, epochs: int, batches: Callable[[int], Iterable], criterion: Callable, val_loader: Iterable, *,
            val_every: int, deterministic: bool, results: Callable[[str], Any], stop_after_epoch: int | None = None,
            after_epoch: Callable[[int], None] | None = None, extra_state: dict | None = None,
            wait: bool = True) -> str:
        """Train epochs ``start_epoch .. epochs - 1``; returns ``"complete"`` or ``"stopped"``.

        ``batches(epoch)`` is called once before each epoch and returns its iterable of
        ``(images, targets[, meta])``; ``after_epoch(epoch)`` runs after the schedule's step;
        ``results(status)`` builds the phase's result (written to results.json after every epoch);
        ``extra_state`` is stored in every checkpoint beside the weights. The files of the last epoch are in
        place when ``fit`` returns, unless ``wait=False``: then :meth:`finish` waits for them (a phase that
        writes its final file next lets the last checkpoint's fsync overlap that write).
        """
        try:
            status = self._fit(epochs, batches, criterion, val_loader, val_every=val_every, deterministic=deterministic,
                               results=results, stop_after_epoch=stop_after_epoch, after_epoch=after_epoch,
                               extra_state=extra_state)
        except BaseException:
            try:  # the last complete epoch's checkpoint still reaches its path (a resume starts there)
                self.finish()
            except Exception:  # noqa: BLE001 - the error that stopped the run is the one to raise
                pass
            raise
        if wait or status != "complete":
            self.finish()
        return status

    def _fit(self, epochs, batches, criterion, val_loader, *, val_every, deterministic, results, stop_after_epoch,
             after_epoch, extra_state) -> str:
        from .checkpoint import rng_state
        from .distributed import barrier
        from .train import deterministic as deterministic_mode
        from .train import train_one_epoch, validate

        with deterministic_mode(deterministic):
            for epoch in range(self.start_epoch, epochs):
                loader = batches(epoch)
                stats = train_one_epoch(self.model, loader, criterion, self.optimizer, self.device, epoch,
                                        progress=self.progress, header=f"epoch {epoch + 1}/{epochs}")
                self.scheduler.step()
                if after_epoch is not None:
                    after_epoch(epoch)
                if (epoch + 1) % val_every == 0 or epoch + 1 == epochs:
                    stats["val"] = validate(self.model, val_loader, self.device, progress=self.progress)
                self.history.append(stats)
                val = stats.get("val")
                self.log(f"epoch {epoch + 1}/{epochs}: loss {stats['train_loss']:.4f}  train {stats['train_top1']:.2f}%"
                         + (f"  val top-1 {val['top1']:.2f}% top-5 {val['top5']:.2f}%" if val else "")
                         + f"  ({stats['time_s']:.1f} s)")
                self.save({
                    "model": self.model_without_ddp.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "lr_scheduler": self.scheduler.state_dict(), "epoch": epoch, "config": self.config,
                    "history": self.history, "rng": rng_state(), "elapsed_s": self.elapsed(), **(extra_state or {}),
                }, self.ckpt_path)
                self.write_results(results("running"), defer=True)
                barrier()
                if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch + 1 < epochs:
                    self.write_results(results("stopped"))
                    return "stopped"
        return "complete"

    def last_val(self) -> dict | None:
        """The latest validation metrics in the history (None before the first)."""
        return next((h["val"] for h in reversed(self.history) if "val" in h), None)
