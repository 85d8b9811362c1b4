"""The contract between the training loop and an objective.

An offline objective (`Objective`) says how records become examples, how examples become a batch, what one
batch's loss is, and what the loss is normalised by: SFT, classification, reward models, DPO and KTO plug in
here, and the loop makes the micro-batches and takes the optimizer step.

An online objective (`OnlineObjective`: ppo, grpo) makes its own data: its `setup` returns an object whose
`step(index, optimizer_step)` runs one round (sample, score, update, calling the loop's optimizer step for each
of its updates) and returns a `StepOutput`, and whose `evaluate()` returns the held-out figures. The loop knows
nothing else about either kind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch


@dataclass
class LossOutput:
    loss_sum: torch.Tensor  # scalar: the loss SUMMED over `units`
    units: int  # what the loss is normalised by (supervised tokens for SFT, pairs for DPO)
    metrics: dict[str, float] = field(default_factory=dict)  # extra SUMS over units, logged as means
    row_loss: torch.Tensor | None = None  # (B,) detached loss sum of each example, for per-task logging
    row_units: torch.Tensor | None = None  # (B,) units of each example; both None where the loss cannot split


@dataclass(frozen=True)
class Objective:
    name: str
    prepare: Callable[..., Any]
    """(records, tokenizer, data_config, stats | None) -> an ExampleSet (has .examples, .origins, .tasks)."""
    collate: Callable[[list, int], dict[str, torch.Tensor]]
    """(examples, pad_id) -> a batch of tensors."""
    units: Callable[[dict[str, torch.Tensor]], int]
    """batch -> how many units its loss sums over, counted before the forward pass."""
    loss: Callable[..., LossOutput]
    """(model, batch, context) -> LossOutput."""
    setup: Callable[..., Any] = lambda model, config, train_set, eval_set: None
    """(model, config, train_set, eval_set | None) -> a context passed to every loss call (e.g. a reference model)."""


@dataclass(frozen=True)
class OnlineObjective:
    name: str
    prepare: Callable[..., Any]
    """(train_records, eval_records, tokenizer, config) -> the run's prompts."""
    setup: Callable[..., Any]
    """(model, config, prompts, tokenizer, device, autocast) -> the run's rounds: .step(index, optimizer_step) ->
    StepOutput, .evaluate() -> {eval_<name>: value}, .total_steps, .optimizer_steps, .restore(extra), .finish()."""


OptimizerStep = Callable[[float, list[str]], tuple[float, float]]
"""The loop's optimizer step, which an objective's step calls after its backward: (the loss, for the NaN guard;
the records behind it) -> (gradient norm before clipping, learning rate)."""


@dataclass
class StepOutput:
    """One loop step, as the loop logs it: sums over the step's units, and entries logged as they are."""

    loss_sum: float  # summed over `units`, across processes
    units: float
    tokens: int  # real tokens trained on, across processes
    tokens_read: int  # real tokens through the model (fewer where a shared prefix is read once)
    supervised_tokens: int
    lr: float
    seconds: float
    grad_norm: float | None = None  # before clipping; None where a step holds several optimizer steps
    metrics: dict[str, float] = field(default_factory=dict)  # SUMS over units, logged as means
    task_sums: dict[str, tuple[float, float]] = field(default_factory=dict)  # task -> (loss sum, units), this process
    entries: dict[str, Any] = field(default_factory=dict)  # logged as they are (an online round's reward, kl...)
    extra: dict[str, Any] = field(default_factory=dict)  # kept in the checkpoint (TrainState.extra)
