"""The contract between the training loop and an objective.

An objective says how records become examples, how examples become a batch,
what one batch's loss is, and what the loss is normalised by. The loop knows
nothing else about it: SFT, reward models and DPO all plug in here.
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
    setup: Callable[..., Any] = lambda model, config, train_set: None
    """(model, config, train_set) -> a context passed to every loss call (e.g. a reference model)."""
