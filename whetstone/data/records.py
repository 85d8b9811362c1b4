"""The canonical record: every input format is parsed into one of these.

Readers (``readers.py``) turn files into rows, formats (``formats.py``) turn rows
into records, and everything downstream (rendering, checks, objectives) sees only
``Record``. A record keeps its origin ("train.jsonl:12") so that every later error
can point back at the line the user has to fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["text", "chat", "preference", "feedback", "classification", "prompt"]

ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class ToolCall:
    """One function call an assistant turn makes (OpenAI's tool_calls[i], ShareGPT's function_call)."""

    name: str
    arguments: dict  # parsed from the JSON the record holds
    id: str | None = None


@dataclass(frozen=True)
class Message:
    role: str  # one of ROLES
    content: str  # may be empty for an assistant turn that only calls tools
    reasoning: str | None = None  # assistant: its thinking (reasoning_content / thinking), rendered per data.reasoning
    tool_calls: tuple[ToolCall, ...] = ()  # assistant: the calls it makes
    tool_call_id: str | None = None  # tool: the call this result answers
    name: str | None = None  # tool: the function that produced it


@dataclass(frozen=True)
class Record:
    """One training or evaluation example, whatever file format it came from.

    Which fields are set depends on ``kind``:

    - ``text``: ``text`` (plain causal LM; every token is supervised).
    - ``chat``: ``messages``, the whole conversation; assistant turns are the
      completions. prompt/completion, alpaca, OpenAI messages and ShareGPT all
      become ``chat``.
    - ``preference``: ``messages`` is the prompt; ``chosen`` and ``rejected`` are
      the competing assistant turns.
    - ``feedback`` (KTO): ``messages`` is the prompt, ``completion`` the answer,
      ``label`` True (desirable) or False (undesirable).
    - ``classification``: ``text`` and ``label`` (a string class name).
    - ``prompt`` (online RL): ``messages`` is the prompt, ``reference`` an
      optional reference answer.
    """

    kind: Kind
    origin: str  # "path:line", 1-based line (or row) number
    text: str | None = None
    messages: tuple[Message, ...] = ()
    chosen: tuple[Message, ...] = ()
    rejected: tuple[Message, ...] = ()
    completion: tuple[Message, ...] = ()
    label: str | bool | None = None
    reference: str | None = None
    task: str | None = None
    tools: tuple[dict, ...] = ()  # chat: the functions the conversation may call (OpenAI's JSON schemas)
    extra: dict = field(default_factory=dict, compare=False, hash=False)
