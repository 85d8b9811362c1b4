"""Forgetting on a tiny model: an over-trained full fine-tune forgets clearly more than LoRA on the same data.

The tiny model is first "pretrained" on general sentences, so it has a general
ability to lose; the probe is held-out sentences of the same kind (plus a few
questions, for the QA path). Both fine-tunes then train on the arithmetic task
with eval.forgetting: true, which measures the probe at the end of training.
"""

import json
import random

import pytest

from whetstone.evaluate.forgetting import BUNDLED_PROBE, load_probe


@pytest.fixture(scope="module")
def general(tmp_path_factory, write_jsonl):
    rng = random.Random(0)
    adjectives = ["quick", "brown", "lazy", "small", "old", "red", "happy", "quiet"]
    nouns = ["fox", "dog", "cat", "bird", "horse", "child", "farmer", "teacher"]
    verbs = ["jumps over", "runs past", "looks at", "walks to", "sleeps near", "waits for"]
    sentences = [f"The {rng.choice(adjectives)} {rng.choice(nouns)} {rng.choice(verbs)} the {rng.choice(adjectives)} "
                 f"{rng.choice(nouns)}." for _ in range(340)]
    root = tmp_path_factory.mktemp("general")
    questions = [{"messages": [{"role": "user", "content": f"What does the {n} do?"},
                               {"role": "assistant", "content": f"The {n} jumps over the dog."}]} for n in nouns[:4]]
    return (write_jsonl(root / "general.jsonl", [{"text": s} for s in sentences[:300]]),
            write_jsonl(root / "probe.jsonl", [{"text": s} for s in sentences[300:]]),
            write_jsonl(root / "questions.jsonl", questions))


@pytest.fixture(scope="module")
def pretrained(train_run, tiny_model_dir, general):
    run = train_run("pretrained", tiny_model_dir, general[0], "method.name=full", "train.lr=3e-3", "train.epochs=4",
                    "train.batch_size=16")
    return run / "model"


def test_overtrained_full_finetune_forgets_more_than_lora(train_run, pretrained, general, task_files):
    _, probe, questions = general
    common = ["train.batch_size=8", "eval.forgetting=true", f"eval.forgetting_data=[{probe}, {questions}]"]
    lora = train_run("forget_lora", pretrained, task_files[0], "method.name=lora", "method.r=4", "method.alpha=8",
                     "train.lr=1e-3", "train.epochs=5", *common)
    full = train_run("forget_full", pretrained, task_files[0], "method.name=full", "train.lr=3e-3",
                     "train.epochs=20", *common)
    f_lora = json.loads((lora / "summary.json").read_text())["forgetting"]
    f_full = json.loads((full / "summary.json").read_text())["forgetting"]

    # Same base, same probe: the base is measured the same whether it is the adapter switched off or reloaded.
    assert f_lora["base"]["text_ppl"] == pytest.approx(f_full["base"]["text_ppl"], rel=1e-4)
    assert f_lora["base"]["qa_ppl"] == pytest.approx(f_full["base"]["qa_ppl"], rel=1e-4)
    lora_delta, full_delta = f_lora["delta"]["text_ppl_pct"], f_full["delta"]["text_ppl_pct"]
    assert full_delta > 50.0 and full_delta > 10 * max(lora_delta, 1.0)
    assert f_full["delta"]["qa_ppl_pct"] > f_lora["delta"]["qa_ppl_pct"]
    assert f_lora["base"]["n_text"] == 40 and f_lora["base"]["n_qa"] == 4
    assert f_full["sentence"].startswith("forgetting: general text perplexity")
    assert f"({full_delta:+.1f}%)" in f_full["sentence"]


def test_bundled_probe_is_small_general_and_loads():
    probe = load_probe()
    assert 30 <= len(probe.texts) <= 200 and 100 <= len(probe.questions) <= 300
    assert sorted(p.rsplit("/", 1)[-1] for p in probe.sources) == ["qa.jsonl", "text.jsonl"]
    assert all(r.messages[-1].role == "assistant" and r.messages[-1].content for r in probe.questions)
    # Not the demo's training domain: no Python docstring questions.
    assert not any("`" in r.messages[0].content or "Python" in r.messages[0].content for r in probe.questions)
    assert BUNDLED_PROBE.is_dir()
