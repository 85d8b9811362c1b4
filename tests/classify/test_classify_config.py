"""Config and data mistakes of objective: classify, each one sentence naming the key and the fix."""

import pytest
from classkit import class_files, classify_config
from tiny_runs import write_jsonl

from whetstone.config import ConfigError, load_config
from whetstone.errors import WhetstoneError
from whetstone.train.dispatch import train


def _problems(*overrides):
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.train=x.jsonl", *overrides])
    return "\n".join(info.value.problems)


def test_config_errors_name_the_key_and_the_fix():
    assert "one weight per label" in _problems("objective=classify", "objective.labels=[a, b, c]",
                                               "objective.class_weights=[1.0, 2.0]")
    assert "for objective: classify" in _problems("objective=sft", "objective.labels=[a, b]")
    assert "at least two classes" in _problems("objective=classify", "objective.labels=[a]")
    assert "listed twice" in _problems("objective=classify", "objective.labels=[a, b, a]")
    assert "every weight must be positive" in _problems("objective=classify", "objective.class_weights=[1.0, 0]")
    assert "Remove bleu" in _problems("objective=classify", "eval.metrics=[loss, bleu]")
    assert "'balanced'" in _problems("objective=classify", "objective.class_weights=even")
    # A fully frozen backbone is the plain case of a new head, but trains nothing under sft.
    load_config(None, ["data.train=x.jsonl", "objective=classify", "method=freeze"])
    assert "nothing left trainable" in _problems("objective=sft", "method=freeze")


def test_chat_records_are_refused_with_the_record_named(tmp_path, tiny_model_dir, qa_file):
    config = classify_config(tiny_model_dir, qa_file, qa_file)
    with pytest.raises(WhetstoneError, match=r"qa.jsonl:1: objective classify needs classification records"):
        train(config, tmp_path / "run", progress=False)


def test_an_eval_label_the_head_lacks_fails_before_training(tmp_path, tiny_model_dir):
    train_file, _ = class_files(tmp_path)
    eval_file = write_jsonl(tmp_path / "odd.jsonl", [{"text": "hello", "label": "sarcastic"}])
    with pytest.raises(WhetstoneError, match=r"eval data has labels \['sarcastic'\]"):
        train(classify_config(tiny_model_dir, train_file, eval_file), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


def test_explicit_labels_set_the_head_order_and_reject_other_training_labels(tmp_path, tiny_model_dir):
    train_file, eval_file = class_files(tmp_path)
    config = classify_config(tiny_model_dir, train_file, eval_file, "objective.labels=[positive, neutral, negative]",
                             "train.max_steps=1")
    train(config, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "labels.json").read_text().split() == [
        "{", '"labels":', "[", '"positive",', '"neutral",', '"negative"', "]", "}"]
    config = classify_config(tiny_model_dir, train_file, eval_file, "objective.labels=[positive, negative]")
    with pytest.raises(WhetstoneError, match=r"data.train has labels \['neutral'\] that are not in objective.labels"):
        train(config, tmp_path / "run2", progress=False)
