"""Load a trained result for use, and generate answers in batches."""

from __future__ import annotations

from pathlib import Path

import torch

from whetstone.config import ModelConfig, read_yaml
from whetstone.data.render import render_prompt
from whetstone.errors import WhetstoneError
from whetstone.models.load import load_model, load_tokenizer


def _from_run(run: str) -> tuple[ModelConfig, str | None, str | None]:
    """(base model config, adapter dir, full model dir) of a run directory."""
    path = Path(run)
    if not (path / "config.yaml").is_file():
        raise WhetstoneError(f"--run {run}: not a run directory (no config.yaml).")
    raw = read_yaml(path / "config.yaml")
    model = raw.get("model") or {}
    model_cfg = ModelConfig(**model) if isinstance(model, dict) else ModelConfig(name=model)
    if (path / "adapter" / "adapter_config.json").is_file():
        return model_cfg, str(path / "adapter"), None
    if (path / "model" / "config.json").is_file():
        return model_cfg, None, str(path / "model")
    raise WhetstoneError(f"--run {run}: the run has no adapter/ or model/ yet; did it finish? (see its summary.json)")


def load_for_inference(model: str | None = None, adapter: str | None = None, run: str | None = None,
                       device: str = "cpu"):
    """(model, tokenizer) for `--model M [--adapter DIR]` or `--run RUN_DIR`, in eval mode."""
    if run is not None:
        model_cfg, adapter, full = _from_run(run)
        if full is not None:
            model_cfg = ModelConfig(name=full)
    else:
        model_cfg = ModelConfig(name=model or ModelConfig().name)
    tokenizer = load_tokenizer(model_cfg)
    lm, _ = load_model(model_cfg, device=device)
    if adapter is not None:
        from peft import PeftModel

        if not (Path(adapter) / "adapter_config.json").is_file():
            raise WhetstoneError(f"--adapter {adapter}: no adapter_config.json there; point at a run's adapter/ dir.")
        lm = PeftModel.from_pretrained(lm, adapter)
    lm.eval()
    return lm, tokenizer


@torch.no_grad()
def generate_answers(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int = 128,
                     temperature: float = 0.0, batch_size: int = 8, seed: int = 0) -> list[str]:
    """Answer each conversation; greedy when temperature is 0. Stops at EOS."""
    torch.manual_seed(seed)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the right edge of every row
    answers: list[str] = []
    try:
        for start in range(0, len(conversations), batch_size):
            prompts = [render_prompt(tokenizer, c) for c in conversations[start : start + batch_size]]
            inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            inputs = {k: v.to(model.device) for k, v in inputs.items()}
            sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                    pad_token_id=tokenizer.pad_token_id, **sampling)
            new_tokens = output[:, inputs["input_ids"].shape[1] :]
            answers += [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
    return answers
