"""DPO (every loss of the family) and KTO learn a held-out preference; their configs are checked."""

import pytest
import torch
from prefkit import pref_config, read_metrics

from whetstone.config import ConfigError, load_config
from whetstone.data.dataset import load_splits
from whetstone.errors import WhetstoneError
from whetstone.evaluate.loss import objective_loss
from whetstone.methods import apply_method
from whetstone.models import load_model, load_tokenizer
from whetstone.objectives import OBJECTIVES
from whetstone.train.dispatch import train


def _eval_before_training(config) -> dict:
    """The objective's held-out metrics on the freshly loaded (untrained) model."""
    objective = OBJECTIVES[config.objective.name]
    tokenizer = load_tokenizer(config.model)
    train_records, eval_records, _ = load_splits(config.data, config.train.seed)
    model = apply_method(load_model(config.model)[0], config.method)
    context = objective.setup(model, config, objective.prepare(train_records, tokenizer, config.data, None))
    eval_set = objective.prepare(eval_records, tokenizer, config.data, None)
    return objective_loss(model, objective, eval_set, 8, tokenizer.pad_token_id, torch.device("cpu"), context)


def test_dpo_raises_held_out_preference_accuracy(tmp_path, tiny_model_dir, pair_files):
    train_file, eval_file = pair_files
    config = pref_config(tiny_model_dir, "objective=dpo", f"data.train={train_file}", f"data.eval={eval_file}",
                         "train.max_steps=8", "train.batch_size=8")
    before = _eval_before_training(config)
    # policy == reference: every implicit reward is 0, every pair a tie, accuracy exactly one half
    assert before["accuracy"] == 0.5 and before["margin"] == 0.0
    train(config, tmp_path / "dpo", progress=False)
    last = read_metrics(tmp_path / "dpo")[-1]
    assert last["eval_accuracy"] >= 0.8 and last["eval_margin"] > 0
    assert last["eval_rewards/chosen"] > last["eval_rewards/rejected"]
    assert last["eval_loss"] < before["loss"]


@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "hinge", "simpo", "orpo"])
def test_every_loss_of_the_family_learns_the_preference(tmp_path, tiny_model_dir, pair_files, loss):
    train_file, eval_file = pair_files
    extra = ["objective.label_smoothing=0.1"] if loss == "sigmoid" else []
    extra += ["objective.beta=2.0", "objective.margin=0.5"] if loss == "simpo" else []
    config = pref_config(tiny_model_dir, "objective=dpo", f"objective.loss={loss}", f"data.train={train_file}",
                         f"data.eval={eval_file}", "train.max_steps=8", "train.batch_size=8", *extra)
    summary = train(config, tmp_path / loss, progress=False)
    last = read_metrics(tmp_path / loss)[-1]
    assert last["eval_accuracy"] >= 0.8, (loss, last)
    assert summary["eval_loss"] == last["eval_loss"]


def test_precompute_reference_trains_like_the_live_reference(tmp_path, tiny_model_dir, pair_files):
    train_file, eval_file = pair_files
    rows = {}
    for pre in ("false", "true"):
        config = pref_config(tiny_model_dir, "objective=dpo", "method.name=full", f"data.train={train_file}",
                             f"data.eval={eval_file}", "train.max_steps=4", "train.batch_size=8",
                             f"objective.precompute_reference={pre}")
        train(config, tmp_path / pre, progress=False)
        rows[pre] = read_metrics(tmp_path / pre)
    for a, b in zip(rows["false"], rows["true"]):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    assert rows["false"][-1]["eval_accuracy"] == rows["true"][-1]["eval_accuracy"]


def test_kto_raises_held_out_accuracy(tmp_path, tiny_model_dir, feedback_files):
    train_file, eval_file = feedback_files
    config = pref_config(tiny_model_dir, "objective=kto", f"data.train={train_file}", f"data.eval={eval_file}",
                         "train.max_steps=8", "train.batch_size=8", "objective.undesirable_weight=1.2")
    before = _eval_before_training(config)
    assert before["accuracy"] == 0.5 and before["kl"] == 0.0
    train(config, tmp_path / "kto", progress=False)
    last = read_metrics(tmp_path / "kto")[-1]
    assert last["eval_accuracy"] >= 0.8 and last["eval_loss"] < before["loss"]


def test_a_chat_file_cannot_train_dpo(tmp_path, tiny_model_dir):
    data = tmp_path / "chat.jsonl"
    data.write_text('{"prompt": "hi", "completion": "hello"}\n')
    config = pref_config(tiny_model_dir, "objective=dpo", f"data.train={data}")
    with pytest.raises(WhetstoneError, match=r"chat.jsonl:1: a chat record cannot train a preference objective"):
        train(config, tmp_path / "run", progress=False)


def test_config_errors_name_the_key_and_the_fix():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.train=a.jsonl", "objective.name=dpo", "objective.loss=ipo",
                           "objective.label_smoothing=0.2", "objective.beta=0"])
    message = str(info.value)
    assert "label smoothing (cDPO) applies to loss 'sigmoid' only" in message
    assert "objective.beta: got 0.0; must be positive" in message
    with pytest.raises(ConfigError, match="ppo needs at least one reward"):
        load_config(None, ["data.train=a.jsonl", "objective=ppo"])
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.train=a.jsonl", "objective=grpo", "objective.num_generations=1",
                           "objective.reward=[{function: nocolon}]", "objective.temperature=0"])
    message = str(info.value)
    assert "needs at least 2" in message and "'module:function'" in message and "must be > 0" in message
    with pytest.raises(ConfigError, match="precompute_reference applies to objective dpo only"):
        load_config(None, ["data.train=a.jsonl", "objective=kto", "objective.precompute_reference=true"])
    with pytest.raises(ConfigError, match="does not use it; rewards are for ppo and grpo"):
        load_config(None, ["data.train=a.jsonl", "objective=dpo", "objective.reward=[{run: r}]"])
    # A frozen backbone with nothing unfrozen is an error, except for a reward model's new head.
    with pytest.raises(ConfigError, match="'freeze' with nothing left trainable"):
        load_config(None, ["data.train=a.jsonl", "method=freeze", "objective=dpo"])
    assert load_config(None, ["data.train=a.jsonl", "method=freeze", "objective=reward"]).method.name == "freeze"
    with pytest.raises(ConfigError, match="does not run exact_match, forgetting"):
        load_config(None, ["data.train=a.jsonl", "objective=grpo", "objective.reward=[{function: 'm:f'}]",
                           "eval.metrics=[loss, exact_match]", "eval.forgetting=true"])


def test_packed_dpo_follows_the_unpacked_trajectory(tmp_path, tiny_model_dir, pair_files, monkeypatch):
    """data.packing for dpo: the same losses step by step, with fewer rows per micro-batch."""
    from whetstone.objectives import preference

    rows = []  # (sequences, rows) of every packed micro-batch
    real = preference.collate_pairs_packed
    monkeypatch.setattr(preference, "collate_pairs_packed", lambda examples, pad_id, max_length: rows.append(
        (2 * len(examples), (batch := real(examples, pad_id, max_length))["input_ids"].shape[0])) or batch)
    train_file, eval_file = pair_files
    runs = {}
    for packing in ("false", "true"):
        config = pref_config(tiny_model_dir, "objective=dpo", f"data.train={train_file}", f"data.eval={eval_file}",
                             "train.max_steps=6", "train.batch_size=8", f"data.packing={packing}",
                             "objective.share_prompt=false")
        train(config, tmp_path / packing, progress=False)
        runs[packing] = read_metrics(tmp_path / packing)
    for a, b in zip(runs["false"], runs["true"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-6)
    assert runs["false"][-1]["eval_loss"] == pytest.approx(runs["true"][-1]["eval_loss"], abs=1e-5)
    assert rows and all(n_rows < n for n, n_rows in rows)  # training and eval batches really ran packed


def test_shared_prompt_dpo_follows_the_unpacked_trajectory(tmp_path, tiny_model_dir, pair_files):
    """objective.share_prompt: each pair's prompt read once; the same losses, accuracies and token counts."""
    train_file, eval_file = pair_files
    runs, summaries = {}, {}
    for name, sets in (("unpacked", ["data.packing=false"]), ("shared", ["data.packing=true", "objective.share_prompt=true"])):
        config = pref_config(tiny_model_dir, "objective=dpo", f"data.train={train_file}", f"data.eval={eval_file}",
                             "train.max_steps=6", "train.batch_size=8", *sets)
        summaries[name] = train(config, tmp_path / name, progress=False)
        runs[name] = read_metrics(tmp_path / name)
    for a, b in zip(runs["unpacked"], runs["shared"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-6)
    assert runs["unpacked"][-1]["eval_loss"] == pytest.approx(runs["shared"][-1]["eval_loss"], abs=1e-5)
    assert summaries["shared"]["tokens"] == summaries["unpacked"]["tokens"]  # the sequences' tokens, as unshared


@pytest.mark.parametrize("sets", [["data.packing=false", "objective.share_prompt=true"],
                                  ["objective=kto", "data.packing=true", "objective.share_prompt=true"]])
def test_share_prompt_needs_packed_sft_or_dpo(tiny_model_dir, pair_files, sets):
    with pytest.raises(WhetstoneError, match="objective.share_prompt applies to objectives sft and dpo with data.packing"):
        pref_config(tiny_model_dir, "objective=dpo", f"data.train={pair_files[0]}", *sets)
