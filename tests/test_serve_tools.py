"""`serve` with tools and reasoning: what goes into the prompt, and the shape of what comes back.

The model is the tiny random one, so its own output means nothing: each test forces the reply by
replacing serve's token chooser with one that spells out a text written in the test. Everything
else (the chat template, the KV-cache loop, decoding, parsing, the HTTP layer) runs for real.
"""

import http.client
import importlib.resources
import json
import threading

import pytest

import whetstone.serve.engine as serve
from whetstone.serve import Engine, ServeLimits, make_server

openai = pytest.importorskip("openai")

TEMPLATES = importlib.resources.files("trl") / "chat_templates"
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
ASK = [{"role": "user", "content": "Weather in Paris?"}]
CALL_TEXT = 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return Engine(str(tiny_model_dir))


@pytest.fixture(scope="module")
def server(engine):
    server = make_server(engine, port=0, log=False, limits=ServeLimits(max_tokens=200, timeout_s=60))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    thread.join()
    server.server_close()


@pytest.fixture
def model_says(engine, monkeypatch):
    """model_says(text, template): the engine uses trl's `template` and its model writes `text`, then EOS.

    Returns the prompts the model was given, as text, one per request.
    """
    prompts = []

    def say(text: str, template: str | None = None):
        if template is not None:
            monkeypatch.setattr(engine.tokenizer, "chat_template", (TEMPLATES / f"{template}.jinja").read_text())
        chat_prompt = Engine.chat_prompt

        def recording_prompt(messages, tools=None):
            ids = chat_prompt(engine, messages, tools)
            prompts.append(engine.tokenizer.decode(ids))
            ids_for_reply[:] = engine.tokenizer(text, add_special_tokens=False)["input_ids"] + [
                engine.tokenizer.eos_token_id]
            return ids

        ids_for_reply: list[int] = []
        monkeypatch.setattr(engine, "chat_prompt", recording_prompt)
        monkeypatch.setattr(serve, "_choose", lambda logits, temperature, top_p, generator: ids_for_reply.pop(0))
        return prompts

    return say


def _post(server, body: dict) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=60)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body).encode(),
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    payload = response.read()
    conn.close()
    return response.status, json.loads(payload)


def _stream(server, body: dict) -> list[dict]:
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=60)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body | {"stream": True}).encode(),
                 headers={"Content-Type": "application/json"})
    lines = conn.getresponse().read().decode().split("\n\n")
    conn.close()
    assert lines[-2] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-2]]


def _chat(engine, **fields) -> dict:
    return {"model": engine.base_id, "messages": ASK, "max_tokens": 120, "temperature": 0} | fields


def test_a_hermes_tool_call(server, engine, model_says):
    prompts = model_says(CALL_TEXT, "qwen2_5")
    status, body = _post(server, _chat(engine, tools=[WEATHER]))
    assert status == 200, body
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {"role": "assistant", "content": "Let me look.", "tool_calls": [
        {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}
    # The model was shown the tool, as the template shows it.
    assert f"<tools>\n{json.dumps(WEATHER)}\n</tools>" in prompts[0]
    assert prompts[0].endswith("<|im_start|>assistant\n")


def test_the_openai_client_reads_the_call(server, engine, model_says):
    model_says('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>', "qwen2_5")
    with openai.OpenAI(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", api_key="x", max_retries=0) as c:
        r = c.chat.completions.create(model=engine.base_id, messages=ASK, tools=[WEATHER], max_tokens=120,
                                      temperature=0)
    (call,) = r.choices[0].message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments), call.id) == ("get_weather", {"city": "Oslo"},
                                                                                 "call_0")
    assert r.choices[0].message.content is None and r.choices[0].finish_reason == "tool_calls"


def test_a_plain_answer_with_tools_offered(server, engine, model_says):
    model_says("It is sunny in Paris.", "qwen2_5")
    status, body = _post(server, _chat(engine, tools=[WEATHER]))
    assert status == 200 and body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "It is sunny in Paris."}


def test_tool_choice_none_shows_no_tools_and_reads_no_calls(server, engine, model_says):
    prompts = model_says(CALL_TEXT, "qwen2_5")
    status, body = _post(server, _chat(engine, tools=[WEATHER], tool_choice="none"))
    assert status == 200 and "<tools>" not in prompts[0]
    assert body["choices"][0]["message"] == {"role": "assistant", "content": CALL_TEXT}


def test_reasoning_and_answer(server, engine, model_says):
    model_says("<think>\nThe user greets me.\n</think>\n\nHello!", "qwen3")
    status, body = _post(server, _chat(engine))
    assert status == 200 and body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello!",
                                             "reasoning_content": "The user greets me."}


def test_reasoning_when_the_prompt_opened_think(server, engine, model_says):
    prompts = model_says("Two and two make four.\n</think>\n\n4", "deepseek_r1_distill")
    status, body = _post(server, _chat(engine))
    assert prompts[0].endswith("<think>\n")  # the template opened it; the model only closes it
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "4",
                                             "reasoning_content": "Two and two make four."}


def test_harmony_reasoning_and_call(server, engine, model_says):
    model_says('<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant to=functions.get_weather'
               '<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>', "gptoss")
    status, body = _post(server, _chat(engine, tools=[WEATHER], max_tokens=150))
    assert status == 200, body
    assert body["choices"][0]["message"] == {"role": "assistant", "content": None,
                                             "reasoning_content": "Need the weather.", "tool_calls": [
        {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}


def test_streaming_sends_the_parsed_message_in_one_chunk_at_the_end(server, engine, model_says):
    model_says("<think>\nPlan.\n</think>\n\n" + CALL_TEXT, "qwen3")
    chunks = _stream(server, _chat(engine, tools=[WEATHER]))
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""},
        {"content": "Let me look.", "reasoning_content": "Plan.", "tool_calls": [
            {"index": 0, "id": "call_0", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {}]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "tool_calls"]
    assert chunks[-1]["usage"]["completion_tokens"] == len(engine.tokenizer(
        "<think>\nPlan.\n</think>\n\n" + CALL_TEXT, add_special_tokens=False)["input_ids"])


def test_history_with_calls_and_results_renders_as_the_template_does(server, engine, model_says):
    prompts = model_says("It is 18 degrees.", "qwen2_5")
    history = [*ASK,
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_7", "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
               {"role": "tool", "tool_call_id": "call_7", "content": '{"celsius": 18}'}]
    status, body = _post(server, _chat(engine, messages=history, tools=[WEATHER]))
    assert status == 200 and body["choices"][0]["message"]["content"] == "It is 18 degrees."
    expected = engine.tokenizer.apply_chat_template(
        [*ASK, {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "id": "call_7", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
         {"role": "tool", "content": '{"celsius": 18}', "tool_call_id": "call_7", "name": "get_weather"}],
        tools=[WEATHER], tokenize=False, add_generation_prompt=True)
    assert prompts[0] == expected
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompts[0]
    assert '<tool_response>\n{"celsius": 18}\n</tool_response>' in prompts[0]


@pytest.mark.parametrize("fields, param, fragment", [
    ({"tools": {"name": "get_weather"}}, "tools", "'tools' must be a list"),
    ({"tools": [{"type": "function", "name": "get_weather"}]}, "tools[0]", 'tools[0] must be {"type": "function"'),
    ({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}, "tools[0]", "tools[0] must be"),
    ({"tools": [{"type": "function", "function": {"name": "get weather!"}}]}, "tools[0].function.name",
     "must be 1 to 64 letters, digits"),
    ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name", "is offered twice"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "city"}}]},
     "tools[0].function.parameters", "must be a JSON Schema object"),
    ({"tools": [WEATHER], "tool_choice": "required"}, "tool_choice", 'supports "auto" and "none" only'),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, "tool_choice",
     "cannot force a call"),
    ({"messages": [*ASK, {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": "{city: Paris}"}}]}]},
     "messages[1].tool_calls[0].function.arguments", "is not valid JSON"),
    ({"messages": [*ASK, {"role": "assistant", "tool_calls": [{"id": "c", "name": "get_weather"}]}]},
     "messages[1].tool_calls[0]", "must be {"),
    ({"messages": [*ASK, {"role": "tool", "content": "18"}]}, "messages[1].tool_call_id",
     "must be the id of the call"),
    ({"messages": [*ASK, {"role": "assistant", "content": None}]}, "messages[1].content", "must be a string"),
])
def test_bad_tools_and_tool_messages_are_400_with_a_sentence(server, engine, model_says, fields, param, fragment):
    model_says("unused", "qwen2_5")
    status, body = _post(server, _chat(engine, **fields))
    assert status == 400, body
    assert body["error"]["param"] == param and fragment in body["error"]["message"], body["error"]
    assert body["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("template, fragment", [
    (None, "cannot read back"),  # the tiny model's ChatML template has no tool-call format
    ("qwen3_5_think", "cannot read back"),  # XML calls: not read
])
def test_tools_for_a_template_whose_calls_cannot_be_read_are_refused(server, engine, model_says, template, fragment):
    model_says("unused", template)
    status, body = _post(server, _chat(engine, tools=[WEATHER]))
    assert status == 400 and body["error"]["param"] == "tools" and fragment in body["error"]["message"]


def test_a_template_that_ignores_tools_is_refused(server, engine, model_says, monkeypatch):
    model_says("unused", "qwen2_5")
    # <tool_call> and "arguments" appear in the text, but the template never renders `tools`.
    monkeypatch.setattr(engine.tokenizer, "chat_template", "{# <tool_call> \"arguments\" #}"
                        "{% for m in messages %}{{ m.content }}{% endfor %}")
    status, body = _post(server, _chat(engine, tools=[WEATHER]))
    assert status == 400 and "does not show tools to the model" in body["error"]["message"]


def test_special_tokens_inside_a_parsed_reply_are_not_shown(server, engine, model_says):
    # <|im_start|> is one of the tiny tokenizer's special tokens: the parser reads the text with it, people without.
    model_says("<think>\nPlan.<|im_start|>\n</think>\n\nHello<|im_start|>!", "qwen3")
    status, body = _post(server, _chat(engine))
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello!", "reasoning_content": "Plan."}
