"""Forward passes that only pay for what the loss uses.

A causal LM's head maps every position to vocabulary-sized logits: for the
embedded model that is 49,152 floats per token, most of them at prompt positions
whose labels are -100. `label_logits` runs the decoder, keeps the hidden states
at supervised positions only, and applies the head there: (N, V) logits instead
of (B, T, V).
"""

from __future__ import annotations

import torch

from whetstone.data.render import IGNORE


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under peft (and, later, DDP) wrappers."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()  # peft: LoRA layers stay injected in place
    return model


def label_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at the positions that predict a supervised label, and those labels.

    Returns (logits (N, V), targets (N,)), N = supervised tokens in the batch.
    Equal to model(**batch).logits shifted and masked, without materialising
    the (B, T, V) tensor.
    """
    lm = unwrap(model)
    hidden = lm.get_decoder()(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch.get("position_ids"),
        use_cache=False,
    ).last_hidden_state  # (B, T, H)
    targets = batch["labels"][:, 1:]  # (B, T-1): position t predicts token t+1
    keep = targets != IGNORE
    logits = lm.get_output_embeddings()(hidden[:, :-1][keep])  # (N, V)
    softcap = getattr(lm.config, "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits, targets[keep]
