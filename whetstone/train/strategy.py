"""How one process's step meets the others': one strategy per engine, behind one small interface.

    single     one process: the objective's loss as it is
    ddp        DistributedDataParallel around the loss; gradients all-reduced at the step's last micro-batch
    fsdp       the model's blocks sharded (fsdp.py); gradients reduce-scattered, weights gathered to save
    deepspeed  the DeepSpeed engine (deepspeed.py), which also owns backward, clipping and the optimizer step

The loop calls, in this order: `strategy_for` (FSDP shards the model here, so the optimizer is built after it),
`attach(optimizer)` (DeepSpeed's engine takes the optimizer), then per micro-batch `accumulating`, `loss`,
`backward`, per optimizer step `step`, and to save `gather_state` / `gather_weights`. The loop never asks which
engine runs.

The loss the loop back-propagates is already divided by the units of the whole step across all processes, so the
right gradient is the SUM of the processes' gradients. DDP, FSDP and DeepSpeed average them, so `grad_scale` (the
world size) multiplies the loss back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from whetstone.objectives.base import LossOutput
from whetstone.train import distributed


class _LossModule(torch.nn.Module):
    """The objective's loss as a module, so that DDP's forward sees every call."""

    def __init__(self, model: torch.nn.Module, objective, context):
        super().__init__()
        self.model = model
        self.objective = objective
        self.context = context

    def forward(self, batch: dict[str, torch.Tensor]) -> LossOutput:
        return self.objective.loss(self.model, batch, self.context)


def clip_and_measure(model: torch.nn.Module, max_norm: float | None) -> float:
    """Clip the gradients to `max_norm` (none: only measure) and return their global norm before clipping."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm is not None else float("inf"))
    if hasattr(norm, "full_tensor"):  # FSDP: a DTensor of per-shard partial norms; reducing them is a collective
        norm = norm.full_tensor()
    return float(norm)


class Single:
    """One process."""

    name = "single"

    def __init__(self, model: torch.nn.Module, objective, context, device: torch.device):
        self.model = model
        self.module = _LossModule(model, objective, context)
        self.grad_scale = float(distributed.world()[1])

    def attach(self, optimizer: torch.optim.Optimizer, config) -> None:
        """Hand the optimizer to the engine that steps it (DeepSpeed); the others step it themselves."""

    def loss(self, batch: dict[str, torch.Tensor]) -> LossOutput:
        return self.module(batch)

    def accumulating(self, last_micro_batch: bool):
        """Around a micro-batch: skip the gradient reduction on all but the step's last one."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self, optimizer: torch.optim.Optimizer, max_grad_norm: float | None,
             finite: Callable[[float], bool]) -> tuple[float, bool]:
        """Clip, then apply the optimizer step if `finite(grad_norm)`: (grad_norm before clipping, applied)."""
        grad_norm = clip_and_measure(self.model, max_grad_norm)
        if not finite(grad_norm):
            return grad_norm, False
        optimizer.step()
        return grad_norm, True

    def evaluating(self):
        """Around evaluation, which calls the model itself."""
        return contextlib.nullcontext()

    def gather_state(self, optimizer: torch.optim.Optimizer) -> tuple[dict, dict] | None:
        """(trainable weights, optimizer state) in the one-process checkpoint layout, where the model is sharded.

        Every process must call it (the shards are gathered); rank 0 gets the tensors, the others empty dicts.
        None where the checkpoint can read the model and optimizer itself.
        """
        return None

    def gather_weights(self, trainable_only: bool) -> dict | None:
        """The full state dict for save_pretrained where the model is sharded (rank 0; a collective), else None."""
        return None

    def restore(self, optimizer: torch.optim.Optimizer) -> Callable | None:
        """A function that loads a checkpoint's full weights and optimizer state into the shards; None if unsharded."""
        return None


class DDP(Single):
    """DistributedDataParallel around the loss module."""

    name = "ddp"

    def __init__(self, model, objective, context, device):
        super().__init__(model, objective, context, device)
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [device.index or 0] if device.type == "cuda" else None
        self.ddp = DistributedDataParallel(self.module, device_ids=device_ids)

    def loss(self, batch):
        return self.ddp(batch)

    def accumulating(self, last_micro_batch):
        return contextlib.nullcontext() if last_micro_batch else self.ddp.no_sync()


class FSDP(Single):
    """The model's decoder blocks and root sharded with FSDP2 (fsdp.py)."""

    name = "fsdp"

    def __init__(self, model, objective, context, device):
        super().__init__(model, objective, context, device)
        from whetstone.train import fsdp

        self.fsdp = fsdp
        fsdp.shard(model, root=self.module)

    def accumulating(self, last_micro_batch):
        # Set on every micro-batch, so the last one always syncs whatever came before.
        self.module.set_requires_gradient_sync(last_micro_batch)
        return contextlib.nullcontext()

    def evaluating(self):
        return self.fsdp.gathered_root(self.module)  # the root's (head's) weights, as ZeRO-3 would

    def gather_state(self, optimizer):
        return self.fsdp.gather_trainable(self.model), self.fsdp.gather_optimizer(self.model, optimizer)

    def gather_weights(self, trainable_only):
        return self.fsdp.gather_weights(self.model, trainable_only)

    def restore(self, optimizer):
        return lambda weights, optimizer_state: self.fsdp.restore(self.model, optimizer, weights, optimizer_state)


class DeepSpeed(Single):
    """The DeepSpeed engine (ZeRO 1-3) around the loss module and the loop's AdamW (deepspeed.py)."""

    name = "deepspeed"
    engine = None  # the Engine, once `attach` has the optimizer

    def attach(self, optimizer, config):
        # The optimizer object stays the loop's: ZeRO steps it on its flat partitions, so the LR schedule on it
        # still applies.
        from whetstone.train.deepspeed import Engine, check_config

        self.engine = Engine(self.module, self.model, optimizer, check_config(config, distributed.world()[1]))

    def loss(self, batch):
        return self.engine(batch)

    def accumulating(self, last_micro_batch):
        self.engine.boundary(last_micro_batch)
        return contextlib.nullcontext()

    def backward(self, loss):
        self.engine.backward(loss)

    def step(self, optimizer, max_grad_norm, finite):
        # The engine clips (gradient_clipping) and steps in one call, and skips a non-finite gradient itself.
        grad_norm = self.engine.step()
        return grad_norm, finite(grad_norm)

    def evaluating(self):
        return self.engine.evaluating()

    def gather_state(self, optimizer):
        return self.engine.gather_state()

    def gather_weights(self, trainable_only):
        return self.engine.gather_weights(trainable_only)

    def restore(self, optimizer):
        return self.engine.restore


STRATEGIES: dict[str, type[Single]] = {"single": Single, "ddp": DDP, "fsdp": FSDP, "deepspeed": DeepSpeed}


def strategy_for(name: str, model: torch.nn.Module, objective, context, device: torch.device) -> Single:
    """The strategy `name` (distributed.resolve_strategy's answer) around the model and its objective's loss."""
    return STRATEGIES[name](model, objective, context, device)
