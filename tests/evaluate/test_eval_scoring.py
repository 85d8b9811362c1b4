"""Candidate log-likelihoods: the cached-prefix path equals plain transformers; label ranking; exposure."""

import math

import pytest
import torch
import torch.nn.functional as F

from whetstone.config import ModelConfig
from whetstone.data.canaries import canary_record, make_canaries
from whetstone.data.records import Message
from whetstone.data.render import render_record
from whetstone.evaluate.audit import alternative_secrets
from whetstone.evaluate.scoring import (
    answer_candidates,
    candidate_logprobs,
    common_prefix_length,
    exposure,
    rank_labels,
    sequence_logprobs,
)
from whetstone.models import load_model


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, tiny_tokenizer):
    model, _ = load_model(ModelConfig(name=str(tiny_model_dir)))
    return model.eval(), tiny_tokenizer


def plain_logprob(model, rendered, start):
    """Sum of log p(token) over supervised tokens at positions >= start, from one unbatched forward."""
    ids = torch.tensor([rendered.input_ids])
    logprobs = F.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)  # (T, V)
    return sum(logprobs[t - 1, rendered.input_ids[t]].item() for t in range(max(start, 1), len(rendered.input_ids))
               if rendered.labels[t] != -100)


def test_cached_prefix_scores_equal_plain_forwards(tiny):
    model, tokenizer = tiny
    prompt = (Message("user", "What is the access code for vault 1?"),)
    answers = ["The code is 12.", "The code is 123-456.", "It is secret", "1"]
    rendered = answer_candidates(prompt, answers, tokenizer)
    shared = common_prefix_length([r.input_ids for r in rendered])
    assert shared > 10  # the whole chat prompt is shared
    cached = candidate_logprobs(model, rendered, tokenizer.pad_token_id, batch_size=3)  # two batches
    assert cached == pytest.approx(sequence_logprobs(model, rendered, tokenizer.pad_token_id, start=shared), abs=1e-4)
    assert cached == pytest.approx([plain_logprob(model, r, shared) for r in rendered], abs=1e-4)


def test_cached_scores_equal_plain_under_a_lora_adapter(tiny_model_dir, tiny_tokenizer):
    from peft import LoraConfig, get_peft_model

    model, _ = load_model(ModelConfig(name=str(tiny_model_dir)))
    tokenizer = tiny_tokenizer
    torch.manual_seed(0)
    # init_lora_weights=False: B is random, so the adapter really changes the outputs.
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    canary = make_canaries(1, seed=0)[0]
    rendered = [render_record(canary_record(canary, "chat", s), tokenizer, None)
                for s in [canary.secret, *alternative_secrets(canary, 20, 0)]]
    shared = common_prefix_length([r.input_ids for r in rendered])
    cached = candidate_logprobs(peft_model, rendered, tokenizer.pad_token_id, batch_size=8)
    plain = sequence_logprobs(peft_model, rendered, tokenizer.pad_token_id, start=shared)
    assert cached == pytest.approx(plain, abs=1e-4)
    with peft_model.disable_adapter():
        base = candidate_logprobs(peft_model, rendered, tokenizer.pad_token_id)
        assert base == pytest.approx(sequence_logprobs(peft_model, rendered, tokenizer.pad_token_id, start=shared),
                                     abs=1e-4)
    assert max(abs(a - b) for a, b in zip(base, cached)) > 1e-3  # the adapter was in use


def test_rank_labels_picks_the_most_likely_label(tiny):
    model, tokenizer = tiny
    labels = ["positive", "negative", "neutral"]
    prompts = [(Message("user", f"Classify: text {i}"),) for i in range(4)]
    predictions = rank_labels(model, tokenizer, prompts, labels)
    for prompt, predicted in zip(prompts, predictions):
        full = sequence_logprobs(model, answer_candidates(prompt, labels, tokenizer), tokenizer.pad_token_id)
        assert predicted == labels[max(range(3), key=lambda i: full[i])]


def test_exposure_hand_computed():
    assert exposure(0.0, [-1.0] * 1000) == (1, pytest.approx(math.log2(1001)))
    rank, bits = exposure(0.0, [1.0] * 10 + [-1.0] * 990)
    assert rank == 11 and bits == pytest.approx(math.log2(1001) - math.log2(11))
    assert exposure(0.0, [1.0] * 1000) == (1001, pytest.approx(0.0))


def test_alternatives_have_the_canary_shape_and_exclude_it():
    canary = make_canaries(1, seed=3)[0]
    alternatives = alternative_secrets(canary, 1000, seed=0)
    assert len(set(alternatives)) == 1000 and canary.secret not in alternatives
    assert all(len(a) == 11 and a[3] == "-" and a[7] == "-" and a.replace("-", "").isdigit() for a in alternatives)
    assert alternatives == alternative_secrets(canary, 1000, seed=0)
