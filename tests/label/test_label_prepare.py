"""prepare: seeded samples from the tiny model, against plain generate; A/B with a second adapter."""

import json
import re

import pytest
from tiny_runs import random_adapter as make_random_adapter

from whetstone.cli import main
from whetstone.errors import WhetstoneError
from whetstone.label.prepare import Source, against_source, prepare, read_prompts
from whetstone.label.store import read_tasks

QUESTIONS = [f"What is {i} plus {i}?" for i in range(5)]


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": q, "reference": str(2 * i)} for i, q in enumerate(QUESTIONS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def random_adapter(tmp_path_factory, tiny_model_dir):
    """A LoRA adapter with random A and B, so its answers differ from the base model's."""
    return make_random_adapter(tmp_path_factory.mktemp("adapter") / "rand", tiny_model_dir)


def _reference(model_dir, adapter, conversations, seed, temperature, batch_size=8):
    from whetstone.models.inference import generate_answers, load_for_inference

    model, tokenizer = load_for_inference(str(model_dir), adapter)
    return generate_answers(model, tokenizer, conversations, 12, temperature, batch_size=batch_size, seed=seed)


def test_samples_are_seeded_recorded_and_equal_plain_generate(tmp_path, tiny_model_dir, prompts, capsys):
    out = tmp_path / "tasks.jsonl"
    assert main(["label", "prepare", "--model", str(tiny_model_dir), "--prompts", str(prompts), "--n", "3",
                 "--seed", "7", "--temperature", "1.0", "--max-new-tokens", "12", "--batch-size", "2",
                 "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "sampling" in captured.err and "wrote" in captured.out  # the progress bar is on stderr
    tasks = read_tasks(out)
    # 3 samples per prompt -> 3 pairs per prompt (identical pairs would be left out and counted).
    wrote = re.search(r"wrote (\d+) tasks from 5 prompts", captured.out)
    identical = re.search(r"\((\d+) pairs of identical", captured.out)
    assert int(wrote[1]) == len(tasks) and len(tasks) + (int(identical[1]) if identical else 0) == 15
    first = tasks[0]
    assert first.prompt == ({"role": "user", "content": QUESTIONS[0]},)
    settings = first.settings
    assert (settings["seed"], settings["temperature"], settings["max_new_tokens"], settings["batch_size"],
            settings["n"]) == (7, 1.0, 12, 2, 3)
    assert settings["sources"] == {"m": str(tiny_model_dir)} and settings["prompt_origin"].endswith(":1")
    # Sample k of batch b was drawn with torch seed 7 + 1000k + b: the same call in plain code gives the same text.
    conversations = [[{"role": "user", "content": q}] for q in QUESTIONS[2:4]]  # batch 1 (prompts 2 and 3)
    expected = _reference(tiny_model_dir, None, conversations, seed=7 + 1000 * 2 + 1, temperature=1.0, batch_size=2)
    by_answer = {(t.id.split("-")[0], a.id): a.text for t in tasks for a in t.answers}
    assert [by_answer[("p2", "m2")], by_answer[("p3", "m2")]] == expected
    assert tasks[0].settings["answer_seeds"] == {"m0": 7, "m1": 1007}
    # Same seed, same file.
    again = tmp_path / "again.jsonl"
    main(["label", "prepare", "--model", str(tiny_model_dir), "--prompts", str(prompts), "--n", "3", "--seed", "7",
          "--temperature", "1.0", "--max-new-tokens", "12", "--batch-size", "2", "-o", str(again), "--quiet"])
    assert again.read_text() == out.read_text()


def test_against_pairs_two_models_greedily(tmp_path, tiny_model_dir, prompts, random_adapter):
    assert against_source(str(random_adapter), str(tiny_model_dir)) == Source(str(tiny_model_dir),
                                                                              str(random_adapter))
    result = prepare(str(prompts), tmp_path / "ab.jsonl", Source(model=str(tiny_model_dir)),
                     against_source(str(random_adapter), str(tiny_model_dir)), n=1, limit=3, seed=1,
                     temperature=0.0, max_new_tokens=12, progress=False)
    tasks = read_tasks(result.path)
    chosen = [int(t.id.split("-")[0][1:]) for t in tasks]
    assert result.prompts == 3 and chosen == sorted(chosen)  # a seeded sample, in file order
    conversations = [list(t.prompt) for t in tasks]
    base = _reference(tiny_model_dir, None, conversations, seed=1, temperature=0.0)
    tuned = _reference(tiny_model_dir, str(random_adapter), conversations, seed=1, temperature=0.0)
    assert [t.answers[0].text for t in tasks] == base and [t.answers[1].text for t in tasks] == tuned
    assert {t.answers[1].source for t in tasks} == {f"{tiny_model_dir}+adapter:{random_adapter}"}
    assert [(t.answers[0].id, t.answers[1].id) for t in tasks] == [("m0", "o0")] * 3


def test_chat_records_give_their_prompt_without_the_answer(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": "Hi?"},
                                             {"role": "assistant", "content": "Hello."}]}) + "\n")
    ((origin, prompt),) = read_prompts(str(path))
    assert origin.endswith(":1") and [m["role"] for m in prompt] == ["system", "user"]


def test_prepare_refuses_what_cannot_make_pairs(tmp_path, tiny_model_dir, prompts):
    source = Source(model=str(tiny_model_dir))
    with pytest.raises(WhetstoneError, match="greedy"):
        prepare(str(prompts), tmp_path / "t.jsonl", source, n=2, temperature=0.0, progress=False)
    with pytest.raises(WhetstoneError, match="at least 2 answers"):
        prepare(str(prompts), tmp_path / "t.jsonl", source, n=1, progress=False)
    (tmp_path / "exists.jsonl").write_text("{}\n")
    with pytest.raises(WhetstoneError, match="--overwrite"):
        prepare(str(prompts), tmp_path / "exists.jsonl", source, progress=False)
    text = tmp_path / "text.jsonl"
    text.write_text('{"text": "just text"}\n')
    with pytest.raises(WhetstoneError, match="no prompt"):
        prepare(str(text), tmp_path / "t.jsonl", source, progress=False)
