"""Supervised fine-tuning: next-token cross-entropy on completion tokens.

    L = -(1/N) * sum_{t in supervised} log p(x_t | x_<t)

Prompt tokens carry the label -100 (see data/render.py) and cost nothing here.
The head and the loss run in chunks of train.logit_chunk supervised tokens
(models/forward.py). With data.packing, a row holds several examples and
`example_ids` says whose each token is (data/packing.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from whetstone.data.batches import collate, supervised_count
from whetstone.data.dataset import tokenize
from whetstone.data.packing import collate_packed
from whetstone.data.render import IGNORE
from whetstone.models.forward import LOGIT_CHUNK, label_cross_entropy
from whetstone.objectives.base import LossOutput, Objective


@dataclass(frozen=True)
class SFTContext:
    logit_chunk: int | None  # supervised tokens per chunk of head + cross-entropy; None: all at once


def sft_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], context: SFTContext | None = None) -> LossOutput:
    chunk = context.logit_chunk if context is not None else LOGIT_CHUNK
    loss_sum, token_loss = label_cross_entropy(model, batch, chunk)  # scalar, (N,) detached
    keep = batch["labels"][:, 1:] != IGNORE  # (R, T-1), the mask label_cross_entropy used
    # Which example each supervised token belongs to, in row-major order: per-task losses for free.
    if "example_ids" in batch:  # packed rows hold several examples
        rows = batch["example_ids"][:, 1:][keep]  # (N,)
        n_rows = int(batch["example_ids"].max()) + 1
    else:
        rows = keep.nonzero()[:, 0]  # (N,)
        n_rows = batch["labels"].shape[0]
    row_loss = torch.zeros(n_rows, device=token_loss.device).index_add_(0, rows, token_loss)  # (B,)
    row_units = torch.bincount(rows, minlength=n_rows)  # (B,)
    return LossOutput(loss_sum=loss_sum, units=int(token_loss.numel()), row_loss=row_loss, row_units=row_units)


def setup_sft(model, config, train_set) -> SFTContext:
    return SFTContext(logit_chunk=config.train.logit_chunk)


SFT = Objective(name="sft", prepare=tokenize, collate=collate, units=supervised_count, loss=sft_loss, setup=setup_sft)


def packed_sft(max_length: int) -> Objective:
    """SFT whose micro-batches are packed into rows of at most `max_length` tokens (data.packing)."""
    return dataclasses.replace(SFT, collate=lambda examples, pad_id: collate_packed(examples, pad_id, max_length))
