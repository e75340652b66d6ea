"""torchrun/DDP setup and teardown, shared by pretraining and embedding: rank, world size, device, process group.

torchrun exports RANK, WORLD_SIZE and LOCAL_RANK; without them this is a plain single process (rank 0 of 1)
and no process group is created. The backend follows the device: NCCL on GPU, gloo on CPU.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank, the world size, its device, and whether it created the group."""

    rank: int
    world: int
    device: torch.device
    created: bool = False  # True when setup initialised the process group, so teardown must destroy it

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes shared files and logs."""
        return self.rank == 0


def env_rank_world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) in a plain process."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """This process's index on its node (torchrun's LOCAL_RANK; 0 in a plain process)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(pref: str | torch.device = "auto") -> torch.device:
    """'auto' (this rank's GPU when one is visible, else CPU), 'cpu', 'cuda' (this rank's GPU) or 'cuda:N'."""
    pref = str(pref)
    if pref == "cpu":
        return torch.device("cpu")
    if pref == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if pref not in ("auto", "cuda") and not pref.startswith("cuda:"):
        raise ValueError(f"unknown device {pref!r}: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise RuntimeError(f"device={pref} but no CUDA GPU is visible; use device=cpu")
    if pref.startswith("cuda:"):
        return torch.device(pref)
    return torch.device("cuda", local_rank() % torch.cuda.device_count())


def setup(device: str | torch.device = "auto") -> DistContext:
    """Join torchrun's process group when launched by it (NCCL on GPU, gloo on CPU) and pick this rank's device."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    rank, world = env_rank_world()
    if world <= 1:
        return DistContext(0, 1, dev)
    if dist.is_initialized():  # a caller (a test, or an outer CLI loop) already owns the group
        return DistContext(dist.get_rank(), dist.get_world_size(), dev)
    dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), dev, created=True)


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op in a single process)."""
    if ctx.world > 1:
        dist.barrier()


def teardown(ctx: DistContext) -> None:
    """Destroy the process group if `setup` created it (a group owned by the caller is left alone)."""
    if ctx.created and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def distributed(device: str | torch.device = "auto") -> Iterator[DistContext]:
    """`setup` on entry, `teardown` on exit (also on error)."""
    ctx = setup(device)
    try:
        yield ctx
    finally:
        teardown(ctx)


def default_threads() -> int:
    """Torch threads per process: the machine's cores shared among the ranks on it."""
    return max(1, (os.cpu_count() or 1) // env_rank_world()[1])
