"""LoRA, DoRA and QLoRA through peft: low-rank adapters on a frozen base.

W' = W + (alpha / r) * B A, with A (r x in) and B (out x r); B starts at zero, so
training starts exactly from the base model (Hu et al. 2021). DoRA also learns a
per-column magnitude (Liu et al. 2024). QLoRA keeps the frozen base in 4-bit NF4
(Dettmers et al. 2023); its 4-bit load happens in models/load.py.

Stacked adapters (method.base_adapters): earlier adapters stay frozen under the one being
trained, W' = W + s1 B1 A1 + s2 B2 A2 + ... Each saved adapter is folded into the base
weights in memory when the model loads (`fold_adapters`), so the files on disk stay one small
adapter per run, the forward pass costs no more than plain LoRA, and "adapters disabled" (the
DPO reference) means the stack below, not the bare base.
"""

from __future__ import annotations

from pathlib import Path

import torch

from whetstone.config import MethodConfig
from whetstone.errors import WhetstoneError


def apply_lora(model: torch.nn.Module, cfg: MethodConfig) -> torch.nn.Module:
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    model = fold_adapters(model, cfg.base_adapters)
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


def keep_input_dtype(model: torch.nn.Module) -> None:
    """Stop peft casting each adapter's input to the adapter's fp32 dtype.

    Only for a low-precision base under bf16 autocast. There peft's cast gives every adapted module its own fp32
    copy of its input, and autocast casts that copy straight back to bf16 for lora_A's matmul, a second copy
    that autograd keeps. Without the cast, lora_A reads the bf16 input the base layer already keeps: the same
    bf16 matmul, and two fewer activation copies per adapted module. Plain LoRA only: DoRA's variant also
    computes from the input outside lora_A, where the cast changes its numbers.
    """
    for module in model.modules():
        base = getattr(module, "base_layer", None)
        if (hasattr(module, "lora_A") and getattr(module, "cast_input_dtype_enabled", False)
                and not getattr(module, "lora_variant", None)  # DoRA computes its norms from the cast input
                and getattr(base, "weight", None) is not None and base.weight.dtype in (torch.bfloat16, torch.float16)):
            module.cast_input_dtype_enabled = False


def interpolate_toward_base(model: torch.nn.Module, share: float) -> None:
    """Keep `share` of the trained adapter's change: W0 + share x (alpha / r) B A (method.interpolate).

    Scaling B scales the whole update, so the model moves along the line from the tuned model (share 1)
    to the base (share 0). Only the trained adapter moves: a frozen stack below it is folded into W0.
    """
    if share == 1.0:
        return
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name and param.requires_grad:
                param.mul_(share)


def fold_adapters(model: torch.nn.Module, paths: list[str], who: str = "method.base_adapters") -> torch.nn.Module:
    """`model` with each saved adapter in `paths` folded into its weights, in order (the frozen stack)."""
    from peft import PeftModel

    for path in paths:
        if not (Path(path) / "adapter_config.json").is_file():
            raise WhetstoneError(f"{who}: {path} has no adapter_config.json; point it at a run's adapter/ directory.")
        model = merge_exactly(PeftModel.from_pretrained(model, str(path)))
    return model


def merge_exactly(model):
    """peft's merge, W' = W + (alpha / r) B A, computed in float64 one layer at a time and rounded once.

    Why: on SmolLM2 (30 layers, logits up to ~45) an fp32 forward of base + adapter is itself
    ~1e-4 away from the exact result, so an fp32 merge (W + s*B@A rounded twice) landed at 1.2e-4
    from it; a correctly rounded W' stays under 1e-4. Only one layer is in float64 at a time.
    Returns the plain transformers model (peft's unload).
    """
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer) and not module.merged:
            dtype = module.get_base_layer().weight.dtype
            module.to(torch.float64)
            module.merge()
            module.to(dtype)
    return model.unload()
