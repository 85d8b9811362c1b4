"""Supervised fine-tuning: next-token cross-entropy on completion tokens.

    L = -(1/N) * sum_{t in supervised} log p(x_t | x_<t)

Prompt tokens carry the label -100 (see data/render.py) and cost nothing here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from whetstone.data.batches import collate, supervised_count
from whetstone.data.dataset import tokenize
from whetstone.models.forward import label_logits
from whetstone.objectives.base import LossOutput, Objective


def sft_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], context=None) -> LossOutput:
    logits, targets = label_logits(model, batch)  # (N, V), (N,)
    loss_sum = F.cross_entropy(logits.float(), targets, reduction="sum")
    return LossOutput(loss_sum=loss_sum, units=int(targets.numel()))


SFT = Objective(name="sft", prepare=tokenize, collate=collate, units=supervised_count, loss=sft_loss)
