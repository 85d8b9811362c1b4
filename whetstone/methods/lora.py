"""LoRA, DoRA and QLoRA through peft: low-rank adapters on a frozen base.

W' = W + (alpha / r) * B A, with A (r x in) and B (out x r); B starts at zero, so
training starts exactly from the base model (Hu et al. 2021). DoRA also learns a
per-column magnitude (Liu et al. 2024). QLoRA keeps the frozen base in 4-bit NF4
(Dettmers et al. 2023); its 4-bit load happens in models/load.py.
"""

from __future__ import annotations

from pathlib import Path

import torch

from whetstone.config import MethodConfig
from whetstone.errors import WhetstoneError


def apply_lora(model: torch.nn.Module, cfg: MethodConfig) -> torch.nn.Module:
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    if cfg.name == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if cfg.init_adapter is not None:
        # Continue a saved adapter (e.g. the previous stage of a pipeline): its own r, alpha and targets apply.
        if not (Path(cfg.init_adapter) / "adapter_config.json").is_file():
            raise WhetstoneError(f"method.init_adapter: {cfg.init_adapter} has no adapter_config.json; point it at "
                                 f"a run's adapter/ directory.")
        return PeftModel.from_pretrained(model, cfg.init_adapter, is_trainable=True)
    peft_config = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.targets,
        use_rslora=cfg.rslora,
        use_dora=cfg.name == "dora",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_config)
