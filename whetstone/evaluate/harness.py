"""Evaluate one model on one set of records: loss, generation metrics, label ranking, per task.

What each kind of record gets:

    chat / prompt        loss and perplexity on the answer tokens; the answer is generated
                         (batched, greedy, stops at EOS) and scored by the generation metrics,
                         without its reasoning (a <think> block, gpt-oss's analysis channel),
                         which is kept beside it
    classification       loss on the gold label; the label strings are ranked by
                         log-likelihood as answers (no free-text parsing) for accuracy, macro-F1
    text                 loss and perplexity on every token

With shots, every question's prompt carries its solved examples, and only the
final answer's tokens count towards the loss.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from whetstone.config import EVAL_METRICS
from whetstone.data.dataset import TokenizedSet
from whetstone.data.formats import label_set
from whetstone.data.records import Message, Record
from whetstone.data.render import IGNORE, Rendered, render_prompt, render_record
from whetstone.data.tool_parse import THINK_OPEN, reasoning_format, split_reasoning
from whetstone.errors import WhetstoneError
from whetstone.evaluate.fewshot import Example, as_example, with_shots
from whetstone.evaluate.loss import objective_loss
from whetstone.evaluate.metrics import GENERATION_METRICS, LABEL_METRICS, generation_scores, group_by_task, label_scores
from whetstone.evaluate.scoring import rank_labels
from whetstone.models.inference import generate_answers
from whetstone.objectives import OBJECTIVES


@dataclass
class EvalOptions:
    metrics: Sequence[str] = EVAL_METRICS
    """Requested metrics; each is computed on the records it applies to."""
    max_new_tokens: int = 128
    batch_size: int = 16
    """Prompts generated together, and examples per loss batch."""
    max_length: int = 1024
    """Tokens per example for the loss (longer ones are truncated from the right)."""


@dataclass
class EvalResult:
    n: int
    metrics: dict[str, float]
    per_task: dict[str, dict[str, float]]
    answers: list[str | None]  # generated answer or predicted label per record; None where none was made
    references: list[str | None]
    generated: int = 0  # answers generated
    generation_s: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    reasoning: list[str | None] = field(default_factory=list)  # split off each generated answer; never scored

    @property
    def examples_per_s(self) -> float | None:
        return self.generated / self.generation_s if self.generated and self.generation_s > 0 else None

    def to_dict(self) -> dict:
        out = {"n": self.n, **{k: round(v, 6) for k, v in self.metrics.items()}}
        if self.generated:
            out["generated"] = self.generated
            out["generation_s"] = round(self.generation_s, 3)
            out["examples_per_s"] = round(self.examples_per_s or 0.0, 3)
        if len(self.per_task) > 1:
            out["per_task"] = {t: {k: round(v, 6) for k, v in m.items()} for t, m in self.per_task.items()}
        return out


def check_metrics(names: Sequence[str]) -> list[str]:
    unknown = [m for m in names if m not in EVAL_METRICS]
    if unknown:
        raise WhetstoneError(f"--metrics: unknown {', '.join(unknown)}; choose from {', '.join(EVAL_METRICS)}.")
    return list(names)


def keep_last_answer(rendered: Rendered) -> Rendered:
    """Supervise only the last run of supervised tokens (the question's answer, not the shots' answers)."""
    labels = list(rendered.labels)
    end = max((i for i, label in enumerate(labels) if label != IGNORE), default=-1)
    start = end
    while start > 0 and labels[start - 1] != IGNORE:
        start -= 1
    labels = [label if start <= i <= end else IGNORE for i, label in enumerate(labels)]
    return Rendered(rendered.input_ids, labels, rendered.truncated, rendered.n_full_tokens)


def _loss_example(record: Record, prompt: tuple[Message, ...] | None, answer: str | None, tokenizer,
                  max_length: int, only_last: bool) -> Rendered:
    if prompt is None:  # a text record: every token
        return render_record(record, tokenizer, max_length)
    chat = Record("chat", record.origin, messages=(*prompt, Message("assistant", answer or "")))
    rendered = render_record(chat, tokenizer, max_length)
    return keep_last_answer(rendered) if only_last else rendered


@torch.no_grad()
def loss_by_task(model, tokenizer, examples: list[Rendered], tasks: list[str | None],
                 batch_size: int) -> dict[str, tuple[float, int]]:
    """{task: (mean loss per supervised token, supervised tokens)}; examples with no supervised token drop out."""
    sft = OBJECTIVES["sft"]
    device = next(model.parameters()).device
    out = {}
    for task, rows in group_by_task(tasks).items():
        kept = [examples[i] for i in rows if examples[i].n_supervised > 0]
        if not kept:
            continue
        data = TokenizedSet(kept, ["eval"] * len(kept), [task] * len(kept))
        result = objective_loss(model, sft, data, batch_size, tokenizer.pad_token_id, device)
        out[task] = (result["loss"], sum(e.n_supervised for e in kept))
    return out


def evaluate(model, tokenizer, records: Sequence[Record], options: EvalOptions,
             shots: Sequence[Sequence[Example]] | None = None) -> EvalResult:
    """Every requested metric that applies to `records`, overall and per task."""
    if not records:
        raise WhetstoneError("there are no records to evaluate.")
    metrics = check_metrics(options.metrics)
    labels = label_set(list(records))
    examples = [as_example(r, labels) for r in records]
    for record, example in zip(records, examples):
        if example is None and record.kind != "text":
            raise WhetstoneError(f"{record.origin}: a {record.kind} record cannot be evaluated; eval takes chat, "
                                 f"prompt (with a reference), classification and text records.")
    prompts = [None if e is None else with_shots(e, shots[i]) if shots else e.prompt for i, e in enumerate(examples)]
    tasks = [r.task for r in records]
    result = EvalResult(len(records), {}, {}, [None] * len(records), [e.answer if e else None for e in examples],
                        reasoning=[None] * len(records))

    if "loss" in metrics:
        rendered = [_loss_example(r, p, e.answer if e else None, tokenizer, options.max_length, bool(shots))
                    for r, p, e in zip(records, prompts, examples)]
        result.counts["truncated"] = sum(r.truncated for r in rendered)
        by_task = loss_by_task(model, tokenizer, rendered, tasks, options.batch_size)
        for task, (loss, tokens) in by_task.items():
            result.per_task.setdefault(task, {}).update({"loss": loss, "perplexity": math.exp(min(loss, 50.0))})
        tokens = sum(t for _, t in by_task.values())
        if tokens:
            loss = sum(loss * t for loss, t in by_task.values()) / tokens
            result.metrics.update({"loss": loss, "perplexity": math.exp(min(loss, 50.0))})
            result.counts["loss_tokens"] = tokens

    generation = [m for m in metrics if m in GENERATION_METRICS]
    asked = [i for i, r in enumerate(records) if r.kind in ("chat", "prompt")]
    if generation and asked:
        conversations = [[{"role": m.role, "content": m.content} for m in prompts[i]] for i in asked]
        start = time.perf_counter()
        answers, reasoning = generate_replies(model, tokenizer, conversations, options.max_new_tokens,
                                              options.batch_size)
        result.generation_s = time.perf_counter() - start
        result.generated = len(answers)
        for i, answer, thought in zip(asked, answers, reasoning):
            result.answers[i], result.reasoning[i] = answer, thought
        _score(result, asked, tasks, lambda idx: generation_scores(
            generation, [result.answers[i] for i in idx], [result.references[i] for i in idx]))

    ranking = [m for m in metrics if m in LABEL_METRICS]
    classified = [i for i, r in enumerate(records) if r.kind == "classification"]
    if ranking and classified:
        predictions = rank_labels(model, tokenizer, [prompts[i] for i in classified], labels, options.max_length)
        for i, label in zip(classified, predictions):
            result.answers[i] = label
        _score(result, classified, tasks, lambda idx: label_scores(
            ranking, [result.answers[i] for i in idx], [result.references[i] for i in idx]))
    return result


def generate_replies(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int,
                     batch_size: int) -> tuple[list[str], list[str | None]]:
    """(answers, reasoning) to each conversation, greedy. The reasoning (None where there is none) is
    split off, so that an answer is scored on what it says, not on what the model thought first."""
    texts = generate_answers(model, tokenizer, conversations, max_new_tokens, batch_size=batch_size)
    think = reasoning_format(tokenizer) == "think"
    answers, reasoning = [], []
    for conversation, text in zip(conversations, texts):
        # A template that prefills <think> (DeepSeek-R1) has the reply start inside it.
        opened = think and render_prompt(tokenizer, conversation).rstrip().endswith(THINK_OPEN)
        thought, answer = split_reasoning(text, tokenizer, opened=opened)
        answers.append(answer)
        reasoning.append(thought)
    return answers, reasoning


def _score(result: EvalResult, indices: list[int], tasks: list[str | None], score) -> None:
    """Apply `score` (indices -> metrics) to all `indices` and to each task's share of them."""
    result.metrics.update(score(indices))
    for task, rows in group_by_task([tasks[i] for i in indices]).items():
        result.per_task.setdefault(task, {}).update(score([indices[j] for j in rows]))


def limit_records(records: list[Record], limit: int | None) -> list[Record]:
    if limit is not None and limit < 1:
        raise WhetstoneError(f"--limit: got {limit}; give a positive number of records, or leave it out for all.")
    return records[:limit] if limit is not None else records

