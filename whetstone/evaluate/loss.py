"""Loss and perplexity on the completion tokens of a tokenized set."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from whetstone.data.batches import collate
from whetstone.data.dataset import TokenizedSet
from whetstone.models.forward import label_logits


@torch.no_grad()
def completion_loss(model, data: TokenizedSet, batch_size: int, pad_id: int, device: torch.device,
                    autocast=contextlib.nullcontext, max_batches: int | None = None) -> float:
    """Mean next-token loss per supervised token (exp of it is the perplexity)."""
    model.eval()
    # Similar lengths together: less padding, same result.
    order = sorted(range(len(data)), key=lambda i: len(data.examples[i].input_ids))
    total, units = 0.0, 0
    for n, start in enumerate(range(0, len(order), batch_size)):
        if max_batches is not None and n >= max_batches:
            break
        batch = collate([data.examples[i] for i in order[start : start + batch_size]], pad_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast():
            logits, targets = label_logits(model, batch)
        total += float(F.cross_entropy(logits.float(), targets, reduction="sum"))
        units += targets.numel()
    return total / max(units, 1)
