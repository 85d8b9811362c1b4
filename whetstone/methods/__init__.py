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
from whetstone.methods.lora import apply_lora, keep_input_dtype


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


def apply_method(model: torch.nn.Module, cfg: MethodConfig, *, autocast_bf16: bool = False) -> torch.nn.Module:
    """Mark what trains. `autocast_bf16`: the run computes under bf16 autocast, so adapters on a low-precision
    base read its bf16 activations as they are (lora.keep_input_dtype)."""
    model = METHODS[cfg.name](model, cfg)
    trainable_in_fp32(model)
    if autocast_bf16:
        keep_input_dtype(model)
    return model


def trainable_in_fp32(model: torch.nn.Module) -> None:
    """Cast every trainable parameter to fp32, whatever the base was loaded in (model.dtype).

    A bf16 weight cannot take an update much below 1/256 of itself, so LoRA's A and B, DoRA's magnitudes, a new
    head and freeze's unfrozen blocks train in fp32, and the optimizer's states, created like them, are fp32 too.
    apply_method calls it; a new head (objectives classify and reward, PPO's value head) is created in fp32.
    """
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()


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
