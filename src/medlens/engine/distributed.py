"""Multi-process training through PyTorch's own DistributedDataParallel, launched by ``torchrun``.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init_distributed` reads them and joins the process group (NCCL on CUDA, gloo on the
CPU). Outside ``torchrun`` every helper here degrades to the single-process answer, so the same
training script runs either way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistInfo",
    "all_gather_objects",
    "all_reduce_sum",
    "broadcast_object",
    "current_dist",
    "destroy_distributed",
    "init_distributed",
    "launched_by_torchrun",
    "unwrap",
    "wrap_model",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank, the world size and its local (per-node) rank."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, logs and the progress bar."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """Whether the environment describes a multi-process run (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def current_dist() -> DistInfo:
    """The process group already joined, or a single process."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        backend=str(dist.get_backend()),
    )


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the process group described by the ``torchrun`` environment (if any).

    The backend defaults to NCCL when CUDA is available and gloo otherwise; on CUDA each
    process uses the GPU of its ``LOCAL_RANK``. Idempotent: a joined group is returned as is.
    """
    if dist.is_available() and dist.is_initialized():
        return current_dist()
    if not launched_by_torchrun():
        return DistInfo()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, init_method="env://")
    return current_dist()


def destroy_distributed() -> None:
    """Leave the process group (a no-op outside one), all ranks together.

    The barrier first: a rank that tears its group down while another still talks to it makes
    gloo's background threads abort that process ("terminate called without an active
    exception"), seen once under load in CI.
    """
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def wrap_model(model: nn.Module, device: torch.device, info: DistInfo) -> nn.Module:
    """``model`` wrapped in DDP when the world has several processes, else ``model`` itself.

    DDP broadcasts rank 0's weights at construction, so all ranks start identical.
    """
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        return DistributedDataParallel(model, device_ids=[device.index or 0])
    return DistributedDataParallel(model)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP (or ``torch.compile``) wrapper."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while True:
        if isinstance(model, (DistributedDataParallel, DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The element-wise sum of ``values`` over all ranks (``values`` itself in one process)."""
    if info.enabled:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """Rank ``src``'s picklable ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out
