"""The process group, when launched by torchrun or accelerate; a no-op for one process.

Only this file talks to torch.distributed, so the loop reads the same for 1 or N
processes: it asks for its rank and the world size, sums numbers across
processes, and runs each micro-batch through a `LossRunner`, which is DDP
around the objective's loss when there is more than one process.

    torchrun --nproc-per-node 2 -m whetstone train run.yaml -o runs/r1
    accelerate launch -m whetstone train run.yaml -o runs/r1

Both launchers set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT, which is all
`init` needs.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world_size) from the launcher's environment; (0, 1) when run directly."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init(device: torch.device) -> None:
    rank, world_size = world()
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def shutdown() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def is_main() -> bool:
    return world()[0] == 0


def sum_across(value: float) -> float:
    """Sum a number over all processes (the identity for one process)."""
    if not dist.is_initialized():
        return value
    tensor = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor.item())


def any_across(flag: bool) -> bool:
    """True on every process when it is True on any (e.g. one of them got Ctrl-C)."""
    return sum_across(1.0 if flag else 0.0) > 0


def all_finite(*values: float) -> bool:
    """True when every value is finite on every process."""
    import math

    local = all(math.isfinite(v) for v in values)
    return not any_across(not local)


class _LossModule(torch.nn.Module):
    """The objective's loss as a module, so that DDP's forward sees every call."""

    def __init__(self, model: torch.nn.Module, objective, context):
        super().__init__()
        self.model = model
        self.objective = objective
        self.context = context

    def forward(self, batch: dict[str, torch.Tensor]):
        return self.objective.loss(self.model, batch, self.context)


class LossRunner:
    """Runs one micro-batch's loss; under several processes, through DDP.

    The loss the loop back-propagates is already divided by the units of the
    whole step across all processes, so the right gradient is the SUM of the
    processes' gradients. DDP averages them, so `grad_scale` (the world size)
    multiplies the loss back.
    """

    def __init__(self, model: torch.nn.Module, objective, context, device: torch.device):
        self.module = _LossModule(model, objective, context)
        _, world_size = world()
        self.grad_scale = float(world_size)
        self.ddp = None
        if world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [device.index or 0] if device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.module, device_ids=device_ids)

    def __call__(self, batch: dict[str, torch.Tensor]):
        return (self.ddp or self.module)(batch)

    def accumulating(self, last_micro_batch: bool):
        """Skip the gradient all-reduce on all but the step's last micro-batch."""
        if self.ddp is None or last_micro_batch:
            return contextlib.nullcontext()
        return self.ddp.no_sync()
