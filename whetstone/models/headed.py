"""Loading a finished run whose objective put a new head on the model (classify, reward).

A LoRA run's head is saved with the adapter (peft's modules_to_save), so attaching an
untrained head of the right shape before loading the adapter is enough; a full or
freeze run saves the head's weights inside model/, next to the backbone's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from whetstone.config import RunConfig
from whetstone.errors import WhetstoneError
from whetstone.rundir import RunDir


def load_headed_run(path: Path, config: RunConfig, attach: Callable[[torch.nn.Module], torch.nn.Module],
                    head_name: str, who: str, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The run's model in eval mode, with its trained head; `attach(model)` adds an untrained head and returns it.

    `who` starts the error messages (e.g. "--run runs/x", "reward run runs/x").
    """
    from whetstone.methods.lora import fold_adapters
    from whetstone.models import load_model

    run = RunDir(path)
    adapter, full = run.adapter_dir, run.model_dir
    if run.has_adapter():
        from peft import PeftModel

        base, _ = load_model(config.model, device=device)
        base = fold_adapters(base, config.method.base_adapters, who=f"{who}: method.base_adapters")
        attach(base)  # peft restores the trained head into it (modules_to_save)
        model = PeftModel.from_pretrained(base, str(adapter))
    elif run.has_model():
        # model/ is the base model trained further: it needs the same powers, which config.model carries.
        model, _ = load_model(replace(config.model, name=str(full), revision=None), device=device)
        attach(model).load_state_dict(saved_head(full, head_name, config.objective.name))
    else:
        raise WhetstoneError(f"{who}: no adapter/ or model/ yet; did the run finish? (see its summary.json)")
    model.eval()
    return model


def saved_head(directory: Path, name: str, objective: str) -> dict[str, torch.Tensor]:
    """The weights stored under `name.` in a saved model's safetensors files, without the prefix."""
    from safetensors import safe_open

    state = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if key.startswith(f"{name}."):
                    state[key[len(name) + 1 :]] = f.get_tensor(key)
    if not state:
        raise WhetstoneError(f"{directory}: the saved model has no '{name}' head; was it trained with "
                             f"objective: {objective}?")
    return state
