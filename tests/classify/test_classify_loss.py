"""The classify loss, class weights and the metrics, against numbers computed by hand."""

import math

import pytest
import torch

from whetstone.classify.metrics import classification_report, confusion_matrix
from whetstone.objectives.classify import (
    ClassifyContext,
    ClassifyExample,
    attach_classifier,
    class_logits,
    class_weights,
    classify_loss,
    collate_classification,
    label_key,
    weighted_cross_entropy,
)


def _log_softmax(row, i):
    return row[i] - math.log(sum(math.exp(x) for x in row))


def test_weighted_cross_entropy_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    targets = torch.tensor([0, 2])
    plain = weighted_cross_entropy(logits, targets)
    weighted = weighted_cross_entropy(logits, targets, torch.tensor([1.0, 2.0, 3.0]))
    ce0 = -(2.0 - math.log(math.exp(2) + 1 + math.exp(-1)))
    ce1 = -(0.0 - math.log(2 * math.exp(0.5) + 1))
    assert plain.tolist() == pytest.approx([ce0, ce1], abs=1e-6)
    assert weighted.tolist() == pytest.approx([1.0 * ce0, 3.0 * ce1], abs=1e-6)


def test_balanced_weights_are_n_over_classes_times_count():
    assert class_weights("balanced", ["a", "b"], ["a", "a", "a", "b"]) == pytest.approx([4 / 6, 4 / 2])
    assert class_weights([1.0, 5.0], ["a", "b"], ["a"]) == [1.0, 5.0]
    assert class_weights(None, ["a", "b"], ["a"]) is None


def test_class_weights_change_the_batch_loss_as_computed_by_hand(tiny_model_dir, tiny_tokenizer):
    from whetstone.config import ModelConfig
    from whetstone.models import load_model

    model, _ = load_model(ModelConfig(name=str(tiny_model_dir)))
    labels = ["negative", "positive"]
    attach_classifier(model, labels)
    texts, golds = ["hello world is positive", "the lazy dog", "split the string"], ["positive", "negative", "negative"]
    batch = collate_classification([ClassifyExample(tiny_tokenizer(t)["input_ids"], g, False)
                                    for t, g in zip(texts, golds)], tiny_tokenizer.pad_token_id)
    keys = torch.tensor([label_key(x) for x in labels])
    with torch.no_grad():
        logits = class_logits(model, batch).tolist()
        plain = classify_loss(model, batch, ClassifyContext(labels, keys, None))
        weights = class_weights("balanced", labels, golds)  # negative 3/4, positive 3/2
        weighted = classify_loss(model, batch, ClassifyContext(labels, keys, torch.tensor(weights)))
    targets = [labels.index(g) for g in golds]
    by_hand = [-_log_softmax(row, t) for row, t in zip(logits, targets)]
    assert plain.units == weighted.units == 3
    assert float(plain.loss_sum) == pytest.approx(sum(by_hand), abs=1e-5)
    assert float(weighted.loss_sum) == pytest.approx(sum(weights[t] * x for t, x in zip(targets, by_hand)), abs=1e-5)
    correct = sum(max(range(2), key=lambda c: row[c]) == t for row, t in zip(logits, targets))
    assert plain.metrics["accuracy"] == correct


def test_confusion_matrix_and_macro_f1_by_hand():
    golds = ["a", "a", "a", "b", "b", "c"]
    preds = ["a", "a", "b", "b", "c", "c"]
    assert confusion_matrix(preds, golds, ["a", "b", "c"]) == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    report = classification_report(preds, golds, ["a", "b", "c"])
    # F1: a = 2*2/(4+0+1) = 0.8, b = 2/(2+1+1) = 0.5, c = 2/(2+1+0) = 2/3
    assert report["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3, abs=1e-6)
    assert report["accuracy"] == pytest.approx(4 / 6, abs=1e-6)
    assert report["per_class"]["a"] == {"precision": 1.0, "recall": pytest.approx(2 / 3, abs=1e-6), "f1": 0.8,
                                        "support": 3}


def test_a_gold_class_the_head_lacks_gets_its_own_row():
    report = classification_report(["a", "a"], ["a", "z"], ["a", "b"])
    assert report["confusion_matrix"]["labels"] == ["a", "b", "z"]
    assert report["confusion_matrix"]["matrix"] == [[1, 0, 0], [0, 0, 0], [1, 0, 0]]
