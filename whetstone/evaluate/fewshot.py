"""Few-shot prompting: choose K solved examples for each question and put them in its prompt.

Two ways to choose:

- ``random``: K examples drawn from the pool with a generator seeded by (seed,
  the question's text), so a question gets the same shots whatever else is
  evaluated with it, and the same seed always gives the same prompt.
- ``similar``: the K examples whose prompts are closest to the question by
  TF-IDF cosine similarity over lower-cased words (ties go to the earlier pool
  example); the most similar is placed last, next to the question.

A pool example whose prompt equals the question's is never a shot: it would
hand the model the answer.

Shots become earlier turns of the conversation (user: question, assistant:
answer, ...), which is how a chat model sees demonstrations.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from whetstone.data.formats import label_set
from whetstone.data.records import Message, Record
from whetstone.errors import WhetstoneError

SELECTIONS = ("random", "similar")
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Example:
    """A question as the model is asked it, and its reference answer."""

    prompt: tuple[Message, ...]  # ends with the user turn; may start with a system turn
    answer: str

    @property
    def question_text(self) -> str:
        return "\n".join(m.content for m in self.prompt if m.role != "system")


def classification_prompt(text: str, labels: Sequence[str]) -> str:
    return f"Classify the text. Answer with one of: {', '.join(labels)}.\n\nText: {text}"


def as_example(record: Record, labels: Sequence[str] = ()) -> Example | None:
    """The question and answer of a chat, prompt or classification record (None for other kinds)."""
    if record.kind == "chat":
        last = max((i for i, m in enumerate(record.messages) if m.role == "assistant"), default=None)
        if last is None:
            return None
        return Example(tuple(record.messages[:last]), record.messages[last].content)
    if record.kind == "prompt" and record.reference is not None:
        return Example(tuple(record.messages), record.reference)
    if record.kind == "classification" and record.label is not None:
        return Example((Message("user", classification_prompt(record.text or "", labels)),), str(record.label))
    return None


def with_shots(example: Example, shots: Sequence[Example]) -> tuple[Message, ...]:
    """The prompt with each shot as an earlier user/assistant exchange (after any system message)."""
    system = tuple(m for m in example.prompt[:1] if m.role == "system")
    turns: list[Message] = []
    for shot in shots:
        turns += [m for m in shot.prompt if m.role != "system"] + [Message("assistant", shot.answer)]
    return (*system, *turns, *example.prompt[len(system) :])


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class TfidfIndex:
    """TF-IDF vectors of the pool's prompts, for cosine similarity to a question."""

    def __init__(self, texts: Sequence[str]):
        counts = [Counter(_words(t)) for t in texts]
        df = Counter(word for c in counts for word in c)
        n = len(texts)
        # Smoothed idf, as in scikit-learn: a word in every document still weighs 1.
        self.idf = {word: math.log((1 + n) / (1 + d)) + 1 for word, d in df.items()}
        self.vectors = [self._vector(c) for c in counts]

    def _vector(self, counts: Counter) -> dict[str, float]:
        vector = {w: tf * self.idf.get(w, 0.0) for w, tf in counts.items()}
        norm = math.sqrt(sum(v * v for v in vector.values())) or 1.0
        return {w: v / norm for w, v in vector.items()}

    def similarities(self, text: str) -> list[float]:
        query = self._vector(Counter(_words(text)))
        return [sum(weight * vector.get(w, 0.0) for w, weight in query.items()) for vector in self.vectors]


def select_shots(questions: Sequence[Example], pool: Sequence[Example], k: int, selection: str = "random",
                 seed: int = 0) -> list[list[Example]]:
    """K shots from `pool` for each question."""
    if selection not in SELECTIONS:
        raise WhetstoneError(f"--shot-selection: got {selection!r}; choose one of {', '.join(SELECTIONS)}.")
    if k < 0:
        raise WhetstoneError(f"--shots: got {k}; give the number of solved examples to show, e.g. 3.")
    if k == 0:
        return [[] for _ in questions]
    if len(pool) < k:
        raise WhetstoneError(f"--shots {k}: the shot pool has only {len(pool)} usable examples; lower --shots or "
                             f"give a larger --shots-from file.")
    index = TfidfIndex([p.question_text for p in pool]) if selection == "similar" else None
    chosen = []
    for question in questions:
        allowed = [i for i, p in enumerate(pool) if p.question_text != question.question_text]
        if len(allowed) < k:
            raise WhetstoneError(f"--shots {k}: only {len(allowed)} pool examples differ from the question "
                                 f"{question.question_text[:60]!r}; lower --shots.")
        if index is None:
            picked = random.Random(f"{seed}:{question.question_text}").sample(allowed, k)
        else:
            sims = index.similarities(question.question_text)
            # The most similar shot goes last, right before the question.
            picked = sorted(allowed, key=lambda i: (-sims[i], i))[:k][::-1]
        chosen.append([pool[i] for i in picked])
    return chosen


def shots_for_records(records: Sequence[Record], pool_records: Sequence[Record], k: int, selection: str = "random",
                      seed: int = 0) -> list[list[Example]]:
    """Shots for each record (none for text records, which have no question), from the pool's records."""
    labels = label_set(list(records))  # the same label list as the questions' prompts (harness.evaluate)
    pool = [e for e in (as_example(r, labels) for r in pool_records) if e is not None]
    questions = [as_example(r, labels) for r in records]
    picked = iter(select_shots([q for q in questions if q is not None], pool, k, selection, seed))
    return [next(picked) if q is not None else [] for q in questions]
