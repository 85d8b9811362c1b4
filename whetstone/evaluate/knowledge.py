"""Knowledge against style: did tuning teach the facts, or only what the answers look like?

Three question sets about facts of one kind (docs/knowledge.md):

    train_wording   trained facts, asked in a wording used in training
    paraphrase      trained facts, asked in a wording never used in training
    heldout         facts of the same kind never trained on (best asked like paraphrase)

Each set is generated and scored by the eval harness (ROUGE-L and exact match), on the
tuned model and on its base, and read as three differences of the tuned model's scores:

    knowledge gain      paraphrase - heldout              what it answers about trained facts beyond
                                                          what it answers about facts it never saw
    wording-only gain   train_wording - paraphrase        what it answers only when asked the trained way
    style gain          heldout - heldout(base)           what tuning gained on facts it never saw: form

A model that learnt only the answers' style scores the same on paraphrase and heldout
(knowledge gain ~0) and higher than its base on heldout (style gain > 0).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from whetstone.config import KNOWLEDGE_FILES, KnowledgeConfig
from whetstone.data.formats import load_records
from whetstone.data.records import Record
from whetstone.errors import WhetstoneError
from whetstone.evaluate.harness import EvalOptions, EvalResult, evaluate, limit_records

SETS = tuple(KNOWLEDGE_FILES)  # train_wording, paraphrase, heldout
HARNESS_METRICS = ("rouge", "exact_match")  # asked of the harness; rouge also gives rouge1/rouge2, unused here
REPORTED = ("rougeL", "exact_match")  # the first is the headline metric
# gain -> (minuend, subtrahend), each (which model, set); "model" is the one evaluated (the tuned one)
GAINS = {
    "knowledge": (("model", "paraphrase"), ("model", "heldout")),
    "wording_only": (("model", "train_wording"), ("model", "paraphrase")),
    "style": (("model", "heldout"), ("base", "heldout")),
}

BaseModel = Callable[[], contextlib.AbstractContextManager]  # e.g. ModelPair.base


def parse_spec(spec: str) -> KnowledgeConfig:
    """`--knowledge DIR`, `--knowledge paraphrase=P.jsonl,heldout=H.jsonl,...`, or both: `DIR,heldout=H.jsonl`."""
    config = KnowledgeConfig()
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        name, is_set, path = item.partition("=")
        if not is_set:
            if config.dir is not None:
                raise WhetstoneError(f"--knowledge {spec}: two directories ({config.dir}, {item}); give one, and name "
                                     f"single files as SET=FILE.")
            config.dir = item
        elif name in SETS:
            setattr(config, name, path)
        else:
            raise WhetstoneError(f"--knowledge {spec}: unknown set {name!r}; the sets are {', '.join(SETS)} "
                                 f"(e.g. --knowledge DIR or --knowledge paraphrase=P.jsonl,heldout=H.jsonl,"
                                 f"train_wording=T.jsonl).")
    problems = config.check("--knowledge")
    if problems:
        raise WhetstoneError(" ".join(problems))
    return config


def load_sets(config: KnowledgeConfig, limit: int | None = None) -> dict[str, list[Record]]:
    """{set: the first `limit` (else config.limit, else all) chat records of its file}."""
    problems = config.check()
    if problems:
        raise WhetstoneError(" ".join(problems))
    limit = limit if limit is not None else config.limit
    sets = {}
    for name, path in config.paths().items():
        records = limit_records(load_records(path).records, limit)
        other = next((r for r in records if r.kind != "chat"), None)
        if other is not None:
            raise WhetstoneError(f"{other.origin}: the {name} set must hold questions with reference answers (chat "
                                 f"records, e.g. {{\"messages\": [user, assistant]}}), not {other.kind} records.")
        sets[name] = records
    return sets


@dataclass
class KnowledgeReport:
    description: str
    paths: dict[str, str]
    model: dict[str, EvalResult]  # the evaluated (tuned) model's result on each set
    base: dict[str, EvalResult] | None  # None with --no-base, or when the model is itself the base
    seconds: float

    def scores(self, which: str) -> dict[str, dict[str, float]] | None:
        """{set: {metric: value in [0, 1]}} of the evaluated model ("model") or of its base ("base")."""
        results = self.model if which == "model" else self.base
        if results is None:
            return None
        return {name: {m: result.metrics[m] for m in REPORTED} for name, result in results.items()}

    def gains(self) -> dict[str, dict[str, float | None]]:
        """{metric: {gain: value}}, from the per-set scores exactly as GAINS says; None where a score is missing."""
        scores = {"model": self.scores("model"), "base": self.scores("base")}
        out: dict[str, dict[str, float | None]] = {}
        for metric in REPORTED:
            out[metric] = {}
            for gain, ((model_a, set_a), (model_b, set_b)) in GAINS.items():
                if scores[model_a] is None or scores[model_b] is None:
                    out[metric][gain] = None
                else:
                    out[metric][gain] = scores[model_a][set_a][metric] - scores[model_b][set_b][metric]
        return out

    def base_gains(self) -> dict[str, dict[str, float]] | None:
        """The knowledge and wording-only differences on the base model: the control, ~0 when the sets are alike."""
        base = self.scores("base")
        if base is None:
            return None
        return {m: {"knowledge": base["paraphrase"][m] - base["heldout"][m],
                    "wording_only": base["train_wording"][m] - base["paraphrase"][m]} for m in REPORTED}

    def to_dict(self, answers: bool = False) -> dict:
        """The figures (summary.json); with `answers`, every question, answer and reference too (knowledge.json)."""
        def rounded(values: dict | None) -> dict | None:
            if values is None:
                return None
            return {k: rounded(v) if isinstance(v, dict) else (None if v is None else round(v, 6))
                    for k, v in values.items()}

        out = {"description": self.description, "sets": self.paths, "n": {name: r.n for name, r in self.model.items()},
               "metric": REPORTED[0], "model": rounded(self.scores("model")), "base": rounded(self.scores("base")),
               "gains": rounded(self.gains()), "base_gains": rounded(self.base_gains()),
               "seconds": round(self.seconds, 1)}
        if answers:
            out["answers"] = {name: _answer_rows(self.model[name], self.base[name] if self.base else None)
                              for name in self.model}
        return out

    def headline(self) -> dict[str, float | None]:
        """The three gains of the headline metric, flat (summary.json top level, so trackers log them)."""
        gains = self.gains()[REPORTED[0]]
        return {f"knowledge_{gain}_gain": None if v is None else round(v, 6) for gain, v in gains.items()}

    def table(self) -> str:
        """Per-set scores and the gains, in points (x100), as the issue and docs/knowledge.md quote them."""
        width = max(len(s) for s in SETS) + 2
        lines = [f"knowledge: {self.description}; scores in points (x100), "
                 + ", ".join(f"{name} n={r.n}" for name, r in self.model.items()),
                 f"  {'':<6} {'metric':<12}" + "".join(f"{name:>{width}}" for name in SETS)]
        for which in ("model", "base"):
            scores = self.scores(which)
            if scores is None:
                continue
            for i, metric in enumerate(REPORTED):
                label = ("tuned" if self.base is not None else "model") if which == "model" else "base"
                label = label if i == 0 else ""
                lines.append(f"  {label:<6} {metric:<12}"
                             + "".join(f"{100 * scores[name][metric]:>{width}.1f}" for name in SETS))
        for metric, gains in self.gains().items():
            cells = []
            for gain, value in gains.items():
                cells.append(f"{gain.replace('_', '-')} {'n/a' if value is None else f'{100 * value:+.1f}'}")
            lines.append(f"  gains ({metric}): " + ", ".join(cells))
        if self.base_gains() is not None:
            control = self.base_gains()[REPORTED[0]]
            lines.append(f"  base model, the control ({REPORTED[0]}, ~0 when the sets are alike): knowledge "
                         f"{100 * control['knowledge']:+.1f}, wording-only {100 * control['wording_only']:+.1f}")
        lines.append("  knowledge = paraphrase - heldout; wording-only = train_wording - paraphrase; "
                     "style = heldout - base heldout")
        return "\n".join(lines)


def _answer_rows(model: EvalResult, base: EvalResult | None) -> list[dict]:
    rows = []
    for i, (answer, reference) in enumerate(zip(model.answers, model.references)):
        row = {"answer": answer, "reference": reference}
        if model.reasoning and model.reasoning[i] is not None:
            row["reasoning"] = model.reasoning[i]
        if base is not None:
            row["base_answer"] = base.answers[i]
            if base.reasoning and base.reasoning[i] is not None:
                row["base_reasoning"] = base.reasoning[i]
        rows.append(row)
    return rows


def measure_knowledge(model, tokenizer, sets: dict[str, list[Record]], options: EvalOptions,
                      base: BaseModel | None = None, description: str = "the model",
                      paths: dict[str, str] | None = None) -> KnowledgeReport:
    """Score every set on `model`, then (when `base` is given) on the base model inside `base()`.

    `options.metrics` is replaced by ROUGE and exact match: the gains are defined on them.
    """
    options = EvalOptions(HARNESS_METRICS, options.max_new_tokens, options.batch_size, options.max_length)
    start = time.perf_counter()
    scored = {name: evaluate(model, tokenizer, sets[name], options) for name in SETS}
    base_results = None
    if base is not None:
        with base() as base_model:
            base_results = {name: evaluate(base_model, tokenizer, sets[name], options) for name in SETS}
    return KnowledgeReport(description, paths or {}, scored, base_results, time.perf_counter() - start)
