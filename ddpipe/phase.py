"""The one path every phase's ``run(config)`` goes through: :func:`run_phase`.

Every phase (``info``, ``verify``, ``prune``, ``show``, ``squeeze``, ``recover``, ``relabel``, ``train``,
``cache``, ``import``, ``export``, ``demo``) is ``run(config) -> result``, and its ``run`` is one line,
``run_phase(config, ConfigClass, _run, "name")``: the same type check (one :class:`TypeError` line),
torch's thread count when the config has ``threads``, and an output folder the run created and left
empty removed again when it fails (``config.out``, when the config has a local one).

This module sits in ``ddpipe/`` so that every package may import it (``ddpipe.pipeline`` must not import
``ddpipe.evaluate``). Nothing here imports torch unless a thread count is asked for.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Callable

from ddpipe._files import is_url

__all__ = ["run_phase", "torch_threads", "output_dir"]


@contextmanager
def torch_threads(n: int | None):
    """Run with ``n`` intra-op threads, restoring the previous count; ``None`` or 0 leaves torch's choice
    (and does not import torch)."""
    if not n:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def output_dir(path: str | os.PathLike | None):
    """Around a phase: if the phase fails and the local folder ``path`` did not exist before, remove it
    again when it is still empty, so a validation error leaves nothing behind. ``None`` or a URL: nothing
    to guard."""
    if path is None or is_url(os.fspath(path)):
        yield path
        return
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


def run_phase(config: Any, cls: type, body: Callable[[Any], Any], phase: str) -> Any:
    """``body(config)`` for the phase ``phase``: checks that ``config`` is a ``cls``, sets torch's thread
    count (``config.threads``, when the config has it) and removes an output folder (``config.out``,
    when it has one) that the run created and left empty when it fails."""
    if not isinstance(config, cls):
        raise TypeError(f"{phase}.run takes a {cls.__name__}, got {type(config).__name__}")
    with output_dir(getattr(config, "out", None)), torch_threads(getattr(config, "threads", None)):
        return body(config)
