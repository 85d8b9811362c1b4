"""Transfer learning: freeze the model, then unfreeze its top blocks, named parameters or head."""

from __future__ import annotations

import fnmatch

import torch

from whetstone.config import MethodConfig
from whetstone.errors import WhetstoneError


def transformer_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The stack of decoder blocks (model.model.layers for Llama-style models)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    for owner in (decoder, model):
        layers = getattr(owner, "layers", None) or getattr(owner, "h", None)
        if isinstance(layers, torch.nn.ModuleList):
            return layers
    raise WhetstoneError(
        f"method freeze: could not find the transformer blocks of {type(model).__name__}; "
        f"use method.train_modules to name the parameters to train."
    )


def apply_freeze(model: torch.nn.Module, cfg: MethodConfig) -> torch.nn.Module:
    for param in model.parameters():
        param.requires_grad_(False)
    if cfg.top_blocks:
        blocks = transformer_blocks(model)
        if cfg.top_blocks > len(blocks):
            raise WhetstoneError(
                f"method.top_blocks: got {cfg.top_blocks}, but the model has {len(blocks)} blocks; "
                f"use a number from 1 to {len(blocks)}, or method.name=full."
            )
        for block in blocks[len(blocks) - cfg.top_blocks :]:
            for param in block.parameters():
                param.requires_grad_(True)
    if cfg.train_modules:
        names = dict(model.named_parameters())
        for pattern in cfg.train_modules:
            matched = [n for n in names if fnmatch.fnmatch(n, pattern)]
            if not matched:
                raise WhetstoneError(
                    f"method.train_modules: the pattern {pattern!r} matches no parameter; parameter names look like "
                    f"{next(iter(names))!r}."
                )
            for name in matched:
                names[name].requires_grad_(True)
    if cfg.train_head:
        # With tied embeddings this also trains the input embedding matrix: it is one tensor.
        model.get_output_embeddings().weight.requires_grad_(True)
    return model
