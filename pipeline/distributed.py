"""Rank sharding under torchrun / DDP: who am I, and the process group (gloo on CPU, NCCL on GPU).

:func:`init_distributed` is the one way every phase and script joins torchrun's group (torchvision
references' ``init_distributed_mode``, trimmed): under ``torchrun`` (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` set) it joins the process group, gloo on the CPU and NCCL on GPUs (each rank on GPU
``LOCAL_RANK``); otherwise it runs as one process, silently. It returns a :class:`DistInfo`.

Loaders take ``rank`` and ``world_size`` explicitly and shard each epoch's units with
:func:`ddpipe.pipeline.shard_for_rank` (every ``world_size``-th unit from ``rank``), so the union of
the ranks' batches is the single-process epoch with nothing twice. Relabel shards by writer shard
instead, so two ranks never write the same shard.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ddpipe._progress import say
from .device import parse_device
from .errors import LoaderSpecError

__all__ = ["DistInfo", "init_distributed", "rank_and_world"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``distributed`` (in a torchrun group), its ``rank`` of ``world_size``,
    ``local_rank`` on its node, the group's ``backend`` (None alone) and the ``device`` to compute on
    (``cpu``, ``cuda`` or ``cuda:N``; in a group on GPUs ``cuda:<local_rank>``)."""

    distributed: bool
    rank: int
    world_size: int
    local_rank: int
    backend: str | None
    device: str


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of an initialised process group, else torchrun's variables, else (0, 1)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:
        pass
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init_distributed(device: str = "auto", announce: bool = True) -> DistInfo:
    """Join the torchrun process group if the environment says so, else run as one process.

    ``device`` (:mod:`ddpipe.pipeline.device`'s vocabulary) picks the backend: NCCL on GPUs (``auto``
    where CUDA is present), gloo on the CPU. ``announce``: rank 0 says so on stderr in a group.
    """
    import torch
    import torch.distributed as dist

    device = parse_device(LoaderSpecError, "device", device)
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", 0))
        backend = "nccl" if use_cuda else "gloo"
        if use_cuda:
            torch.cuda.set_device(local)
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, rank=rank, world_size=world)
        say(announce and rank == 0, f"distributed: {world} processes, backend {backend}")
        return DistInfo(True, rank, world, local, backend, f"cuda:{local}" if use_cuda else "cpu")
    return DistInfo(False, 0, 1, 0, None, (device if device != "auto" else "cuda") if use_cuda else "cpu")
