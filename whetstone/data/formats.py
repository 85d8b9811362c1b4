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
messages           messages: [{role, content}], tools?             chat
sharegpt           conversations: [{from, value}], tools?          chat
preference         prompt?, chosen, rejected                       preference
kto                prompt, completion, label (bool)                feedback
classification     text, label                                     classification
prompt             prompt, reference? / answer?                    prompt
=================  ==============================================  ================

Any row may also carry ``task`` (a string), which becomes ``Record.task``.

Tool calling and reasoning (``fields.py`` validates them):

- messages (OpenAI): ``tools`` lists function schemas (or is their JSON text);
  an assistant turn may carry ``tool_calls`` [{id, type, function: {name,
  arguments}}] (arguments: a JSON object or its text; content may then be
  null), a ``{"role": "tool", "tool_call_id", "name", "content"}`` turn
  answers a call, and ``reasoning_content`` or ``thinking`` is the assistant's
  reasoning.
- sharegpt: ``from: function_call`` is an assistant turn whose value is the
  call as JSON, {"name", "arguments"} or a list of them; ``from: observation``
  is a tool result, answering the calls before it in order.
"""

from __future__ import annotations

import itertools
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


from whetstone.data.fields import CALLS, Fields, join_fields, split_implicit_prompt

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
    tools = f.tools("tools")
    messages = f.messages("messages", tools=tools or ())
    if tools is None or messages is None:
        return None
    return f.chat(messages, tools)


_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "bot": "assistant",
    "system": "system",
    "function_call": CALLS,
    "observation": "tool",
    "tool": "tool",
}


def _parse_sharegpt(f: Fields) -> Record | None:
    tools = f.tools("tools")
    messages = f.messages("conversations", keys=("from", "value"), roles=_SHAREGPT_ROLES, tools=tools or ())
    if tools is None or messages is None:
        return None
    return f.chat(messages, tools)


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
            f.add(
                "prompt",
                "is missing; add a 'prompt' field, or start 'chosen' and 'rejected' with the same user turn(s)",
            )
            return None
        prompt, chosen, rejected = split
        chosen, rejected = f.check_answer_turns("chosen", chosen), f.check_answer_turns("rejected", rejected)
        if chosen is None or rejected is None:
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
    reference = f.reference("reference" if f.data.get("reference") not in (None, "") else "answer")
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
    "messages": _Format(_parse_messages, ("messages",), ("tools",)),
    "sharegpt": _Format(_parse_sharegpt, ("conversations",), ("tools",)),
    "preference": _Format(_parse_preference, ("chosen", "rejected"), ("prompt",)),
    "kto": _Format(_parse_kto, ("prompt", "completion", "label")),
    "classification": _Format(_parse_classification, ("text", "label")),
    "prompt": _Format(_parse_prompt, ("prompt",), ("reference", "answer")),
}
assert tuple(_PARSERS) == FORMATS

_KNOWN_FIELDS = {name: set(fmt.required + fmt.optional) | {"task"} for name, fmt in _PARSERS.items()}


def parse_row(
    row: Row, format: str, labels: frozenset[str] | None = None, task: str | None = None
) -> Record | list[Problem]:
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
            raise WhetstoneError(
                "the list of labels is empty; give the class names, or omit it to take them from the data."
            )
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


def open_records(
    path: str, format: str = "auto", labels: list[str] | None = None, task: str | None = None
) -> RecordStream:
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
