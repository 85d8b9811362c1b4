"""Supervised fine-tuning: next-token cross-entropy on completion tokens.

    L = -(1/N) * sum_{t in supervised} log p(x_t | x_<t)

Prompt tokens carry the label -100 (see data/render.py) and cost nothing here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from whetstone.data.batches import collate, supervised_count
from whetstone.data.dataset import tokenize
from whetstone.data.render import IGNORE
from whetstone.models.forward import label_logits
from whetstone.objectives.base import LossOutput, Objective


def sft_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], context=None) -> LossOutput:
    logits, targets = label_logits(model, batch)  # (N, V), (N,)
    token_loss = F.cross_entropy(logits.float(), targets, reduction="none")  # (N,)
    # Which row each supervised token belongs to, in label_logits' (row-major) order: per-task losses for free.
    rows = (batch["labels"][:, 1:] != IGNORE).nonzero()[:, 0]  # (N,)
    n_rows = batch["labels"].shape[0]
    row_loss = torch.zeros(n_rows, device=token_loss.device).index_add_(0, rows, token_loss.detach())  # (B,)
    row_units = torch.bincount(rows, minlength=n_rows)  # (B,)
    return LossOutput(loss_sum=token_loss.sum(), units=int(targets.numel()), row_loss=row_loss, row_units=row_units)


SFT = Objective(name="sft", prepare=tokenize, collate=collate, units=supervised_count, loss=sft_loss)
