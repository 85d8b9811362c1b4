"""Data formats: detect which one a file uses, and parse its rows into ``Record``s.

Each format is a small parse function in the ``_PARSERS`` registry, plus the
fields that identify it. Parsing validates as it goes and reports every
problem of a row, each naming the field (``messages[2].role``), the value and
the fix, so that ``whetstone data check`` can list them all at once.

Formats and the record kind they produce:

=================  ==============================================  ================
name               fields                                          kind
=================  ==============================================  ================
text               text                                            text
prompt_completion  prompt, completion                              chat
alpaca             instruction, input?, output                     chat
messages           messages: [{role, content}]                     chat
sharegpt           conversations: [{from, value}]                  chat
preference         prompt?, chosen, rejected                       preference
kto                prompt, completion, label (bool)                feedback
classification     text, label                                     classification
prompt             prompt, reference? / answer?                    prompt
=================  ==============================================  ================

Any row may also carry ``task`` (a string), which becomes ``Record.task``.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from whetstone.data.readers import Row, Source, iter_rows, resolve_source
from whetstone.data.records import Message, Record
from whetstone.errors import DataError, Problem, WhetstoneError

FORMATS = (
    "text",
    "prompt_completion",
    "alpaca",
    "messages",
    "sharegpt",
    "preference",
    "kto",
    "classification",
    "prompt",
)

# How many rows auto-detection looks at before choosing a format.
DETECT_ROWS = 64


# ---------------------------------------------------------------------------
# Field access with validation. Every accessor records a Problem naming the
# field and value instead of raising, so one row reports all its problems.

_BOOL_WORDS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def join_fields(names: tuple[str, ...]) -> str:
    """"field 'text'" or "fields 'prompt', 'completion'"."""
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
                after = " (after an optional 'system' message)" if mode != "answer" else ""
                article = "an" if expected == "assistant" else "a"
                return where, f"is '{role}', but the conversation must start with {article} '{expected}' turn{after}"
            return where, f"is '{role}' right after another '{role}' turn; user and assistant turns must alternate (merge the two)"
        expected = "user" if role == "assistant" else "assistant"
    last = messages[-1].role if messages else None
    if mode == "prompt":
        return None if last == "user" else (field, f"must end with a 'user' turn (the prompt to answer), but ends with '{last}'")
    if not any(m.role == "assistant" for m in messages):
        return field, "has no 'assistant' turn, so there is nothing to train on; add the answer, or use format 'prompt' for prompts only"
    if last != "assistant":
        return field, f"ends with a '{last}' turn; the last message must be the assistant's answer (remove the trailing turn)"
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

    def messages(self, name: str, keys: tuple[str, str] = ("role", "content"), roles: dict[str, str] | None = None,
                 mode: str | None = "sft") -> tuple[Message, ...] | None:
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
        allowed = roles or {r: r for r in ("system", "user", "assistant")}
        messages: list[Message] = []
        before = len(self.problems)
        for index, item in enumerate(value):
            where = f"{name}[{index}]"
            if not isinstance(item, dict):
                self.add(where, f"expected an object with '{role_key}' and '{content_key}', got {show(item)}")
                continue
            raw_role = item.get(role_key)
            role = allowed.get(raw_role) if isinstance(raw_role, str) else None
            if role is None:
                names = ", ".join(sorted(allowed))
                self.add(f"{where}.{role_key}", f"unknown role {show(raw_role)}; expected one of {names}")
            content = self._content(item, where, content_key)
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
        """"text" or "list" for a prompt/answer field; None after recording a problem."""
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
            self.add(name, f"{show(value)} is not one of the labels ({known}); fix the label or add it to the label list")
            return None
        return label

    def reference(self, name: str) -> str | None:
        value = self.data.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            self.add(name, f"expected a string or number, got {show(value)} ({_type_name(value)})")
            return None
        return str(value)

    def record(self, kind: str, **fields: Any) -> Record | None:
        task = self.default_task
        if "task" in self.data:
            task = self.string("task")
        if self.problems:
            return None
        extra = {k: v for k, v in self.data.items() if k not in self.known}
        return Record(kind=kind, origin=self.origin, task=task, extra=extra, **fields)  # type: ignore[arg-type]

    def chat(self, messages: tuple[Message, ...]) -> Record | None:
        return self.record("chat", messages=messages)


# ---------------------------------------------------------------------------
# One parse function per format. Each reads a row through ``Fields`` (which
# records problems) and returns a Record, or None when the row has problems.


def _parse_text(f: Fields) -> Record | None:
    text = f.string("text")
    return f.record("text", text=text)


def _parse_prompt_completion(f: Fields) -> Record | None:
    prompt = f.prompt("prompt")
    completion = f.answer("completion")
    if prompt is None or completion is None:
        return None
    return f.chat(prompt + completion)


def _parse_alpaca(f: Fields) -> Record | None:
    instruction = f.string("instruction")
    extra = f.string("input", required=False, allow_empty=True)
    output = f.string("output")
    if instruction is None or output is None:
        return None
    user = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    return f.chat((Message("user", user), Message("assistant", output)))


def _parse_messages(f: Fields) -> Record | None:
    messages = f.messages("messages")
    return f.chat(messages) if messages is not None else None


_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "bot": "assistant",
    "system": "system",
}


def _parse_sharegpt(f: Fields) -> Record | None:
    messages = f.messages("conversations", keys=("from", "value"), roles=_SHAREGPT_ROLES)
    return f.chat(messages) if messages is not None else None


def _parse_preference(f: Fields) -> Record | None:
    has_prompt = "prompt" in f.data
    prompt = f.prompt("prompt") if has_prompt else ()
    chosen = f.answer("chosen", prefix_allowed=not has_prompt)
    rejected = f.answer("rejected", prefix_allowed=not has_prompt)
    if prompt is None or chosen is None or rejected is None:
        return None
    if not has_prompt:
        # Conversational pairs (e.g. Anthropic HH) repeat the prompt at the start
        # of both answers; the shared turns are the prompt.
        split = split_implicit_prompt(chosen, rejected)
        if split is None:
            f.add("prompt", "is missing; add a 'prompt' field, or start 'chosen' and 'rejected' with the same user turn(s)")
            return None
        prompt, chosen, rejected = split
        if not f.check_answer_turns("chosen", chosen) or not f.check_answer_turns("rejected", rejected):
            return None
    if chosen == rejected:
        f.add("rejected", "is identical to 'chosen'; a preference pair needs two different answers")
        return None
    return f.record("preference", messages=prompt, chosen=chosen, rejected=rejected)


def _parse_kto(f: Fields) -> Record | None:
    prompt = f.prompt("prompt")
    completion = f.answer("completion")
    label = f.boolean("label")
    if prompt is None or completion is None or label is None:
        return None
    return f.record("feedback", messages=prompt, completion=completion, label=label)


def _parse_classification(f: Fields) -> Record | None:
    text = f.string("text")
    label = f.class_label("label")
    return f.record("classification", text=text, label=label)


def _parse_prompt(f: Fields) -> Record | None:
    prompt = f.prompt("prompt")
    reference = f.reference("reference") if "reference" in f.data else f.reference("answer")
    return f.record("prompt", messages=prompt, reference=reference)


@dataclass(frozen=True)
class _Format:
    parse: Callable[[Fields], Record | None]
    required: tuple[str, ...]  # fields that identify the format
    optional: tuple[str, ...] = ()  # fields it also reads


_PARSERS: dict[str, _Format] = {
    "text": _Format(_parse_text, ("text",)),
    "prompt_completion": _Format(_parse_prompt_completion, ("prompt", "completion")),
    "alpaca": _Format(_parse_alpaca, ("instruction", "output"), ("input",)),
    "messages": _Format(_parse_messages, ("messages",)),
    "sharegpt": _Format(_parse_sharegpt, ("conversations",)),
    "preference": _Format(_parse_preference, ("chosen", "rejected"), ("prompt",)),
    "kto": _Format(_parse_kto, ("prompt", "completion", "label")),
    "classification": _Format(_parse_classification, ("text", "label")),
    "prompt": _Format(_parse_prompt, ("prompt",), ("reference", "answer")),
}
assert tuple(_PARSERS) == FORMATS

_KNOWN_FIELDS = {name: set(fmt.required + fmt.optional) | {"task"} for name, fmt in _PARSERS.items()}


def parse_row(row: Row, format: str, labels: frozenset[str] | None = None, task: str | None = None) -> Record | list[Problem]:
    """Parse one row with a named format: a Record, or every problem it has."""
    fields = Fields(row, labels, task, known=_KNOWN_FIELDS[format])
    record = _PARSERS[format].parse(fields)
    if fields.problems:
        return fields.problems
    assert record is not None, f"{format} parser returned no record and no problem"
    return record


# ---------------------------------------------------------------------------
# Detection.


def _candidates(keys: set[str]) -> list[str]:
    """Formats whose identifying fields are all present, most specific first."""
    fits = [name for name, fmt in _PARSERS.items() if set(fmt.required) <= keys]

    def specificity(name: str) -> tuple[int, int]:
        fmt = _PARSERS[name]
        return (-len(fmt.required), -len(set(fmt.optional) & keys))

    return sorted(fits, key=specificity)  # sorted() is stable: ties keep FORMATS order


def detect_format(rows: list[dict[str, Any]], where: str = "the data") -> tuple[str, str]:
    """Choose a format from the fields of the first rows; return (name, explanation)."""
    votes: Counter[str] = Counter()
    alternatives: dict[str, list[str]] = {}
    fields_seen: Counter[str] = Counter()
    for data in rows:
        keys = set(data)
        fields_seen.update(keys)
        fits = _candidates(keys)
        if fits:
            votes[fits[0]] += 1
            alternatives.setdefault(fits[0], fits[1:])
    if not votes:
        seen = ", ".join(f"'{k}'" for k, _ in fields_seen.most_common(12)) or "none"
        expected = "; ".join(f"{name}: {join_fields(fmt.required)}" for name, fmt in _PARSERS.items())
        raise WhetstoneError(
            f"cannot detect the format of {where}: its first rows have fields {seen}, which match no format "
            f"({expected}). Rename the fields, or pass the format explicitly."
        )
    name, count = votes.most_common(1)[0]
    explanation = f"detected '{name}' from {join_fields(_PARSERS[name].required)}"
    if count < len(rows):
        explanation += f" ({count} of the first {len(rows)} rows)"
    others = alternatives[name]
    if others:
        fits = ", ".join(f"'{o}' ({join_fields(_PARSERS[o].required)})" for o in others)
        explanation += (
            f"; the rows also fit {fits}. '{name}' was chosen because it uses the most fields; "
            "pass the format explicitly to choose another"
        )
    other_votes = [f"{n} row(s) look like '{v}'" for v, n in votes.most_common() if v != name]
    if other_votes:
        explanation += "; " + ", ".join(other_votes) + f" and will be reported as not matching '{name}'"
    return name, explanation


# ---------------------------------------------------------------------------
# Streaming and loading.


@dataclass
class Parsed:
    """One row after parsing: a record, or the problems that stopped it."""

    origin: str
    line: int  # line/item/row number; 0 when the reader could not locate a row
    row: Row | None
    record: Record | None
    problems: list[Problem]


class RecordStream:
    """Records of one file in order, with the format chosen for it.

    Opening reads at most ``DETECT_ROWS`` rows (for auto-detection); iteration
    then streams the rest, so memory stays bounded. Iterate once.
    """

    def __init__(self, path: str, format: str = "auto", labels: list[str] | None = None, task: str | None = None):
        if format != "auto" and format not in _PARSERS:
            raise WhetstoneError(f"unknown data format '{format}'; choose one of: auto, {', '.join(FORMATS)}.")
        self.source: Source = resolve_source(path)
        self.path = path
        self._items = iter_rows(self.source)
        self._head = list(itertools.islice(self._items, DETECT_ROWS)) if format == "auto" else []
        if format == "auto":
            sample = [item.data for item in self._head if isinstance(item, Row)]
            if not sample:
                first = next((str(item) for item in self._head), None)
                detail = f": {first}" if first else " (it is empty)"
                raise WhetstoneError(f"{path} holds no readable records{detail}.")
            self.format, self.explanation = detect_format(sample, path)
        else:
            self.format, self.explanation = format, f"format '{format}' was given"
        if labels is not None and self.format != "classification":
            raise WhetstoneError(
                f"labels were given, but {path} is in format '{self.format}'; labels apply only to 'classification'."
            )
        if labels is not None and not labels:
            raise WhetstoneError("the list of labels is empty; give the class names, or omit it to take them from the data.")
        self._labels = frozenset(str(label) for label in labels) if labels is not None else None
        self._task = task

    def __iter__(self) -> Iterator[Parsed]:
        for item in itertools.chain(self._head, self._items):
            if isinstance(item, Problem):
                yield Parsed(item.origin, 0, None, None, [item])
                continue
            result = parse_row(item, self.format, self._labels, self._task)
            if isinstance(result, Record):
                yield Parsed(item.origin, item.line, item, result, [])
            else:
                yield Parsed(item.origin, item.line, item, None, result)


def open_records(path: str, format: str = "auto", labels: list[str] | None = None, task: str | None = None) -> RecordStream:
    """Open ``path`` for streaming; see ``RecordStream``."""
    return RecordStream(path, format, labels, task)


@dataclass
class LoadResult:
    records: list[Record]
    format: str  # the format name used
    explanation: str  # e.g. "detected 'messages' from field 'messages'"
    problems: list[Problem]
    skipped: int  # records dropped because of problems (on_error="skip")


def load_records(
    path: str,
    format: str = "auto",
    on_error: str = "error",
    labels: list[str] | None = None,
    task: str | None = None,
) -> LoadResult:
    """Read every record of ``path`` into memory.

    ``on_error="error"`` raises ``DataError`` listing every problem;
    ``on_error="skip"`` keeps the valid records and counts the others.
    ``task`` is set on every record that has no ``task`` field of its own.
    """
    if on_error not in ("error", "skip"):
        raise WhetstoneError(f"on_error must be 'error' or 'skip', got {on_error!r}.")
    stream = open_records(path, format, labels, task)
    records: list[Record] = []
    problems: list[Problem] = []
    skipped = 0
    for parsed in stream:
        if parsed.record is not None:
            records.append(parsed.record)
        else:
            problems.extend(parsed.problems)
            skipped += 1
    if problems and on_error == "error":
        raise DataError(problems, header=f"{path}: {skipped} of {skipped + len(records)} records have problems")
    if not records:
        raise WhetstoneError(f"{path} holds no valid records ({skipped} skipped); nothing to train on.")
    return LoadResult(records, stream.format, stream.explanation, problems, skipped)


def label_set(records: list[Record]) -> list[str]:
    """The sorted class labels found in classification records."""
    return sorted({str(r.label) for r in records if r.kind == "classification" and r.label is not None})
