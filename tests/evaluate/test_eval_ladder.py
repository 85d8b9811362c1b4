"""The ladder on a tiny model: zero-shot, K-shot and tuned on the same examples and metric."""

import pytest

from whetstone.data.formats import load_records
from whetstone.evaluate.fewshot import shots_for_records
from whetstone.evaluate.harness import EvalOptions, evaluate
from whetstone.evaluate.ladder import render_ladder, run_ladder, task_metric, verdict
from whetstone.evaluate.pair import ModelPair


@pytest.fixture(scope="module")
def pair(lora_run):
    return ModelPair.load(None, None, str(lora_run), "cpu")


def test_ladder_rungs_and_verdict(pair, task_files):
    train_file, eval_file = task_files
    records = load_records(str(eval_file)).records
    pool = load_records(str(train_file)).records
    options = EvalOptions(metrics=["rouge", "loss"], max_new_tokens=16)
    rungs = run_ladder(pair, records, pool, 2, "random", 0, options)
    assert [r.setting for r in rungs] == ["zero-shot", "2-shot", "tuned"]
    assert [r.model for r in rungs] == ["base", "base", "tuned"]
    assert all(r.result.n == len(records) and r.result.references == rungs[0].result.references for r in rungs)

    # Each rung equals evaluating it alone: the ladder adds no hidden differences.
    with pair.base() as base:
        shots = shots_for_records(records, pool, 2, "random", 0)
        alone = evaluate(base, pair.tokenizer, records, options, shots)
    assert rungs[1].result.answers == alone.answers
    assert rungs[1].result.metrics["loss"] == pytest.approx(alone.metrics["loss"], rel=1e-6)

    metric = task_metric(["rouge", "loss"], rungs)
    assert metric == "rougeL"
    tuned, zero, few = (r.result.metrics["rougeL"] for r in (rungs[2], rungs[0], rungs[1]))
    assert tuned > max(zero, few) + 0.3  # the random base cannot answer; the tuned model learned the template
    assert rungs[2].result.metrics["loss"] < rungs[0].result.metrics["loss"]
    text = render_ladder(rungs, metric)
    assert "zero-shot" in text and "2-shot" in text and "tuned" in text
    assert "verdict: the tuned model beats the best baseline" in text


def test_verdict_says_when_prompting_wins(pair):
    from whetstone.evaluate.harness import EvalResult
    from whetstone.evaluate.ladder import Rung

    def rung(setting, value):
        return Rung(setting, "base", EvalResult(3, {"rougeL": value, "loss": 1.0 + value}, {}, [], []))

    rungs = [rung("zero-shot", 0.2), rung("3-shot", 0.5), rung("tuned", 0.4)]
    assert "does not beat the best baseline (3-shot)" in verdict(rungs, "rougeL")
    assert "beats the best baseline (zero-shot) on loss" in verdict(
        [rung("zero-shot", 0.2), rung("3-shot", 0.5), rung("tuned", 0.1)], "loss")
