"""What every phase shares: the run options (``--device``, ``--threads``, ``--resume``, progress)
declared once as config fields, device checks, and the ``results.json`` every phase writes. The
path every phase's ``run`` goes through (type check, torch's thread count, the output folder's life
cycle) is :func:`ddpipe.phase.run_phase`, re-exported here.

A phase config inherits :class:`RunOptions` (and :class:`ResumeOption` when the phase resumes) and
overrides :meth:`RunOptions.validate`, calling ``super().validate()`` (which checks every field's
declared choices); ``error`` names the phase's :class:`~ddpipe.errors.DDPipeError` subclass. The run
options change where and how fast a run computes, never what: ``option(changes_result=False)``. The CLI adds ``--json`` itself (it is about printing,
not about the run). Nothing here imports torch at import time.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import ClassVar

from ddpipe.config import check_choices, check_int, option
from ddpipe.phase import output_dir, run_phase, torch_threads  # the one path of every phase: ddpipe/phase.py
from ..labelstore.location import RESULTS  # the one name of a phase's results file
from ..pipeline.device import check_device, resolve_device  # the one device vocabulary: pipeline/device.py
from .errors import EvaluateError

__all__ = ["RunOptions", "ResumeOption", "check_device", "resolve_device", "torch_threads", "output_dir",
           "run_phase", "versions", "write_json", "RESULTS"]


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """Options every phase has: where it computes and whether it shows progress."""

    error: ClassVar[type[Exception]] = EvaluateError

    # where and how fast a run computes, and what it shows, never what it computes: a --resume may change them
    device: str = option("auto", help="auto (cuda when available), cpu, cuda or cuda:N (default auto)", group="run",
                         changes_result=False)
    threads: int | None = option(None, help="torch CPU threads (default: torch's choice)", group="run",
                                 changes_result=False)
    progress: bool = option(True, help="no progress bars or lines on stderr (progress=False)", group="run",
                            changes_result=False)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field; raise ``self.error`` naming the first bad one. Subclasses extend it.
        Every field's ``option(choices=...)`` is checked here (:func:`ddpipe.config.check_choices`)."""
        check_choices(self, self.error)
        check_device(self.error, "device", self.device)
        check_int(self.error, "threads", self.threads, min=0, allow_none=True)


@dataclass(frozen=True, kw_only=True)
class ResumeOption:
    """``resume``: continue what an earlier, killed run left in the output."""

    resume: bool = option(False, help="continue the run that the output already holds (every option that changes "
                                      "the result must be as it was; the others, e.g. --device, may change)",
                          group="run", changes_result=False)


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

