"""Reading a model's reply: reasoning, answer and tool calls, in the formats real chat templates write.

The replies are written in the tests, one family at a time, well-formed and malformed. The round-trip
tests render an assistant turn with trl's copies of the real templates and read the calls back.
"""

import importlib.resources
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from whetstone.data.tool_parse import (
    parse_reply,
    parse_tool_calls,
    reasoning_format,
    split_reasoning,
    tool_call_format,
)

TEMPLATES = importlib.resources.files("trl") / "chat_templates"


def _template(name: str) -> str:
    return (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")


def _call(name: str, arguments: dict, call_id: str = "call_0") -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


# ---- which format a template writes ----------------------------------------------------------


@pytest.mark.parametrize("name, tools, reasoning", [
    ("qwen2_5", "hermes", None),
    ("qwen3", "hermes", "think"),
    ("qwen3_instruct_2507", "hermes", None),
    ("llama3_1", "llama3", None),
    ("llama3_2", "llama3", None),
    ("gptoss", "harmony", "harmony"),
    ("deepseek_r1_distill", None, "think"),
    ("llama3", None, None),  # Llama 3.0: no tools
    ("qwen3_5_think", None, "think"),  # <tool_call><function=...> XML: argument types cannot be read back
    ("glm4moe", None, "think"),  # <tool_call>name<arg_key>...: not JSON either
    ("gemma3", None, None),
    ("phi3_5", None, None),
])
def test_formats_are_read_off_real_templates(name, tools, reasoning):
    assert tool_call_format(_template(name)) == tools
    assert reasoning_format(_template(name)) == reasoning


def test_mistral_is_read_off_its_tool_calls_marker():
    fragment = ('{%- if message["tool_calls"] is defined %}{{- "[TOOL_CALLS][" }}{%- for tool in message.tool_calls %}'
                '{{- tool.function|tojson }}{%- endfor %}{{- "]" + eos_token }}{%- endif %}')
    assert tool_call_format(fragment) == "mistral"


def test_a_tokenizer_stands_for_its_template():
    class Tokenizer:
        chat_template = {"default": _template("qwen3"), "tool_use": "unused"}

    assert tool_call_format(Tokenizer()) == "hermes" and reasoning_format(Tokenizer()) == "think"
    assert tool_call_format(object()) is None and reasoning_format(None) is None


# ---- reasoning ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text, opened, expected", [
    ("<think>\nTwo and two.\n</think>\n\nFour.", False, ("Two and two.", "Four.")),
    ("\n<think>a</think>b", False, ("a", "b")),
    ("Two and two.\n</think>\n\nFour.", False, ("Two and two.", "Four.")),  # the prompt opened <think>
    ("Two and two", True, ("Two and two", "")),  # opened, and max_tokens cut it before </think>
    ("<think>\nTwo and", False, ("Two and", "")),
    ("<think>\n\n</think>\n\nFour.", False, (None, "Four.")),  # an empty block is no reasoning
    ("Four.", False, (None, "Four.")),
    ("I write <think> and </think> as tags.", False, (None, "I write <think> and </think> as tags.")),
])
def test_think_blocks(text, opened, expected):
    assert split_reasoning(text, _template("qwen3"), opened=opened) == expected


def test_harmony_analysis_is_reasoning_and_final_is_the_answer():
    text = ("<|channel|>analysis<|message|>User asks 2+2.<|end|><|start|>assistant<|channel|>final<|message|>"
            "4<|return|>")
    assert split_reasoning(text, _template("gptoss")) == ("User asks 2+2.", "4")
    assert split_reasoning("<|channel|>final<|message|>4", _template("gptoss")) == (None, "4")
    # cut after the analysis: no answer, and the bare header left over is not one
    assert split_reasoning("<|channel|>analysis<|message|>Hm<|end|><|start|>assistant", None) == ("Hm", "")
    assert split_reasoning("just text", _template("gptoss")) == (None, "just text")
    preamble = "<|channel|>analysis<|message|>Hm<|end|><|start|>assistant<|channel|>commentary<|message|>On it."
    assert split_reasoning(preamble, _template("gptoss")) == ("Hm", "On it.")


# ---- tool calls ----------------------------------------------------------------------------------


def test_hermes_text_before_several_calls():
    text = ('Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET", "hour24": true}}\n</tool_call>')
    content, calls = parse_tool_calls(text, "hermes")
    assert content == "Let me look."
    assert calls == [_call("get_weather", {"city": "Paris"}), _call("get_time", {"zone": "CET", "hour24": True},
                                                                         "call_1")]
    assert json.loads(calls[1]["function"]["arguments"]) == {"zone": "CET", "hour24": True}


@pytest.mark.parametrize("block", [
    '{"name": "get_weather", "arguments": {"city": "Paris"}',  # unbalanced
    "{'name': 'get_weather'}",  # Python, not JSON
    '{"arguments": {"city": "Paris"}}',  # no name
    '{"name": "get_weather", "arguments": [1, 2]}',  # arguments not an object
    '<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>',  # Qwen3.5's XML
])
def test_hermes_malformed_calls_stay_text(block):
    text = f"Sure.\n<tool_call>\n{block}\n</tool_call>"
    assert parse_tool_calls(text, "hermes") == (text, [])


def test_hermes_keeps_a_malformed_block_beside_a_good_one():
    bad = '<tool_call>\n{"name": oops}\n</tool_call>'
    text = f'{bad}\n<tool_call>\n{{"name": "ping", "arguments": "{{\\"n\\": 2}}"}}\n</tool_call>'
    content, calls = parse_tool_calls(text, "hermes")
    assert content == bad and calls == [_call("ping", {"n": 2})]  # arguments given as a JSON string, too


def test_hermes_call_cut_by_max_tokens_after_its_json():
    assert parse_tool_calls('<tool_call>\n{"name": "ping", "arguments": {}}\n', "hermes") == ("", [_call("ping", {})])


@pytest.mark.parametrize("text", [
    '{"name": "get_weather", "parameters": {"city": "Paris"}}',
    '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}',
    '  {"name": "get_weather", "arguments": {"city": "Paris"}}\n',
])
def test_llama3_the_whole_message_is_the_call(text):
    assert parse_tool_calls(text, "llama3") == ("", [_call("get_weather", {"city": "Paris"})])


@pytest.mark.parametrize("text", [
    'Here: {"name": "get_weather", "parameters": {"city": "Paris"}}',  # text before: an answer, not a call
    '{"name": "Ada Lovelace", "born": 1815}',  # JSON with a name, no parameters
    '{"name": "get_weather", "parameters": {"city": "Paris"}',
    "<|python_tag|>brave_search.call(query=\"weather\")",  # built-in tool syntax: not JSON
])
def test_llama3_anything_else_is_content(text):
    assert parse_tool_calls(text, "llama3") == (text, [])


def test_mistral_array_keeps_the_models_ids():
    text = ('[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "a1b2c3d4e"}, '
            '{"name": "get_time", "arguments": {}}]')
    assert parse_tool_calls(text, "mistral") == ("", [_call("get_weather", {"city": "Paris"}, "a1b2c3d4e"),
                                                      _call("get_time", {}, "call_1")])


def test_mistral_name_args_form_with_text_before():
    text = 'Checking.[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[ARGS]{}'
    assert parse_tool_calls(text, "mistral") == ("Checking.", [_call("get_weather", {"city": "Paris"}),
                                                               _call("get_time", {}, "call_1")])


@pytest.mark.parametrize("text", [
    '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}',
    '[TOOL_CALLS][{"arguments": {}}]',
    '[TOOL_CALLS]get_weather[ARGS]{"city": Paris}',
    "No tools needed.",
])
def test_mistral_malformed_is_content(text):
    assert parse_tool_calls(text, "mistral") == (text, [])


def test_harmony_calls_in_either_header_position():
    reply = ('<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant to=functions.get_weather'
             '<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>')
    assert parse_reply(reply, _template("gptoss"), tools=True) == {
        "reasoning": "Need the weather.", "content": "", "tool_calls": [_call("get_weather", {"city": "Paris"})]}
    constrained = '<|channel|>commentary to=functions.get_time <|constrain|>json<|message|>{"zone": "CET"}'
    assert parse_tool_calls(constrained, "harmony") == ("", [_call("get_time", {"zone": "CET"})])
    broken = ' to=functions.get_time<|channel|>commentary json<|message|>{"zone": <|call|>'
    assert parse_tool_calls(broken, "harmony") == (broken, [])


def test_unknown_family_and_no_tools_leave_the_text():
    text = '<tool_call>\n{"name": "ping", "arguments": {}}\n</tool_call>'
    assert parse_tool_calls(text, None) == (text, [])
    assert parse_reply(text, _template("qwen2_5"), tools=False) == {"reasoning": None, "content": text,
                                                                    "tool_calls": []}


def test_reasoning_then_a_call():
    reply = ('<think>\nI need the weather.\n</think>\n\n'
             '<tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>')
    assert parse_reply(reply, _template("qwen3"), tools=True) == {
        "reasoning": "I need the weather.", "content": "", "tool_calls": [_call("get_weather", {})]}


MARKUP = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<|python_tag|>", "[TOOL_CALLS]", "[ARGS]",
          "<|channel|>", "<|message|>", "<|start|>", "<|end|>", "<|call|>", " to=functions.", "analysis", "final",
          '{"name": "f", ', '"arguments": ', '"parameters": ', "{", "}", "[", "]", '"', ",", "x", "\n"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(MARKUP), max_size=30).map("".join),
       st.sampled_from(["qwen3", "llama3_1", "gptoss", "qwen2_5"]), st.booleans())
def test_no_reply_makes_the_parser_raise(text, template, opened):
    parsed = parse_reply(text, _template(template), tools=True, opened=opened)
    assert isinstance(parsed["content"], str) and (parsed["reasoning"] is None or isinstance(parsed["reasoning"], str))
    for call in parsed["tool_calls"]:
        assert isinstance(json.loads(call["function"]["arguments"]), dict) and call["function"]["name"]


def test_deep_nesting_is_text_not_a_crash():
    text = "<tool_call>" + "[" * 100_000 + "</tool_call>"
    assert parse_tool_calls(text, "hermes") == (text, [])
    assert parse_tool_calls("[TOOL_CALLS]" + "[" * 100_000, "mistral")[1] == []


# ---- round trips through the real templates ----------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    from whetstone.models import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


def _tool(name: str, description: str, argument: str) -> dict:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": {argument: {"type": "string"}}, "required": [argument]}}}


TOOLS = [_tool("get_weather", "Weather in a city", "city"), _tool("get_time", "Time in a zone", "zone")]
ASK = [{"role": "user", "content": "Weather and time in Paris?"}]
END_OF_TURN = ("<|im_end|>\n", "<|eot_id|>", "<|call|>", "<|return|>", "<|end|>")


def _reply(tokenizer, template: str, assistant: dict) -> str:
    """What the template writes for `assistant` after the generation prompt, without its end-of-turn token."""
    prompt = tokenizer.apply_chat_template(ASK, tools=TOOLS, chat_template=template, tokenize=False,
                                           add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*ASK, assistant], tools=TOOLS, chat_template=template, tokenize=False)
    assert full.startswith(prompt)
    reply = full[len(prompt):]
    for end in END_OF_TURN:
        reply = reply.removesuffix(end)
    return reply


@pytest.mark.parametrize("name, n_calls", [("qwen2_5", 2), ("qwen3", 2), ("llama3_1", 1), ("llama3_2", 1),
                                           ("gptoss", 1)])
def test_calls_a_real_template_writes_are_read_back(tokenizer, name, n_calls):
    arguments = [{"city": "Paris"}, {"zone": "Europe/Paris"}][:n_calls]
    names = ["get_weather", "get_time"][:n_calls]
    assistant = {"role": "assistant", "content": "",
                 "tool_calls": [{"type": "function", "function": {"name": n, "arguments": a}}
                                for n, a in zip(names, arguments)]}
    reply = _reply(tokenizer, _template(name), assistant)
    parsed = parse_reply(reply, _template(name), tools=True)
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in parsed["tool_calls"]] == \
        list(zip(names, arguments)), reply
    assert parsed["content"] == "" and [c["id"] for c in parsed["tool_calls"]] == [f"call_{i}" for i in range(n_calls)]


@pytest.mark.parametrize("name", ["qwen3", "gptoss"])
def test_reasoning_a_real_template_writes_is_read_back(tokenizer, name):
    assistant = {"role": "assistant", "content": "It is sunny.", "reasoning_content": "Look it up first.",
                 "thinking": "Look it up first."}
    reply = _reply(tokenizer, _template(name), assistant)
    assert split_reasoning(reply, _template(name)) == ("Look it up first.", "It is sunny."), reply
