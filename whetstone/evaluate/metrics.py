"""Task metrics: generated answers against references, predicted labels against gold labels.

Each metric keeps the scale of its reference implementation, so a number here
can be compared with a number in a paper:

    exact_match, rouge1, rouge2, rougeL, accuracy, macro_f1    in [0, 1]
    chrf, bleu                                                 in [0, 100] (sacrebleu)

chrF and BLEU are corpus-level (sacrebleu's corpus_chrf / corpus_bleu with their
default tokenization), not means of sentence scores. ROUGE is the mean of the
per-example F-measures of rouge-score with the Porter stemmer; its tokenizer
keeps only ASCII letters and digits, so it reads nothing in non-Latin scripts
(use chrF there).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable, Sequence

GENERATION_METRICS = ("exact_match", "chrf", "bleu", "rouge")  # need generated answers
LABEL_METRICS = ("accuracy", "macro_f1")  # need labels ranked by log-likelihood
ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")
# What each requested metric reports: "rouge" is three numbers.
REPORTED = {"exact_match": ("exact_match",), "chrf": ("chrf",), "bleu": ("bleu",), "rouge": ROUGE_KEYS,
            "accuracy": ("accuracy",), "macro_f1": ("macro_f1",)}


def normalize_answer(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed: 'The  answer.' == 'the answer'."""
    text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text.lower())
    return " ".join(text.split())


def exact_match(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of answers equal to their reference after `normalize_answer`."""
    hits = sum(normalize_answer(h) == normalize_answer(r) for h, r in zip(hypotheses, references, strict=True))
    return hits / max(len(references), 1)


def contains_answer(hypothesis: str, reference: str) -> bool:
    """The normalized reference appears in the normalized answer as whole words ("42" is not in "142")."""
    ref = normalize_answer(reference)
    return bool(ref) and re.search(rf"(?<!\w){re.escape(ref)}(?!\w)", normalize_answer(hypothesis)) is not None


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    import sacrebleu

    return sacrebleu.corpus_chrf(list(hypotheses), [list(references)]).score


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    import sacrebleu

    return sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score


@functools.lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)


def rouge(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F-measure."""
    totals = dict.fromkeys(ROUGE_KEYS, 0.0)
    for hypothesis, reference in zip(hypotheses, references, strict=True):
        scores = _rouge_scorer().score(reference, hypothesis)  # rouge-score takes (target, prediction)
        for key in ROUGE_KEYS:
            totals[key] += scores[key].fmeasure
    return {key: value / max(len(references), 1) for key, value in totals.items()}


def accuracy(predictions: Sequence[str], golds: Sequence[str]) -> float:
    return sum(p == g for p, g in zip(predictions, golds, strict=True)) / max(len(golds), 1)


def macro_f1(predictions: Sequence[str], golds: Sequence[str]) -> float:
    """Unweighted mean of per-class F1 over every class that is gold or predicted (sklearn's default)."""
    classes = sorted(set(golds) | set(predictions))
    f1s = []
    for c in classes:
        tp = sum(p == c and g == c for p, g in zip(predictions, golds))
        fp = sum(p == c and g != c for p, g in zip(predictions, golds))
        fn = sum(p != c and g == c for p, g in zip(predictions, golds))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(f1s) / max(len(f1s), 1)


# Each generation metric: (answers, references) -> the numbers it reports.
_GENERATION: dict[str, Callable[[Sequence[str], Sequence[str]], dict[str, float]]] = {
    "exact_match": lambda h, r: {"exact_match": exact_match(h, r)},
    "chrf": lambda h, r: {"chrf": chrf(h, r)},
    "bleu": lambda h, r: {"bleu": bleu(h, r)},
    "rouge": rouge,
}
_LABEL: dict[str, Callable[[Sequence[str], Sequence[str]], float]] = {"accuracy": accuracy, "macro_f1": macro_f1}


def generation_scores(names: Sequence[str], hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """The requested generation metrics (names from GENERATION_METRICS) over one set of answers."""
    out: dict[str, float] = {}
    for name in names:
        if name in _GENERATION:
            out.update(_GENERATION[name](hypotheses, references))
    return out


def label_scores(names: Sequence[str], predictions: Sequence[str], golds: Sequence[str]) -> dict[str, float]:
    """The requested label metrics (names from LABEL_METRICS) over one set of predictions."""
    return {name: _LABEL[name](predictions, golds) for name in names if name in _LABEL}


def example_score(name: str, hypothesis: str, reference: str) -> float:
    """One example's score under a reported metric name (for side-by-side comparisons)."""
    import sacrebleu

    if name == "exact_match":
        return float(normalize_answer(hypothesis) == normalize_answer(reference))
    if name == "chrf":
        return sacrebleu.sentence_chrf(hypothesis, [reference]).score
    if name == "bleu":
        return sacrebleu.sentence_bleu(hypothesis, [reference]).score
    if name in ROUGE_KEYS:
        return _rouge_scorer().score(reference, hypothesis)[name].fmeasure
    raise ValueError(f"no per-example score for {name!r}")


def group_by_task(tasks: Sequence[str | None]) -> dict[str, list[int]]:
    """Indices of the examples of each task, in first-seen order; records without a task are 'default'."""
    groups: dict[str, list[int]] = {}
    for i, task in enumerate(tasks):
        groups.setdefault(task or "default", []).append(i)
    return groups
