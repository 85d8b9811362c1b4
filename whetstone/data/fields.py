"""Field access with validation, shared by every format's parser.

Every accessor records a Problem naming the field and value instead of raising,
so one row reports all of its problems at once.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from whetstone.data.readers import Row
from whetstone.data.records import Message, Record, ToolCall
from whetstone.errors import Problem

CALLS = "function_call"  # a roles value: an assistant turn whose text is the JSON of its calls (ShareGPT)
_ROLES = {"system": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
_PLAIN_ROLES = frozenset(("system", "user", "assistant"))
_REASONING_KEYS = ("reasoning_content", "thinking")
_CALL_SHAPE = '{"type": "function", "function": {"name": ..., "arguments": {...}}}'
_TOOL_SHAPE = '{"type": "function", "function": {"name": ..., "description": ..., "parameters": {...}}}'
_BOOL_WORDS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def join_fields(names: tuple[str, ...]) -> str:
    """ "field 'text'" or "fields 'prompt', 'completion'"."""
    quoted = ", ".join(f"'{n}'" for n in names)
    return f"field {quoted}" if len(names) == 1 else f"fields {quoted}"


def show(value: Any, limit: int = 60) -> str:
    """A short, JSON-like rendering of a value for error messages."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "null" if value is None else type(value).__name__


def _json_error(exc: ValueError) -> str:
    return f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else str(exc)


_NO_ASSISTANT = (
    "has no 'assistant' turn, so there is nothing to train on; add the answer, or use format 'prompt' for prompts only"
)


def check_turns(messages: tuple[Message, ...], field: str, mode: str) -> tuple[str, str] | None:
    """The first structural fault of a conversation as (field, reason), or None.

    ``mode`` is "sft" (a whole conversation: optional system, then user and
    assistant alternating, ending on the assistant), "prompt" (the same, but
    ending on a user turn or a tool result) or "answer" (assistant-first
    continuation). An assistant turn with tool calls is followed by one or
    more 'tool' results and then by an assistant turn again (which may call
    again); a conversation may end on the calls themselves.
    """
    expected = "assistant" if mode == "answer" else "user"
    previous: str | None = None  # role of the previous turn, system messages aside
    calling = False  # the previous turn is an assistant turn that makes tool calls
    for index, message in enumerate(messages):
        role, where = message.role, f"{field}[{index}]"
        if role == "system":
            if index == 0 and mode != "answer":
                continue
            return where, "is a 'system' message, which may only come first"
        if role == "tool" and previous is not None:
            if calling or previous == "tool":
                previous, calling, expected = "tool", False, "assistant"
                continue
            return where, (
                f"is a 'tool' result, but {field}[{index - 1}] before it makes no tool call; a result comes right "
                f"after the assistant turn whose tool_calls it answers (or after another result)"
            )
        if calling:
            return f"{field}[{index - 1}]", (
                f"makes tool calls, but the next turn ({where}) is '{role}', not their result; add a 'tool' message "
                f"with each call's result right after the calls"
            )
        if previous == "tool" and role == "user":
            return where, "is 'user' right after a 'tool' result; an assistant turn must use the results first"
        if role != expected:
            if previous is None:
                article = "an" if expected == "assistant" else "a"
                after = " (after an optional 'system' message)" if mode != "answer" else ""
                return where, f"is '{role}', but the conversation must start with {article} '{expected}' turn{after}"
            alternate = "user and assistant turns must alternate (merge the two)"
            return where, f"is '{role}' right after another '{role}' turn; {alternate}"
        previous, calling = role, bool(message.tool_calls)
        expected = "user" if role == "assistant" else "assistant"
    last = messages[-1].role if messages else None
    if mode == "prompt":
        if last in ("user", "tool"):
            return None
        return field, f"must end with a 'user' turn (the prompt to answer), but ends with '{last}'"
    if not any(m.role == "assistant" for m in messages):
        return field, _NO_ASSISTANT
    if last != "assistant":
        trailing = "the last message must be the assistant's answer (remove the trailing turn)"
        return field, f"ends with a '{last}' turn; {trailing}"
    return None


def link_tool_results(messages: tuple[Message, ...], field: str) -> tuple[tuple[Message, ...], list[tuple[str, str]]]:
    """Pair every 'tool' result with the call it answers, for a conversation that passed ``check_turns``.

    A result with a ``tool_call_id`` answers the call of the preceding assistant
    turn with that id; one without answers the next unanswered call, in order.
    A result that takes its call's id and function name where the record left
    them out. Every call must get one result before the next turn, unless the
    conversation ends on the calls (the model then learns to make them).
    Returns the linked messages and the faults as (field, reason).
    """
    linked = list(messages)
    faults: list[tuple[str, str]] = []
    calls: tuple[ToolCall, ...] = ()
    at, answered = 0, []  # the calling turn's index, and which of its calls have results

    def unanswered() -> None:
        if not answered:
            return  # no results at all: check_turns has reported it, or the conversation ends on the calls
        for k, call in enumerate(calls):
            if k not in answered:
                faults.append((f"{field}[{at}].tool_calls[{k}]", (
                    f"('{call.name}') gets no 'tool' result; add its result after {field}[{at}], before the next turn"
                )))

    for index, message in enumerate(messages):
        where = f"{field}[{index}]"
        if message.role != "tool":
            unanswered()
            calls, at, answered = message.tool_calls, index, []
            continue
        ids = [call.id for call in calls]
        if message.tool_call_id is not None:
            if message.tool_call_id not in ids:
                known = ", ".join(show(i) for i in ids if i is not None)
                theirs = f"its call ids: {known}" if known else "its calls have no ids"
                faults.append((f"{where}.tool_call_id", (
                    f"{show(message.tool_call_id)} answers no call of {field}[{at}] ({theirs}); give the id of the "
                    f"call this result answers"
                )))
                continue
            k = ids.index(message.tool_call_id)
            if k in answered:
                faults.append((f"{where}.tool_call_id", (
                    f"answers {field}[{at}].tool_calls[{k}] a second time; each call gets one result"
                )))
                continue
        else:
            k = next((k for k in range(len(calls)) if k not in answered), -1)
            if k < 0:
                n = len(calls)
                faults.append((where, (
                    f"is one 'tool' result too many: {field}[{at}] makes {n} call{'s' if n != 1 else ''}, and each "
                    f"gets one result (remove the extra result, or add its call)"
                )))
                continue
        answered.append(k)
        call = calls[k]
        if message.name is not None and message.name != call.name:
            faults.append((f"{where}.name", (
                f"is {show(message.name)}, but the call it answers ({field}[{at}].tool_calls[{k}]) is to "
                f"'{call.name}'; fix the name, or the order of the results"
            )))
            continue
        linked[index] = replace(message, tool_call_id=message.tool_call_id or call.id, name=call.name)
    unanswered()
    return tuple(linked), faults


def split_implicit_prompt(
    chosen: tuple[Message, ...], rejected: tuple[Message, ...]
) -> tuple[tuple[Message, ...], tuple[Message, ...], tuple[Message, ...]] | None:
    """Split the shared leading turns (ending on a user turn) off two answers."""
    shared = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        shared += 1
    while shared > 0 and chosen[shared - 1].role != "user":
        shared -= 1
    if shared == 0:
        return None
    return chosen[:shared], chosen[shared:], rejected[shared:]


class Fields:
    """Typed, validating access to the fields of one row."""

    def __init__(self, row: Row, labels: frozenset[str] | None, task: str | None, known: set[str]):
        self.data = row.data
        self.origin = row.origin
        self.untyped = row.untyped
        self.labels = labels
        self.default_task = task
        self.known = known
        self.problems: list[Problem] = []

    def add(self, field: str | None, reason: str) -> None:
        self.problems.append(Problem(self.origin, field, reason))

    def _get(self, name: str) -> tuple[bool, Any]:
        if name not in self.data:
            self.add(name, f"is missing; this format needs {join_fields((name,))}")
            return False, None
        value = self.data[name]
        if value is None:
            self.add(name, "is null; give it a value")
            return False, None
        return True, value

    def string(self, name: str, required: bool = True, allow_empty: bool = False) -> str | None:
        if not required and self.data.get(name) is None:
            return None
        ok, value = self._get(name)
        if not ok:
            return None
        if not isinstance(value, str):
            self.add(name, f"expected a string, got {show(value)} ({_type_name(value)})")
            return None
        if not allow_empty and not value.strip():
            self.add(name, "is empty; give it text, or drop the record")
            return None
        return value

    def messages(
        self,
        name: str,
        keys: tuple[str, str] = ("role", "content"),
        roles: dict[str, str] | None = None,
        mode: str | None = "sft",
        tools: tuple[dict, ...] = (),
    ) -> tuple[Message, ...] | None:
        """A list of {role, content} objects (or {from, value} with ``roles`` mapping them).

        Assistant turns may carry tool calls and reasoning, 'tool' turns answer
        the calls; with ``tools`` given, every call must name one of them.
        """
        ok, value = self._get(name)
        if not ok:
            return None
        if self.untyped and isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                self.add(name, f"expected a JSON list of messages, got text that is not JSON: {show(value)}")
                return None
        if not isinstance(value, list):
            self.add(name, f"expected a list of messages, got {show(value)} ({_type_name(value)})")
            return None
        if not value:
            self.add(name, "is an empty list; a conversation needs at least one message")
            return None
        role_key, content_key = keys
        allowed = roles or _ROLES
        functions = {t["function"]["name"] for t in tools} if tools else None
        messages: list[Message] = []
        before = len(self.problems)
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                self.add(
                    f"{name}[{index}]", f"expected an object with '{role_key}' and '{content_key}', got {show(item)}"
                )
                continue
            raw_role = item.get(role_key)
            role = allowed.get(raw_role) if isinstance(raw_role, str) else None
            content = item.get(content_key)
            if (
                role in _PLAIN_ROLES
                and isinstance(content, str)
                and content
                and not content.isspace()
                and "tool_calls" not in item
                and "reasoning_content" not in item
                and "thinking" not in item
            ):
                messages.append(Message(role, content))  # the common case, checked cheaply
                continue
            if role is None:
                names = ", ".join(sorted(allowed))
                self.add(f"{name}[{index}].{role_key}", f"unknown role {show(raw_role)}; expected one of {names}")
                self._content(item, f"{name}[{index}]", content_key)
                continue
            message = self._message(item, f"{name}[{index}]", role, content_key, functions)
            if message is not None:
                messages.append(message)
        if len(self.problems) > before:
            return None
        result = tuple(messages)
        if not mode:
            return result
        fault = check_turns(result, name, mode)
        if fault:
            self.add(*fault)
            return None
        return self._linked(result, name)

    def _linked(self, messages: tuple[Message, ...], name: str) -> tuple[Message, ...] | None:
        linked, faults = link_tool_results(messages, name)
        for fault in faults:
            self.add(*fault)
        return None if faults else linked

    def _message(
        self, item: dict, where: str, role: str, content_key: str, functions: set[str] | None
    ) -> Message | None:
        """One message that is not plain text: a tool call or result, reasoning, or a content problem."""
        before = len(self.problems)
        if role == CALLS:  # ShareGPT's function_call: the value is the call(s) as JSON
            calls = self._calls_json(item.get(content_key), f"{where}.{content_key}", functions)
            reasoning = self._reasoning(item, where, "assistant")
            if len(self.problems) > before:
                return None
            return Message("assistant", "", reasoning=reasoning, tool_calls=calls)
        calls = self._tool_calls(item, where, role, functions)
        reasoning = self._reasoning(item, where, role)
        # Calls that failed to parse still excuse the missing text: their own problems say what is wrong.
        content = self._content(item, where, content_key, role=role, calls=bool(calls or item.get("tool_calls")))
        call_id = name = None
        if role == "tool":
            call_id = self._label(item, "tool_call_id", where)
            name = self._label(item, "name", where)
        if len(self.problems) > before:
            return None
        return Message(role, content, reasoning, calls, call_id, name)

    def _content(self, item: dict, where: str, key: str, role: str | None = None, calls: bool = False) -> str | None:
        """The text of a message; an assistant turn that makes calls may have none, a tool result may be empty."""
        content = item.get(key)
        field = f"{where}.{key}"
        if isinstance(content, list):
            # OpenAI-style content parts: keep text parts, refuse images and audio.
            texts = []
            for number, part in enumerate(content):
                if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                    self.add(f"{field}[{number}]", f"only text parts are supported, got {show(part)}")
                    return None
                texts.append(part["text"])
            content = "".join(texts)
        if content is None:
            if calls:
                return ""
            if role == "tool":
                self.add(field, "is missing or null; give the tool's result as text ('' when it returned nothing)")
            elif role == "assistant":
                self.add(field, "is missing or null; an assistant turn needs text, tool_calls, or both")
            else:
                self.add(field, "is missing or null; every message needs text")
            return None
        if not isinstance(content, str):
            self.add(field, f"expected a string, got {show(content)} ({_type_name(content)})")
            return None
        if not content.strip() and not calls and role != "tool":
            self.add(field, "is empty; give the message text, or remove it")
            return None
        return content

    def _label(self, item: dict, key: str, where: str) -> str | None:
        """An optional identifying string of a tool result (tool_call_id, name)."""
        value = item.get(key)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            self.add(f"{where}.{key}", f"expected a string, got {show(value)} ({_type_name(value)})")
            return None
        return value

    def _reasoning(self, item: dict, where: str, role: str) -> str | None:
        """An assistant turn's reasoning (reasoning_content or thinking); empty means none."""
        found = [(key, item[key]) for key in _REASONING_KEYS if item.get(key) not in (None, "")]
        if not found:
            return None
        key, text = found[0]
        if role != "assistant":
            self.add(f"{where}.{key}", f"only assistant turns carry reasoning, but this is a '{role}' turn; remove it")
            return None
        if not isinstance(text, str):
            self.add(f"{where}.{key}", f"expected a string, got {show(text)} ({_type_name(text)})")
            return None
        if len(found) > 1 and found[1][1] != text:
            self.add(f"{where}.{found[1][0]}", f"differs from '{key}'; give the reasoning once")
            return None
        return text if text.strip() else None

    def _tool_calls(self, item: dict, where: str, role: str, functions: set[str] | None) -> tuple[ToolCall, ...]:
        """OpenAI's tool_calls: [{id, type: function, function: {name, arguments}}]."""
        value = item.get("tool_calls")
        field = f"{where}.tool_calls"
        if value is None or value == []:
            return ()
        if role != "assistant":
            self.add(field, f"only assistant turns make tool calls, but this is a '{role}' turn; move the calls")
            return ()
        if not isinstance(value, list):
            self.add(field, f"expected a list of calls {_CALL_SHAPE}, got {show(value)} ({_type_name(value)})")
            return ()
        calls = []
        for k, call in enumerate(value):
            at = f"{field}[{k}]"
            if not isinstance(call, dict):
                self.add(at, f"expected a call {_CALL_SHAPE}, got {show(call)} ({_type_name(call)})")
                continue
            if call.get("type", "function") != "function":
                self.add(f"{at}.type", f"is {show(call.get('type'))}; only 'function' calls are supported")
                continue
            call_id = call.get("id")
            if call_id is not None and not isinstance(call_id, str):
                self.add(f"{at}.id", f"expected a string, got {show(call_id)} ({_type_name(call_id)})")
                call_id = None
            function, at = (call["function"], f"{at}.function") if "function" in call else (call, at)
            parsed = self._function(function, at, functions, call_id)
            if parsed is not None:
                calls.append(parsed)
        return tuple(calls)

    def _calls_json(self, value: Any, field: str, functions: set[str] | None) -> tuple[ToolCall, ...]:
        """ShareGPT's function_call value: {"name", "arguments"} (or a list of them) as JSON text."""
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as exc:
                self.add(field, (
                    f"is not JSON ({_json_error(exc)}): {show(value)}; a function_call's value is the call as JSON, "
                    f'{{"name": ..., "arguments": {{...}}}} (or a list of calls)'
                ))
                return ()
        if isinstance(value, list) and not value:
            self.add(field, "is an empty list of calls; give at least one call")
            return ()
        items = [(f"{field}[{k}]", v) for k, v in enumerate(value)] if isinstance(value, list) else [(field, value)]
        calls = [self._function(call, at, functions, None) for at, call in items]
        return tuple(c for c in calls if c is not None)

    def _function(self, call: Any, at: str, functions: set[str] | None, call_id: str | None) -> ToolCall | None:
        """{"name", "arguments"}: a named function, arguments a JSON object (or its JSON text)."""
        if not isinstance(call, dict):
            self.add(at, f'expected an object {{"name": ..., "arguments": {{...}}}}, got {show(call)}')
            return None
        name = call.get("name")
        if not isinstance(name, str) or not name.strip():
            got = "is missing" if name is None else f"expected the function's name, got {show(name)}"
            self.add(f"{at}.name", f"{got}; every call names the function it calls")
            name = None
        elif functions is not None and name not in functions:
            self.add(f"{at}.name", (
                f"{show(name)} is not one of the functions in 'tools' ({', '.join(sorted(functions))}); fix the name, "
                f"or add the function to 'tools'"
            ))
            name = None
        arguments = self._arguments(call, f"{at}.arguments")
        if name is None or arguments is None:
            return None
        return ToolCall(name, arguments, call_id)

    def _arguments(self, call: dict, field: str) -> dict | None:
        if "arguments" not in call or call["arguments"] is None:
            self.add(field, "is missing; give the call's arguments as a JSON object ({} when it takes none)")
            return None
        value = call["arguments"]
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as exc:
                self.add(field, f"is not JSON ({_json_error(exc)}): {show(value)}; give the arguments as a JSON object")
                return None
        if not isinstance(value, dict):
            self.add(field, f"must be a JSON object of named arguments, got {show(value)} ({_type_name(value)})")
            return None
        return value

    def tools(self, name: str = "tools") -> tuple[dict, ...] | None:
        """The functions a conversation may call, as OpenAI function schemas {"type": "function", "function": {...}}.

        Accepts that shape or the bare {name, description, parameters} (ShareGPT
        datasets), as a list or as its JSON text; a missing field means no tools.
        """
        value = self.data.get(name)
        if isinstance(value, str):
            if not value.strip():
                return ()
            try:
                value = json.loads(value)
            except ValueError as exc:
                self.add(name, f"is text that is not JSON ({_json_error(exc)}); give a list of function schemas "
                               f"{_TOOL_SHAPE}, or its JSON text")
                return None
        if value is None:
            return ()
        if not isinstance(value, list):
            got = f"{show(value)} ({_type_name(value)})"
            self.add(name, f"expected a list of function schemas {_TOOL_SHAPE}, got {got}")
            return None
        before = len(self.problems)
        tools: list[dict] = []
        seen: set[str] = set()
        for k, tool in enumerate(value):
            at = f"{name}[{k}]"
            if not isinstance(tool, dict):
                self.add(at, f"expected a function schema {_TOOL_SHAPE}, got {show(tool)} ({_type_name(tool)})")
                continue
            function = tool
            if "function" in tool:
                if tool.get("type", "function") != "function":
                    self.add(f"{at}.type", f"is {show(tool.get('type'))}; only 'function' tools are supported")
                    continue
                function, at = tool["function"], f"{at}.function"
                if not isinstance(function, dict):
                    wanted = "an object with 'name', 'description' and 'parameters'"
                    self.add(at, f"expected {wanted}, got {show(function)}")
                    continue
            tool_name = function.get("name")
            if not isinstance(tool_name, str) or not tool_name.strip():
                got = "is missing" if tool_name is None else f"expected the function's name, got {show(tool_name)}"
                self.add(f"{at}.name", f"{got}; every tool is a function with a name")
                continue
            if tool_name in seen:
                self.add(f"{at}.name", f"{show(tool_name)} is defined twice; keep one definition")
                continue
            parameters = function.get("parameters")
            if parameters is not None and not isinstance(parameters, dict):
                self.add(f"{at}.parameters", f"expected a JSON schema object, got {show(parameters)}")
                continue
            seen.add(tool_name)
            tools.append({"type": "function", "function": function})
        return tuple(tools) if len(self.problems) == before else None

    def prompt(self, name: str) -> tuple[Message, ...] | None:
        """A prompt: a string (one user turn) or a message list ending on a user turn."""
        shape = self._shape(name)
        if shape == "text":
            text = self.string(name)
            return (Message("user", text),) if text is not None else None
        return self.messages(name, mode="prompt") if shape else None

    def _shape(self, name: str) -> str | None:
        """ "text" or "list" for a prompt/answer field; None after recording a problem."""
        value = self.data.get(name)
        if isinstance(value, str):
            return "list" if self.untyped and value.startswith("[") else "text"  # CSV cells hold lists as JSON
        if value is None or isinstance(value, list):
            return "list"  # messages() reports a missing or null field
        self.add(name, f"expected a string or a list of messages, got {show(value)} ({_type_name(value)})")
        return None

    def answer(self, name: str, prefix_allowed: bool = False) -> tuple[Message, ...] | None:
        """An answer: a string (one assistant turn) or a message list.

        With ``prefix_allowed`` the list may start with the prompt's turns (its
        structure is checked after the prompt is split off).
        """
        shape = self._shape(name)
        if shape == "text":
            text = self.string(name)
            return (Message("assistant", text),) if text is not None else None
        messages = self.messages(name, mode=None) if shape else None
        if messages is None or prefix_allowed:
            return messages
        return self.check_answer_turns(name, messages)

    def check_answer_turns(self, name: str, messages: tuple[Message, ...]) -> tuple[Message, ...] | None:
        """An answer's turns, checked (assistant first) and with tool results linked; None after a problem."""
        if not messages:
            self.add(name, "has no assistant turn after the prompt; give the answer")
            return None
        fault = check_turns(messages, name, "answer")
        if fault:
            self.add(*fault)
            return None
        return self._linked(messages, name)

    def boolean(self, name: str) -> bool | None:
        ok, value = self._get(name)
        if not ok:
            return None
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if self.untyped and isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.strip().lower()]
        self.add(name, f"expected true or false, got {show(value)} ({_type_name(value)})")
        return None

    def class_label(self, name: str) -> str | None:
        ok, value = self._get(name)
        if not ok:
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            self.add(name, f"expected a class name (string or integer), got {show(value)} ({_type_name(value)})")
            return None
        label = str(value)
        if not label.strip():
            self.add(name, "is empty; give the class name")
            return None
        if self.labels is not None and label not in self.labels:
            known = ", ".join(sorted(self.labels))
            self.add(
                name, f"{show(value)} is not one of the labels ({known}); fix the label or add it to the label list"
            )
            return None
        return label

    def reference(self, name: str) -> str | None:
        value = self.data.get(name)
        if value is None or value == "":
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            self.add(name, f"expected a string or number, got {show(value)} ({_type_name(value)})")
            return None
        return str(value)

    def record(self, kind: str, **fields: Any) -> Record | None:
        task = self.default_task
        if self.data.get("task") not in (None, ""):  # an empty CSV cell or a null means "no task"
            task = self.string("task")
        if self.problems:
            return None
        extra = {k: v for k, v in self.data.items() if k not in self.known}
        return Record(kind=kind, origin=self.origin, task=task, extra=extra, **fields)  # type: ignore[arg-type]

    def chat(self, messages: tuple[Message, ...], tools: tuple[dict, ...] = ()) -> Record | None:
        return self.record("chat", messages=messages, tools=tools)
