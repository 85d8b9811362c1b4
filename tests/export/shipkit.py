"""Helpers for the shipping tests: tiny data, tiny runs, and reference logits from plain transformers/peft."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from whetstone.config import load_config


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def qa_rows(numbers, word: str = "plus") -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"What is {i} {word} {i}?"},
                          {"role": "assistant", "content": f"{i} {word} {i} is {2 * i if word == 'plus' else 0}."}]}
            for i in numbers]


def train_tiny(model_dir: Path, out: Path, data: Path, *overrides: str) -> Path:
    from whetstone.train.dispatch import train

    base = [f"model={model_dir}", f"data.train={data}", "train.lr=1e-2", "train.warmup=0.0", "train.log_every=1",
            "train.max_steps=4", "train.batch_size=4", "method.dropout=0.0"]
    train(load_config(None, base + list(overrides)), out, progress=False)
    return out


def probe_ids(tokenizer) -> torch.Tensor:
    from whetstone.export.consistency import PROBE

    text = tokenizer.apply_chat_template([dict(m) for m in PROBE], tokenize=False)
    return torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])  # (1, T)


@torch.no_grad()
def reference_logits(model_dir: Path, adapter_dir: Path | None, ids: torch.Tensor) -> torch.Tensor:
    """base + adapter with plain transformers and peft, nothing of whetstone's loading."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    return model.eval()(ids).logits.float()
