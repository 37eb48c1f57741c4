"""Distributed setup in one place (torchvision references' ``init_distributed_mode``, trimmed).

Under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` set) it joins the process group, gloo
on CPU and NCCL on GPU; otherwise it runs as one process (silently: a plain run prints nothing about
distribution). Only the main rank prints and writes files (:func:`save_on_main`).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

__all__ = ["DistInfo", "init_distributed", "is_dist", "get_rank", "get_world_size", "is_main_process",
           "save_on_main", "barrier", "all_reduce_sum"]


@dataclass(frozen=True)
class DistInfo:
    distributed: bool
    rank: int
    world_size: int
    local_rank: int
    backend: str | None
    device: str  # "cpu" or "cuda:<local_rank>"


def init_distributed(device: str = "auto", announce: bool = True) -> DistInfo:
    """Join the torchrun process group if the environment says so, else run as one process."""
    import torch
    import torch.distributed as dist

    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", 0))
        backend = "nccl" if use_cuda else "gloo"
        if use_cuda:
            torch.cuda.set_device(local)
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, rank=rank, world_size=world)
        if announce and rank == 0:
            print(f"distributed: {world} processes, backend {backend}", file=sys.stderr, flush=True)
        return DistInfo(True, rank, world, local, backend, f"cuda:{local}" if use_cuda else "cpu")
    return DistInfo(False, 0, 1, 0, None, "cuda" if use_cuda else "cpu")


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
