"""Objectives: WHICH loss. Each is a small function in the registry below.

An objective takes (model, batch) and returns a LossOutput whose `loss_sum` is
a SUM over its units (tokens for SFT). The training loop divides by the units of
the whole optimizer step, so gradient accumulation and multiple processes give
the same update as one big batch.
"""

from __future__ import annotations

from typing import Callable

from whetstone.objectives.base import LossOutput
from whetstone.objectives.sft import sft_loss

Objective = Callable[..., LossOutput]

OBJECTIVES: dict[str, Objective] = {
    "sft": sft_loss,
}

__all__ = ["LossOutput", "OBJECTIVES", "sft_loss"]
