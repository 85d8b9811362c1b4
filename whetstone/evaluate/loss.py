"""An objective's loss on a held-out set (for SFT: loss per completion token; exp is perplexity)."""

from __future__ import annotations

import contextlib

import torch

from whetstone.objectives.base import Objective


@torch.no_grad()
def objective_loss(model, objective: Objective, data, batch_size: int, pad_id: int, device: torch.device,
                   context=None, autocast=contextlib.nullcontext, max_batches: int | None = None) -> dict[str, float]:
    """{"loss": mean loss per unit, **mean of each logged metric}, over `data` in order of length.

    When `data` holds several tasks and the objective splits its loss by example, "loss/<task>"
    is each task's mean loss per unit as well.
    """
    model.eval()
    # Similar lengths together: less padding, same result.
    order = sorted(range(len(data.examples)), key=lambda i: _length(data.examples[i]))
    tasks = getattr(data, "tasks", None) or []
    by_task = len({t or "default" for t in tasks}) > 1
    total, units, metrics, task_sums = 0.0, 0, {}, {}
    for n, start in enumerate(range(0, len(order), batch_size)):
        if max_batches is not None and n >= max_batches:
            break
        rows = order[start : start + batch_size]
        batch = objective.collate([data.examples[i] for i in rows], pad_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast():
            out = objective.loss(model, batch, context)
        total += float(out.loss_sum)
        units += out.units
        for key, value in out.metrics.items():
            metrics[key] = metrics.get(key, 0.0) + float(value)
        if by_task and out.row_loss is not None:
            for i, loss, n_units in zip(rows, out.row_loss.tolist(), out.row_units.tolist()):
                sums = task_sums.setdefault(f"loss/{tasks[i] or 'default'}", [0.0, 0])
                sums[0], sums[1] = sums[0] + loss, sums[1] + n_units
    units = max(units, 1)
    per_task = {key: loss / max(n_units, 1) for key, (loss, n_units) in sorted(task_sums.items())}
    return {"loss": total / units, **{k: v / units for k, v in metrics.items()}, **per_task}


def _length(example) -> int:
    ids = getattr(example, "input_ids", None)
    return len(ids) if ids is not None else 0
