"""The ladder: was fine-tuning worth it?

Three rungs on the same examples and the same metrics:

    zero-shot   the base model, asked the question alone
    K-shot      the base model, with K solved examples in the prompt
    tuned       the fine-tuned model, asked the question alone

If the tuned model does not beat the best of the first two on the task metric,
prompting was the cheaper answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from whetstone.data.records import Record
from whetstone.evaluate.fewshot import shots_for_records
from whetstone.evaluate.harness import EvalOptions, EvalResult, evaluate
from whetstone.evaluate.metrics import REPORTED
from whetstone.evaluate.pair import ModelPair

COLUMNS = ("loss", "perplexity", "exact_match", "chrf", "bleu", "rouge1", "rouge2", "rougeL", "accuracy", "macro_f1")
LOWER_IS_BETTER = ("loss", "perplexity")


@dataclass
class Rung:
    setting: str  # "zero-shot", "3-shot", "tuned"
    model: str  # "base" or "tuned"
    result: EvalResult


def run_ladder(pair: ModelPair, records: Sequence[Record], pool: Sequence[Record], k: int, selection: str,
               seed: int, options: EvalOptions) -> list[Rung]:
    shots = shots_for_records(records, pool, k, selection, seed)
    with pair.base() as base:
        rungs = [Rung("zero-shot", "base", evaluate(base, pair.tokenizer, records, options)),
                 Rung(f"{k}-shot", "base", evaluate(base, pair.tokenizer, records, options, shots))]
    rungs.append(Rung("tuned", "tuned", evaluate(pair.tuned, pair.tokenizer, records, options)))
    return rungs


def task_metric(requested: Sequence[str], rungs: Sequence[Rung]) -> str:
    """The metric the verdict is decided on: the first requested one that was measured (ROUGE: ROUGE-L)."""
    measured = rungs[0].result.metrics
    for name in requested:
        reported = REPORTED.get(name, (name,))
        key = "rougeL" if name == "rouge" else reported[0]
        if key in measured and name != "loss":
            return key
    return "loss"


def _format(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if key in ("chrf", "bleu", "perplexity") else f"{value:.3f}"


def render_ladder(rungs: Sequence[Rung], metric: str) -> str:
    columns = [c for c in COLUMNS if any(c in r.result.metrics for r in rungs)]
    header = ["setting", "model", "n", *columns]
    rows = [[r.setting, r.model, str(r.result.n), *(_format(c, r.result.metrics.get(c)) for c in columns)]
            for r in rungs]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += ["", verdict(rungs, metric)]
    tasks = [t for t in rungs[0].result.per_task if metric in rungs[0].result.per_task[t]]
    if len(tasks) > 1:
        lines.append(f"per task ({metric}):")
        for task in tasks:
            cells = ", ".join(f"{r.setting} {_format(metric, r.result.per_task[task].get(metric))}" for r in rungs)
            lines.append(f"  {task}: {cells}")
    return "\n".join(lines)


def verdict(rungs: Sequence[Rung], metric: str) -> str:
    *baselines, tuned = rungs
    lower = metric in LOWER_IS_BETTER
    pick = min if lower else max
    best = pick(baselines, key=lambda r: r.result.metrics.get(metric, float("inf") if lower else float("-inf")))
    a, b = tuned.result.metrics.get(metric), best.result.metrics.get(metric)
    if a is None or b is None:
        return f"verdict: {metric} was not measured on every rung."
    better = a < b if lower else a > b
    word = "beats" if better else "does not beat"
    advice = "fine-tuning was worth it." if better else "prompting the base model is the cheaper choice here."
    return (f"verdict: the tuned model {word} the best baseline ({best.setting}) on {metric}: "
            f"{_format(metric, a)} vs {_format(metric, b)} ({a - b:+.3f}); {advice}")


def ladder_dict(rungs: Sequence[Rung], metric: str) -> dict:
    return {"metric": metric, "rungs": [{"setting": r.setting, "model": r.model, **r.result.to_dict()} for r in rungs],
            "verdict": verdict(rungs, metric)}
