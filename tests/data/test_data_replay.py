"""`whetstone data replay`: the model's own requests, answered by itself, as chat records."""

from __future__ import annotations

import json

import pytest

from whetstone.cli import main
from whetstone.data.formats import load_records
from whetstone.data.replay import ReplayOptions, request_prefix, write_self_replay
from whetstone.errors import WhetstoneError


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from whetstone.models.inference import load_for_inference

    model, tokenizer = load_for_inference(model=str(tiny_model_dir))
    # A random model repeats one token and never says EOS of its own accord: break the loop, and push EOS up
    # after a few tokens so that answers end.
    model.generation_config.repetition_penalty = 3.0
    model.generation_config.exponential_decay_length_penalty = (8, 1.5)
    return model, tokenizer


def test_the_request_prefix_opens_a_user_turn(tiny):
    _, tokenizer = tiny
    prefix = request_prefix(tokenizer)
    assert prefix.endswith("<|im_start|>user\n")
    assert "<|im_start|>assistant" not in prefix


def test_records_are_the_models_own_requests_and_greedy_answers(tiny, tmp_path):
    from whetstone.models.inference import generate_answers

    model, tokenizer = tiny
    options = ReplayOptions(n=6, request_tokens=12, answer_tokens=24, answer_temperature=0.0, batch_size=4,
                            min_words=1, max_words=40)
    out = tmp_path / "replay.jsonl"
    report = write_self_replay(model, tokenizer, str(out), options)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert report.written == len(records) > 0
    assert report.written + report.dropped["unfinished_answer"] == 6  # n requests, each answered or dropped
    requests = [r["messages"][0]["content"] for r in records]
    assert len({" ".join(q.lower().split()) for q in requests}) == len(requests)  # deduplicated
    assert all(r["messages"][0]["role"] == "user" and r["messages"][1]["role"] == "assistant" for r in records)
    loaded = load_records(str(out))  # whetstone reads its own output as chat data
    assert loaded.format == "messages" and not loaded.problems
    assert [r.kind for r in loaded.records] == ["chat"] * len(records)
    # Each answer is the model's greedy answer to its request, and finished within the budget.
    ended: list[bool] = []
    again = generate_answers(model, tokenizer, [[{"role": "user", "content": q}] for q in requests],
                             max_new_tokens=options.answer_tokens, batch_size=2, ended=ended)
    assert [r["messages"][1]["content"] for r in records] == again
    assert ended == [True] * len(again)
    # The same seed writes the same file; requests are sampled, so another seed writes other requests.
    write_self_replay(model, tokenizer, str(out), options, overwrite=True)
    assert [json.loads(line) for line in out.read_text().splitlines()] == records
    # An answer cut by the token budget is dropped, never written half-finished.
    cut = write_self_replay(model, tokenizer, str(tmp_path / "cut.jsonl"), ReplayOptions(**{**options.__dict__,
                                                                                           "answer_tokens": 3}))
    assert cut.written == 0 and cut.dropped["unfinished_answer"] == 6
    other = tmp_path / "other.jsonl"
    write_self_replay(model, tokenizer, str(other), ReplayOptions(**{**options.__dict__, "seed": 1}))
    assert [json.loads(line)["messages"][0]["content"] for line in other.read_text().splitlines()] != requests


def test_the_length_filter_keeps_short_requests_and_counts_the_rest(tiny, tmp_path):
    model, tokenizer = tiny
    options = ReplayOptions(n=4, request_tokens=12, answer_tokens=24, batch_size=4, min_words=1, max_words=3,
                            max_rounds=2)
    out = tmp_path / "short.jsonl"
    report = write_self_replay(model, tokenizer, str(out), options)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(1 <= len(r["messages"][0]["content"].split()) <= 3 for r in records)
    assert report.sampled >= 4 and report.dropped["length"] + report.dropped["duplicate"] == (
        report.sampled - report.written - report.dropped["unfinished_answer"])



def test_request_starts_begin_the_requests_in_turn(tiny, tmp_path):
    from whetstone.models.inference import generate_from_prompts

    model, tokenizer = tiny
    options = ReplayOptions(n=6, request_tokens=8, answer_tokens=24, batch_size=3, min_words=1, max_words=40,
                            max_rounds=1, starts=("What is", "Who"))
    out = tmp_path / "steered.jsonl"
    report = write_self_replay(model, tokenizer, str(out), options)
    requests = [json.loads(line)["messages"][0]["content"] for line in out.read_text().splitlines()]
    assert report.sampled == 6 and requests
    # The model continued the start's tokens: the request is the start plus exactly what it wrote after it.
    prefix = request_prefix(tokenizer)
    first = generate_from_prompts(model, tokenizer, [prefix + "What is", prefix + "Who", prefix + "What is"],
                                  options.request_tokens, temperature=options.temperature, batch_size=3,
                                  seed=options.seed, add_special_tokens=False, strip=False)  # round 0, batch 0
    expected = [(start + text).strip() for start, text in zip(("What is", "Who", "What is"), first)]
    kept_first = [r for r in expected if r in requests]
    assert kept_first and all(r.startswith(("What is", "Who")) for r in requests)
    assert requests[: len(kept_first)] == kept_first
    assert any(r.startswith("What is") for r in requests) and any(r.startswith("Who") for r in requests)
    assert main(["data", "replay", str(tmp_path / "x.jsonl"), "--request-start", " "]) == 2
    assert main(["data", "replay", str(tmp_path / "y.jsonl"), "--request-start", "Who", "--requests",
                 str(out)]) == 2


def test_bad_output_and_options_fail_before_loading_a_model(tmp_path, capsys):
    exists = tmp_path / "there.jsonl"
    exists.write_text("")
    assert main(["data", "replay", str(exists), "--model", "/nonexistent"]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert main(["data", "replay", str(tmp_path / "x.csv"), "--model", "/nonexistent"]) == 2
    assert "write to a .jsonl file" in capsys.readouterr().err
    assert main(["data", "replay", str(tmp_path / "x.jsonl"), "--temperature", "0"]) == 2
    assert "--temperature must be > 0" in capsys.readouterr().err
    assert main(["data", "replay", str(tmp_path / "x.jsonl"), "--answer-temperature", "-1"]) == 2
    assert "--answer-temperature must be >= 0" in capsys.readouterr().err
    assert main(["data", "replay", str(tmp_path / "x.jsonl"), "-n", "0", "--model", "/nonexistent"]) == 2
    assert "-n must be at least 1" in capsys.readouterr().err
    with pytest.raises(WhetstoneError, match="exists"):
        write_self_replay(None, None, str(exists), ReplayOptions())


def test_sampled_answers_and_the_users_own_requests(tiny, tmp_path):
    from datafiles import chat, write_rows

    model, tokenizer = tiny
    asked = ["how are you today", "name a colour", "what is rain", "tell me a story"]
    source = write_rows(tmp_path / "asked.jsonl", [chat(q, "ignored") for q in asked])
    options = ReplayOptions(n=3, answer_tokens=24, answer_temperature=1.0, batch_size=4)  # sampled answers
    from whetstone.data.replay import read_requests

    assert read_requests(str(source)) == asked
    first = write_self_replay(model, tokenizer, str(tmp_path / "a.jsonl"), options, requests=asked)
    assert first.sampled == 3 and first.written + first.dropped["unfinished_answer"] == 3 and first.written > 0
    rows = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert {r["messages"][0]["content"] for r in rows} <= set(asked[:3])  # the first n requests, no sampling
    again = write_self_replay(model, tokenizer, str(tmp_path / "b.jsonl"), options, requests=asked)
    assert (tmp_path / "b.jsonl").read_text() == (tmp_path / "a.jsonl").read_text()  # the seed fixes the samples
    other = ReplayOptions(**{**options.__dict__, "seed": 7})
    write_self_replay(model, tokenizer, str(tmp_path / "c.jsonl"), other, requests=asked)
    assert again.written == first.written
    assert (tmp_path / "c.jsonl").read_text() != (tmp_path / "a.jsonl").read_text()  # answers are sampled
    with pytest.raises(WhetstoneError, match="no chat record with a user turn"):
        read_requests(str(write_rows(tmp_path / "text.jsonl", [{"text": "just prose"}])))
