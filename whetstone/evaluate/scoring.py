"""Log-likelihood of candidate answers: rank label strings, measure canary exposure.

Ranking candidates needs log p(candidate | prompt) for every candidate. The
candidates of one question share their prompt (and often more: every canary
alternative shares "The access code for vault 3 is "), so the shared prefix is
run through the model once and its key/value cache is reused by every
candidate: 1,001 canary candidates then cost ~10 tokens each instead of ~60.

Scores are sums of log-probabilities over the supervised tokens (the answer and
its EOS) that come after the shared prefix. Supervised tokens inside the shared
prefix add the same constant to every candidate, so leaving them out never
changes a ranking.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from whetstone.data.batches import collate
from whetstone.data.records import Message, Record
from whetstone.data.render import IGNORE, Rendered, render_record
from whetstone.models.forward import unwrap


def common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    first = sequences[0]
    n = min(len(s) for s in sequences)
    for i in range(n):
        if any(s[i] != first[i] for s in sequences):
            return i
    return n


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _cache_key(model: torch.nn.Module) -> str:
    """transformers 5.2x renamed the key/value cache argument and output from `past_key_values` to `cache`."""
    return "cache" if "cache" in inspect.signature(unwrap(model).forward).parameters else "past_key_values"


@torch.no_grad()
def sequence_logprobs(model: torch.nn.Module, examples: Sequence[Rendered], pad_id: int, batch_size: int = 16,
                      start: int = 0) -> list[float]:
    """Sum of log p over each example's supervised tokens at positions >= `start`, by plain full forwards.

    The reference that `candidate_logprobs` must equal; also its fallback when
    candidates share no prefix.
    """
    model.eval()
    scores: list[float] = []
    for i in range(0, len(examples), batch_size):
        batch = collate(list(examples[i : i + batch_size]), pad_id)
        batch = {k: v.to(_device(model)) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
        logprobs = F.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V): position t predicts t+1
        targets = batch["labels"][:, 1:]  # (B, T-1)
        keep = targets != IGNORE
        keep[:, : max(start - 1, 0)] = False  # target t+1 < start
        token_lp = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T-1)
        scores += (token_lp * keep).sum(dim=1).tolist()
    return scores


@torch.no_grad()
def candidate_logprobs(model: torch.nn.Module, examples: Sequence[Rendered], pad_id: int,
                       batch_size: int = 64) -> list[float]:
    """log p of each candidate's supervised tokens after the prefix all candidates share.

    One forward over the shared prefix builds a key/value cache; each batch of
    candidates continues from a copy of it.
    """
    model.eval()
    ids = [e.input_ids for e in examples]
    shared = min(common_prefix_length(ids), min(len(x) for x in ids) - 1)  # every candidate keeps a token
    if shared < 1:
        return sequence_logprobs(model, examples, pad_id, batch_size)
    device = _device(model)
    prefix = torch.tensor([ids[0][:shared]], device=device)  # (1, P)
    key = _cache_key(model)
    out = model(input_ids=prefix, use_cache=True)
    cache = getattr(out, key)
    first = F.log_softmax(out.logits[0, -1].float(), dim=-1)  # (V,): predicts the token at position P
    scores: list[float] = []
    for i in range(0, len(examples), batch_size):
        rows = examples[i : i + batch_size]
        width = max(len(e.input_ids) - shared for e in rows)
        tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (b, S), right-padded
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)  # (b, S)
        for r, e in enumerate(rows):
            n = len(e.input_ids) - shared
            tokens[r, :n] = torch.tensor(e.input_ids[shared:])
            labels[r, :n] = torch.tensor(e.labels[shared:])
        tokens, labels = tokens.to(device), labels.to(device)
        batch_cache = copy.deepcopy(cache)
        batch_cache.batch_repeat_interleave(len(rows))
        # Right padding needs no attention mask: causal attention never lets a real token see a later pad.
        positions = torch.arange(shared, shared + width, device=device).expand(len(rows), width)  # (b, S)
        logits = model(input_ids=tokens, position_ids=positions, use_cache=True,
                       **{key: batch_cache}).logits  # (b, S, V)
        logprobs = torch.cat([first.expand(len(rows), 1, -1), F.log_softmax(logits[:, :-1].float(), dim=-1)],
                             dim=1)  # (b, S, V): entry j predicts continuation token j
        token_lp = logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (b, S)
        scores += (token_lp * (labels != IGNORE)).sum(dim=1).tolist()
    return scores


def answer_candidates(prompt: Sequence[Message], answers: Sequence[str], tokenizer,
                      max_length: int | None = None) -> list[Rendered]:
    """Each answer rendered as the assistant turn that follows `prompt`."""
    return [render_record(Record("chat", "candidate", messages=(*prompt, Message("assistant", a))), tokenizer,
                          max_length) for a in answers]


def rank_labels(model: torch.nn.Module, tokenizer, prompts: Sequence[Sequence[Message]], labels: Sequence[str],
                max_length: int | None = None) -> list[str]:
    """For each prompt, the label string the model finds most likely as its answer (ties: the first label)."""
    predictions = []
    for prompt in prompts:
        scores = candidate_logprobs(model, answer_candidates(prompt, labels, tokenizer, max_length),
                                    tokenizer.pad_token_id)
        predictions.append(labels[max(range(len(labels)), key=lambda i: (scores[i], -i))])
    return predictions


def exposure(secret_score: float, alternative_scores: Sequence[float]) -> tuple[int, float]:
    """(rank, exposure in bits) of a secret among same-shape alternatives (Carlini et al. 2019).

    rank 1 means no alternative is more likely. exposure = log2(candidates) - log2(rank):
    log2(1001) = 9.97 bits at rank 1; about 1.4 bits on average for a secret the
    model has never seen.
    """
    rank = 1 + sum(score > secret_score for score in alternative_scores)
    return rank, math.log2(len(alternative_scores) + 1) - math.log2(rank)
