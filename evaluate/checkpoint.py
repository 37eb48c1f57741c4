"""Checkpoints as one dict, written atomically (temp file, fsync, rename), and RNG state capture.

A training checkpoint holds the unwrapped model, optimizer, scheduler, epoch, the full config and
the RNG states, so ``--resume`` continues at ``epoch + 1`` exactly where the run stopped.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from ddpipe._files import replace_atomically
from .errors import CheckpointError
from ..synth.stats import state_dict_hash  # noqa: F401  (re-exported: teacher files use it)

__all__ = ["resume_checkpoint", "save_atomic", "write_json_atomic", "load_checkpoint", "unwrap_model", "rng_state", "set_rng_state",
           "state_dict_hash", "extract_state_dict"]


class _Namespace:
    """Stands in for ``argparse.Namespace`` when unpickling a training script's saved flags with
    ``weights_only=True`` (torch allows a global by its module and name; this module imports no argparse)."""

    def __repr__(self) -> str:
        return f"Namespace({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


_Namespace.__module__, _Namespace.__name__, _Namespace.__qualname__ = "argparse", "Namespace", "Namespace"


def save_atomic(obj, path: str) -> None:
    """``torch.save(obj, path)`` so that ``path`` is either the old file or the complete new one."""
    replace_atomically(path, lambda f: torch.save(obj, f))


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
