"""Sequence log-probs: the token boundary, one concatenated forward, and the reference model."""

import pytest
import torch
from prefkit import pref_config
from transformers import AutoModelForCausalLM

from whetstone.config import MethodConfig
from whetstone.data.packing import sequence_tokens
from whetstone.data.records import Message, Record
from whetstone.data.render import IGNORE, render_record
from whetstone.methods import apply_method
from whetstone.objectives.logprobs import Reference, render_completion, sequence_logprobs
from whetstone.objectives.preference import (
    DPO,
    PairExample,
    collate_pairs,
    collate_pairs_packed,
    collate_pairs_shared,
    prepare_pairs,
)

PROMPT = (Message("user", "What is 2 plus 2?"),)


def _pairs(tokenizer) -> list[PairExample]:
    pairs = []
    for i, (chosen, rejected) in enumerate([("4", "5 or so"), ("It is four.", "It is five."), ("Four, of course!", "22")]):
        prompt = (Message("user", "Sum " + "x " * i + "?"),)
        pairs.append(PairExample(render_completion(tokenizer, prompt, (Message("assistant", chosen),), None),
                                 render_completion(tokenizer, prompt, (Message("assistant", rejected),), None)))
    return pairs


def _by_hand(model, ids: list[int], labels: list[int]) -> float:
    """log pi(y|x) of one unpadded row from plain transformers logits."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    total = 0.0
    for t in range(len(ids) - 1):
        if labels[t + 1] != IGNORE:
            total += float(torch.log_softmax(logits[t], dim=-1)[labels[t + 1]])
    return total


def test_completion_tokens_match_sft_rendering(tiny_tokenizer):
    answer = (Message("assistant", "It is four."),)
    ours = render_completion(tiny_tokenizer, PROMPT, answer, None)
    sft = render_record(Record("chat", "mem:1", messages=PROMPT + answer), tiny_tokenizer, None)
    assert ours.input_ids == sft.input_ids and ours.labels == sft.labels
    assert ours.completion_ids[0] == ours.completion_labels[0]  # the boundary is the first supervised token


def test_only_the_completion_is_supervised_after_a_multi_turn_prompt(tiny_tokenizer):
    prompt = (Message("user", "hi"), Message("assistant", "hello there"), Message("user", "and 2+2?"))
    rendered = render_completion(tiny_tokenizer, prompt, (Message("assistant", "4"),), None)
    supervised = tiny_tokenizer.decode([t for t in rendered.labels if t != IGNORE])
    assert supervised == "4<|im_end|>"


def test_truncation_keeps_the_prompt_and_cuts_the_answer(tiny_tokenizer):
    full = render_completion(tiny_tokenizer, PROMPT, (Message("assistant", "one two three four five"),), None)
    cut = render_completion(tiny_tokenizer, PROMPT, (Message("assistant", "one two three four five"),),
                            len(full.prompt_ids) + 2)
    assert cut.truncated and cut.prompt_ids == full.prompt_ids and cut.completion_ids == full.completion_ids[:2]


def test_concatenated_forward_equals_separate_forwards(tiny_model_dir, tiny_tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    pairs = _pairs(tiny_tokenizer)
    batch = collate_pairs(pairs, tiny_tokenizer.pad_token_id)  # one (6, T) forward, padded
    assert batch["input_ids"].shape[0] == 6
    with torch.no_grad():
        logps, counts = sequence_logprobs(model, batch)
    rows = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    expected = [_by_hand(model, r.input_ids, r.labels) for r in rows]
    assert logps.tolist() == pytest.approx(expected, abs=1e-4)
    assert counts.tolist() == [r.n_supervised for r in rows]


@pytest.mark.parametrize("layout,attention", [("packed", "sdpa"), ("shared", "sdpa"), ("shared", "eager")])
def test_packed_pairs_give_each_sequence_its_unpacked_logprob_and_gradient(tiny_model_dir, tiny_tokenizer, layout,
                                                                           attention):
    """data.packing for DPO: chosen and rejected sequences share rows, and every figure per sequence is unchanged;
    with objective.share_prompt each pair's prompt is read once, and still nothing changes."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation=attention)
    pairs = _pairs(tiny_tokenizer)
    pad = tiny_tokenizer.pad_token_id
    collate = collate_pairs_packed if layout == "packed" else collate_pairs_shared
    padded, packed = collate_pairs(pairs, pad), collate(pairs, pad, 64)
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]  # several sequences really share a row
    assert sequence_tokens(packed) == int(padded["attention_mask"].sum())
    if layout == "shared":  # every prompt read once: the sequences' tokens less one copy of each prompt
        prompts = sum(len(p.chosen.prompt_ids) for p in pairs)
        assert int(packed["attention_mask"].sum()) == sequence_tokens(padded) - prompts
    assert torch.equal(packed["pair_key"], padded["pair_key"])
    results = []
    for batch in (padded, packed):
        model.zero_grad(set_to_none=True)
        logps, counts = sequence_logprobs(model, batch, chunk=5)
        (logps * torch.arange(1.0, 7.0)).sum().backward()  # a different weight per sequence, as DPO has
        results.append((logps.detach(), counts, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (a, counts_a, grads_a), (b, counts_b, grads_b) = results
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    sequences = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    assert torch.equal(counts_b, counts_a) and counts_a.tolist() == [r.n_supervised for r in sequences]
    worst = max(float((grads_a[n] - grads_b[n]).abs().max()) for n in grads_a)
    assert worst < 1e-5, worst
    assert DPO.units(packed) == DPO.units(padded) == 3


def test_lora_reference_equals_the_base_model_exactly(tiny_model_dir, tiny_tokenizer):
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    policy = apply_method(AutoModelForCausalLM.from_pretrained(tiny_model_dir), MethodConfig(name="lora", r=4))
    torch.manual_seed(0)
    with torch.no_grad():  # move the adapters away from their zero start, as training would
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    batch = collate_pairs(_pairs(tiny_tokenizer), tiny_tokenizer.pad_token_id)
    reference, _ = Reference(copy=None).logprobs(policy, batch)
    with torch.no_grad():
        base_logps, _ = sequence_logprobs(base, batch)
        adapted, _ = sequence_logprobs(policy, batch)
    assert torch.equal(reference, base_logps)
    assert (adapted - base_logps).abs().max() > 1e-3  # the adapters do change the policy
    assert policy.training  # the reference pass leaves the mode as it found it


def test_precomputed_reference_equals_live_reference(tiny_model_dir, tiny_tokenizer, pair_files):
    train_file, eval_file = pair_files
    config = pref_config(tiny_model_dir, "objective=dpo", "method.name=full", f"data.train={train_file}",
                         f"data.eval={eval_file}")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    from whetstone.data.dataset import load_splits

    train_records, eval_records, _ = load_splits(config.data, 0)
    train_set = prepare_pairs(train_records, tiny_tokenizer, config.data)
    eval_set = prepare_pairs(eval_records, tiny_tokenizer, config.data)
    live = DPO.setup(model, config, train_set)
    config.objective.precompute_reference = True
    pre = DPO.setup(model, config, train_set, eval_set)
    assert live.reference.copy is not None and pre.reference is None and pre.precomputed
    for examples in (train_set.examples[:8], eval_set.examples[:8]):  # eval pairs are precomputed too
        batch = collate_pairs(examples, tiny_tokenizer.pad_token_id)
        a, b = DPO.loss(model, batch, live), DPO.loss(model, batch, pre)
        assert float(a.loss_sum.detach()) == pytest.approx(float(b.loss_sum.detach()), abs=1e-5)
