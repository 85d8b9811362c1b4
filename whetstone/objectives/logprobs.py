"""What the preference objectives share: prompt + completion token ids, sequence
log-probabilities, and the reference model.

    log pi(y | x) = sum_{t in y} log p(y_t | x, y_<t)

Only completion tokens count: the prompt is rendered with the chat template and
masked with -100, exactly as SFT masks it (data/render.py), so a DPO pair, a KTO
example and an SFT example of the same answer see the same token boundaries.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from whetstone.data.packing import token_owners
from whetstone.data.records import Message
from whetstone.data.render import IGNORE, message_dicts, render_chat_pieces, supervise_turn
from whetstone.methods import is_adapter_model
from whetstone.models.forward import LOGIT_CHUNK, label_hidden, label_token_logprobs, unwrap


@dataclass
class Completion:
    """One prompt and one answer as token ids; the answer's labels are its own ids through EOS."""

    prompt_ids: list[int]
    completion_ids: list[int]
    completion_labels: list[int]  # IGNORE after the EOS (template text the model never generates)
    truncated: bool

    @property
    def input_ids(self) -> list[int]:
        return self.prompt_ids + self.completion_ids

    @property
    def labels(self) -> list[int]:
        return [IGNORE] * len(self.prompt_ids) + self.completion_labels

    @property
    def n_supervised(self) -> int:
        return sum(1 for label in self.labels[1:] if label != IGNORE)


def render_completion(tokenizer, prompt: tuple[Message, ...], completion: tuple[Message, ...],
                      max_length: int | None) -> Completion:
    """Token ids of `prompt` followed by `completion` (assistant turns), truncated to `max_length`.

    Only the completion's assistant turns are supervised, even when the prompt holds
    earlier assistant turns. The prompt ends with the template's generation prompt
    ("<|im_start|>assistant\\n"), so prompt_ids of one example followed by
    completion_ids of another is also a well-formed conversation (KTO uses that).
    """
    pieces = render_chat_pieces(tokenizer, message_dicts(prompt + completion))
    # The completion's turns are the last supervised pieces. (Where the template re-renders history,
    # render_chat_pieces gives the last sequence, whose earlier assistant turns are prompt.)
    answers = [k for k, (_, supervised) in enumerate(pieces) if supervised]
    completion_turns = sum(1 for m in completion if m.role == "assistant")
    first = answers[max(0, len(answers) - completion_turns)] if answers and completion_turns else len(pieces)
    prompt_ids: list[int] = []
    completion_ids: list[int] = []
    completion_labels: list[int] = []
    for k, (text, supervised) in enumerate(pieces):
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        if k < first:
            prompt_ids += piece
            continue
        piece, piece_labels = supervise_turn(tokenizer, piece) if supervised else (piece, [IGNORE] * len(piece))
        completion_ids += piece
        completion_labels += piece_labels
    full = len(prompt_ids) + len(completion_ids)
    truncated = max_length is not None and full > max_length
    if truncated:
        keep = max(0, max_length - len(prompt_ids))
        prompt_ids = prompt_ids[:max_length]
        completion_ids, completion_labels = completion_ids[:keep], completion_labels[:keep]
    return Completion(prompt_ids, completion_ids, completion_labels, truncated)


def pad_rows(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad (input_ids, labels) rows into one batch; padding has attention 0 and label -100."""
    length = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)  # (R, T)
    labels = torch.full((len(rows), length), IGNORE, dtype=torch.long)  # (R, T)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)  # (R, T)
    for row, (ids, row_labels) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(ids)] = torch.tensor(row_labels)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def sequence_logprobs(model: torch.nn.Module, batch: dict[str, torch.Tensor],
                      chunk: int | None = LOGIT_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of log p over each row's supervised tokens (R,), supervised tokens per row (R,)).

    A packed batch gives the same per sequence, in example_ids order.

    Logits exist only at supervised positions (see models/forward.py), so a pair
    costs one decoder pass plus head outputs for its N supervised tokens, never
    (R, T, V); with `chunk` (train.logit_chunk) and a frozen head, `chunk` of them at a time.
    """
    token_logps = label_token_logprobs(model, batch, chunk)  # (N,)
    keep = batch["labels"][:, 1:] != IGNORE  # (R, T-1), the same mask label_token_logprobs used
    rows, n_rows = token_owners(batch, keep)  # (N,): which sequence each supervised token belongs to
    sums = torch.zeros(n_rows, dtype=token_logps.dtype, device=token_logps.device).index_add(0, rows, token_logps)
    counts = torch.bincount(rows, minlength=n_rows)  # (R,) or (sequences,)
    return sums, counts


@dataclass
class Reference:
    """The model the policy is measured against: pi_ref.

    For adapter methods it is the same model with its adapters switched off, so
    no second copy is in memory. Otherwise it is a frozen copy of the weights as
    they were before training. `copy` is None for the first kind.
    """

    copy: torch.nn.Module | None

    def logprobs(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """sequence_logprobs under the reference."""
        return self.run(model, sequence_logprobs, batch)

    def label_hidden(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The reference's final hidden states at the batch's supervised positions, (N, H) (models/forward.py)."""
        return self.run(model, lambda m, b: label_hidden(m, b)[0], batch)

    def head(self, model: torch.nn.Module) -> torch.nn.Module:
        """The reference's LM head: the copy's, or the model's own without its adapter if it has one (peft)."""
        if self.copy is not None:
            return unwrap(self.copy).get_output_embeddings()
        head = unwrap(model).get_output_embeddings()
        return head.get_base_layer() if hasattr(head, "get_base_layer") else head

    @torch.no_grad()
    def run(self, model: torch.nn.Module, fn, batch):
        """fn(reference model, batch), without gradients: on the copy, or on `model` with its adapters off."""
        if self.copy is not None:
            return fn(self.copy, batch)
        was_training = model.training
        model.eval()  # no dropout in the reference: it must be a fixed function
        try:
            with model.disable_adapter():
                return fn(model, batch)
        finally:
            model.train(was_training)


def build_reference(model: torch.nn.Module) -> Reference:
    """Adapters disabled for peft models; a frozen copy (2x the weights in memory) otherwise."""
    if is_adapter_model(model):
        return Reference(copy=None)
    frozen = copy.deepcopy(model).eval()
    for param in frozen.parameters():
        param.requires_grad_(False)
    return Reference(copy=frozen)
