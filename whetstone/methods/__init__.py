"""Methods: WHAT is trained. Each takes a loaded model and marks what learns.

    full    every weight
    freeze  transfer learning: the top N blocks, named modules and/or the head
    lora    low-rank adapters on a frozen base (peft); dora and qlora are variants
"""

from __future__ import annotations

from typing import Callable

import torch

from whetstone.config import MethodConfig
from whetstone.methods.freeze import apply_freeze
from whetstone.methods.lora import apply_lora


def apply_full(model: torch.nn.Module, cfg: MethodConfig) -> torch.nn.Module:
    for param in model.parameters():
        param.requires_grad_(True)
    return model


METHODS: dict[str, Callable[[torch.nn.Module, MethodConfig], torch.nn.Module]] = {
    "full": apply_full,
    "freeze": apply_freeze,
    "lora": apply_lora,
    "dora": apply_lora,
    "qlora": apply_lora,
}


def apply_method(model: torch.nn.Module, cfg: MethodConfig) -> torch.nn.Module:
    return METHODS[cfg.name](model, cfg)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, counting tied weights once."""
    trainable = total = 0
    for param in model.parameters():  # parameters() already de-duplicates tied tensors
        n = param.numel()
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total


def is_adapter_model(model: torch.nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)
