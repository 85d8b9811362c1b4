"""Mixture runs on a tiny model: per-task losses against plain transformers, per-task eval, exact resume."""

import json

import pytest
import torch
from mixkit import arithmetic_file, echo_file, general_file
from tiny_runs import latest_trainable, tiny_config

from whetstone.data.batches import StepPlan, collate
from whetstone.data.dataset import load_splits, plan_mixture, tokenize
from whetstone.train.dispatch import train


def _config(tiny_model_dir, tmp_path, *overrides):
    arith, echo = arithmetic_file(tmp_path / "arith.jsonl"), echo_file(tmp_path / "echo.jsonl")
    general = general_file(tmp_path / "general.jsonl")
    sources = f"data.train=[{{path: {arith}, task: arith}}, {{path: {echo}, task: echo, weight: 2.0}}]"
    return tiny_config(tiny_model_dir, arith, sources, f"data.replay={{source: {general}, fraction: 0.2}}",
                       *overrides)


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _hf_loss(model, examples, pad_id) -> float:
    """transformers' own loss: the mean cross-entropy over every supervised token of the batch."""
    batch = collate(examples, pad_id)
    with torch.no_grad():
        return float(model(**batch).loss)


def test_per_task_losses_equal_plain_transformers_on_the_first_step(tmp_path, tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    config = _config(tiny_model_dir, tmp_path, "train.max_steps=1", "train.batch_size=8", "train.grad_accum=2")
    summary = train(config, tmp_path / "run", progress=False)
    (row,) = _rows(tmp_path / "run")

    # What the loop drew for step 1, rebuilt from the config alone.
    records, _, stats = load_splits(config.data, config.train.seed)
    train_set = tokenize(records, tiny_tokenizer, config.data)
    mixture = plan_mixture(config.data, train_set.origins, stats)
    assert [s["task"] for s in summary["data"]["mixture"]] == ["arith", "echo", "replay"]
    assert [s["probability"] for s in summary["data"]["mixture"]] == pytest.approx([0.4, 0.4, 0.2])
    plan = StepPlan.build(len(train_set), 8, 2, 1, 1.0, 1, mixture)
    drawn = [i for idx in plan.micro_batches(0, config.train.seed) for i in idx]
    tasks = sorted({train_set.tasks[i] for i in drawn})
    assert tasks == ["arith", "echo", "replay"]  # 16 draws at 40/40/20 hold every task

    # LoRA starts with B = 0, so step 1's forward is the base model's.
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    pad = tiny_tokenizer.pad_token_id
    for task in tasks:
        examples = [train_set.examples[i] for i in drawn if train_set.tasks[i] == task]
        assert row[f"loss/{task}"] == pytest.approx(_hf_loss(base, examples, pad), abs=1e-5), task
    assert row["loss"] == pytest.approx(_hf_loss(base, [train_set.examples[i] for i in drawn], pad), abs=1e-5)


def test_eval_is_carved_per_source_and_reported_per_task(tmp_path, tiny_model_dir, tiny_tokenizer):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = _config(tiny_model_dir, tmp_path, "train.max_steps=3", "train.batch_size=4", "data.eval_fraction=0.25",
                     "eval.every=100")
    summary = train(config, tmp_path / "run", progress=False)
    assert summary["data"]["eval_records"] == 6 + 3  # a quarter of 24 arith and of 12 echo; replay is not carved
    last = _rows(tmp_path / "run")[-1]
    assert {"eval_loss", "eval_loss/arith", "eval_loss/echo"} <= last.keys() and "eval_loss/replay" not in last

    # Reference: the final weights through plain peft, each task's eval examples as one batch.
    _, eval_records, _ = load_splits(config.data, config.train.seed)
    eval_set = tokenize(eval_records, tiny_tokenizer, config.data)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
                                      str(tmp_path / "run" / "adapter")).eval()
    for task in ("arith", "echo"):
        examples = [e for e, t in zip(eval_set.examples, eval_set.tasks) if t == task]
        hf = _hf_loss(model, examples, tiny_tokenizer.pad_token_id)
        assert last[f"eval_loss/{task}"] == pytest.approx(hf, abs=1e-4), task


def test_mixture_run_resumed_mid_epoch_is_bitwise_equal(tmp_path, tiny_model_dir):
    # 36 task examples / 0.8 = 45 draws per epoch = 12 steps of 4: the run crosses into epoch 2, the stop is mid-epoch 1.
    overrides = ("train.max_steps=14", "train.batch_size=4", "method.dropout=0.1", "train.checkpoint_every=100")
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    train(_config(tiny_model_dir, tmp_path, *overrides), straight, progress=False)
    summary = train(_config(tiny_model_dir, tmp_path, *overrides), stopped, progress=False,
                    on_step=lambda step, row: step == 5)
    assert summary["stopped_early"] and summary["steps"] == 5
    assert train(None, stopped, resume=True, progress=False)["steps"] == 14

    a, b = latest_trainable(straight), latest_trainable(stopped)
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    losses = [{k: v for k, v in r.items() if k == "loss" or k.startswith("loss/")} for r in _rows(straight)]
    assert losses == [{k: v for k, v in r.items() if k == "loss" or k.startswith("loss/")} for r in _rows(stopped)]
    assert len(losses) == 14 and all("loss/arith" in r or "loss/echo" in r for r in losses)
