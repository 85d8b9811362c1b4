"""One malformed record per case: each is reported on its exact line, field and reason.

Every fixture file starts with a valid record on line 1, so the bad record is on
line 2 (or later) and the test pins the line number as well as the reason.
"""

from __future__ import annotations

import json

import pytest

from whetstone.data.formats import load_records
from whetstone.errors import Problem

GOOD = {
    "text": {"text": "fine"},
    "prompt_completion": {"prompt": "p", "completion": "c"},
    "alpaca": {"instruction": "i", "output": "o"},
    "messages": {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
    "sharegpt": {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
    "preference": {"prompt": "p", "chosen": "c", "rejected": "r"},
    "kto": {"prompt": "p", "completion": "c", "label": True},
    "classification": {"text": "t", "label": "pos"},
    "prompt": {"prompt": "p"},
}


def turns(*pairs: tuple[str, str]) -> list[dict]:
    return [{"role": role, "content": content} for role, content in pairs]


CASES = [
    # id, format, bad line text, [(field, reason)]
    ("missing-field", "text", {"txt": "x"}, [("text", "is missing; this format needs field 'text'")]),
    ("null-field", "text", {"text": None}, [("text", "is null; give it a value")]),
    ("wrong-type", "text", {"text": ["a"]}, [("text", 'expected a string, got ["a"] (a list)')]),
    ("empty-text", "text", {"text": "  \n"}, [("text", "is empty; give it text, or drop the record")]),
    (
        "empty-completion",
        "prompt_completion",
        {"prompt": "p", "completion": ""},
        [("completion", "is empty; give it text, or drop the record")],
    ),
    (
        "alpaca-missing-output",
        "alpaca",
        {"instruction": "i", "input": "x"},
        [("output", "is missing; this format needs field 'output'")],
    ),
    (
        "alpaca-input-not-string",
        "alpaca",
        {"instruction": "i", "input": 3, "output": "o"},
        [("input", "expected a string, got 3 (a number)")],
    ),
    (
        "messages-not-list",
        "messages",
        {"messages": "hi"},
        [("messages", 'expected a list of messages, got "hi" (a string)')],
    ),
    (
        "messages-empty",
        "messages",
        {"messages": []},
        [("messages", "is an empty list; a conversation needs at least one message")],
    ),
    (
        "message-not-object",
        "messages",
        {"messages": ["hi"]},
        [("messages[0]", "expected an object with 'role' and 'content', got \"hi\"")],
    ),
    (
        "unknown-role",
        "messages",
        {"messages": turns(("user", "q"), ("function", "42"))},
        [("messages[1].role", 'unknown role "function"; expected one of assistant, system, tool, user')],
    ),
    (
        "content-null-tool-call",
        "messages",
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None, "tool_calls": []}]},
        [("messages[1].content", "is missing or null; an assistant turn needs text, tool_calls, or both")],
    ),
    (
        "image-part",
        "messages",
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": "x"}]},
                {"role": "assistant", "content": "a"},
            ]
        },
        [("messages[0].content[0]", 'only text parts are supported, got {"type": "image_url", "image_url": "x"}')],
    ),
    (
        "empty-content",
        "messages",
        {"messages": turns(("user", "q"), ("assistant", " "))},
        [("messages[1].content", "is empty; give the message text, or remove it")],
    ),
    (
        "not-alternating",
        "messages",
        {"messages": turns(("user", "q"), ("user", "q2"), ("assistant", "a"))},
        [
            (
                "messages[1]",
                "is 'user' right after another 'user' turn; user and assistant turns must alternate (merge the two)",
            )
        ],
    ),
    (
        "system-not-first",
        "messages",
        {"messages": turns(("user", "q"), ("system", "s"), ("assistant", "a"))},
        [("messages[1]", "is a 'system' message, which may only come first")],
    ),
    (
        "starts-with-assistant",
        "messages",
        {"messages": turns(("system", "s"), ("assistant", "a"))},
        [
            (
                "messages[1]",
                "is 'assistant', but the conversation must start with a 'user' turn "
                "(after an optional 'system' message)",
            )
        ],
    ),
    (
        "no-assistant",
        "messages",
        {"messages": turns(("system", "s"), ("user", "q"))},
        [
            (
                "messages",
                "has no 'assistant' turn, so there is nothing to train on; add the answer, "
                "or use format 'prompt' for prompts only",
            )
        ],
    ),
    (
        "ends-on-user",
        "messages",
        {"messages": turns(("user", "q"), ("assistant", "a"), ("user", "q2"))},
        [
            (
                "messages",
                "ends with a 'user' turn; the last message must be the assistant's answer (remove the trailing turn)",
            )
        ],
    ),
    (
        "sharegpt-unknown-from",
        "sharegpt",
        {"conversations": [{"from": "human", "value": "q"}, {"from": "narrator", "value": "x"}]},
        [
            (
                "conversations[1].from",
                'unknown role "narrator"; expected one of assistant, bot, function_call, gpt, human, observation, '
                "system, tool, user",
            )
        ],
    ),
    (
        "chosen-equals-rejected",
        "preference",
        {"prompt": "p", "chosen": "same", "rejected": "same"},
        [("rejected", "is identical to 'chosen'; a preference pair needs two different answers")],
    ),
    (
        "preference-no-shared-prompt",
        "preference",
        {"chosen": turns(("user", "q1"), ("assistant", "a")), "rejected": turns(("user", "q2"), ("assistant", "b"))},
        [("prompt", "is missing; add a 'prompt' field, or start 'chosen' and 'rejected' with the same user turn(s)")],
    ),
    (
        "preference-prompt-ends-on-assistant",
        "preference",
        {"prompt": turns(("user", "q"), ("assistant", "a")), "chosen": "c", "rejected": "r"},
        [("prompt", "must end with a 'user' turn (the prompt to answer), but ends with 'assistant'")],
    ),
    (
        "preference-chosen-user-turn",
        "preference",
        {"prompt": "p", "chosen": turns(("user", "x")), "rejected": "r"},
        [("chosen[0]", "is 'user', but the conversation must start with an 'assistant' turn")],
    ),
    (
        "kto-label-not-bool",
        "kto",
        {"prompt": "p", "completion": "c", "label": "good"},
        [("label", 'expected true or false, got "good" (a string)')],
    ),
    (
        "classification-label-float",
        "classification",
        {"text": "t", "label": 0.5},
        [("label", "expected a class name (string or integer), got 0.5 (a number)")],
    ),
    (
        "classification-empty-label",
        "classification",
        {"text": "t", "label": ""},
        [("label", "is empty; give the class name")],
    ),
    ("task-not-string", "text", {"text": "t", "task": 3}, [("task", "expected a string, got 3 (a number)")]),
    (
        "prompt-reference-object",
        "prompt",
        {"prompt": "p", "reference": {"a": 1}},
        [("reference", 'expected a string or number, got {"a": 1} (an object)')],
    ),
    (
        "several-problems-at-once",
        "kto",
        {"prompt": "", "completion": 1},
        [
            ("prompt", "is empty; give it text, or drop the record"),
            ("completion", "expected a string or a list of messages, got 1 (a number)"),
            ("label", "is missing; this format needs field 'label'"),
        ],
    ),
]


@pytest.mark.parametrize("case_id, format, bad, expected", CASES, ids=[c[0] for c in CASES])
def test_malformed_record_is_reported_on_its_line(tmp_path, case_id, format, bad, expected):
    path = tmp_path / f"{case_id}.jsonl"
    path.write_text(json.dumps(GOOD[format]) + "\n" + json.dumps(bad) + "\n" + json.dumps(GOOD[format]) + "\n")
    result = load_records(str(path), format=format, on_error="skip")
    assert [r.origin for r in result.records] == [f"{path}:1", f"{path}:3"]
    assert result.problems == [Problem(f"{path}:2", field, reason) for field, reason in expected]
    assert result.skipped == 1


RAW_CASES = [
    (
        "invalid-json",
        b'{"text": "a",}\n',
        "invalid JSON at column 14: Expecting property name enclosed in double quotes",
    ),
    ("not-an-object", b'["text", "a"]\n', "expected a JSON object {...}, got an array"),
    ("json-null", b"null\n", "expected a JSON object {...}, got null"),
    ("invalid-utf8", b'{"text": "caf\xe9"}\n', "invalid UTF-8 at byte 14 of the line; re-save the file as UTF-8"),
    (
        "truncated",
        b'{"text": "cut he',
        "invalid JSON at column 10: Unterminated string starting at; the line ends before the JSON value does "
        "(it is the last line and has no newline: the file may be truncated)",
    ),
]


@pytest.mark.parametrize("case_id, line, reason", RAW_CASES, ids=[c[0] for c in RAW_CASES])
def test_unreadable_line_is_reported_on_its_line(tmp_path, case_id, line, reason):
    path = tmp_path / f"{case_id}.jsonl"
    path.write_bytes(b'{"text": "ok"}\n' + line)
    result = load_records(str(path), on_error="skip")
    assert [r.origin for r in result.records] == [f"{path}:1"]
    assert result.problems == [Problem(f"{path}:2", None, reason)]
