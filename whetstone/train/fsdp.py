"""FSDP (full shard) with torch's FSDP2 `fully_shard`: each process holds 1/N of the weights.

Every decoder block is one shard unit. The loss module around the model is the root unit: it holds what no block
holds (embeddings, final norm, head), gathered once per forward, because the
objectives call the model's parts (decoder, then head) rather than the model's own
forward. A unit's parameters become DTensors sharded on dim 0; its forward all-gathers them and frees them again after use, and its
backward reduce-scatters the gradients, so gradients and AdamW state are 1/N
per process too. LoRA works as is: the frozen base is sharded along with the
adapters, and FSDP2 allows frozen and trainable parameters in one unit.

Evaluation calls the model directly, not the root, so `gathered_root` gathers
the root's weights around it.

Checkpoints stay in the one-process format (checkpoint.py): every process joins
the gathers below, rank 0 receives the full tensors on CPU and writes them, so a
checkpoint written by N processes resumes on M, or on one without FSDP.
"""

from __future__ import annotations

import contextlib

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard

# Full tensors land on rank 0's CPU only; the other ranks get {} (they only take part in the gathers).
_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)


def decoder_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks: the classes transformers says must not be split across devices."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # under peft
    names = set(getattr(base, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def shard(model: torch.nn.Module, root: torch.nn.Module) -> int:
    """Shard `model` in place over all processes, `root` (which contains it) last; returns the block count.

    Build the optimizer only after this: it must hold the sharded parameters.
    """
    blocks = decoder_blocks(model)
    for block in blocks:
        fully_shard(block)
    # The root keeps its weights gathered between forward and backward (FSDP2's rule for the root),
    # so an objective that runs the model twice per step (chosen and rejected) gathers them once.
    fully_shard(root)
    return len(blocks)


@contextlib.contextmanager
def gathered_root(root):
    """The root unit's own weights gathered, for calls that bypass its forward (evaluation)."""
    root.unshard()
    try:
        yield
    finally:
        root.reshard()


def _trainable_names(model: torch.nn.Module) -> list[str]:
    # named_parameters() lists a tied tensor once, which is what checkpoint.trainable_state saves.
    return [n for n, p in model.named_parameters() if p.requires_grad]


def gather_trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full trainable tensors, on rank 0's CPU ({} on the others); every process must call this."""
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True,
                                                                ignore_frozen_params=True))
    return {n: full[n].contiguous() for n in _trainable_names(model) if n in full}


def gather_weights(model: torch.nn.Module, trainable_only: bool) -> dict[str, torch.Tensor]:
    """The full state dict for save_pretrained, on rank 0's CPU ({} on the others); a collective."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only)
    full = get_model_state_dict(model, options=options)
    # A tied weight (lm_head = embeddings) comes back under both names as two tensors, which save_pretrained
    # would then write twice; keep the name the model itself lists, as a one-process save does.
    kept = {n for n, _ in model.named_parameters()}
    aliases = {n for n, _ in model.named_parameters(remove_duplicate=False)} - kept
    return {n: t for n, t in full.items() if n not in aliases}


def _param_names_in_optimizer_order(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Names of the optimizer's parameters, in the order optimizer.state_dict() numbers them."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]


def gather_optimizer(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The full AdamW state in optimizer.state_dict()'s layout (rank 0; {} elsewhere); a collective.

    torch's gather keys the state by parameter name; the one-process checkpoint keys it by
    the parameter's position, so a plain optimizer can load it without FSDP.
    """
    by_name = get_optimizer_state_dict(model, optimizer, options=_GATHER)
    if not by_name or not by_name.get("state"):
        return {}
    order = _param_names_in_optimizer_order(model, optimizer)
    index = {name: i for i, name in enumerate(order)}
    return {
        "state": {index[name]: value for name, value in by_name["state"].items()},
        "param_groups": [{**group, "params": [index[n] for n in group["params"]]} for group in by_name["param_groups"]],
    }


def restore(model: torch.nn.Module, optimizer: torch.optim.Optimizer, weights: dict[str, torch.Tensor],
            optimizer_state: dict) -> None:
    """Load full (one-process) weights and optimizer state, and keep each process's shard of them.

    Every process reads the checkpoint itself, so no broadcast is needed.
    """
    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, strict=False))
    order = _param_names_in_optimizer_order(model, optimizer)
    by_name = {
        "state": {order[i]: value for i, value in optimizer_state["state"].items()},
        "param_groups": [{**group, "params": [order[i] for i in group["params"]]}
                         for group in optimizer_state["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))
