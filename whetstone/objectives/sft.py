"""Supervised fine-tuning: next-token cross-entropy on completion tokens.

    L = -(1/N) * sum_{t in supervised} log p(x_t | x_<t)

Prompt tokens carry the label -100 (see data/render.py) and cost nothing here.
The head and the loss run in chunks of train.logit_chunk supervised tokens
(models/forward.py). With data.packing, a row holds several examples and
`example_ids` says whose each token is (data/packing.py).

With data.replay.distill, the replay examples' tokens learn the base model's
whole next-token distribution q instead of the data's token:

    L_t = w * KL(q_t || p_t) = w * sum_v q_t(v) (log q_t(v) - log p_t(v))

with w = data.replay.kl_weight (default 1), and the batch's "distill" mask says which tokens those are. The
per-token losses that are logged (the 'replay' task's) are the KL itself, unweighted.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from whetstone.data.batches import collate, supervised_count
from whetstone.data.dataset import tokenize
from whetstone.data.packing import collate_packed, collate_packed_shared, token_owners
from whetstone.data.render import IGNORE
from whetstone.models.forward import (
    LOGIT_CHUNK,
    hidden_cross_entropy,
    label_cross_entropy,
    label_distillation,
    label_hidden,
)
from whetstone.objectives.base import LossOutput, Objective
from whetstone.objectives.logprobs import Reference, build_reference


@dataclass(frozen=True)
class SFTContext:
    logit_chunk: int | None  # supervised tokens per chunk of head + cross-entropy; None: all at once
    reference: Reference | None = None  # data.replay.distill: the base model, whose distributions replay learns
    kl_weight: float = 1.0  # data.replay.kl_weight: the KL's weight in the loss against the data's cross-entropy


def sft_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], context: SFTContext | None = None) -> LossOutput:
    chunk = context.logit_chunk if context is not None else LOGIT_CHUNK
    keep = batch["labels"][:, 1:] != IGNORE  # (R, T-1), the mask label_cross_entropy used
    reference = context.reference if context is not None else None
    if "distill" in batch and reference is not None:
        loss_sum, token_loss = _distilled_loss(model, batch, keep, reference, chunk, context.kl_weight)
    elif "distill" in batch and bool(batch["distill"].any()):
        # Cross-entropy on replay tokens would train them as plain replay, silently: a different run.
        raise RuntimeError("sft_loss: the batch holds distilled replay tokens but the context has no reference "
                           "model; build the context with SFT.setup for a config with data.replay.distill.")
    else:
        loss_sum, token_loss = label_cross_entropy(model, batch, chunk)  # scalar, (N,) detached
    rows, n_rows = token_owners(batch, keep)  # which example each supervised token is: per-task losses for free
    row_loss = torch.zeros(n_rows, device=token_loss.device).index_add_(0, rows, token_loss)  # (B,)
    row_units = torch.bincount(rows, minlength=n_rows)  # (B,)
    return LossOutput(loss_sum=loss_sum, units=int(token_loss.numel()), row_loss=row_loss, row_units=row_units)


def _distilled_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], keep: torch.Tensor,
                    reference: Reference, chunk: int | None, kl_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy at the data's supervised tokens, KL(base || model) at the distilled ones: (sum with the KL
    weighted by kl_weight, per token (N,) unweighted).

    One decoder pass of the model serves both. The base runs only on the rows that hold distilled tokens.
    """
    hidden, targets = label_hidden(model, batch)  # (N, H), (N,): row-major over `keep`
    distilled = batch["distill"][:, 1:][keep]  # (N,)
    rows = batch["distill"].any(dim=1)  # (R,)
    # The base's labels: only the distilled tokens, so label_hidden returns them in the same row-major order.
    base_batch = {k: v[rows] for k, v in batch.items() if v.dim()}  # (sequence_tokens is a count, not rows)
    base_batch["labels"] = torch.where(base_batch["distill"], base_batch["labels"], IGNORE)
    teacher = reference.label_hidden(model, base_batch)  # (N_d, H)
    kl_sum, kl = label_distillation(model, hidden[distilled], teacher, reference.head(model), chunk)
    ce_sum, ce = hidden_cross_entropy(model, hidden[~distilled], targets[~distilled], chunk)
    token_loss = torch.empty(len(targets), dtype=kl.dtype, device=kl.device)  # (N,)
    token_loss[distilled], token_loss[~distilled] = kl, ce
    return kl_weight * kl_sum + ce_sum, token_loss


def setup_sft(model, config, train_set, eval_set=None) -> SFTContext:
    replay = config.data.replay
    reference = build_reference(model) if replay is not None and replay.distill else None
    return SFTContext(logit_chunk=config.train.logit_chunk, reference=reference,
                      kl_weight=replay.kl_weight if reference is not None else 1.0)


SFT = Objective(name="sft", prepare=tokenize, collate=collate, units=supervised_count, loss=sft_loss, setup=setup_sft)


def packed_sft(max_length: int | None) -> Objective:
    """SFT whose micro-batches are packed into rows of at most `max_length` tokens, None: one row (data.packing)."""
    return dataclasses.replace(SFT, collate=lambda examples, pad_id: collate_packed(examples, pad_id, max_length))


def shared_prefix_sft(max_length: int) -> Objective:
    """packed_sft with the prefix each row's examples share read once (objective.share_prompt)."""
    return dataclasses.replace(SFT, collate=lambda examples, pad_id: collate_packed_shared(examples, pad_id,
                                                                                             max_length))
