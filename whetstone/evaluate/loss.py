"""An objective's loss on a held-out set (for SFT: loss per completion token; exp is perplexity)."""

from __future__ import annotations

import contextlib

import torch

from whetstone.objectives.base import Objective


@torch.no_grad()
def objective_loss(model, objective: Objective, data, batch_size: int, pad_id: int, device: torch.device,
                   context=None, autocast=contextlib.nullcontext, max_batches: int | None = None) -> dict[str, float]:
    """{"loss": mean loss per unit, **mean of each logged metric}, over `data` in order of length."""
    model.eval()
    # Similar lengths together: less padding, same result.
    order = sorted(range(len(data.examples)), key=lambda i: _length(data.examples[i]))
    total, units, metrics = 0.0, 0, {}
    for n, start in enumerate(range(0, len(order), batch_size)):
        if max_batches is not None and n >= max_batches:
            break
        batch = objective.collate([data.examples[i] for i in order[start : start + batch_size]], pad_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast():
            out = objective.loss(model, batch, context)
        total += float(out.loss_sum)
        units += out.units
        for key, value in out.metrics.items():
            metrics[key] = metrics.get(key, 0.0) + float(value)
    units = max(units, 1)
    return {"loss": total / units, **{k: v / units for k, v in metrics.items()}}


def _length(example) -> int:
    ids = getattr(example, "input_ids", None)
    return len(ids) if ids is not None else 0
