"""`evaluate` on a tiny tuned model: loss as training computes it, batched generation, metrics, tasks, labels."""

import math

import pytest
import sacrebleu

from whetstone.config import DataConfig
from whetstone.data.dataset import tokenize
from whetstone.data.formats import load_records
from whetstone.data.records import Message, Record
from whetstone.data.render import render_record
from whetstone.evaluate.fewshot import shots_for_records
from whetstone.evaluate.harness import EvalOptions, evaluate, keep_last_answer
from whetstone.evaluate.loss import objective_loss
from whetstone.evaluate.metrics import rouge
from whetstone.evaluate.scoring import rank_labels
from whetstone.models.inference import generate_answers, load_for_inference
from whetstone.objectives import OBJECTIVES


@pytest.fixture(scope="module")
def tuned(lora_run):
    return load_for_inference(run=str(lora_run))


def test_loss_equals_the_training_loops_eval_loss(tuned, task_files):
    model, tokenizer = tuned
    records = load_records(str(task_files[1])).records
    result = evaluate(model, tokenizer, records, EvalOptions(metrics=["loss"]))
    data = tokenize(records, tokenizer, DataConfig(train="x", max_length=1024))
    expected = objective_loss(model, OBJECTIVES["sft"], data, 4, tokenizer.pad_token_id, model.device)["loss"]
    assert result.metrics["loss"] == pytest.approx(expected, rel=1e-5)
    assert result.metrics["perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)
    assert result.counts["loss_tokens"] == sum(e.n_supervised for e in data.examples)


def test_batched_generation_equals_one_at_a_time(tuned, task_files):
    model, tokenizer = tuned
    records = load_records(str(task_files[1])).records
    # Prompts of different lengths, so left padding and the length sort both matter.
    conversations = [[{"role": "user", "content": r.messages[0].content + " Please." * (i % 3)}]
                     for i, r in enumerate(records)]
    batched = generate_answers(model, tokenizer, conversations, max_new_tokens=12, batch_size=8)
    single = [generate_answers(model, tokenizer, [c], max_new_tokens=12, batch_size=1)[0] for c in conversations]
    assert batched == single
    assert any(a for a in batched)


def test_generation_metrics_equal_direct_calls_on_the_same_answers(tuned, task_files, tiny_model_dir):
    model, tokenizer = tuned
    records = load_records(str(task_files[1])).records
    options = EvalOptions(metrics=["chrf", "bleu", "rouge", "exact_match"], max_new_tokens=16)
    result = evaluate(model, tokenizer, records, options)
    answers, refs = result.answers, result.references
    assert result.generated == len(records) and all(a is not None for a in answers)
    assert result.metrics["chrf"] == sacrebleu.corpus_chrf(answers, [refs]).score
    assert result.metrics["bleu"] == sacrebleu.corpus_bleu(answers, [refs]).score
    assert result.metrics["rougeL"] == rouge(answers, refs)["rougeL"]
    # The tuned model learned the answer template "N plus N is 2N.": "plus" and "is" alone are 2 of its 5 ROUGE
    # tokens (0.4), which the untrained model never writes. Its exact digits vary with the CPU's rounding.
    untrained = evaluate(*load_for_inference(model=str(tiny_model_dir)), records, options)
    assert result.metrics["rougeL"] - untrained.metrics["rougeL"] >= 0.3, (result.answers, untrained.answers)
    assert result.examples_per_s > 0


def test_per_task_breakdown(tuned, task_files):
    model, tokenizer = tuned
    records = load_records(str(task_files[1])).records
    tagged = [Record("chat", r.origin, messages=r.messages, task="even" if i % 2 == 0 else "odd")
              for i, r in enumerate(records)]
    result = evaluate(model, tokenizer, tagged, EvalOptions(metrics=["loss", "rouge"], max_new_tokens=16))
    assert set(result.per_task) == {"even", "odd"}
    even = [i for i in range(len(tagged)) if i % 2 == 0]
    assert result.per_task["even"]["rougeL"] == pytest.approx(
        rouge([result.answers[i] for i in even], [result.references[i] for i in even])["rougeL"])
    alone = evaluate(model, tokenizer, [tagged[i] for i in even], EvalOptions(metrics=["loss"]))
    assert result.per_task["even"]["loss"] == pytest.approx(alone.metrics["loss"], rel=1e-5)
    # The overall loss is the token-weighted mean of the tasks'.
    assert min(result.per_task["even"]["loss"], result.per_task["odd"]["loss"]) <= result.metrics["loss"] <= max(
        result.per_task["even"]["loss"], result.per_task["odd"]["loss"])


def test_classification_ranks_label_strings(tuned):
    model, tokenizer = tuned
    records = [Record("classification", f"c:{i}", text=f"text {i}", label=["yes", "no"][i % 2]) for i in range(6)]
    result = evaluate(model, tokenizer, records, EvalOptions(metrics=["accuracy", "macro_f1", "loss"]))
    prompts = [(Message("user", f"Classify the text. Answer with one of: no, yes.\n\nText: text {i}"),)
               for i in range(6)]
    predictions = rank_labels(model, tokenizer, prompts, ["no", "yes"])
    assert result.answers == predictions
    golds = [r.label for r in records]
    assert result.metrics["accuracy"] == pytest.approx(sum(p == g for p, g in zip(predictions, golds)) / 6)
    assert "macro_f1" in result.metrics and "loss" in result.metrics and result.generated == 0


def test_shots_only_score_the_final_answer(tuned, task_files):
    model, tokenizer = tuned
    records = load_records(str(task_files[1])).records[:3]
    pool = load_records(str(task_files[0])).records
    shots = shots_for_records(records, pool, 2)
    with_shots = evaluate(model, tokenizer, records, EvalOptions(metrics=["loss"]), shots)
    alone = evaluate(model, tokenizer, records, EvalOptions(metrics=["loss"]))
    # Same answers are scored (token counts equal); only the context differs.
    assert with_shots.counts["loss_tokens"] == alone.counts["loss_tokens"]
    rendered = render_record(Record("chat", "x", messages=(
        Message("user", "q1"), Message("assistant", "a1"), Message("user", "q2"), Message("assistant", "a2"))),
        tokenizer, None)
    kept = keep_last_answer(rendered)
    supervised = [t for t, label in zip(kept.input_ids, kept.labels) if label != -100]
    assert tokenizer.decode(supervised).startswith("a2")
