"""A model's output text -> its reasoning, its answer and its tool calls.

What the markup looks like is the chat template's choice, so the format is read off the
template text (never the model's name):

    reasoning   think     <think>REASONING</think>ANSWER (Qwen3, DeepSeek-R1, ...); when the
                          prompt already opened <think>, the output starts inside it
                harmony   <|channel|>analysis<|message|>REASONING<|end|><|start|>assistant
                          <|channel|>final<|message|>ANSWER (gpt-oss)
    tool calls  hermes    <tool_call>{"name": N, "arguments": {...}}</tool_call>, one or more,
                          text allowed before them (Qwen2.5, Qwen3)
                llama3    {"name": N, "parameters": {...}} as the whole message, optionally
                          after <|python_tag|> (Llama 3.1, 3.2)
                mistral   [TOOL_CALLS][{"name": N, "arguments": {...}}, ...], or the newer
                          [TOOL_CALLS]N[ARGS]{...}
                harmony   <|start|>assistant to=functions.N<|channel|>commentary json
                          <|message|>{...}<|call|> (gpt-oss)

Formats whose arguments cannot be read back without guessing types (Qwen3.5's and
Nemotron's <function=...><parameter=...>, GLM's <arg_key>, LFM2's Python calls, Gemma 4's)
have no tool-call format here: their output stays text.

These functions read what a model wrote, so they never raise on it: markup that does not
parse (malformed JSON, a call with no name) stays in the content as text. A call is an
OpenAI tool_calls entry, {"id", "type": "function", "function": {"name", "arguments"}},
with the arguments as a JSON string; it gets the id `call_<n>` when the model gave none.
"""

from __future__ import annotations

import json
import re

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
TOOL_CALL_FORMATS = ("hermes", "llama3", "mistral", "harmony")

_HERMES_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
_HARMONY_END = re.compile(r"<\|end\|>|<\|return\|>|<\|call\|>")
_HARMONY_CHANNEL = re.compile(r"<\|channel\|>\s*(\w+)")
_HARMONY_RECIPIENT = re.compile(r"\bto=([^\s<]+)")


def template_text(tokenizer_or_template) -> str:
    """The chat template's text, from a tokenizer or the text itself ("" when there is none)."""
    if tokenizer_or_template is None or isinstance(tokenizer_or_template, str):
        return tokenizer_or_template or ""
    template = getattr(tokenizer_or_template, "chat_template", None)
    if isinstance(template, dict):  # named templates: the default one renders chat
        template = template.get("default")
    return template if isinstance(template, str) else ""


def reasoning_format(tokenizer_or_template) -> str | None:
    """"harmony", "think", or None: how the template marks an assistant turn's reasoning."""
    template = template_text(tokenizer_or_template)
    if "<|channel|>" in template:
        return "harmony"
    if THINK_CLOSE in template:
        return "think"
    return None


def tool_call_format(tokenizer_or_template) -> str | None:
    """One of TOOL_CALL_FORMATS, or None when the template's tool calls are not one this module reads."""
    template = template_text(tokenizer_or_template)
    if "<|channel|>" in template and "to=" in template:
        return "harmony"
    if "[TOOL_CALLS]" in template:
        return "mistral"
    # Qwen3.5 and Nemotron wrap XML (<function=...>) in <tool_call>, GLM <arg_key>: not JSON inside.
    if "<tool_call>" in template and '"arguments"' in template and "<function=" not in template:
        return "hermes"
    if "<|start_header_id|>" in template and ("<|python_tag|>" in template or '"parameters"' in template):
        return "llama3"
    return None


# ---------------------------------------------------------------------------
# Reasoning.


def split_reasoning(text: str, tokenizer_or_template=None, *, opened: bool = False) -> tuple[str | None, str]:
    """(reasoning or None, answer) of one generated reply.

    `opened`: the prompt ended inside an open <think> (the template prefills it), so reasoning
    runs from the first character; without a </think> (max_tokens cut it) all of it is reasoning.
    An empty reasoning block gives None.
    """
    if reasoning_format(tokenizer_or_template) == "harmony" or "<|channel|>" in text:
        messages = _harmony_messages(text)
        if messages:
            return _split_harmony(messages)
    start = text.lstrip()
    if start.startswith(THINK_OPEN):
        inner, closed, answer = start[len(THINK_OPEN):].partition(THINK_CLOSE)
    elif (THINK_CLOSE in text and THINK_OPEN not in text) or opened:
        inner, closed, answer = text.partition(THINK_CLOSE)
    else:
        return None, text
    if not closed:  # cut before </think>: there is no answer yet
        answer = ""
    return inner.strip() or None, answer.lstrip()


def _harmony_messages(text: str) -> list[tuple[str | None, str | None, str, str]]:
    """[(channel, recipient, body, segment)] of every `header<|message|>body` in a harmony reply."""
    messages = []
    for segment in text.split("<|start|>"):
        header, found, body = segment.partition("<|message|>")
        if not found:  # a bare header ("assistant") the generation stopped after
            continue
        body = _HARMONY_END.split(body, maxsplit=1)[0]
        channel = _HARMONY_CHANNEL.search(header)
        recipient = _HARMONY_RECIPIENT.search(header)
        messages.append((channel.group(1) if channel else None, recipient.group(1) if recipient else None, body,
                         segment))
    return messages


def _split_harmony(messages) -> tuple[str | None, str]:
    reasoning = "\n".join(body.strip() for channel, to, body, _ in messages if channel == "analysis" and not to)
    finals = [body.strip() for channel, _, body, _ in messages if channel == "final"]
    rest = [(to, body, segment) for channel, to, body, segment in messages if channel != "analysis" or to]
    if finals:
        answer = "\n".join(finals)
    elif any(to for to, _, _ in rest):  # tool calls: kept as markup for parse_tool_calls
        answer = "".join("<|start|>" + segment for _, _, segment in rest)
    else:  # commentary alone
        answer = "\n".join(body.strip() for _, body, _ in rest)
    return reasoning or None, answer


# ---------------------------------------------------------------------------
# Tool calls.


def parse_tool_calls(text: str, family: str | None) -> tuple[str, list[dict]]:
    """(content, calls) of one reply (reasoning already split off), for a TOOL_CALL_FORMATS family.

    The content is what remains once the calls are taken out, stripped ("" when nothing does);
    with an unknown family, or no call that parses, it is `text` unchanged.
    """
    parse = {"hermes": _hermes, "llama3": _llama3, "mistral": _mistral, "harmony": _harmony}.get(family or "")
    if parse is None:
        return text, []
    content, calls = parse(text)
    if not calls:
        return text, []
    return content, [_openai_call(name, arguments, given_id, n) for n, (name, arguments, given_id) in
                     enumerate(calls)]


def _openai_call(name: str, arguments: dict, given_id: str | None, n: int) -> dict:
    return {"id": given_id or f"call_{n}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}


def _call(obj, arguments_key: str = "arguments", *, required: bool = False) -> tuple[str, dict, str | None] | None:
    """(name, arguments, id) of a decoded {"name": ..., arguments_key: {...}}; None if it is not one.

    Without `required`, a call that leaves out its arguments has none ({}).
    """
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"].strip():
        return None
    if required and arguments_key not in obj:
        return None
    arguments = obj.get(arguments_key, {})
    if isinstance(arguments, str):  # some models write the arguments as a JSON string, OpenAI-style
        arguments = _json(arguments)
    if not isinstance(arguments, dict):
        return None
    given_id = obj.get("id")
    return obj["name"].strip(), arguments, given_id if isinstance(given_id, str) and given_id else None


def _json(text: str):
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: thousands of nested brackets
        return None


def _hermes(text: str) -> tuple[str, list]:
    calls, kept, end = [], [], 0
    for block in _HERMES_BLOCK.finditer(text):
        call = _call(_json(block.group(1)))
        if call is None:  # malformed: the block stays in the content
            continue
        calls.append(call)
        kept.append(text[end:block.start()])
        end = block.end()
    kept.append(text[end:])
    return "".join(kept).strip(), calls


def _llama3(text: str) -> tuple[str, list]:
    body = text.strip()
    body = body.removeprefix("<|python_tag|>").strip()
    obj = _json(body)
    # The whole message is the call, so a JSON answer that merely has a "name" is not one.
    key = "parameters" if isinstance(obj, dict) and "parameters" in obj else "arguments"
    call = _call(obj, key, required=True)
    return ("", [call]) if call else (text, [])


def _mistral(text: str) -> tuple[str, list]:
    before, found, after = text.partition("[TOOL_CALLS]")
    if not found:
        return text, []
    after = after.lstrip()
    decoder = json.JSONDecoder()
    calls = []
    try:
        if after.startswith("["):  # [TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]
            items, end = decoder.raw_decode(after)
            calls = [_call(item) for item in items] if isinstance(items, list) else [None]
            rest = after[end:]
        else:  # [TOOL_CALLS]name[ARGS]{...}, repeated
            rest = after
            while rest:
                name, found_args, tail = rest.partition("[ARGS]")
                if not found_args:
                    break
                arguments, end = decoder.raw_decode(tail.lstrip())
                calls.append(_call({"name": name, "arguments": arguments}))
                rest = tail.lstrip()[end:].lstrip().removeprefix("[TOOL_CALLS]").lstrip()
    except (ValueError, RecursionError):
        return text, []
    if not calls or None in calls:
        return text, []
    return (before + rest).strip(), calls


def _harmony(text: str) -> tuple[str, list]:
    calls, kept = [], []
    for _, recipient, body, segment in _harmony_messages(text):
        call = _call({"name": recipient[len("functions."):], "arguments": _json(body.strip())}) \
            if recipient and recipient.startswith("functions.") else None
        if call is not None:
            calls.append(call)
        elif recipient:  # a call that does not parse stays as the model wrote it
            kept.append("<|start|>" + segment)
        else:  # commentary to the user (a preamble)
            kept.append(body.strip())
    return "\n".join(k for k in kept if k).strip(), calls


def parse_reply(text: str, tokenizer_or_template, *, tools: bool, opened: bool = False) -> dict:
    """{"reasoning": str | None, "content": str, "tool_calls": [...]} of one generated reply.

    Tool calls are read only when `tools` (the request offered some) and the template has a format.
    """
    reasoning, answer = split_reasoning(text, tokenizer_or_template, opened=opened)
    family = tool_call_format(tokenizer_or_template) if tools else None
    content, calls = parse_tool_calls(answer, family)
    return {"reasoning": reasoning, "content": content, "tool_calls": calls}
