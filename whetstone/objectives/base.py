from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LossOutput:
    loss_sum: torch.Tensor  # scalar: the loss summed over `units`
    units: int  # what the loss is normalised by (supervised tokens for SFT)
    metrics: dict[str, float] = field(default_factory=dict)  # extra sums to log, also over units
