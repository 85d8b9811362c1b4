"""`whetstone predict`: a head run's predictions and probabilities, and generative classification beside it."""

import json

import pytest
from classkit import LABELS, class_files, class_rows, classify_config
from tiny_runs import tiny_config, write_jsonl

from whetstone.cli import main
from whetstone.data.formats import load_records
from whetstone.evaluate.fewshot import classification_prompt
from whetstone.evaluate.harness import EvalOptions, evaluate
from whetstone.evaluate.scoring import rank_labels
from whetstone.models.inference import load_for_inference
from whetstone.train.dispatch import train


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """A frozen-backbone head run and an SFT run with the label as the completion, on the same data."""
    tmp = tmp_path_factory.mktemp("predict")
    train_file, eval_file = class_files(tmp)
    head = train(classify_config(tiny_model_dir, train_file, eval_file, "method.name=freeze"), tmp / "head",
                 progress=False)
    sft_rows = [{"prompt": classification_prompt(r["text"], LABELS), "completion": r["label"]}
                for r in class_rows(64, 0)]
    sft_file = write_jsonl(tmp / "sft.jsonl", sft_rows)
    train(tiny_config(tiny_model_dir, sft_file, "train.max_steps=6", "train.batch_size=8", "method.r=4"),
          tmp / "sft", progress=False)
    return tmp, eval_file, head


def test_predict_writes_each_label_with_its_probabilities(runs, capsys):
    tmp, eval_file, head = runs
    out = tmp / "predictions.jsonl"
    assert main(["predict", "--run", str(tmp / "head"), "--data", str(eval_file), "-o", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    golds = [r["label"] for r in (json.loads(x) for x in eval_file.read_text().splitlines())]
    assert [r["gold"] for r in rows] == golds and rows[0]["origin"].endswith("eval.jsonl:1")
    for row in rows:
        assert list(row["probabilities"]) == LABELS
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert row["label"] == max(row["probabilities"], key=row["probabilities"].get)
    accuracy = sum(r["label"] == r["gold"] for r in rows) / len(rows)
    assert accuracy == pytest.approx(head["final_eval"]["accuracy"])
    assert f"accuracy {accuracy:.3f}" in capsys.readouterr().out


def test_unlabelled_text_gets_predictions_and_no_metrics(runs, capsys):
    tmp, _, _ = runs
    data = write_jsonl(tmp / "texts.jsonl", [{"text": "hello world is positive"}, {"text": "the lazy dog is negative"}])
    assert main(["predict", "--run", str(tmp / "head"), "--data", str(data)]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["label"] for r in rows] == ["positive", "negative"] and "gold" not in rows[0]
    assert "accuracy" not in captured.err
    # Label likelihood needs the classes: text records carry none.
    assert main(["predict", "--run", str(tmp / "sft"), "--data", str(data)]) == 2
    assert "needs at least two labels: pass --labels" in capsys.readouterr().err


def test_generative_run_is_scored_like_whetstone_eval_beside_the_head(runs, capsys):
    tmp, eval_file, head = runs
    assert main(["predict", "--run", str(tmp / "head"), "--run", str(tmp / "sft"), "--data", str(eval_file),
                 "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["kind"] for r in results] == ["head", "generative"]
    assert results[0]["accuracy"] == pytest.approx(head["final_eval"]["accuracy"])
    # The same records through the evaluation harness (rank_labels) give the same accuracy and macro-F1.
    model, tokenizer = load_for_inference(run=str(tmp / "sft"))
    records = load_records(str(eval_file)).records
    reference = evaluate(model, tokenizer, records, EvalOptions(["accuracy", "macro_f1"])).metrics
    assert results[1]["accuracy"] == pytest.approx(reference["accuracy"], abs=1e-6)
    assert results[1]["macro_f1"] == pytest.approx(reference["macro_f1"], abs=1e-6)
    from whetstone.data.records import Message

    prompts = [(Message("user", classification_prompt(r.text, LABELS)),) for r in records]
    predicted = rank_labels(model, tokenizer, prompts, LABELS)
    matrix = results[1]["confusion_matrix"]["matrix"]
    assert sum(matrix[i][i] for i in range(3)) == sum(p == r.label for p, r in zip(predicted, records))


def test_predict_usage_errors(runs, capsys):
    tmp, eval_file, _ = runs
    assert main(["predict", "--data", str(eval_file)]) == 2
    assert "needs a predictor" in capsys.readouterr().err
    assert main(["predict", "--run", str(tmp / "head"), "--run", str(tmp / "sft"), "--data", str(eval_file),
                 "-o", str(tmp / "x.jsonl")]) == 2
    assert "-o writes one predictor" in capsys.readouterr().err
    assert main(["predict", "--run", str(tmp / "head"), "--data", str(eval_file), "--labels", "a", "b"]) == 2
    assert "leave --labels out for a classify run" in capsys.readouterr().err


def test_eval_refuses_a_classifier_run_and_points_to_predict(runs, capsys):
    tmp, eval_file, _ = runs
    assert main(["eval", "--run", str(tmp / "head"), "--data", str(eval_file)]) == 2
    assert f"Score it with `whetstone predict --run {tmp / 'head'}" in capsys.readouterr().err
