"""objective: classify end to end on the tiny model: what trains, what stays bitwise, what is saved and reloaded."""

import json

import pytest
import torch
from classkit import LABELS, class_files, classify_config
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from whetstone.classify.predict import load_head_classifier
from whetstone.config import load_config
from whetstone.methods import apply_method
from whetstone.models import load_model
from whetstone.objectives.classify import HEAD_NAME, ClassifySet, collate_classification, setup_classify
from whetstone.train.dispatch import train


def _weights(directory):
    return {k: v for f in sorted(directory.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


def test_frozen_backbone_keeps_every_tensor_bitwise_and_learns_to_095(tmp_path, tiny_model_dir):
    train_file, eval_file = class_files(tmp_path)
    # method.train_head names the classification head here; the tied LM head / embeddings must not move.
    config = classify_config(tiny_model_dir, train_file, eval_file, "method.name=freeze", "method.train_head=true")
    summary = train(config, tmp_path / "run", progress=False)
    assert summary["final_eval"]["accuracy"] >= 0.95
    before, after = _weights(tiny_model_dir), _weights(tmp_path / "run" / "model")
    assert set(after) - set(before) == {f"{HEAD_NAME}.weight"}
    assert summary["trainable_params"] == after[f"{HEAD_NAME}.weight"].numel()  # only the head, counted once attached
    for key, tensor in before.items():
        assert torch.equal(tensor, after[key]), key
    assert json.loads((tmp_path / "run" / "labels.json").read_text())["labels"] == LABELS
    matrix = summary["final_eval"]["confusion_matrix"]
    assert matrix["labels"] == LABELS and sum(map(sum, matrix["matrix"])) == 30
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "eval_accuracy" in rows[-1] and "accuracy" in rows[-1]


def test_saved_model_loads_as_transformers_seq_cls_and_predictions_match(tmp_path, tiny_model_dir):
    train_file, eval_file = class_files(tmp_path)
    train(classify_config(tiny_model_dir, train_file, eval_file, "method.name=freeze", "method.top_blocks=1",
                          "train.epochs=1"), tmp_path / "run", progress=False)
    classifier = load_head_classifier(tmp_path / "run")
    texts = ["hello world is positive", "the quick brown fox is neutral here", "a journey is negative"]
    ours = classifier.predict(texts)
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "model").eval()
    assert [hf.config.id2label[i] for i in range(3)] == LABELS
    batch = classifier.tokenizer(texts, return_tensors="pt", padding=True)  # right padding with <|endoftext|>
    with torch.no_grad():
        theirs = torch.softmax(hf(**batch).logits, dim=-1)
    for row, prediction in zip(theirs.tolist(), ours):
        assert list(prediction.probabilities.values()) == pytest.approx(row, abs=1e-5)


@pytest.mark.parametrize("overrides, trainable", [
    (["method.name=freeze"], {"score.weight"}),
    (["method.name=freeze", "method.train_head=true"], {"score.weight"}),
    (["method.name=freeze", "method.top_blocks=1"], "top"),
    (["method.name=lora", "method.r=4"], "lora"),
])
def test_each_method_trains_exactly_what_it_should(tmp_path, tiny_model_dir, overrides, trainable):
    config = load_config(None, [f"model={tiny_model_dir}", "data.train=x.jsonl", "objective=classify", *overrides])
    model, _ = load_model(config.model)
    model = apply_method(model, config.method)
    setup_classify(model, config, ClassifySet([], [], [], LABELS))
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    if trainable == "top":
        assert names == {"score.weight"} | {n for n, _ in model.named_parameters() if n.startswith("model.layers.1.")}
    elif trainable == "lora":
        assert names == {n for n, _ in model.named_parameters() if "lora_" in n} | {
            "base_model.model.score.modules_to_save.default.weight"}
        assert len(names) > 1
    else:
        assert names == trainable


def test_lora_head_is_saved_with_the_adapter_and_reloads_to_the_same_predictions(tmp_path, tiny_model_dir):
    train_file, eval_file = class_files(tmp_path)
    summary = train(classify_config(tiny_model_dir, train_file, eval_file, "method.name=lora", "method.r=4",
                                    "train.epochs=2"), tmp_path / "run", progress=False)
    saved = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    assert {k for k in saved if "lora_" not in k} == {"base_model.model.score.weight"}
    classifier = load_head_classifier(tmp_path / "run")
    records = [json.loads(line) for line in eval_file.read_text().splitlines()]
    predicted = [p.label for p in classifier.predict([r["text"] for r in records])]
    accuracy = sum(p == r["label"] for p, r in zip(predicted, records)) / len(records)
    assert accuracy == pytest.approx(summary["final_eval"]["accuracy"])


def test_top_block_run_changes_only_the_top_block_and_the_head(tmp_path, tiny_model_dir):
    train_file, eval_file = class_files(tmp_path)
    train(classify_config(tiny_model_dir, train_file, eval_file, "method.name=freeze", "method.top_blocks=1",
                          "train.epochs=1"), tmp_path / "run", progress=False)
    before, after = _weights(tiny_model_dir), _weights(tmp_path / "run" / "model")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("model.layers.1.") for k in changed)


def test_pad_equal_to_eos_still_pools_the_last_real_token(tiny_model_dir, tiny_tokenizer):
    from whetstone.objectives.classify import ClassifyExample, attach_classifier, class_logits

    model, _ = load_model(load_config(None, [f"model={tiny_model_dir}", "data.train=x"]).model)
    attach_classifier(model, LABELS)
    texts = ["hello world is positive", "a journey of a thousand miles is neutral"]
    examples = [ClassifyExample(tiny_tokenizer(t)["input_ids"], None, False) for t in texts]
    eos = tiny_tokenizer.eos_token_id
    with torch.no_grad():
        batched = class_logits(model, collate_classification(examples, eos))  # padded with EOS, as on SmolLM2
        alone = torch.cat([class_logits(model, collate_classification([e], eos)) for e in examples])
    assert torch.allclose(batched, alone, atol=1e-5)


def test_a_resumed_run_ends_with_the_head_of_an_uninterrupted_one(tmp_path, tiny_model_dir):
    train_file, eval_file = class_files(tmp_path)
    config = classify_config(tiny_model_dir, train_file, eval_file, "method.name=freeze", "train.max_steps=8",
                             "train.checkpoint_every=2")
    train(config, tmp_path / "whole", progress=False)
    stopped = train(config, tmp_path / "split", progress=False, on_step=lambda step, row: step == 4)
    assert stopped["stopped_early"] and stopped["steps"] == 4
    train(None, tmp_path / "split", resume=True, progress=False)
    whole, split = _weights(tmp_path / "whole" / "model"), _weights(tmp_path / "split" / "model")
    assert torch.equal(whole[f"{HEAD_NAME}.weight"], split[f"{HEAD_NAME}.weight"])
