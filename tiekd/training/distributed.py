"""torch.distributed set-up from torchrun's environment, so `python -m tiekd ...` and
`torchrun --nproc_per_node=N -m tiekd ...` run the same code (as in nanoGPT)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .process_exit import launched_as_rank


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


# Some waits are long and uneven by nature: ranks that decode their shares of a corpus for the teacher's
# targets finish minutes or hours apart, and rank 0 alone exports the teacher first. The default
# group's timeout (10 minutes under NCCL) would kill such a job although nothing is wrong, so those
# waits go through a gloo group of their own with this timeout; training's collectives, whose waits
# are short, keep the default group and its timeout (a hung rank is still caught there). The group is
# made only by the jobs that need it (`open_long_waits`), so others never set up a gloo mesh (which on
# a multi-node cluster may need GLOO_SOCKET_IFNAME to pick the network interface).
LONG_WAIT_TIMEOUT = timedelta(hours=24)
_long_wait_group = None


def init_distributed(device_kind: str) -> DistInfo:
    """Join the process group when launched by torchrun (RANK/WORLD_SIZE set); NCCL on GPUs, gloo on CPUs."""
    global _long_wait_group
    if not launched_as_rank():
        return DistInfo()
    if not dist.is_initialized():
        _long_wait_group = None  # one made for an earlier, since destroyed, process group is gone with it
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if device_kind == "cuda":
        torch.cuda.set_device(info.local_rank)
    return info


def open_long_waits(info: DistInfo) -> None:
    """Make the long-wait group (once). Collective: every rank calls it at the same point of the job,
    before the uneven work whose end `wait_for_all` waits for."""
    global _long_wait_group
    if info.enabled and _long_wait_group is None:
        _long_wait_group = dist.new_group(backend="gloo", timeout=LONG_WAIT_TIMEOUT)


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
    """Meet the other ranks; for waits of seconds (the default group's timeout applies)."""
    if info.enabled:
        dist.barrier()


def wait_for_all(info: DistInfo) -> None:
    """Meet the other ranks after work whose length differs between ranks by minutes or hours (see
    LONG_WAIT_TIMEOUT): a barrier on the long-wait gloo group."""
    if info.enabled:
        if _long_wait_group is None:
            raise RuntimeError("wait_for_all needs open_long_waits() first, on every rank")
        dist.barrier(group=_long_wait_group)


def shutdown() -> None:
    """Leave the process group if this process joined one."""
    global _long_wait_group
    if dist.is_initialized():
        dist.destroy_process_group()
    _long_wait_group = None
