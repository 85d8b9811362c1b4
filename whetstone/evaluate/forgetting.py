"""Forgetting: does the tuned model still do what the base model could, outside its training domain?

The probe is a general-ability set (by default examples/general_probe, built by
its build.py from license-clean text and generated questions), run on the base
and on the tuned model:

    text_ppl       perplexity on general text records (every token)
    qa_ppl         perplexity of the reference answers of general questions
    qa_accuracy    fraction of greedy answers that contain the reference answer as whole words

and reported as deltas: "general text perplexity +3.1%". Any JSONL of text
and/or chat records can be the probe (eval.forgetting_data, `--probe FILE`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from whetstone.data.formats import load_records
from whetstone.data.records import Message, Record
from whetstone.data.render import render_record
from whetstone.errors import WhetstoneError
from whetstone.evaluate.fewshot import as_example
from whetstone.evaluate.harness import generate_replies, loss_by_task
from whetstone.evaluate.metrics import contains_answer
from whetstone.evaluate.pair import ModelPair

BUNDLED_PROBE = Path(__file__).resolve().parents[2] / "examples" / "general_probe"
PROBE_MAX_LENGTH = 256  # tokens per probe record; the bundled passages are shorter
PROBE_NEW_TOKENS = 32  # general questions have one-word answers; 32 tokens leave room for a sentence


@dataclass
class Probe:
    texts: list[Record]  # kind text
    questions: list[Record]  # kind chat: user question, assistant reference answer
    sources: list[str]


def load_probe(paths: Sequence[str] = ()) -> Probe:
    """The probe records of `paths`, or of the bundled set when `paths` is empty."""
    if not paths:
        paths = [str(p) for p in sorted(BUNDLED_PROBE.glob("*.jsonl"))]
        if not paths:
            raise WhetstoneError(f"the bundled general probe is missing ({BUNDLED_PROBE}); rebuild it with "
                                 f"`python examples/general_probe/build.py`, or pass your own probe file.")
    probe = Probe([], [], list(paths))
    for path in paths:
        for record in load_records(path).records:
            if record.kind == "text":
                probe.texts.append(record)
            elif record.kind == "chat":
                probe.questions.append(record)
            else:
                raise WhetstoneError(f"{record.origin}: the forgetting probe takes text records (perplexity) and chat "
                                     f"records (question and answer), not {record.kind} records.")
    return probe


@dataclass
class ProbeResult:
    text_ppl: float | None
    qa_ppl: float | None
    qa_accuracy: float | None
    n_text: int
    n_qa: int
    seconds: float


@torch.no_grad()
def run_probe(model, tokenizer, probe: Probe, batch_size: int = 16) -> ProbeResult:
    start = time.perf_counter()
    text_ppl = qa_ppl = qa_accuracy = None
    if probe.texts:
        rendered = [render_record(r, tokenizer, PROBE_MAX_LENGTH) for r in probe.texts]
        text_ppl = _perplexity(model, tokenizer, rendered, batch_size)
    if probe.questions:
        examples = [as_example(r) for r in probe.questions]
        rendered = [render_record(Record("chat", r.origin, messages=(*e.prompt, Message("assistant", e.answer))),
                                  tokenizer, PROBE_MAX_LENGTH) for r, e in zip(probe.questions, examples)]
        qa_ppl = _perplexity(model, tokenizer, rendered, batch_size)
        conversations = [[{"role": m.role, "content": m.content} for m in e.prompt] for e in examples]
        answers, _ = generate_replies(model, tokenizer, conversations, PROBE_NEW_TOKENS, batch_size)  # no reasoning
        qa_accuracy = sum(contains_answer(a, e.answer) for a, e in zip(answers, examples)) / len(examples)
    return ProbeResult(text_ppl, qa_ppl, qa_accuracy, len(probe.texts), len(probe.questions),
                       time.perf_counter() - start)


def _perplexity(model, tokenizer, rendered: list, batch_size: int) -> float | None:
    """exp(mean loss per supervised token) over all of `rendered`; None if nothing is supervised."""
    by_task = loss_by_task(model, tokenizer, rendered, [None] * len(rendered), batch_size)
    return math.exp(by_task["default"][0]) if by_task else None


def _pct(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else 100.0 * (after - before) / before


@dataclass
class ForgettingReport:
    base: ProbeResult
    tuned: ProbeResult
    sources: list[str]

    @property
    def deltas(self) -> dict[str, float | None]:
        accuracy = (None if self.base.qa_accuracy is None or self.tuned.qa_accuracy is None
                    else 100.0 * (self.tuned.qa_accuracy - self.base.qa_accuracy))
        return {"text_ppl_pct": _pct(self.base.text_ppl, self.tuned.text_ppl),
                "qa_ppl_pct": _pct(self.base.qa_ppl, self.tuned.qa_ppl),
                "qa_accuracy_points": accuracy}

    def sentence(self) -> str:
        """'general text perplexity 12.30 -> 12.68 (+3.1%), ...'"""
        parts = []
        d = self.deltas
        if d["text_ppl_pct"] is not None:
            parts.append(f"general text perplexity {self.base.text_ppl:.2f} -> {self.tuned.text_ppl:.2f} "
                         f"({d['text_ppl_pct']:+.1f}%)")
        if d["qa_ppl_pct"] is not None:
            parts.append(f"general QA answer perplexity {self.base.qa_ppl:.2f} -> {self.tuned.qa_ppl:.2f} "
                         f"({d['qa_ppl_pct']:+.1f}%)")
        if d["qa_accuracy_points"] is not None:
            parts.append(f"general QA accuracy {100 * self.base.qa_accuracy:.1f}% -> "
                         f"{100 * self.tuned.qa_accuracy:.1f}% ({d['qa_accuracy_points']:+.1f} points)")
        return "forgetting: " + ", ".join(parts)

    def to_dict(self) -> dict:
        def rounded(values: dict) -> dict:
            return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in values.items()}

        return {"base": rounded(asdict(self.base)), "tuned": rounded(asdict(self.tuned)),
                "delta": rounded(self.deltas), "sentence": self.sentence(), "probe": self.sources}


def measure_forgetting(pair: ModelPair, probe: Probe, batch_size: int = 16) -> ForgettingReport:
    """The probe on the tuned model, then on its base."""
    pair.tuned.eval()
    tuned = run_probe(pair.tuned, pair.tokenizer, probe, batch_size)
    with pair.base() as base_model:
        base = run_probe(base_model, pair.tokenizer, probe, batch_size)
    return ForgettingReport(base, tuned, probe.sources)
