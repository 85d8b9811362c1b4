"""The two files of labelling: TASKS.jsonl (read-only) and LABELS.jsonl (an append-only log).

A task is one prompt and two answers to compare:

    {"id": "q3-m0-m1", "prompt": [{"role": "user", "content": "..."}],
     "answers": [{"id": "m0", "text": "...", "source": "runs/r1"}, {"id": "m1", ...}],
     "settings": {"seed": 0, "temperature": 0.7, ...}}

LABELS.jsonl holds events, one JSON object a line, never rewritten:

    {"event": "judgement", "id": "...", "annotator": "ann", "task": "q3-m0-m1", "shown": ["m1", "m0"],
     "choice": "A", "preferred": "m1", "ratings": {"m1": 4}, "ideal": null, "note": null, "time": "...",
     "prompt": [...], "answers": [...]}

`shown` is the (A, B) order the page used, `preferred` the answer id chosen (null for
tie and skip), `ratings` 1-5 by answer id; prompt and answers are copied from the task.
    {"event": "undo", "id": "...", "annotator": "ann", "task": "q3-m0-m1", "undoes": "<judgement id>", "time": "..."}

Replaying the log gives each annotator's current judgement per task: a judgement
counts until an undo names it. Each line is written with one write() and fsync'd
before the page hears "saved", so a crash or a closed tab loses at most a judgement
the page was never told about, and the next start resumes at the first task that
annotator has not judged.
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from whetstone.errors import WhetstoneError

CHOICES = ("A", "B", "tie", "skip")
ANNOTATOR = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Answer:
    id: str  # unique within its task: "m0" (the model's sample 0), "o0" (the --against side), ...
    text: str
    source: str  # which model/run/adapter wrote it; never shown on the page (judging is blind)


@dataclass(frozen=True)
class Task:
    id: str
    prompt: tuple[dict, ...]  # chat messages ending on a user turn
    answers: tuple[Answer, Answer]
    settings: dict = field(default_factory=dict, compare=False, hash=False)

    def answer(self, answer_id: str) -> Answer:
        return next(a for a in self.answers if a.id == answer_id)


def task_to_json(task: Task) -> dict:
    return {"id": task.id, "prompt": list(task.prompt),
            "answers": [{"id": a.id, "text": a.text, "source": a.source} for a in task.answers],
            "settings": task.settings}


def read_tasks(path: str | Path) -> list[Task]:
    """Every task of a TASKS.jsonl, checked; an error names the line and the field."""
    path = Path(path)
    if not path.is_file():
        raise WhetstoneError(f"{path}: no such task file; write one with `whetstone label prepare`.")
    tasks: list[Task] = []
    seen: set[str] = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise WhetstoneError(f"{where}: not valid JSON ({exc}).") from None
        task = _parse_task(row, where)
        if task.id in seen:
            raise WhetstoneError(f"{where}: task id {task.id!r} appears twice; task ids must be unique.")
        seen.add(task.id)
        tasks.append(task)
    if not tasks:
        raise WhetstoneError(f"{path} holds no tasks.")
    return tasks


def _parse_task(row, where: str) -> Task:
    if not isinstance(row, dict):
        raise WhetstoneError(f"{where}: a task must be a JSON object with id, prompt and answers.")
    task_id = row.get("id")
    if not isinstance(task_id, str) or not task_id or len(task_id) > 200:
        raise WhetstoneError(f"{where}: field 'id' must be a non-empty string (up to 200 characters), got "
                             f"{task_id!r}.")
    prompt = row.get("prompt")
    if not isinstance(prompt, list) or not prompt or not all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in prompt):
        raise WhetstoneError(f"{where}: field 'prompt' must be a list of {{role, content}} messages (roles "
                             f"{', '.join(ROLES)}).")
    if prompt[-1]["role"] != "user":
        raise WhetstoneError(f"{where}: field 'prompt' must end on a user turn, got {prompt[-1]['role']!r}.")
    answers = row.get("answers")
    if not isinstance(answers, list) or len(answers) != 2:
        raise WhetstoneError(f"{where}: field 'answers' must hold exactly two answers to compare.")
    parsed = []
    for i, answer in enumerate(answers):
        if not (isinstance(answer, dict) and isinstance(answer.get("id"), str) and answer["id"]
                and isinstance(answer.get("text"), str)):
            raise WhetstoneError(f"{where}: answers[{i}] must be an object with string 'id' and 'text'.")
        parsed.append(Answer(answer["id"], answer["text"], str(answer.get("source", ""))))
    if parsed[0].id == parsed[1].id:
        raise WhetstoneError(f"{where}: both answers have id {parsed[0].id!r}; answer ids must differ.")
    settings = row.get("settings") if isinstance(row.get("settings"), dict) else {}
    return Task(task_id, tuple({"role": m["role"], "content": m["content"]} for m in prompt), tuple(parsed),
                settings)


def shown_order(task: Task, annotator: str) -> tuple[str, str]:
    """The answer ids shown as (A, B): random per task and annotator, and the same after a restart.

    Randomising removes position bias from the data on average; stats.py measures what is
    left (how often each annotator picks the left answer).
    """
    ids = [task.answers[0].id, task.answers[1].id]
    random.Random(f"{annotator}\x00{task.id}").shuffle(ids)  # str seeds hash with SHA-512: stable across runs
    return ids[0], ids[1]


# ---------------------------------------------------------------------------
# The label log.


def read_events(path: str | Path, repair: bool = False) -> list[dict]:
    """Every event of LABELS.jsonl, in order.

    A last line cut short by a crash (no newline, not JSON) was never acknowledged to
    the page; it is ignored, and with `repair` cut off the file so appends stay clean.
    Any other bad line is an error naming it.
    """
    path = Path(path)
    if not path.is_file():
        return []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    events: list[dict] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            if number == len(lines):  # the torn tail: the only line with no newline after it
                print(f"warning: {path}:{number}: ignoring a half-written last line (a crash while saving)",
                      file=sys.stderr)
                if repair:
                    with open(path, "r+b") as fh:
                        fh.truncate(len(raw) - len(line))
                break
            raise WhetstoneError(f"{path}:{number}: not a JSON label event; this file is written by `whetstone "
                                 f"label serve` and must not be edited.") from None
        keys = {"judgement": ("id", "annotator", "task", "choice"), "undo": ("id", "annotator", "task", "undoes")}
        if not isinstance(event, dict) or event.get("event") not in keys:
            raise WhetstoneError(f"{path}:{number}: expected an object with event 'judgement' or 'undo'.")
        missing = [k for k in keys[event["event"]] if not isinstance(event.get(k), str)]
        if missing:
            raise WhetstoneError(f"{path}:{number}: a {event['event']} event needs string fields {missing}.")
        event["_line"] = number
        events.append(event)
    return events


def current_judgements(events: list[dict]) -> dict[str, dict[str, dict]]:
    """{annotator: {task id: the judgement in force}}, in the order they were made."""
    undone = {e.get("undoes") for e in events if e["event"] == "undo"}
    out: dict[str, dict[str, dict]] = {}
    for event in events:
        if event["event"] == "judgement" and event.get("id") not in undone:
            out.setdefault(event["annotator"], {})[event["task"]] = event
    return out


class Conflict(Exception):
    """The request contradicts the log (already judged, nothing to undo): a 409."""


class LabelStore:
    """The tasks plus the log, for one or more annotators; thread-safe; appends with fsync."""

    def __init__(self, tasks: list[Task], labels: str | Path):
        self.tasks = tasks
        self.by_id = {t.id: t for t in tasks}
        self.path = Path(labels)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        events = read_events(self.path, repair=True)
        for event in events:
            if event.get("task") not in self.by_id:
                raise WhetstoneError(f"{self.path}:{event['_line']}: task {event.get('task')!r} is not in the task "
                                     f"file; these labels belong to another TASKS.jsonl (use another --out).")
            event.pop("_line")
        self.active = current_judgements(events)
        # Undo walks back through an annotator's judgements in the order they were made.
        self.stack: dict[str, list[str]] = {a: list(j) for a, j in self.active.items()}
        self.lock = threading.Lock()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def close(self) -> None:
        os.close(self._fd)

    def _append(self, event: dict) -> None:
        line = (json.dumps(event, ensure_ascii=False) + "\n").encode("utf-8")
        os.write(self._fd, line)  # one write: O_APPEND puts it whole at the end
        os.fsync(self._fd)  # on disk before the page is told "saved"

    def done(self, annotator: str) -> int:
        return len(self.active.get(annotator, {}))

    def next_task(self, annotator: str) -> Task | None:
        """The first task, in file order, this annotator has not judged."""
        judged = self.active.get(annotator, {})
        return next((t for t in self.tasks if t.id not in judged), None)

    def last(self, annotator: str) -> dict | None:
        stack = self.stack.get(annotator)
        return self.active[annotator][stack[-1]] if stack else None

    def judge(self, annotator: str, task_id: str, choice: str, ratings: dict[str, int], ideal: str | None,
              note: str | None) -> dict:
        """Record one judgement; `ratings` is keyed by side ("A"/"B"). Raises Conflict if already judged."""
        task = self.by_id[task_id]
        shown = shown_order(task, annotator)
        event = {"event": "judgement", "id": uuid.uuid4().hex, "time": _now(), "annotator": annotator,
                 "task": task_id, "shown": list(shown), "choice": choice,
                 "preferred": {"A": shown[0], "B": shown[1]}.get(choice),
                 "ratings": {shown["AB".index(side)]: value for side, value in sorted(ratings.items())},
                 "ideal": ideal, "note": note,
                 # The task travels with its judgement: the log alone is enough to export training data.
                 "prompt": list(task.prompt),
                 "answers": [{"id": a.id, "text": a.text, "source": a.source} for a in task.answers]}
        with self.lock:
            if task_id in self.active.get(annotator, {}):
                raise Conflict(f"{annotator} has already judged task {task_id!r}; undo it first to change it.")
            self._append(event)
            self.active.setdefault(annotator, {})[task_id] = event
            self.stack.setdefault(annotator, []).append(task_id)
        return event

    def undo(self, annotator: str) -> dict:
        """Withdraw this annotator's most recent judgement still in force; the log keeps both lines."""
        with self.lock:
            stack = self.stack.get(annotator)
            if not stack:
                raise Conflict(f"{annotator} has no judgement to undo.")
            judgement = self.active[annotator][stack[-1]]
            event = {"event": "undo", "id": uuid.uuid4().hex, "time": _now(), "annotator": annotator,
                     "task": judgement["task"], "undoes": judgement["id"]}
            self._append(event)
            stack.pop()
            del self.active[annotator][judgement["task"]]
        return judgement


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
