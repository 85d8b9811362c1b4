"""Reward models: learn a separable task, save the head with every method, load it back, score."""

import json

import pytest
import torch
from prefkit import pref_config, read_metrics
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from whetstone.cli import main
from whetstone.data.formats import load_records
from whetstone.objectives.reward import load_reward_model
from whetstone.train.dispatch import train


def _train_rm(tmp_path, tiny_model_dir, pair_files, *overrides, steps=12):
    train_file, eval_file = pair_files
    run = tmp_path / "rm"
    config = pref_config(tiny_model_dir, "objective=reward", f"data.train={train_file}", f"data.eval={eval_file}",
                         f"train.max_steps={steps}", "train.batch_size=8", *overrides)
    train(config, run, progress=False)
    return run


def _scores(run, eval_file):
    records = load_records(str(eval_file)).records
    rm = load_reward_model(run)
    chosen = rm.score([r.messages for r in records], [r.chosen for r in records])
    rejected = rm.score([r.messages for r in records], [r.rejected for r in records])
    return chosen, rejected


def test_full_reward_model_separates_held_out_pairs_and_loads_as_seq_cls(tmp_path, tiny_model_dir, pair_files):
    run = _train_rm(tmp_path, tiny_model_dir, pair_files, "method.name=full", "objective.margin=0.5")
    last = read_metrics(run)[-1]
    assert last["eval_accuracy"] >= 0.9 and last["eval_margin"] > 0.5
    chosen, rejected = _scores(run, pair_files[1])
    assert sum(c > r for c, r in zip(chosen, rejected)) / len(chosen) == pytest.approx(last["eval_accuracy"])
    assert sum(chosen) / len(chosen) == pytest.approx(last["eval_rewards/chosen"], abs=1e-4)
    # The saved model/ is a plain 1-label sequence-classification model to transformers.
    rm = load_reward_model(run)
    hf = AutoModelForSequenceClassification.from_pretrained(run / "model", num_labels=1).eval()
    records = load_records(str(pair_files[1])).records[:4]
    from whetstone.objectives.logprobs import pad_rows, render_completion

    rows = [render_completion(rm.tokenizer, r.messages, r.chosen, None) for r in records]
    batch = pad_rows([(x.input_ids, x.labels) for x in rows], rm.tokenizer.pad_token_id)
    with torch.no_grad():
        theirs = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
    assert theirs.tolist() == pytest.approx(chosen[:4], abs=1e-4)


def test_lora_value_head_is_saved_with_the_adapter(tmp_path, tiny_model_dir, pair_files):
    run = _train_rm(tmp_path, tiny_model_dir, pair_files, "method.name=lora", "objective.head=value",
                    "train.lr=1e-2")
    saved = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert {k for k in saved if "v_head" in k} == {"base_model.model.v_head.bias", "base_model.model.v_head.weight"}
    last = read_metrics(run)[-1]
    chosen, rejected = _scores(run, pair_files[1])
    # Loading base + adapter + head reproduces what training measured on the same pairs.
    assert sum(chosen) / len(chosen) == pytest.approx(last["eval_rewards/chosen"], abs=1e-4)
    assert sum(rejected) / len(rejected) == pytest.approx(last["eval_rewards/rejected"], abs=1e-4)
    assert last["eval_accuracy"] >= 0.9


def test_frozen_backbone_trains_only_the_new_head(tmp_path, tiny_model_dir, pair_files):
    run = _train_rm(tmp_path, tiny_model_dir, pair_files, "method.name=freeze", "train.lr=3e-2", steps=6)
    before = load_file(str(tiny_model_dir / "model.safetensors"))
    after = load_file(str(run / "model" / "model.safetensors"))
    assert set(after) == set(before) | {"score.weight"}
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert read_metrics(run)[-1]["eval_accuracy"] >= 0.9


def test_cli_score_prints_each_pair_and_the_accuracy(tmp_path, tiny_model_dir, pair_files, capsys):
    run = _train_rm(tmp_path, tiny_model_dir, pair_files, "method.name=full", steps=4)
    capsys.readouterr()  # what training printed
    assert main(["score", "--run", str(run), "--data", str(pair_files[1]), "--json"]) == 0
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    chosen, rejected = _scores(run, pair_files[1])
    assert [r["chosen"] for r in rows] == pytest.approx(chosen, abs=1e-5)
    assert [r["rejected"] for r in rows] == pytest.approx(rejected, abs=1e-5)
    assert "32 responses scored" in err and "pairwise accuracy" in err


def test_cli_score_refuses_a_run_that_is_not_a_reward_model(tmp_path, capsys):
    run = tmp_path / "sft"
    run.mkdir()
    (run / "config.yaml").write_text("data: {train: x.jsonl}\nobjective: {name: sft}\n")
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    assert main(["score", "--run", str(run), "--data", str(data)]) == 2
    assert "not 'reward'" in capsys.readouterr().err
