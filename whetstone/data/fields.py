"""Field access with validation, shared by every format's parser.

Every accessor records a Problem naming the field and value instead of raising,
so one row reports all of its problems at once.
"""

from __future__ import annotations

import json
from typing import Any

from whetstone.data.readers import Row
from whetstone.data.records import Message, Record
from whetstone.errors import Problem

_ROLES = {"system": "system", "user": "user", "assistant": "assistant"}
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


_NO_ASSISTANT = (
    "has no 'assistant' turn, so there is nothing to train on; add the answer, or use format 'prompt' for prompts only"
)


def check_turns(messages: tuple[Message, ...], field: str, mode: str) -> tuple[str, str] | None:
    """The first structural fault of a conversation as (field, reason), or None.

    ``mode`` is "sft" (a whole conversation: optional system, then user and
    assistant alternating, ending on the assistant), "prompt" (the same, but
    ending on a user turn) or "answer" (assistant-first continuation).
    """
    expected = "assistant" if mode == "answer" else "user"
    for index, message in enumerate(messages):
        role, where = message.role, f"{field}[{index}]"
        if role == "system":
            if index == 0 and mode != "answer":
                continue
            return where, "is a 'system' message, which may only come first"
        if role != expected:
            if index == 0 or (index == 1 and messages[0].role == "system"):
                article = "an" if expected == "assistant" else "a"
                after = " (after an optional 'system' message)" if mode != "answer" else ""
                return where, f"is '{role}', but the conversation must start with {article} '{expected}' turn{after}"
            alternate = "user and assistant turns must alternate (merge the two)"
            return where, f"is '{role}' right after another '{role}' turn; {alternate}"
        expected = "user" if role == "assistant" else "assistant"
    last = messages[-1].role if messages else None
    if mode == "prompt":
        if last == "user":
            return None
        return field, f"must end with a 'user' turn (the prompt to answer), but ends with '{last}'"
    if not any(m.role == "assistant" for m in messages):
        return field, _NO_ASSISTANT
    if last != "assistant":
        trailing = "the last message must be the assistant's answer (remove the trailing turn)"
        return field, f"ends with a '{last}' turn; {trailing}"
    return None


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
    ) -> tuple[Message, ...] | None:
        """A list of {role, content} objects (or {from, value} with ``roles`` mapping them)."""
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
            if role is not None and isinstance(content, str) and content and not content.isspace():
                messages.append(Message(role, content))  # the common case, checked cheaply
                continue
            if role is None:
                names = ", ".join(sorted(allowed))
                self.add(f"{name}[{index}].{role_key}", f"unknown role {show(raw_role)}; expected one of {names}")
            content = self._content(item, f"{name}[{index}]", content_key)
            if role is not None and content is not None:
                messages.append(Message(role, content))
        if len(self.problems) > before:
            return None
        result = tuple(messages)
        fault = check_turns(result, name, mode) if mode else None
        if fault:
            self.add(*fault)
            return None
        return result

    def _content(self, item: dict, where: str, key: str) -> str | None:
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
            hint = " (tool calls are not supported)" if "tool_calls" in item else ""
            self.add(field, f"is missing or null{hint}; every message needs text")
            return None
        if not isinstance(content, str):
            self.add(field, f"expected a string, got {show(content)} ({_type_name(content)})")
            return None
        if not content.strip():
            self.add(field, "is empty; give the message text, or remove it")
            return None
        return content

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
        return messages if self.check_answer_turns(name, messages) else None

    def check_answer_turns(self, name: str, messages: tuple[Message, ...]) -> bool:
        if not messages:
            self.add(name, "has no assistant turn after the prompt; give the answer")
            return False
        fault = check_turns(messages, name, "answer")
        if fault:
            self.add(*fault)
        return fault is None

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

    def chat(self, messages: tuple[Message, ...]) -> Record | None:
        return self.record("chat", messages=messages)
