"""The SFT loss against plain transformers, and the registry."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from whetstone.data.batches import collate
from whetstone.data.records import Message, Record
from whetstone.data.render import render_record
from whetstone.objectives import OBJECTIVES, sft_loss


def _batch(tokenizer):
    records = [
        Record("chat", f"mem:{i}", messages=(Message("user", "What is " + "x " * i), Message("assistant", f"y{i}")))
        for i in range(1, 5)
    ] + [Record("text", "mem:5", text="The quick brown fox jumps.")]
    return collate([render_record(r, tokenizer, None) for r in records], tokenizer.pad_token_id)


def test_sft_loss_equals_transformers_loss(tiny_model_dir, tiny_tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    batch = _batch(tiny_tokenizer)
    ours = sft_loss(model, batch)
    reference = model(**batch).loss  # mean over supervised, shifted labels
    assert ours.units == int((batch["labels"][:, 1:] != -100).sum())
    torch.testing.assert_close(ours.loss_sum / ours.units, reference, atol=1e-5, rtol=1e-5)


def test_sft_loss_by_hand_on_the_supervised_positions(tiny_model_dir, tiny_tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    batch = _batch(tiny_tokenizer)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    total = 0.0
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1] - 1):
            target = int(batch["labels"][b, t + 1])
            if target != -100:
                total -= float(torch.log_softmax(logits[b, t], dim=-1)[target])
    assert float(sft_loss(model, batch).loss_sum.detach()) == pytest.approx(total, rel=1e-5)


def test_registry_names():
    assert OBJECTIVES["sft"].loss is sft_loss
