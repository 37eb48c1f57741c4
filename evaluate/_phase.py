"""What every phase shares: the run options (``--device``, ``--threads``, ``--resume``, progress)
declared once as config fields, device checks, torch's thread count, the output folder's life
cycle and the ``results.json`` every phase writes.

A phase config inherits :class:`RunOptions` (and :class:`ResumeOption` when the phase resumes) and
overrides :meth:`RunOptions.validate`, calling ``super().validate()``; ``error`` names the phase's
:class:`~ddpipe.errors.DDPipeError` subclass. The CLI adds ``--json`` itself (it is about printing,
not about the run). Nothing here imports torch at import time.
"""

from __future__ import annotations

import os
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

from ddpipe.config import check_int, option
from .errors import EvaluateError

__all__ = ["RunOptions", "ResumeOption", "check_device", "resolve_device", "torch_threads", "output_dir",
           "versions", "write_json", "RESULTS"]

RESULTS = "results.json"


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """Options every phase has: where it computes and whether it shows progress."""

    error: ClassVar[type[Exception]] = EvaluateError

    device: str = option("auto", help="auto (cuda when available), cpu, cuda or cuda:N (default auto)", group="run")
    threads: int | None = option(None, help="torch CPU threads (default: torch's choice)", group="run")
    progress: bool = option(True, help="no progress bars or lines on stderr (progress=False)", group="run")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field; raise ``self.error`` naming the first bad one. Subclasses extend it."""
        check_device(self.error, "device", self.device)
        check_int(self.error, "threads", self.threads, min=0, allow_none=True)


@dataclass(frozen=True, kw_only=True)
class ResumeOption:
    """``resume``: continue what an earlier, killed run left in the output."""

    resume: bool = option(False, help="continue the run that the output already holds", group="run")


def check_device(error: type[Exception], name: str, device: str) -> None:
    """``auto`` and ``cpu`` always; ``cuda`` / ``cuda:N`` only where such a GPU exists (one clear error)."""
    if device in ("auto", "cpu"):
        return
    m = re.fullmatch(r"cuda(?::(\d+))?", str(device))
    if m is None:
        raise error(f"{name} must be auto, cpu, cuda or cuda:N, got {device!r}")
    import torch

    if not torch.cuda.is_available():
        raise error(f"{name} {device}: no CUDA GPU is available on this machine; use --device cpu (or auto)")
    if m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
        raise error(f"{name} {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; anything else unchanged."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@contextmanager
def torch_threads(n: int | None):
    """Run with ``n`` intra-op threads (``None`` or 0: torch's choice), restoring the previous count."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def output_dir(path: str):
    """Around a phase: if the phase fails and ``path`` did not exist before, remove it again when it
    is still empty, so a validation error leaves nothing behind."""
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    existed = os.path.exists(path)
    try:
        yield path
    except BaseException:
        if not existed and os.path.isdir(path):
            try:
                os.rmdir(path)  # only succeeds when empty
            except OSError:
                pass
        raise


def run_phase(config, cls: type, body, phase: str):
    """``body(config)`` for a phase whose output is ``config.out``: checks the config's type, sets
    torch's thread count (``config.threads``) and removes an output folder the run created and left
    empty when it fails."""
    if not isinstance(config, cls):
        raise TypeError(f"{phase}.run takes a {cls.__name__}, got {type(config).__name__}")
    with output_dir(config.out), torch_threads(config.threads):
        return body(config)


def versions() -> dict:
    """ddpipe, torch and Python versions, as recorded in every results.json."""
    from ddpipe import __version__

    torch = sys.modules.get("torch")
    return {"ddpipe": __version__, "torch": str(torch.__version__) if torch else None,
            "python": sys.version.split()[0]}


def write_json(obj, path: str) -> None:
    """``obj`` as indented JSON at ``path``, atomically (the old file or the complete new one), mode 0644
    under the usual umask. Torch-free, so store-only phases (prune) can use it."""
    import json

    from ddpipe._files import replace_atomically
    from ddpipe._format import json_default

    if hasattr(obj, "to_dict"):
        obj = obj.to_dict()
    text = json.dumps(obj, indent=2, sort_keys=False, default=json_default) + "\n"
    replace_atomically(path, lambda f: f.write(text.encode()))

