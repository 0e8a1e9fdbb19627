"""Data-parallel training across processes with PyTorch DistributedDataParallel, for `torchrun`.

`fernb.engine.fit` uses this module by itself: when a process group is initialized with more than one process it
wraps the training step in DistributedDataParallel, gives each rank its shard of every global batch, all-reduces
the epoch's metrics and lets rank 0 alone write checkpoints. Nothing here is home-made distribution: processes are
started by `torchrun` (or `python -m fernb train --nproc N`, which calls it), which sets RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT; `init()` reads them.

    torchrun --nproc-per-node 4 -m fernb train --task supcon --profile gpu      # one node, 4 GPUs
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 -m fernb train ...

Backend: NCCL on CUDA, gloo on the CPU (the tests run two CPU processes on gloo). Each process drives the GPU
`cuda:LOCAL_RANK` (`fernb.engine.resolve_device("auto")` returns it under torchrun).
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["available", "world_size", "rank", "local_rank", "is_main", "init", "shutdown", "barrier",
           "all_reduce_sum", "launched_by_torchrun"]


def available() -> bool:
    """True when a process group is initialized (inside `torchrun` after `init()`, or a test's spawned ranks)."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if available() else 1


def rank() -> int:
    return dist.get_rank() if available() else 0


def local_rank() -> int:
    """This process's index on its node (LOCAL_RANK from torchrun; 0 outside it)."""
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes checkpoints, weights and logs."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def init(device=None, backend: str | None = None, timeout_minutes: float = 30) -> torch.device:
    """Join the process group `torchrun` describes (no-op when there is none or it is already joined) and return
    this process's device: `cuda:LOCAL_RANK` on a GPU machine (made the current CUDA device), else the CPU.

    backend: "nccl" on CUDA, "gloo" on the CPU unless given."""
    from .engine import resolve_device

    device = resolve_device(device)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank() % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    if launched_by_torchrun() and not available():
        backend = backend or ("nccl" if device.type == "cuda" else "gloo")
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes), **kwargs)
    return device


def shutdown() -> None:
    """Leave the process group (call once at the end of a torchrun job)."""
    if available():
        dist.destroy_process_group()


def barrier() -> None:
    if available() and world_size() > 1:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all ranks, in place (and returned); the tensor itself when there is one process."""
    if available() and world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
