"""The process group, when launched by torchrun or accelerate; a no-op for one process.

Only this file talks to torch.distributed, so the loop reads the same for 1 or N
processes: it asks for its rank, the world size, and sums across processes.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world_size) from the launcher's environment; (0, 1) when run directly."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init(device: torch.device) -> None:
    rank, world_size = world()
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def is_main() -> bool:
    return world()[0] == 0


def sum_across(value: float) -> float:
    """Sum a number over all processes (the identity for one process)."""
    if not dist.is_initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor.item())
