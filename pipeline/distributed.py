"""Rank sharding under torchrun / DDP: who am I, and the process group (gloo on CPU, NCCL on GPU).

Loaders take ``rank`` and ``world_size`` explicitly and shard each epoch's units with
:func:`ddpipe.pipeline.shard_for_rank` (every ``world_size``-th unit from ``rank``), so the union of
the ranks' batches is the single-process epoch with nothing twice. Relabel shards by writer shard
instead, so two ranks never write the same shard.
"""

from __future__ import annotations

import os


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of an initialised process group, else torchrun's variables, else (0, 1)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:
        pass
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init_distributed(backend: str | None = None) -> tuple[int, int]:
    """Join torchrun's process group when ``WORLD_SIZE > 1`` (gloo without CUDA, NCCL with it).

    Returns ``(rank, world_size)``; a single process returns ``(0, 1)`` without a group.
    """
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if torch.cuda.is_available() else "gloo"))
    return dist.get_rank(), dist.get_world_size()
