"""data.packing for flash_attention_2: the micro-batch in ONE unpadded row, per-example position ids (varlen).

transformers' flash path reads packed examples from position_ids only for a batch of one row
(modeling_flash_attention_utils._is_packed_sequence); sdpa and eager read the same row through
masking_utils.find_packed_sequence_indices. So the one-row layout is checked on CPU with sdpa and eager
against the unpacked batch, and on CUDA with flash_attention_2 itself.
"""

import importlib.util

import pytest
import torch
from tiny_runs import tiny_config
from transformers import AutoModelForCausalLM

from whetstone.data.batches import collate, supervised_count
from whetstone.data.packing import collate_packed, padding_fraction, row_capacity, sequence_tokens
from whetstone.data.records import Message, Record
from whetstone.data.render import IGNORE, render_record
from whetstone.objectives import objective_for
from whetstone.objectives.logprobs import render_completion, sequence_logprobs
from whetstone.objectives.preference import PairExample, collate_pairs, collate_pairs_packed
from whetstone.objectives.sft import SFTContext, sft_loss
from whetstone.train.fast_path import resolve_fast_path

# fp32 on CPU: the one row and the padded rows run the same arithmetic in another order (matmul shapes, softmax over
# other key counts). Measured: per-example losses equal to the last bit, gradients within 3e-8 (4e-7 of their
# scale); 1e-5 leaves wide headroom and stays far under what a leak across examples moves (1.7e-2 per-example
# loss on this model: the control at the end of test_one_row_gives_the_unpacked_losses_and_gradients).
FP32_TOL = 1e-5


def _examples(tokenizer, n=10):
    records = [
        Record("chat", f"mem:{i}", messages=(Message("user", f"What is {i} plus {i}?" + " Please answer." * (i % 3)),
                                             Message("assistant", f"{i} plus {i} is {2 * i}." + " Sum." * (i % 4))))
        for i in range(n)
    ]
    return [render_record(r, tokenizer, 256, train_on_prompt=True) for r in records]  # every token supervised


def test_one_row_layout(tiny_tokenizer):
    examples = _examples(tiny_tokenizer)
    lengths = [len(e.input_ids) for e in examples]
    batch = collate_packed(examples, tiny_tokenizer.pad_token_id, max_length=None)
    # What flash reads as packed: position_ids (1, T), and no padding, so no mask needs to go in.
    assert batch["input_ids"].shape == batch["position_ids"].shape == (1, sum(lengths))
    assert bool(batch["attention_mask"].all()) and padding_fraction([batch]) == 0.0
    assert sequence_tokens(batch) == sum(lengths)
    assert supervised_count(batch) == supervised_count(collate(examples, tiny_tokenizer.pad_token_id))
    start = 0
    for index, example in enumerate(examples):  # back to back, in the micro-batch's order
        span = slice(start, start + lengths[index])
        assert batch["example_ids"][0, span].tolist() == [index] * lengths[index]
        assert batch["input_ids"][0, span].tolist() == example.input_ids
        assert batch["position_ids"][0, span].tolist() == list(range(lengths[index]))
        assert int(batch["labels"][0, start]) == IGNORE  # not predicted from the previous example's last token
        assert batch["labels"][0, start + 1 : span.stop].tolist() == example.labels[1:]
        start += lengths[index]


def test_flash_attention_picks_the_one_row_layout(tiny_model_dir, tiny_tokenizer, qa_file):
    assert row_capacity(192, "flash_attention_2") is None
    assert row_capacity(192, "sdpa") == row_capacity(192, "eager") == 192
    examples = _examples(tiny_tokenizer, n=8)
    for attn in ("flash_attention_2", "sdpa"):
        config = tiny_config(tiny_model_dir, qa_file, "train.batch_size=8", "data.max_length=192",
                             f"model.attn_implementation={attn}")
        config, _ = resolve_fast_path(config, "single")  # the default layout: packed; flash shares no prompt
        assert config.data.packing and config.objective.share_prompt == (attn != "flash_attention_2")
        batch = objective_for(config).collate(examples, tiny_tokenizer.pad_token_id)
        if attn == "flash_attention_2":
            assert batch["input_ids"].shape == (1, sum(len(e.input_ids) for e in examples))
        else:  # rows of at most data.max_length
            assert batch["input_ids"].shape[0] > 1 and batch["input_ids"].shape[1] <= 192


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    out = sft_loss(model, batch, SFTContext(7))  # chunked head, as the loop runs it
    (out.loss_sum / out.units).backward()
    return out, {name: p.grad.detach().float().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_one_row_gives_the_unpacked_losses_and_gradients(tiny_model_dir, tiny_tokenizer, attn):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attn)
    examples, pad = _examples(tiny_tokenizer), tiny_tokenizer.pad_token_id
    plain, plain_grads = _loss_and_grads(model, collate(examples, pad))
    one_row = collate_packed(examples, pad, max_length=None)
    packed, packed_grads = _loss_and_grads(model, one_row)
    assert packed.units == plain.units and torch.equal(packed.row_units, plain.row_units)
    torch.testing.assert_close(packed.row_loss / packed.row_units, plain.row_loss / plain.row_units,
                               atol=FP32_TOL, rtol=0)
    torch.testing.assert_close(packed.loss_sum / packed.units, plain.loss_sum / plain.units, atol=FP32_TOL, rtol=0)
    worst = max(float((packed_grads[n] - plain_grads[n]).abs().max()) for n in plain_grads)
    print(f"one row vs unpacked ({attn}): max gradient delta {worst:.2e}")
    assert worst < FP32_TOL
    # The control: the same row read as one causal sequence (what flash would do without per-example position
    # ids) gives other losses, by far more than the tolerance.
    leaky = {**one_row, "position_ids": torch.arange(one_row["input_ids"].shape[1])[None]}
    with torch.no_grad():
        leaked = sft_loss(model, leaky, SFTContext(7))
    assert float((leaked.row_loss / leaked.row_units - plain.row_loss / plain.row_units).abs().max()) > 1e-3


def _pairs(tokenizer, n=4) -> list[PairExample]:
    pairs = []
    for i in range(n):
        prompt = (Message("user", f"What is {i} plus {i}?" + " Please answer." * (i % 3)),)
        pairs.append(PairExample(render_completion(tokenizer, prompt, (Message("assistant", f"It is {2 * i}."),), None),
                                 render_completion(tokenizer, prompt, (Message("assistant", "No idea. " * (i + 1)),),
                                                   None)))
    return pairs


@torch.no_grad()
def test_one_row_gives_dpo_its_unpacked_sequence_logprobs(tiny_model_dir, tiny_tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    pairs, pad = _pairs(tiny_tokenizer), tiny_tokenizer.pad_token_id
    one_row = collate_pairs_packed(pairs, pad, max_length=None)
    assert one_row["input_ids"].shape[0] == 1 and bool(one_row["attention_mask"].all())
    plain_sums, plain_counts = sequence_logprobs(model, collate_pairs(pairs, pad))  # (2B,) chosen, then rejected
    sums, counts = sequence_logprobs(model, one_row)
    assert torch.equal(counts, plain_counts)
    torch.testing.assert_close(sums / counts, plain_sums / plain_counts, atol=FP32_TOL, rtol=0)


def _flash_available() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None


# bf16 on the GPU (flash_attention_2 takes no fp32): the one row and the padded rows give the linear layers other
# shapes, so a hidden state may round differently by a bf16 ulp (2^-8 relative). The same comparison in bf16 with
# sdpa on CPU moves per-example losses by 2e-5 and gradients by 0.7% of their scale, while a leak moves the losses
# by 1.7e-2. 2e-3 is 100x the first and under a fifth of the second.
BF16_TOL = 2e-3


@pytest.mark.cuda
@pytest.mark.skipif(not _flash_available(), reason="needs CUDA and flash_attn")
def test_flash_attention_one_row_gives_the_unpacked_losses_and_gradients(tiny_model_dir, tiny_tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="flash_attention_2",
                                                 dtype=torch.bfloat16).cuda()
    examples, pad = _examples(tiny_tokenizer), tiny_tokenizer.pad_token_id
    on_gpu = lambda batch: {k: v.cuda() for k, v in batch.items()}  # noqa: E731
    plain, plain_grads = _loss_and_grads(model, on_gpu(collate(examples, pad)))  # flash's own unpad path
    one_row = on_gpu(collate_packed(examples, pad, max_length=None))
    packed, packed_grads = _loss_and_grads(model, one_row)
    assert packed.units == plain.units and torch.equal(packed.row_units, plain.row_units)
    per_example = (packed.row_loss / packed.row_units - plain.row_loss / plain.row_units).abs()
    print(f"flash one row vs unpacked: max per-example loss delta {float(per_example.max()):.2e}")
    assert float(per_example.max()) < BF16_TOL
    torch.testing.assert_close(packed.loss_sum / packed.units, plain.loss_sum / plain.units, atol=BF16_TOL, rtol=0)
    for name, grad in plain_grads.items():  # bf16 gradients: compared relative to each tensor's scale
        scale = float(grad.abs().max()) + 1e-12
        assert float((packed_grads[name] - grad).abs().max()) / scale < 5e-2, name
    leaky = {**one_row, "position_ids": torch.arange(one_row["input_ids"].shape[1], device="cuda")[None]}
    with torch.no_grad():
        leaked = sft_loss(model, leaky, SFTContext(7))
    leak = float((leaked.row_loss / leaked.row_units - plain.row_loss / plain.row_units).abs().max())
    assert leak > 5 * BF16_TOL  # 1e-2; on CPU in bf16 a leak moves 1.7e-2
