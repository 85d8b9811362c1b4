"""Base and tuned answers side by side, each with its score against the reference."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Sequence

from whetstone.data.records import Record
from whetstone.errors import WhetstoneError
from whetstone.evaluate.fewshot import as_example
from whetstone.evaluate.harness import generate_replies
from whetstone.evaluate.metrics import ROUGE_KEYS, example_score
from whetstone.evaluate.pair import ModelPair

PER_EXAMPLE = ("rougeL", "rouge1", "rouge2", "chrf", "bleu", "exact_match")


def compare_answers(pair: ModelPair, records: Sequence[Record], n: int, metric: str, max_new_tokens: int,
                    batch_size: int) -> list[dict]:
    """The first n question/answer records, answered by both models, scored by `metric` (one per example).

    An answer's reasoning is not scored; a row carries it as base_reasoning / tuned_reasoning where there is one.
    """
    if metric not in PER_EXAMPLE:
        raise WhetstoneError(f"--metric: got {metric!r}; choose one of {', '.join(PER_EXAMPLE)}.")
    if n < 1:
        raise WhetstoneError(f"--n: got {n}; give the number of examples to show, e.g. 10.")
    examples = [e for e in (as_example(r) for r in records if r.kind in ("chat", "prompt")) if e is not None][:n]
    if not examples:
        raise WhetstoneError("compare needs question/answer records (chat or prompt with a reference) in --data.")
    conversations = [[{"role": m.role, "content": m.content} for m in e.prompt] for e in examples]
    tuned, tuned_reasoning = generate_replies(pair.tuned, pair.tokenizer, conversations, max_new_tokens, batch_size)
    with pair.base() as base_model:
        base, base_reasoning = generate_replies(base_model, pair.tokenizer, conversations, max_new_tokens,
                                                batch_size)
    rows = []
    for e, b, t, b_thought, t_thought in zip(examples, base, tuned, base_reasoning, tuned_reasoning):
        row = {"question": e.prompt[-1].content, "reference": e.answer,
               "base": b, "base_score": example_score(metric, b, e.answer),
               "tuned": t, "tuned_score": example_score(metric, t, e.answer)}
        row.update({k: v for k, v in (("base_reasoning", b_thought), ("tuned_reasoning", t_thought)) if v is not None})
        rows.append(row)
    return rows


def _fmt(metric: str, value: float) -> str:
    return f"{value:.3f}" if metric in ROUGE_KEYS or metric == "exact_match" else f"{value:.1f}"


def render_comparison(rows: Sequence[dict], metric: str, width: int | None = None) -> str:
    width = width or min(shutil.get_terminal_size((120, 20)).columns, 160)
    column = max(20, (width - 7) // 2)  # two columns and a " | " between them, indented by 4
    lines = []
    for i, row in enumerate(rows, 1):
        lines.append(f"[{i}] {row['question']}")
        lines += textwrap.wrap(f"reference: {row['reference']}", width - 4, initial_indent="    ",
                               subsequent_indent="    ")
        left = textwrap.wrap(row["base"], column) or [""]
        right = textwrap.wrap(row["tuned"], column) or [""]
        lines.append(f"    {('base  ' + metric + ' ' + _fmt(metric, row['base_score'])).ljust(column)} | "
                     f"tuned  {metric} {_fmt(metric, row['tuned_score'])}")
        for j in range(max(len(left), len(right))):
            a = left[j] if j < len(left) else ""
            b = right[j] if j < len(right) else ""
            lines.append(f"    {a.ljust(column)} | {b}".rstrip())
        lines.append("")
    base_mean = sum(r["base_score"] for r in rows) / len(rows)
    tuned_mean = sum(r["tuned_score"] for r in rows) / len(rows)
    wins = sum(r["tuned_score"] > r["base_score"] for r in rows)
    losses = sum(r["tuned_score"] < r["base_score"] for r in rows)
    lines.append(f"mean {metric}: base {_fmt(metric, base_mean)}, tuned {_fmt(metric, tuned_mean)}; the tuned answer "
                 f"scores higher on {wins} of {len(rows)} examples, lower on {losses}.")
    return "\n".join(lines)
