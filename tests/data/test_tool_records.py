"""Tool-calling and reasoning records: both shapes parse to the same messages, and every fault names its field."""

from __future__ import annotations

import json

import pytest
from datafiles import write_rows

from whetstone.cli import main
from whetstone.data.formats import load_records
from whetstone.data.records import Message, ToolCall
from whetstone.errors import Problem

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TIME = {"name": "get_time", "description": "The time in a city.", "parameters": {"type": "object"}}
TOOLS = [{"type": "function", "function": WEATHER}, {"type": "function", "function": TIME}]


def call(name: str, arguments, id: str | None = None) -> dict:
    out = {"type": "function", "function": {"name": name, "arguments": arguments}}
    return out if id is None else {"id": id, **out}


def openai_record(arguments='{"city": "Paris"}', tools=TOOLS) -> dict:
    return {
        "messages": [
            {"role": "user", "content": "Weather and time in Paris?"},
            {"role": "assistant", "content": None, "reasoning_content": "I need two tools.",
             "tool_calls": [call("get_weather", arguments, "c1"), call("get_time", "{}", "c2")]},
            {"role": "tool", "tool_call_id": "c2", "content": "14:00"},  # answers out of order, by id
            {"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": "18C"},
            {"role": "assistant", "content": "It is 18C at 14:00.", "thinking": "Both answered."},
        ],
        "tools": tools,
    }


def sharegpt_record() -> dict:
    calls = [{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": "{}"}]
    return {
        "conversations": [
            {"from": "human", "value": "Weather and time in Paris?"},
            {"from": "function_call", "value": json.dumps(calls)},
            {"from": "observation", "value": "18C"},
            {"from": "observation", "value": "14:00"},
            {"from": "gpt", "value": "It is 18C at 14:00."},
        ],
        "tools": json.dumps([WEATHER, TIME]),  # bare schemas, as JSON text: how ShareGPT datasets store them
    }


def load(tmp_path, rows: list[dict], format: str = "auto"):
    return load_records(str(write_rows(tmp_path / "d.jsonl", rows)), format=format, on_error="skip")


def test_openai_record_parses_calls_results_and_reasoning(tmp_path):
    (record,) = load(tmp_path, [openai_record()]).records
    assert record.kind == "chat"
    assert record.messages == (
        Message("user", "Weather and time in Paris?"),
        Message("assistant", "", reasoning="I need two tools.", tool_calls=(
            ToolCall("get_weather", {"city": "Paris"}, "c1"), ToolCall("get_time", {}, "c2"))),
        Message("tool", "14:00", tool_call_id="c2", name="get_time"),  # the name comes from the call it answers
        Message("tool", "18C", tool_call_id="c1", name="get_weather"),
        Message("assistant", "It is 18C at 14:00.", reasoning="Both answered."),
    )
    assert record.tools == tuple(TOOLS)
    assert "tools" not in record.extra


@pytest.mark.parametrize("variant", [
    {"arguments": {"city": "Paris"}},  # arguments as an object instead of JSON text
    {"tools": json.dumps(TOOLS)},  # tools as JSON text
    {"tools": [WEATHER, TIME]},  # bare function schemas
])
def test_equivalent_spellings_give_the_same_record(tmp_path, variant):
    a, b = load(tmp_path, [openai_record(), openai_record(**variant)]).records
    assert (a.messages, a.tools) == (b.messages, b.tools)


def test_sharegpt_record_equals_the_openai_one_but_for_ids(tmp_path):
    openai, sharegpt = load(tmp_path, [openai_record()]).records[0], load(tmp_path, [sharegpt_record()]).records[0]
    assert sharegpt.tools == openai.tools
    # ShareGPT has no ids, so results answer the calls in order.
    assert [m.tool_call_id for m in sharegpt.messages] == [None] * 5
    assert [(m.role, m.content, m.name) for m in sharegpt.messages] == [
        ("user", "Weather and time in Paris?", None),
        ("assistant", "", None),
        ("tool", "18C", "get_weather"),
        ("tool", "14:00", "get_time"),
        ("assistant", "It is 18C at 14:00.", None),
    ]
    without_ids = tuple(ToolCall(c.name, c.arguments) for c in openai.messages[1].tool_calls)
    assert sharegpt.messages[1].tool_calls == without_ids


def test_a_conversation_may_end_on_its_calls_and_empty_reasoning_is_none(tmp_path):
    row = {"messages": [{"role": "user", "content": "Weather?"},
                        {"role": "assistant", "content": "Let me look.", "reasoning_content": "",
                         "tool_calls": [call("get_weather", {"city": "Oslo"})]}]}
    (record,) = load(tmp_path, [row]).records
    calls = (ToolCall("get_weather", {"city": "Oslo"}),)
    assert record.messages[1] == Message("assistant", "Let me look.", tool_calls=calls)
    assert record.tools == ()


def test_preference_and_feedback_records_may_use_tools(tmp_path):
    answer = [{"role": "assistant", "content": "", "tool_calls": [call("get_time", "{}")]},
              {"role": "tool", "content": "14:00"}, {"role": "assistant", "content": "It is 14:00."}]
    rows = [{"prompt": "Time?", "chosen": answer, "rejected": "No idea."}]
    (record,) = load(tmp_path, rows).records
    assert record.kind == "preference"
    assert [m.role for m in record.chosen] == ["assistant", "tool", "assistant"]
    assert record.chosen[1].name == "get_time"
    (feedback,) = load(tmp_path, [{"prompt": "Time?", "completion": answer, "label": True}]).records
    assert feedback.completion == record.chosen


def messages(*turns) -> dict:
    return {"messages": list(turns)}


USER = {"role": "user", "content": "Weather in Paris?"}
CALLS = {"role": "assistant", "content": None, "tool_calls": [call("get_weather", '{"city": "Paris"}', "c1")]}
RESULT = {"role": "tool", "tool_call_id": "c1", "content": "18C"}
ANSWER = {"role": "assistant", "content": "18C."}
TWO_CALLS = {"role": "assistant", "content": "", "tool_calls": [call("get_weather", {"city": "Paris"}),
                                                                   call("get_time", {})]}

CASES = [
    ("arguments-not-json", messages(USER, {**CALLS, "tool_calls": [call("get_weather", "{city: Paris}")]}),
     [("messages[1].tool_calls[0].function.arguments",
       'is not JSON (Expecting property name enclosed in double quotes at column 2): "{city: Paris}"; '
       "give the arguments as a JSON object")]),
    ("arguments-not-object", messages(USER, {**CALLS, "tool_calls": [call("get_weather", "[1, 2]")]}),
     [("messages[1].tool_calls[0].function.arguments",
       "must be a JSON object of named arguments, got [1, 2] (a list)")]),
    ("arguments-missing", messages(USER, {**CALLS, "tool_calls": [{"function": {"name": "get_weather"}}]}),
     [("messages[1].tool_calls[0].function.arguments",
       "is missing; give the call's arguments as a JSON object ({} when it takes none)")]),
    ("function-not-in-tools", {**messages(USER, {**CALLS, "tool_calls": [call("get_news", {})]}), "tools": TOOLS},
     [("messages[1].tool_calls[0].function.name",
       "\"get_news\" is not one of the functions in 'tools' (get_time, get_weather); fix the name, or add the "
       "function to 'tools'")]),
    ("result-without-call", messages(USER, RESULT, ANSWER),
     [("messages[1]", "is a 'tool' result, but messages[0] before it makes no tool call; a result comes right "
                      "after the assistant turn whose tool_calls it answers (or after another result)")]),
    ("result-after-plain-answer", messages(USER, ANSWER, RESULT, ANSWER),
     [("messages[2]", "is a 'tool' result, but messages[1] before it makes no tool call; a result comes right "
                      "after the assistant turn whose tool_calls it answers (or after another result)")]),
    ("result-id-matches-no-call", messages(USER, CALLS, {**RESULT, "tool_call_id": "c9"}, ANSWER),
     [("messages[2].tool_call_id", '"c9" answers no call of messages[1] (its call ids: "c1"); give the id of the '
                                   "call this result answers")]),
    ("result-answers-twice", messages(USER, CALLS, RESULT, RESULT, ANSWER),
     [("messages[3].tool_call_id", "answers messages[1].tool_calls[0] a second time; each call gets one result")]),
    ("more-results-than-calls", messages(USER, TWO_CALLS, *[{"role": "tool", "content": c} for c in "abc"], ANSWER),
     [("messages[4]", "is one 'tool' result too many: messages[1] makes 2 calls, and each gets one result "
                      "(remove the extra result, or add its call)")]),
    ("call-without-result", messages(USER, TWO_CALLS, {"role": "tool", "content": "18C"}, ANSWER),
     [("messages[1].tool_calls[1]", "('get_time') gets no 'tool' result; add its result after messages[1], "
                                    "before the next turn")]),
    ("calls-then-user", messages(USER, CALLS, USER, ANSWER),
     [("messages[1]", "makes tool calls, but the next turn (messages[2]) is 'user', not their result; add a "
                      "'tool' message with each call's result right after the calls")]),
    ("result-then-user", messages(USER, CALLS, RESULT, USER, ANSWER),
     [("messages[3]", "is 'user' right after a 'tool' result; an assistant turn must use the results first")]),
    ("ends-on-result", messages(USER, CALLS, RESULT),
     [("messages", "ends with a 'tool' turn; the last message must be the assistant's answer (remove the trailing "
                   "turn)")]),
    ("result-name-differs", messages(USER, CALLS, {**RESULT, "name": "get_time"}, ANSWER),
     [("messages[2].name", "is \"get_time\", but the call it answers (messages[1].tool_calls[0]) is to "
                           "'get_weather'; fix the name, or the order of the results")]),
    ("calls-on-user", messages({**USER, "tool_calls": [call("get_weather", {})]}, ANSWER),
     [("messages[0].tool_calls", "only assistant turns make tool calls, but this is a 'user' turn; move the calls")]),
    ("reasoning-on-user", messages({**USER, "thinking": "hmm"}, ANSWER),
     [("messages[0].thinking", "only assistant turns carry reasoning, but this is a 'user' turn; remove it")]),
    ("reasoning-twice", messages(USER, {**ANSWER, "reasoning_content": "a", "thinking": "b"}),
     [("messages[1].thinking", "differs from 'reasoning_content'; give the reasoning once")]),
    ("tool-result-null", messages(USER, CALLS, {**RESULT, "content": None}, ANSWER),
     [("messages[2].content", "is missing or null; give the tool's result as text ('' when it returned nothing)")]),
    ("call-without-name", messages(USER, {**CALLS, "tool_calls": [call("", {})]}),
     [("messages[1].tool_calls[0].function.name",
       'expected the function\'s name, got ""; every call names the function it calls')]),
    ("tools-not-json", {**messages(USER, ANSWER), "tools": "[{"},
     [("tools", "is text that is not JSON (Expecting property name enclosed in double quotes at column 3); give a "
                'list of function schemas {"type": "function", "function": {"name": ..., "description": ..., '
                '"parameters": {...}}}, or its JSON text')]),
    ("tool-defined-twice", {**messages(USER, ANSWER), "tools": [WEATHER, {"type": "function", "function": WEATHER}]},
     [("tools[1].function.name", '"get_weather" is defined twice; keep one definition')]),
    ("unknown-role", messages(USER, {"role": "function", "content": "18C"}, ANSWER),
     [("messages[1].role", 'unknown role "function"; expected one of assistant, system, tool, user')]),
    ("sharegpt-call-not-json", {"conversations": [{"from": "human", "value": "q"},
                                                  {"from": "function_call", "value": "get_weather(Paris)"}]},
     [("conversations[1].value", 'is not JSON (Expecting value at column 1): "get_weather(Paris)"; a '
                                 'function_call\'s value is the call as JSON, {"name": ..., "arguments": {...}} '
                                 "(or a list of calls)")]),
    ("sharegpt-observation-first", {"conversations": [{"from": "observation", "value": "18C"},
                                                      {"from": "gpt", "value": "a"}]},
     [("conversations[0]", "is 'tool', but the conversation must start with a 'user' turn (after an optional "
                           "'system' message)")]),
]


@pytest.mark.parametrize("case_id, bad, expected", CASES, ids=[c[0] for c in CASES])
def test_each_fault_is_reported_on_its_line_and_field(tmp_path, case_id, bad, expected):
    good = sharegpt_record() if "conversations" in bad else openai_record()
    result = load(tmp_path, [good, bad, good])
    path = tmp_path / "d.jsonl"
    assert [r.origin for r in result.records] == [f"{path}:1", f"{path}:3"]
    assert result.problems == [Problem(f"{path}:2", field, reason) for field, reason in expected]


def test_data_check_counts_tool_use_and_warns_about_calls_without_tools(tmp_path, capsys):
    no_tools = {"messages": [USER, {**CALLS, "tool_calls": [call("get_weather", {"city": "Oslo"}, "c1")]}, RESULT,
                             ANSWER]}
    bad = messages(USER, CALLS, {**RESULT, "tool_call_id": "c9"}, ANSWER)
    path = str(write_rows(tmp_path / "t.jsonl", [openai_record(), no_tools, bad, messages(USER, ANSWER)]))
    assert main(["data", "check", path, "--no-near-dedup"]) == 1  # the bad record is an error
    out = capsys.readouterr().out
    assert "tool use: tools in 1 record, tool calls in 2 records (3 calls), reasoning in 1 record" in out
    assert (f"{path}:3: field 'messages[2].tool_call_id': \"c9\" answers no call of messages[1] (its call ids: "
            f"\"c1\"); give the id of the call this result answers") in out
    assert "tool calls without tools in 1 record: with no 'tools' given, the chat template cannot show" in out
    assert "\n  lines 2\n" in out

    clean = str(write_rows(tmp_path / "c.jsonl", [openai_record(), no_tools]))
    assert main(["data", "check", clean, "--json"]) == 0  # a warning, not an error
    report = json.loads(capsys.readouterr().out)
    assert report["tool_use"] == {"records_with_tools": 1, "records_with_tool_calls": 2, "tool_calls": 3,
                                  "records_with_reasoning": 1, "calls_without_tools": [2]}
    assert main(["data", "check", clean, "--strict"]) == 1
    assert capsys.readouterr().out.rstrip().endswith(
        "result: ERRORS (--strict): 1 warning (tool calls without tools); give the records that call tools their "
        "'tools'.")


def test_records_that_differ_only_in_their_calls_are_not_duplicates(tmp_path, capsys):
    rows = [openai_record(), openai_record(arguments='{"city": "Rome"}'), openai_record()]
    path = str(write_rows(tmp_path / "d.jsonl", rows))
    assert main(["data", "check", path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["exact_duplicates"] == [[1, 3]]
