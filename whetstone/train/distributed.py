"""The process group, when launched by torchrun or accelerate; a no-op for one process.

Only this file (and fsdp.py and deepspeed.py, which it drives) talks to torch.distributed, so the
loop reads the same for 1 or N processes: it asks for its rank and the world
size, sums numbers across processes, and runs each micro-batch through a
`LossRunner`, which is DDP around the objective's loss, the FSDP-sharded
model (train.strategy: fsdp) or the DeepSpeed engine (train.strategy: deepspeed,
deepspeed.py), when there is more than one process.

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
    """Runs one micro-batch's loss; under several processes, through DDP or the FSDP-sharded model.

    The loss the loop back-propagates is already divided by the units of the
    whole step across all processes, so the right gradient is the SUM of the
    processes' gradients. DDP, FSDP and DeepSpeed average them, so `grad_scale`
    (the world size) multiplies the loss back.

    Under FSDP the model's parameters are shards: build the optimizer after this,
    and read or write weights only through `gather_state` / `restore`. Under
    DeepSpeed, `start` hands the optimizer to the engine, which then owns
    backward, clipping and the optimizer step (`step`).
    """

    def __init__(self, model: torch.nn.Module, objective, context, device: torch.device, strategy: str = "ddp"):
        self.model = model
        self.module = _LossModule(model, objective, context)
        _, world_size = world()
        self.grad_scale = float(world_size)
        self.ddp = None
        self.fsdp = strategy == "fsdp" and world_size > 1
        self.deepspeed = strategy == "deepspeed" and world_size > 1
        self.engine = None  # the DeepSpeed engine, once `start` has the optimizer
        if self.fsdp:
            from whetstone.train import fsdp

            fsdp.shard(model, root=self.module)
        elif world_size > 1 and not self.deepspeed:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [device.index or 0] if device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.module, device_ids=device_ids)

    def start(self, optimizer, config) -> None:
        """Under DeepSpeed: wrap the loss module and `optimizer` in the engine (a no-op otherwise).

        The optimizer object stays the loop's: ZeRO steps it on its flat partitions, so the LR schedule on it
        still applies.
        """
        if not self.deepspeed:
            return
        from whetstone.train.deepspeed import Engine, check_config

        self.engine = Engine(self.module, self.model, optimizer, check_config(config, world()[1]))

    def __call__(self, batch: dict[str, torch.Tensor]):
        if self.engine is not None:
            return self.engine(batch)
        return (self.ddp or self.module)(batch)

    def backward(self, loss: torch.Tensor) -> None:
        if self.engine is not None:
            self.engine.backward(loss)
        else:
            loss.backward()

    def step(self) -> float:
        """Under DeepSpeed: clip and apply the optimizer step; returns the gradient norm before clipping."""
        return self.engine.step()

    def accumulating(self, last_micro_batch: bool):
        """Skip the gradient all-reduce (reduce-scatter under FSDP) on all but the step's last micro-batch."""
        if self.engine is not None:
            self.engine.boundary(last_micro_batch)
            return contextlib.nullcontext()
        if self.fsdp:
            # Set on every micro-batch, so the last one always syncs whatever came before.
            self.module.set_requires_gradient_sync(last_micro_batch)
            return contextlib.nullcontext()
        if self.ddp is None or last_micro_batch:
            return contextlib.nullcontext()
        return self.ddp.no_sync()

    def evaluating(self):
        """Around evaluation, which calls the model itself: under FSDP (ZeRO-3), gathers the root's (head's) weights."""
        if self.engine is not None:
            return self.engine.evaluating()
        if not self.fsdp:
            return contextlib.nullcontext()
        from whetstone.train import fsdp

        return fsdp.gathered_root(self.module)

    def gather_state(self, optimizer) -> tuple[dict, dict] | None:
        """Under FSDP: (trainable weights, optimizer state) in the one-process checkpoint layout.

        Every process must call it (the shards are gathered); rank 0 gets the tensors, the others
        get empty dicts. Likewise under DeepSpeed (the ZeRO partitions). None otherwise: the
        checkpoint reads the model and optimizer itself.
        """
        if self.engine is not None:
            return self.engine.gather_state()
        if not self.fsdp:
            return None
        from whetstone.train import fsdp

        return fsdp.gather_trainable(self.model), fsdp.gather_optimizer(self.model, optimizer)

    def gather_weights(self, trainable_only: bool) -> dict | None:
        """Under FSDP or ZeRO-3: the full state dict for save_pretrained (rank 0; a collective). None otherwise."""
        if self.engine is not None:
            return self.engine.gather_weights(trainable_only)
        if not self.fsdp:
            return None
        from whetstone.train import fsdp

        return fsdp.gather_weights(self.model, trainable_only)

    def restore(self, optimizer):
        """A function that loads a checkpoint's full weights and optimizer state; None without FSDP or DeepSpeed."""
        if self.engine is not None:
            return self.engine.restore
        if not self.fsdp:
            return None
        from whetstone.train import fsdp

        return lambda weights, optimizer_state: fsdp.restore(self.model, optimizer, weights, optimizer_state)
