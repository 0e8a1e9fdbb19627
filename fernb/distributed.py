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
from torch import nn

__all__ = ["available", "world_size", "rank", "local_rank", "is_main", "init", "shutdown", "barrier",
           "all_reduce_sum", "broadcast_buffers", "all_gather_with_grad", "GlobalBatchNorm1d",
           "global_batchnorm", "launched_by_torchrun"]


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


def broadcast_buffers(module: nn.Module, src: int = 0) -> nn.Module:
    """Copy rank `src`'s buffers (BatchNorm running statistics) to every rank, in place; returns `module`.

    DistributedDataParallel broadcasts them before each forward, so each rank's last training step leaves its own
    statistics behind: after an epoch the ranks' models differ in their buffers, and so would their validation
    accuracy and the model each returns. `fernb.engine.fit` calls this at the end of every epoch, so every rank
    holds the model rank 0 checkpoints. A no-op with one process."""
    if available() and world_size() > 1:
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src)
    return module


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the incoming gradient over the ranks and hands each rank its own rows.

    Not `torch.distributed.nn.functional.all_gather`: its gloo backward (all-to-all emulated with scatter into
    `torch.empty_like(grad)` buffers) returns rows in the wrong order when the gradient reaching it is not contiguous,
    which is what a loss that transposes the gathered tensor produces (SupCon's `features.transpose(0, 1)`): the
    2-process SupCon run then trained on scrambled gradients and its loss rose. Here the gradient is made contiguous
    and all-reduced, one collective that every backend has."""

    @staticmethod
    def forward(ctx, tensor):
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        ctx.rows = tensor.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.rows
        return grad[start:start + ctx.rows]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's `tensor` (same shape on each) concatenated along dim 0 in rank order, differentiable: the gradient
    of this rank's rows is the sum over ranks of the gradient each rank's loss sends them. When every rank computes
    the same loss from the gathered tensor (a contrastive loss over the global batch), that sum is world_size times
    the loss's own gradient, and DistributedDataParallel's average over ranks divides it back out, so the update is
    the single-process one. The tensor itself when there is one process."""
    if not (available() and world_size() > 1):
        return tensor
    return _GatherWithGrad.apply(tensor)


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics are those of the global batch under data parallelism (SimCLR's "global
    BN"): each rank normalizes its rows with the mean and variance of every rank's rows, gathered with their gradient.
    Per-rank statistics would differ from one process's with the same global batch, and would let a contrastive
    model tell same-rank rows apart. Works on every backend (gloo on the CPU too, where `nn.SyncBatchNorm` does not
    run); in eval mode, or with one process, it is `nn.BatchNorm1d`. Same parameters, buffers and state-dict keys."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and available() and world_size() > 1) or x.ndim != 2:
            return super().forward(x)
        rows = all_gather_with_grad(x.float())
        mean, var = rows.mean(0), rows.var(0, unbiased=False)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                n = rows.shape[0]
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * n / max(n - 1, 1), momentum)
        out = (x.float() - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            out = out * self.weight + self.bias
        return out


def global_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every `nn.BatchNorm1d` in `module` (in place; the module itself is returned, or its replacement when
    it is one) by a `GlobalBatchNorm1d` holding the same parameter and buffer tensors (same device, same values)."""
    if type(module) is nn.BatchNorm1d:
        new = GlobalBatchNorm1d(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats)
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            setattr(new, name, getattr(module, name))
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, global_batchnorm(child))
    return module
