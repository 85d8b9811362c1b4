"""A fine-tuned model and the base it started from, each loaded once.

Every question eval asks ("did it help, did it forget, does it leak?") compares
the tuned model with its base. For adapter runs the base is the same module
with its adapters switched off (peft's `disable_adapter`), which costs no extra
memory; for weight-changing runs (full, freeze) the base is loaded on first use.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from whetstone.config import ModelConfig
from whetstone.errors import WhetstoneError
from whetstone.methods import is_adapter_model
from whetstone.models import load_model
from whetstone.models.inference import load_for_inference, run_base_config


@dataclass
class ModelPair:
    tuned: torch.nn.Module
    tokenizer: object
    base_config: ModelConfig
    description: str  # "runs/demo (lora on smollm2-135m-instruct)"
    _base: torch.nn.Module | None = field(default=None, repr=False)

    @classmethod
    def load(cls, model: str | None, adapter: str | None, run: str | None, device: str, *,
             trust_remote_code: bool = False, allow_pickle: bool = False) -> ModelPair:
        """The pair named on the command line: --run RUN_DIR, or --model M --adapter DIR."""
        if run is None and adapter is None:
            raise WhetstoneError("comparing with a fine-tuned model needs one: pass --run RUN_DIR, or --model M "
                                 "--adapter DIR.")
        if run is not None and (model is not None or adapter is not None):
            raise WhetstoneError("--run already names the base model and the adapter; do not also pass --model or "
                                 "--adapter.")
        grants = {"trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle}
        tuned, tokenizer = load_for_inference(model, adapter, run, device=device, **grants)
        base = run_base_config(run, **grants) if run is not None else ModelConfig(name=model or ModelConfig().name,
                                                                                   **grants)
        description = f"{run or adapter} (tuned from {base.name})"
        return cls(tuned, tokenizer, base, description)

    @contextlib.contextmanager
    def base(self) -> Iterator[torch.nn.Module]:
        """The base model, for the duration of the `with` block."""
        if is_adapter_model(self.tuned):
            with self.tuned.disable_adapter():
                yield self.tuned
            return
        if self._base is None:
            device = next(self.tuned.parameters()).device
            self._base, _ = load_model(self.base_config, device=device)
            self._base.eval()
        yield self._base
