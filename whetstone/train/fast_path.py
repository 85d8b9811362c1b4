"""The fast path by default: what `data.packing` and `objective.share_prompt` left at null become for a run.

Both change only the layout of a micro-batch, never its examples or its loss (data/packing.py): packing
puts several sequences in a row instead of padding each; share_prompt reads a prefix that sequences share
once. So null, the default, turns them on wherever they apply, and off, with one line saying why, where
they cannot: objectives that keep one sequence per row, and weights sharded by FSDP or DeepSpeed (packed
batches are not tested there yet). flash-attention-2 reads example boundaries only from a single row's
position ids and no custom masks: it packs each micro-batch into one padding-free row (data/packing.py
row_capacity) and leaves share_prompt off. An explicit true or false is the user's: it is kept, and
config.py refuses an explicit true where it cannot apply.

The run directory's config.yaml holds the resolved values, so a resume takes the same layout.
"""

from __future__ import annotations

import dataclasses

from whetstone.config import PACKABLE, RunConfig
from whetstone.errors import WhetstoneError


def packing_blocker(config: RunConfig, strategy: str) -> str | None:
    """Why data.packing cannot apply to this run, or None when it can."""
    if config.objective.name not in PACKABLE:
        return f"objective {config.objective.name} keeps one sequence per row"
    if strategy in ("fsdp", "deepspeed"):
        return f"packed batches are not tested with train.strategy {strategy} yet"
    return None


def resolve_fast_path(config: RunConfig, strategy: str) -> tuple[RunConfig, str]:
    """(config with data.packing and objective.share_prompt set to true or false, one line saying what and why).

    `strategy` is the resolved one (train/distributed.py): 'single', 'ddp', 'fsdp' or 'deepspeed'.
    """
    blocker = packing_blocker(config, strategy)
    packing = config.data.packing
    if packing is None:
        packing = blocker is None
    flash = config.model.attn_implementation == "flash_attention_2"  # one padding-free row, no custom masks
    share_prompt = config.objective.share_prompt
    if share_prompt is None:
        share_prompt = packing and not flash
    elif share_prompt and not packing:
        raise WhetstoneError(f"objective.share_prompt: true needs data.packing, which is off here ({blocker}); "
                             f"remove objective.share_prompt (or set it to false).")
    resolved = dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, packing=packing),
        objective=dataclasses.replace(config.objective, share_prompt=share_prompt),
    )
    line = f"layout: data.packing {_state(packing, config.data.packing)}, objective.share_prompt " \
           f"{_state(share_prompt, config.objective.share_prompt)}"
    if not packing and config.data.packing is None:
        line += f" ({blocker})"
    elif packing and flash and config.objective.share_prompt is None:
        line += " (flash_attention_2: one padding-free row per micro-batch, which reads no shared-prefix mask)"
    return resolved, line


def _state(value: bool, asked: bool | None) -> str:
    return ("on" if value else "off") + (" (default)" if asked is None else "")
