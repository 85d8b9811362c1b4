"""data.group_by_length: each step keeps its examples, its micro-batches pad less, resume stays exact."""

import itertools
import json

import pytest
import torch
from tiny_runs import latest_trainable, tiny_config

from whetstone.data.batches import StepPlan, collate
from whetstone.data.packing import padding_fraction
from whetstone.train.dispatch import train


def _plans(n, lengths, batch=2, accum=4, world=2):
    plain = StepPlan.build(n, batch, accum, world, epochs=2, max_steps=None)
    grouped = StepPlan.build(n, batch, accum, world, epochs=2, max_steps=None, lengths=lengths)
    return plain, grouped


def test_each_step_keeps_its_examples_and_sorts_them():
    lengths = [(7 * i) % 23 + 1 for i in range(37)]  # 37: the last step of each epoch is ragged
    plain, grouped = _plans(37, lengths)
    assert grouped.total_steps == plain.total_steps == 6
    for step in range(plain.total_steps):
        a = [plain.micro_batches(step, seed=3, rank=r) for r in range(2)]
        b = [grouped.micro_batches(step, seed=3, rank=r) for r in range(2)]
        flat = lambda shares: sorted(i for share in shares for micro in share for i in micro)
        assert flat(b) == flat(a)  # the same examples in the step
        assert len(b[0]) == len(a[0]) and len(b[1]) == len(a[1])  # the same number of micro-batches per process
        # Micro-batch m of both processes holds lengths no shorter than micro-batch m + 1's.
        spans = [[lengths[i] for r in range(2) for i in b[r][m]] for m in range(len(b[0]))]
        assert all(min(x) >= max(y) for x, y in itertools.pairwise(spans) if x and y)
        assert grouped.micro_batches(step, seed=3) == grouped.micro_batches(step, seed=3)  # pure function of step


def test_grouping_lowers_padding(tiny_tokenizer, qa_file):
    from whetstone.config import load_config
    from whetstone.data.dataset import load_splits, tokenize

    config = load_config(None, [f"data.train={qa_file}"])
    records, _, _ = load_splits(config.data, 0)
    examples = tokenize(records, tiny_tokenizer, config.data).examples
    lengths = [len(e.input_ids) for e in examples]
    fractions = {}
    for name, plan in zip(("plain", "grouped"), _plans(len(examples), lengths, batch=2, accum=4, world=1)):
        batches = [collate([examples[i] for i in micro], tiny_tokenizer.pad_token_id)
                   for step in range(plan.steps_per_epoch) for micro in plan.micro_batches(step, seed=0)]
        fractions[name] = padding_fraction(batches)
    print(f"padding fraction at 2 x 4: {fractions}")
    assert fractions["grouped"] < 0.5 * fractions["plain"]


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_grouped_run_follows_the_ungrouped_trajectory(tmp_path, tiny_model_dir, qa_file):
    runs = {}
    for grouped in (False, True):
        runs[grouped] = tmp_path / f"grouped-{grouped}"
        train(tiny_config(tiny_model_dir, qa_file, "train.max_steps=6", "train.batch_size=2", "train.grad_accum=4",
                          f"data.group_by_length={str(grouped).lower()}"), runs[grouped], progress=False)
    assert _losses(runs[True]) == pytest.approx(_losses(runs[False]), abs=1e-5)
    a, b = latest_trainable(runs[True]), latest_trainable(runs[False])
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=0)

# Resuming a grouped run mid-epoch is exact: the lora-grouped case of
# tests/test_train.py::test_resumed_run_is_bitwise_equal_to_uninterrupted.
