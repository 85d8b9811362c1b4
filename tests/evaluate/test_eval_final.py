"""End-of-training evaluation: the metrics a config lists land in summary.json."""

import json

import sacrebleu

from whetstone.evaluate.final import final_evaluation


def test_end_of_training_metrics_in_summary(lora_run):
    summary = json.loads((lora_run / "summary.json").read_text())
    final = summary["final_eval"]
    assert final["n"] == 8 and final["generated"] == 8 and final["examples_per_s"] > 0
    assert {"rouge1", "rouge2", "rougeL", "chrf", "exact_match"} <= set(final)
    assert "loss" not in final  # loss is the loop's own eval_loss
    assert summary["eval_loss"] is not None and "forgetting" not in summary and "canaries" not in summary


def test_nothing_asked_means_nothing_run(tmp_path):
    from whetstone.config import load_config

    config = load_config(None, ["data.train=x.jsonl"])
    assert final_evaluation(None, None, config, tmp_path, []) == {}


def test_final_chrf_matches_sacrebleu_on_the_runs_answers(lora_run, task_files):
    from whetstone.data.formats import load_records
    from whetstone.evaluate.harness import EvalOptions, evaluate
    from whetstone.models.inference import load_for_inference

    model, tokenizer = load_for_inference(run=str(lora_run))
    records = load_records(str(task_files[1])).records
    result = evaluate(model, tokenizer, records, EvalOptions(metrics=["chrf"], max_new_tokens=16, batch_size=16))
    summary = json.loads((lora_run / "summary.json").read_text())
    # The saved adapter reproduces what the in-memory model scored at the end of training.
    assert summary["final_eval"]["chrf"] == round(sacrebleu.corpus_chrf(result.answers, [result.references]).score, 6)
