"""`whetstone data show` through the real CLI, with the embedded model's tokenizer (no weights are loaded)."""

from __future__ import annotations

import importlib.resources
import json
import re
import sys

import pytest
from datafiles import chat, write_rows

from whetstone.cli import main

IGNORE = -100
SPAN = re.compile(r"\[\[(.*?)\]\]", re.S)
TRL_TEMPLATES = importlib.resources.files("trl") / "chat_templates"
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}}}}}


@pytest.fixture(scope="module")
def tokenizer():
    from whetstone.models import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def tokenizer_dir(tokenizer, tmp_path_factory):
    """The embedded tokenizer saved alone: tokenizer.json and tokenizer_config.json, no config.json, no weights."""
    path = tmp_path_factory.mktemp("tok") / "tokenizer"
    tokenizer.save_pretrained(str(path))
    assert not (path / "config.json").exists() and not list(path.glob("*.safetensors"))
    return str(path)


CONVERSATION = {"messages": [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome, since 1871."},
]}


@pytest.fixture
def data(tmp_path):
    return str(write_rows(tmp_path / "d.jsonl", [CONVERSATION, chat("Say hi.", "Hi there!"), chat("q", "a")]))


def show(capsys, *argv: str) -> str:
    assert main(["data", "show", *argv]) == 0
    return capsys.readouterr().out


def blocks(out: str) -> list[str]:
    """The body of each example: the text after its '--- origin: ... ---' header line."""
    return re.split(r"^--- .* ---\n", out, flags=re.M)[1:]


def test_supervised_spans_are_exactly_the_assistant_turns(data, tokenizer_dir, capsys):
    out = show(capsys, data, "--tokenizer", tokenizer_dir)
    assert out.startswith(f"whetstone data show: {data} (detected 'messages' from field 'messages'; max_length 256")
    first, second, third = blocks(out)
    assert SPAN.findall(first) == ["Paris.<|im_end|>", "Rome, since 1871.<|im_end|>"]
    assert SPAN.findall(second) == ["Hi there!<|im_end|>"]
    assert SPAN.findall(third) == ["a<|im_end|>"]
    # Everything else is the prompt the template writes, special tokens included, and is not supervised.
    assert SPAN.sub("", first).startswith("<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\n")
    assert "<|im_start|>assistant\n[[Paris." in first


def test_n_limits_the_examples(data, tokenizer_dir, capsys):
    out = show(capsys, data, "--tokenizer", tokenizer_dir, "-n", "2")
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("--- ")] == [f"--- {data}"] * 2
    assert f"--- {data}:1: " in out and f"--- {data}:2: " in out and f"{data}:3" not in out


def test_json_labels_are_ignored_exactly_outside_the_assistant_turns(data, tokenizer, tokenizer_dir, capsys):
    lines = show(capsys, data, "--tokenizer", tokenizer_dir, "--json").splitlines()
    examples = [json.loads(line) for line in lines]
    assert [e["record"] for e in examples] == [f"{data}:1", f"{data}:2", f"{data}:3"]
    e = examples[0]
    ids, labels = e["input_ids"], e["labels"]
    assert len(ids) == len(labels)
    # The whole sequence is the template's rendering of the conversation, token for token.
    assert tokenizer.decode(ids, skip_special_tokens=False) == tokenizer.apply_chat_template(
        CONVERSATION["messages"], tokenize=False)
    supervised = [i for i, label in enumerate(labels) if label != IGNORE]
    assert all(labels[i] == ids[i] for i in supervised)
    runs = []  # maximal runs of supervised positions
    for i in supervised:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    texts = [tokenizer.decode([ids[i] for i in run], skip_special_tokens=False) for run in runs]
    assert texts == ["Paris.<|im_end|>", "Rome, since 1871.<|im_end|>"]
    for run in runs:  # each run starts right after the assistant header the prompt ends with
        assert tokenizer.decode(ids[: run[0]], skip_special_tokens=False).endswith("<|im_start|>assistant\n")


def test_a_tokenizer_only_directory_gives_what_the_embedded_model_gives(data, tokenizer_dir, capsys):
    embedded = show(capsys, data, "--json")  # the default: the embedded model's tokenizer
    assert show(capsys, data, "--tokenizer", tokenizer_dir, "--json") == embedded
    assert show(capsys, data, "--model", tokenizer_dir, "--json") == embedded


def test_truncation_is_marked(tmp_path, tokenizer_dir, capsys):
    long = str(write_rows(tmp_path / "long.jsonl", [chat("Count.", " ".join(str(i) for i in range(40)))]))
    (full,) = [json.loads(line) for line in show(capsys, long, "--tokenizer", tokenizer_dir, "--json").splitlines()]
    n = len(full["input_ids"])
    cut = n - 10
    out = show(capsys, long, "--tokenizer", tokenizer_dir, "--max-length", str(cut))
    assert out.splitlines()[-1] == f"... truncated at {cut} tokens ({n} in full)"
    assert f": {cut} tokens, " in out
    (short,) = [json.loads(line) for line in
                show(capsys, long, "--tokenizer", tokenizer_dir, "--max-length", str(cut), "--json").splitlines()]
    assert short == {"record": full["record"], "input_ids": full["input_ids"][:cut], "labels": full["labels"][:cut]}
    assert "truncated" not in show(capsys, long, "--tokenizer", tokenizer_dir)


def test_a_record_truncation_leaves_unsupervised_is_reported_not_shown(tmp_path, tokenizer_dir, capsys):
    path = str(write_rows(tmp_path / "d.jsonl", [chat("A long question. " * 20, "Yes."), chat("q", "a")]))
    out = show(capsys, path, "--tokenizer", tokenizer_dir, "--max-length", "40", "-n", "1")
    assert f"--- {path}:1: no example: truncation removed every supervised token (the trainer drops it) ---" in out
    assert SPAN.findall(blocks(out)[-1]) == ["a<|im_end|>"]


def test_a_tool_call_is_supervised_and_its_result_is_not(tmp_path, tokenizer_dir, capsys):
    record = {"messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "18 degrees and sunny"},
        {"role": "assistant", "content": "It is 18 degrees and sunny."},
    ], "tools": [WEATHER]}
    path = str(write_rows(tmp_path / "tools.jsonl", [record]))
    template = str(TRL_TEMPLATES / "qwen2_5.jinja")  # ChatML with tool calls: the embedded tokenizer's tokens
    (body,) = blocks(show(capsys, path, "--tokenizer", tokenizer_dir, "--chat-template", template,
                              "--max-length", "1024"))
    call, answer = SPAN.findall(body)
    assert call == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'
    assert answer == "It is 18 degrees and sunny.<|im_end|>"
    unsupervised = SPAN.sub("", body)
    assert "<tool_response>\n18 degrees and sunny\n</tool_response>" in unsupervised
    assert '"name": "get_weather", "description": "The weather in a city."' in unsupervised  # the tools, in the prompt


def test_reasoning_is_shown_as_data_reasoning_renders_it(tmp_path, tokenizer_dir, capsys):
    record = {"messages": [{"role": "user", "content": "2+2?"},
                           {"role": "assistant", "content": "4.", "reasoning_content": "Two plus two is four."}]}
    path = str(write_rows(tmp_path / "think.jsonl", [record]))
    template = str(TRL_TEMPLATES / "qwen3.jinja")
    (kept,) = SPAN.findall(show(capsys, path, "--tokenizer", tokenizer_dir, "--chat-template", template,
                                "--reasoning", "keep"))
    assert kept.startswith("<think>\nTwo plus two is four.") and kept.endswith("</think>\n\n4.<|im_end|>")
    dropped = show(capsys, path, "--tokenizer", tokenizer_dir, "--chat-template", template, "--reasoning", "drop")
    assert SPAN.findall(dropped) == ["4.<|im_end|>"] and "Two plus two" not in dropped


def test_a_terminal_gets_colour_and_underlined_special_tokens(data, tokenizer_dir, capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    out = show(capsys, data, "--tokenizer", tokenizer_dir, "-n", "2")
    assert "[[" not in out
    green, underline, reset = "\x1b[32m", "\x1b[4m", "\x1b[0m"
    assert f"{green}Hi there!{reset}{green}{underline}<|im_end|>{reset}" in out
    assert f"{underline}<|im_start|>{reset}user" in out


def test_a_tokenizer_without_a_template_needs_chat_template(data, tokenizer, tmp_path, capsys):
    bare = tmp_path / "bare"
    tokenizer.save_pretrained(str(bare))
    (bare / "chat_template.jinja").unlink()
    assert main(["data", "show", data, "--tokenizer", str(bare)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the tokenizer has no chat template, so chat records cannot be rendered; pass "
                          "--chat-template FILE")
    template = tmp_path / "chatml.jinja"
    template.write_text(tokenizer.chat_template)
    out = show(capsys, data, "--tokenizer", str(bare), "--chat-template", str(template), "-n", "1")
    assert SPAN.findall(blocks(out)[0]) == ["Paris.<|im_end|>", "Rome, since 1871.<|im_end|>"]


@pytest.mark.parametrize("argv, message", [
    (["missing.jsonl"], "error: data file not found: missing.jsonl"),
    (["DATA", "-n", "0"], "error: -n must be a number of examples >= 1, got 0."),
    (["DATA", "--max-length", "0"], "error: --max-length must be a positive number of tokens, got 0."),
    (["DATA", "--chat-template", "nope.jinja"], "error: --chat-template: nope.jinja does not exist"),
    (["DATA", "--model", "EMPTY"], "error: EMPTY is a directory with neither a model (config.json) nor a tokenizer"),
    (["PAIRS"], "error: PAIRS:1 is a preference record (format 'preference'); `data show` shows the examples of "
                "supervised fine-tuning"),
    (["BAD"], "error: BAD:2 cannot be read, and training would stop on it (1 in all):\n  BAD:2: field 'messages[1]'"),
])
def test_bad_input_is_one_error_without_a_traceback(data, tmp_path, capsys, argv, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    pairs = str(write_rows(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r"}]))
    bad = str(write_rows(tmp_path / "bad.jsonl", [chat("q", "a"), {"messages": [
        {"role": "user", "content": "q"}, {"role": "tool", "content": "r"}, {"role": "assistant", "content": "a"}]}]))
    names = {"DATA": data, "EMPTY": str(empty), "PAIRS": pairs, "BAD": bad}
    argv = [names.get(a, a) for a in argv]
    code = main(["data", "show", *argv])
    err = capsys.readouterr().err
    for name, value in names.items():
        message = message.replace(name, value)
    assert code in (1, 2) and err.startswith(message) and "Traceback" not in err


def test_help_names_the_options(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["data", "show", "--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    for option in ("--model", "--tokenizer", "--chat-template", "-n N", "--json", "--max-length", "--reasoning"):
        assert option in out
