"""Objectives: WHICH loss. Each is an `Objective` (see base.py) in the registry below.

An objective's loss returns a SUM over its units (tokens for SFT, pairs for the
reward model and DPO, examples for KTO). The training loop divides by the units
of the whole optimizer step, so gradient accumulation and multiple processes give
the same update as one big batch. The online objectives (ppo, grpo: online.py, with
their losses in policy.py) and gkd (distill.py: on-policy distillation) generate their own data; the same
loop drives them.
"""

from __future__ import annotations

from collections.abc import Callable

from whetstone.data.packing import row_capacity
from whetstone.objectives.base import LossOutput, Objective, OnlineObjective
from whetstone.objectives.classify import CLASSIFY
from whetstone.objectives.distill import GKD
from whetstone.objectives.kto import KTO
from whetstone.objectives.online import GRPO, PPO
from whetstone.objectives.preference import DPO, packed_dpo, shared_prompt_dpo
from whetstone.objectives.reward import REWARD
from whetstone.objectives.sft import SFT, packed_sft, sft_loss, shared_prefix_sft

OBJECTIVES: dict[str, Objective | OnlineObjective] = {
    "sft": SFT,
    "classify": CLASSIFY,
    "reward": REWARD,
    "dpo": DPO,
    "kto": KTO,
    "ppo": PPO,
    "grpo": GRPO,
    "gkd": GKD,
}

# data.packing: the objective with its sequences packed into rows of at most a capacity of tokens, None: one row
# (config.PACKABLE; data/packing.py row_capacity).
PACKED: dict[str, Callable[[int | None], Objective]] = {"sft": packed_sft, "dpo": packed_dpo}
# objective.share_prompt: packed, with a shared prefix read once (SFT: a row's examples'; DPO: a pair's prompt).
SHARED: dict[str, Callable[[int], Objective]] = {"sft": shared_prefix_sft, "dpo": shared_prompt_dpo}


def objective_for(config) -> Objective | OnlineObjective:
    """The run's objective: config.objective.name, with its sequences packed when data.packing is on."""
    if config.data.packing and config.objective.share_prompt:  # sft and dpo only (config validation)
        # Shared prefixes need a 4D mask, which flash_attention_2 cannot read: config validation keeps them apart.
        assert config.model.attn_implementation != "flash_attention_2", "share_prompt with flash_attention_2"
        return SHARED[config.objective.name](config.data.max_length)
    if config.data.packing:  # config validation allows it for config.PACKABLE only
        # flash_attention_2 reads packed examples from one row only: the micro-batch becomes that row.
        return PACKED[config.objective.name](row_capacity(config.data.max_length, config.model.attn_implementation))
    return OBJECTIVES[config.objective.name]


__all__ = ["OBJECTIVES", "PACKED", "LossOutput", "Objective", "objective_for", "sft_loss"]
