"""data.packing: several examples per row, each attending only to itself; the same losses as unpacked."""

import json
import random

import pytest
import torch
from tiny_runs import tiny_config
from transformers import AutoModelForCausalLM

from whetstone.config import ConfigError, load_config
from whetstone.data.batches import collate, supervised_count
from whetstone.data.packing import (
    _first_fit_decreasing,
    collate_packed,
    collate_packed_shared,
    pack_rows,
    padding_fraction,
    sequence_tokens,
)
from whetstone.data.records import Message, Record
from whetstone.data.render import IGNORE, render_record
from whetstone.objectives.sft import SFTContext, sft_loss
from whetstone.train.dispatch import train


def _examples(tokenizer, n=10, train_on_prompt=False):
    records = [
        Record("chat", f"mem:{i}", messages=(Message("user", f"What is {i} plus {i}?" + " Please answer." * (i % 3)),
                                             Message("assistant", f"{i} plus {i} is {2 * i}." + " Sum." * (i % 4))))
        for i in range(n)
    ]
    return [render_record(r, tokenizer, 256, train_on_prompt) for r in records]


def test_pack_rows_uses_the_fewest_rows_balanced_and_never_splits():
    # First-fit decreasing needs 3 rows (6+3, 5+4, 2: padded to 3 x 9 = 27); dealt longest first to the
    # emptiest row, the same 3 rows hold 6 | 5+2 | 4+3: padded to 3 x 7 = 21.
    assert pack_rows([3, 6, 2, 5, 4], capacity=9) == [[1], [3, 2], [4, 0]]
    assert pack_rows([12, 1], capacity=10) == [[0], [1]]  # too long for a row: a row of its own
    # Dealt over 2 rows, 5+3 | 4+3+3 overfills the second; first-fit's exact fit 5+4 | 3+3+3 stays.
    assert pack_rows([5, 4, 3, 3, 3], capacity=9) == [[0, 1], [2, 3, 4]]
    rng = random.Random(0)
    for _ in range(300):
        lengths = [rng.randint(1, 64) for _ in range(rng.randint(1, 16))]
        rows = pack_rows(lengths, 64)
        first_fit = _first_fit_decreasing(lengths, 64)
        assert sorted(i for row in rows for i in row) == list(range(len(lengths)))  # each example once, unsplit
        assert len(rows) == len(first_fit) and all(sum(lengths[i] for i in row) <= 64 for row in rows)
        assert max(sum(lengths[i] for i in row) for row in rows) <= max(sum(lengths[i] for i in r) for r in first_fit)


def test_packed_batch_layout(tiny_tokenizer):
    examples = _examples(tiny_tokenizer, train_on_prompt=True)  # every token supervised: the boundary matters
    plain = collate(examples, tiny_tokenizer.pad_token_id)
    packed = collate_packed(examples, tiny_tokenizer.pad_token_id, max_length=128)
    lengths = [len(e.input_ids) for e in examples]
    assert packed["input_ids"].shape[0] < len(examples) and packed["input_ids"].shape[1] <= 128
    # Same real tokens, same supervised tokens: the first token of each example is never a target.
    assert int(packed["attention_mask"].sum()) == sum(lengths)
    assert supervised_count(packed) == supervised_count(plain) == sum(e.n_supervised for e in examples)
    for index, example in enumerate(examples):
        row, cols = (packed["example_ids"] == index).nonzero(as_tuple=True)
        assert row.unique().numel() == 1 and cols.numel() == lengths[index]
        r, start = int(row[0]), int(cols[0])
        assert packed["input_ids"][r, cols].tolist() == example.input_ids
        assert packed["position_ids"][r, cols].tolist() == list(range(lengths[index]))
        assert int(packed["labels"][r, start]) == IGNORE
        assert packed["labels"][r, cols[1:]].tolist() == example.labels[1:]
    assert padding_fraction([packed]) < padding_fraction([plain])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@torch.no_grad()
def test_per_example_losses_equal_unpacked(tiny_model_dir, tiny_tokenizer, attn):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attn)
    examples = _examples(tiny_tokenizer)
    plain = sft_loss(model, collate(examples, tiny_tokenizer.pad_token_id), SFTContext(None))
    packed_batch = collate_packed(examples, tiny_tokenizer.pad_token_id, max_length=128)
    packed = sft_loss(model, packed_batch, SFTContext(None))
    assert packed_batch["input_ids"].shape[0] <= 5  # 10 examples share 5 rows or fewer
    assert packed.units == plain.units and torch.equal(packed.row_units, plain.row_units)
    delta = float((packed.row_loss / packed.row_units - plain.row_loss / plain.row_units).abs().max())
    print(f"max per-example loss delta, packed vs unpacked ({attn}): {delta:.2e}")
    assert delta < 1e-4
    # Attention leaking across examples would move these losses by far more than 1e-4.
    # Without example_ids the 2D mask goes in, and each row is one long causal sequence.
    leaky = {key: value for key, value in packed_batch.items() if key != "example_ids"}
    loss_leaky = sft_loss(model, leaky, SFTContext(None)).loss_sum
    assert abs(float(loss_leaky) - float(plain.loss_sum)) / plain.units > 1e-3


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_shared_prefix_rows_give_each_example_its_unpacked_loss_and_gradient(tiny_model_dir, tiny_tokenizer, attn):
    """objective.share_prompt for SFT: what a row's examples begin with alike (the template's system prompt and
    '<|im_start|>user') is read once per row, and nothing per example changes."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attn)
    examples = _examples(tiny_tokenizer)
    pad = tiny_tokenizer.pad_token_id
    results = []
    for batch in (collate(examples, pad), collate_packed(examples, pad, 128), collate_packed_shared(examples, pad, 128)):
        model.zero_grad(set_to_none=True)
        out = sft_loss(model, batch, SFTContext(7))
        (out.loss_sum / out.units).backward()
        results.append((batch, out, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (plain, a, grads_a), (packed, _, _), (shared, b, grads_b) = results
    assert sequence_tokens(shared) == sequence_tokens(plain) == int(plain["attention_mask"].sum())
    saved = 0  # each row reads its prefix once instead of once per example
    for r in range(shared["input_ids"].shape[0]):
        real = shared["segment_ids"][r] >= 0
        prefix = int((shared["segment_ids"][r] == shared["prefix_ids"][r])[real].sum())
        members = len(set(shared["example_ids"][r][real].tolist()))
        assert prefix >= 5  # the template's opening and the question's first words
        saved += (members - 1) * prefix
    assert int(shared["attention_mask"].sum()) == sequence_tokens(plain) - saved
    assert int(shared["attention_mask"].sum()) < int(packed["attention_mask"].sum())  # fewer tokens read
    assert b.units == a.units and torch.equal(b.row_units, a.row_units)
    torch.testing.assert_close(b.row_loss / b.row_units, a.row_loss / a.row_units, atol=1e-5, rtol=1e-5)
    worst = max(float((grads_a[n] - grads_b[n]).abs().max()) for n in grads_a)
    assert worst < 1e-5, worst


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_packed_training_follows_the_unpacked_trajectory(tmp_path, tiny_model_dir, qa_file, monkeypatch):
    from whetstone.objectives import sft

    rows = []  # (examples, rows) of every packed micro-batch the loop ran
    real_collate = sft.collate_packed
    monkeypatch.setattr(sft, "collate_packed", lambda examples, pad_id, max_length: rows.append(
        (len(examples), (batch := real_collate(examples, pad_id, max_length))["input_ids"].shape[0])) or batch)
    losses = {}
    for packing in (False, True):
        config = tiny_config(tiny_model_dir, qa_file, "train.max_steps=10", "train.batch_size=8",
                             "data.max_length=192", f"data.packing={str(packing).lower()}",
                             "objective.share_prompt=false")
        summary = train(config, tmp_path / f"packing-{packing}", progress=False)
        losses[packing] = _losses(tmp_path / f"packing-{packing}")
        assert summary["steps"] == 10
    delta = max(abs(a - b) for a, b in zip(losses[True], losses[False]))
    print(f"max step-loss delta over 10 steps, packed vs unpacked: {delta:.2e}")
    assert len(losses[True]) == 10 and delta < 1e-4
    assert len(rows) == 10 and all(n_rows < n for n, n_rows in rows)  # every step really ran packed
    assert losses[True][-1] < losses[True][0]  # it trained


def test_shared_prefix_training_follows_the_unpacked_trajectory(tmp_path, tiny_model_dir, qa_file):
    summaries, losses = {}, {}
    for name, sets in (("unpacked", ["data.packing=false"]), ("shared", ["data.packing=true", "objective.share_prompt=true"])):
        config = tiny_config(tiny_model_dir, qa_file, "train.max_steps=6", "train.batch_size=8",
                             "data.max_length=192", *sets)
        summaries[name] = train(config, tmp_path / name, progress=False)
        losses[name] = _losses(tmp_path / name)
    assert max(abs(a - b) for a, b in zip(losses["shared"], losses["unpacked"], strict=True)) < 1e-4
    assert summaries["shared"]["tokens"] == summaries["unpacked"]["tokens"]  # the examples' tokens, as unshared


def test_packing_is_refused_where_it_cannot_apply(tiny_model_dir, qa_file):
    for objective in ("classify", "reward", "kto"):
        with pytest.raises(ConfigError, match=f"data.packing: objective {objective}"):
            load_config(None, [f"model={tiny_model_dir}", f"data.train={qa_file}", f"objective={objective}",
                               "data.packing=true"])
    # flash-attention packs (one padding-free row per micro-batch) but reads no shared-prefix mask.
    load_config(None, [f"model={tiny_model_dir}", f"data.train={qa_file}", "data.packing=true",
                       "model.attn_implementation=flash_attention_2"])
    with pytest.raises(ConfigError, match="objective.share_prompt with model.attn_implementation flash_attention_2"):
        load_config(None, [f"model={tiny_model_dir}", f"data.train={qa_file}", "objective.share_prompt=true",
                           "model.attn_implementation=flash_attention_2"])
    with pytest.raises(ConfigError, match="data.packing with train.strategy fsdp"):
        load_config(None, [f"model={tiny_model_dir}", f"data.train={qa_file}", "train.strategy=fsdp",
                           "data.packing=true"])
