"""torch.distributed set-up from torchrun's environment, so `python -m tiekd ...` and
`torchrun --nproc_per_node=N -m tiekd ...` run the same code (as in nanoGPT)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_kind: str) -> DistInfo:
    """Join the process group when launched by torchrun (RANK/WORLD_SIZE set); NCCL on GPUs, gloo on CPUs."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if device_kind == "cuda":
        torch.cuda.set_device(info.local_rank)
    return info


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def gather_objects(items: list, info: DistInfo) -> list:
    """Concatenate every rank's list on every rank (rank order)."""
    if not info.enabled:
        return items
    gathered: list = [None] * info.world_size
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown() -> None:
    """Leave the process group if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()
