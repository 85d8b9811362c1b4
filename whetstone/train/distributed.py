"""The process group, when launched by torchrun or accelerate; a no-op for one process.

Only this file and the strategies (strategy.py, with fsdp.py and deepspeed.py) talk to torch.distributed,
so the loop reads the same for 1 or N processes: it asks for its rank and the world size, sums numbers
across processes, and runs each micro-batch through its strategy (DDP around the objective's loss, the
FSDP-sharded model with train.strategy: fsdp, or the DeepSpeed engine with train.strategy: deepspeed).

    torchrun --nproc-per-node 2 -m whetstone train run.yaml -o runs/r1
    accelerate launch -m whetstone train run.yaml -o runs/r1

Both launchers set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT, which is all
`init` needs.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world_size) from the launcher's environment; (0, 1) when run directly."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def resolve_strategy(config) -> str:
    """'single', 'ddp', 'fsdp' or 'deepspeed' for this run; raises before any work when it cannot run.

    train.strategy auto means deepspeed when train.deepspeed is set, fsdp under `accelerate launch` with
    an FSDP config (it sets ACCELERATE_USE_FSDP), else ddp. One process needs none of them: its
    checkpoints are the same either way, which is how an FSDP or DeepSpeed run resumes on one process
    (without the deepspeed package).
    """
    from whetstone.config import sharding_problems
    from whetstone.errors import WhetstoneError

    cfg = config.train
    strategy = cfg.strategy
    if strategy == "auto":
        if cfg.deepspeed is not None or _env_flag("ACCELERATE_USE_DEEPSPEED"):
            strategy = "deepspeed"
        elif _env_flag("ACCELERATE_USE_FSDP"):
            strategy = "fsdp"
        else:
            strategy = "ddp"
    if strategy != cfg.strategy:  # chosen here, not in the config, so the config's check did not see it
        problems = sharding_problems(config, strategy) if strategy in ("fsdp", "deepspeed") else []
        if strategy == "deepspeed" and cfg.deepspeed is None:
            # whetstone reads its DeepSpeed JSON from train.deepspeed only, not from accelerate's settings.
            given = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
            fix = f"--set train.deepspeed={given}" if given else "a DeepSpeed JSON config such as configs/ds_zero2.json"
            problems.append(f"accelerate asks for DeepSpeed (ACCELERATE_USE_DEEPSPEED), but train.deepspeed is not "
                            f"set; set it ({fix}).")
        if problems:
            raise WhetstoneError(f"train.strategy {strategy}: " + " ".join(problems))
    if strategy == "deepspeed":
        from whetstone.train.deepspeed import check_config, require_deepspeed

        if world()[1] > 1:
            require_deepspeed()
        check_config(config, world()[1])  # the JSON is checked either way, before the model loads
    return "single" if world()[1] == 1 else strategy


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def init(device: torch.device) -> None:
    _, world_size = world()
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def shutdown() -> None:
    if world()[1] > 1 and dist.is_initialized():  # ours: a one-process group is a library's (vLLM's), not ours
        dist.barrier()
        dist.destroy_process_group()


def is_main() -> bool:
    return world()[0] == 0


def sum_across(value: float) -> float:
    """Sum a number over all processes (the identity for one process)."""
    # One process may hold a process group all the same: vLLM's rollout engine (objectives/vllm_engine.py) starts
    # a one-rank NCCL group in this process, which cannot reduce a CPU tensor.
    if world()[1] == 1 or not dist.is_initialized():
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
