"""Distributed helpers of the training phases: rank queries, barriers, sums over ranks, main-rank saves.

Joining torchrun's group is :func:`ddpipe.pipeline.distributed.init_distributed` (the one owner,
re-exported here with its :class:`~ddpipe.pipeline.distributed.DistInfo`): under ``torchrun`` it
joins the process group, gloo on CPU and NCCL on GPU; otherwise it runs as one process. Only the
main rank prints and writes files (:func:`save_on_main`).
"""

from __future__ import annotations

from ..pipeline.distributed import DistInfo, init_distributed

__all__ = ["DistInfo", "init_distributed", "is_dist", "get_rank", "get_world_size", "is_main_process",
           "save_on_main", "barrier", "all_reduce_sum"]


def is_dist() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    import torch.distributed as dist

    if is_dist():
        dist.barrier()


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum a few numbers over all ranks (identity in a single process)."""
    if not is_dist():
        return list(values)
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


def save_on_main(obj, path: str) -> None:
    """Write ``obj`` atomically to ``path`` from the main rank only."""
    if is_main_process():
        from .checkpoint import save_atomic

        save_atomic(obj, path)
