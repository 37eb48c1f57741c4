"""Checkpoints as one dict, written atomically (temp file, fsync, rename), and RNG state capture.

A training checkpoint holds the unwrapped model, optimizer, scheduler, epoch, the full config and
the RNG states, so ``--resume`` continues at ``epoch + 1`` exactly where the run stopped.
:class:`Commits` writes such files the same way, with the fsync and rename moved off the training
loop's timeline (one background thread, in the order written).
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from ddpipe._files import commit_temp, replace_atomically, write_temp
from .errors import CheckpointError

__all__ = ["resume_checkpoint", "save_atomic", "Commits", "write_json_atomic", "load_checkpoint", "unwrap_model", "rng_state", "set_rng_state",
           "state_dict_hash", "extract_state_dict"]


def __getattr__(name: str):
    """``state_dict_hash`` (:func:`ddpipe.synth.stats.state_dict_hash`, re-exported: teacher files use it),
    imported when first asked for: importing ``ddpipe.synth`` costs a training run that never hashes."""
    if name == "state_dict_hash":
        from ..synth.stats import state_dict_hash

        return state_dict_hash
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Namespace:
    """Stands in for ``argparse.Namespace`` when unpickling a training script's saved flags with
    ``weights_only=True`` (torch allows a global by its module and name; this module imports no argparse)."""

    def __repr__(self) -> str:
        return f"Namespace({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


_Namespace.__module__, _Namespace.__name__, _Namespace.__qualname__ = "argparse", "Namespace", "Namespace"


def save_atomic(obj, path: str) -> None:
    """``torch.save(obj, path)`` so that ``path`` is either the old file or the complete new one."""
    replace_atomically(path, lambda f: torch.save(obj, f))


class _EarlyWriteback:
    """A binary file for ``torch.save`` that asks the kernel to start writing every ``step`` bytes to disk
    as soon as they are written (``posix_fadvise(DONTNEED)`` starts the writeback without waiting for
    it), so the fsync that follows waits for the tail only. The bytes written are the same."""

    def __init__(self, f, step: int = 16 << 20):
        self.f, self.step = f, step
        self.written = self.started = 0
        self.fd = f.fileno() if hasattr(os, "posix_fadvise") else None

    def write(self, data) -> int:
        n = self.f.write(data)
        self.written += len(memoryview(data))
        if self.fd is not None and self.written - self.started >= self.step:
            self.f.flush()
            try:
                os.posix_fadvise(self.fd, self.started, self.written - self.started, os.POSIX_FADV_DONTNEED)
            except OSError:  # advice only
                self.fd = None
            self.started = self.written
        return n

    def flush(self) -> None:
        self.f.flush()


class Commits:
    """Files replaced atomically like :func:`save_atomic`, made durable off the caller's timeline.

    :meth:`save` serialises a checkpoint into a temporary file beside its path in the calling thread (so
    it holds the tensors as they are now); one background thread then fsyncs it and renames it into
    place. :meth:`write_json` hands a copy of a small JSON document to the same thread. The thread takes
    the files in the order they were given, and after a failure it drops the rest (removing their
    temporaries): a ``results.json`` given after a checkpoint never reaches its path before that
    checkpoint does, and a process killed at any moment leaves each path holding its old or its new
    complete file, as :func:`save_atomic` does. The fsync (waiting on the disk) overlaps the next
    epoch's work instead of delaying it. :meth:`wait` returns once every file given so far is in place,
    raising the first failure (a full disk ...); :meth:`close` also stops the thread.
    """

    def __init__(self) -> None:
        self._pool = None
        self._pending: list = []
        self._failed = False

    def _submit(self, fn, args: tuple, tmp: str | None = None) -> None:
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ddpipe-commit")
        self._pending.append(self._pool.submit(self._run, fn, args, tmp))

    def _run(self, fn, args: tuple, tmp: str | None) -> None:
        if self._failed:  # an earlier file failed: nothing after it reaches its path
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
            return
        try:
            fn(*args)
        except BaseException:
            self._failed = True
            raise

    def save(self, obj, path: str) -> None:
        """``torch.save(obj)`` into ``path`` (see the class doc); the disk starts writing while it is serialised."""
        tmp = write_temp(path, lambda f: torch.save(obj, _EarlyWriteback(f)))
        self._submit(commit_temp, (tmp, path), tmp)

    def write_json(self, obj, path: str) -> None:
        """``obj`` (a dict or a typed result, copied now) into ``path`` as :func:`write_json_atomic` writes it."""
        import copy

        self._submit(write_json_atomic, (copy.deepcopy(obj.to_dict() if hasattr(obj, "to_dict") else obj), path))

    def wait(self) -> None:
        """Block until every file given so far is in place; the first failure is raised here."""
        pending, self._pending = self._pending, []
        error = None
        for fut in pending:
            try:
                fut.result()
            except BaseException as e:  # noqa: BLE001 - the first one is raised once all have finished
                error = error or e
        self._failed = False
        if error is not None:
            raise error

    def close(self) -> None:
        """:meth:`wait`, then stop the thread."""
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None


def write_json_atomic(obj, path: str) -> None:
    """``obj`` (a dict or a typed result) as JSON at ``path``, atomically (see ``ddpipe.evaluate._phase.write_json``)."""
    from ._phase import write_json

    write_json(obj, path)


def load_checkpoint(path: str, trusted: bool = False) -> dict:
    """Load a checkpoint dict onto the CPU with ``weights_only=True`` (no code runs while loading).

    ``trusted=True`` allows full unpickling for files you made yourself (e.g. a timm checkpoint
    holding an argparse namespace). A missing or unreadable file is one clear error.
    """
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} is a directory, not a file")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        # torchvision's and timm's training scripts store their argparse namespace beside the weights
        with torch.serialization.safe_globals([_Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=not trusted)
    except Exception as e:  # noqa: BLE001 - any failure to read is one clear error
        lines = str(e).splitlines()
        detail = next((ln.strip() for ln in lines if "Unsupported global" in ln), lines[0] if lines else "")
        hint = "" if trusted else "; it holds objects other than tensors and plain containers, so load only files you trust"
        raise CheckpointError(f"{path} is not a readable torch checkpoint ({type(e).__name__}: {detail}){hint}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a dict of tensors")
    return obj


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP / DataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


def rng_state() -> dict:
    """Python, numpy-global and torch (CPU, CUDA) RNG states."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(), "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def extract_state_dict(obj, path: str = "checkpoint") -> dict:
    """The model weights inside a torchvision / timm / ddpipe file, with ``module.`` prefixes removed.

    Accepts a raw state dict, or a dict under ``model``, ``state_dict``, ``model_state_dict`` or ``module``.
    """
    sd = obj
    for _ in range(3):
        if isinstance(sd, dict) and sd and all(isinstance(v, torch.Tensor) for v in sd.values()):
            break
        if not isinstance(sd, dict):
            break
        key = next((k for k in ("model", "state_dict", "model_state_dict", "module") if k in sd), None)
        if key is None:
            break
        sd = sd[key]
    if not (isinstance(sd, dict) and sd and all(isinstance(v, torch.Tensor) for v in sd.values())):
        keys = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path} holds no model state dict (top-level keys: {keys})")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd)


def resume_checkpoint(ckpt_path: str, config: dict, config_class: type, *, resume: bool, overwrite: bool,
                      phase: str) -> dict | None:
    """The checkpoint a run continues from, or ``None`` to start afresh.

    A checkpoint left by an earlier run needs ``resume`` (or ``overwrite``, which ignores it), and
    every field of ``config_class`` that changes the result (:func:`ddpipe.config.result_fields`) must
    have the value it was made with (``config`` is this run's config dict, as the checkpoint records
    it): one line naming the changed flags otherwise, before any data or model is loaded.
    """
    from ddpipe.config import check_resume

    from .errors import RunStateError

    if overwrite or not os.path.exists(ckpt_path):
        return None
    if not resume:
        raise RunStateError(f"{os.path.dirname(ckpt_path)} already holds a {phase} run; pass --resume to continue it "
                            "or --overwrite to start afresh")
    ckpt = load_checkpoint(ckpt_path)
    check_resume(config_class, ckpt.get("config") or {}, config, RunStateError, ckpt_path,
                 hint="rerun with the original values or pass --overwrite")
    return ckpt
