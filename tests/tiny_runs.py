"""Building blocks for tests that train tiny runs (importable, unlike conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_config(model_dir, train_file, *overrides: str):
    from whetstone.config import load_config

    base = [f"model={model_dir}", f"data.train={train_file}", "train.lr=1e-3", "train.warmup=0.0",
            "train.log_every=1", "method.dropout=0.0"]
    return load_config(None, base + list(overrides))


def random_adapter(out: Path, model_dir) -> Path:
    """A LoRA adapter on the tiny model with random A and B (not peft's zero B), so its answers differ
    from the base model's; saved with the tokenizer, like a run's adapter/."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from whetstone.models import load_tokenizer

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(str(out))
    load_tokenizer(str(model_dir)).save_pretrained(str(out))
    return out


def latest_checkpoint(run: Path) -> Path:
    """The checkpoint directory `checkpoints/latest` names."""
    return run / "checkpoints" / (run / "checkpoints" / "latest").read_text()


def latest_trainable(run: Path) -> dict:
    """The trainable weights of a run's latest checkpoint, by name."""
    from safetensors.torch import load_file

    return load_file(str(latest_checkpoint(run) / "trainable.safetensors"))
