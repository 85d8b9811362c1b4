"""Self-replay data: the base model's own questions and answers, to hold forgetting down.

    whetstone data replay OUT.jsonl --model M [-n 400]

Replay (data.replay) mixes general data into training so that the model keeps doing
what it did before. When a user has no general data of their own, the model can
write it. Given only the chat template's opening of a user turn, an instruction
model writes a user request from its own distribution (Xu et al. 2024, "Magpie");
answered by the same model, each request becomes a chat record of what the base
model already does. Training on a share of these records pulls the tuned
model back towards the base model's behaviour outside the task (self-distillation,
as in Yang et al. 2024, "Self-Distillation Bridges Distribution Gap in Language
Model Fine-Tuning"). No outside text is involved, so the file carries no licence
and no leak of any evaluation set.

Requests are sampled at `temperature`, stripped, kept when they have `min_words`
to `max_words` words, and deduplicated case-insensitively; or they are read from
a file of the user's own general requests. Answers are greedy by default. In
theory samples (`answer_temperature` 1.0) hold the model's distribution in place
where greedy answers pull it towards its modes; measured on the embedded model,
sampled answers ran longer (fewer finished), hallucinated more, and held general
ability worse on every probe figure (docs/knowledge.md). An answer that reaches
`answer_tokens` without EOS (or is empty) is dropped, because training on it
would teach the model to stop mid-sentence.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from whetstone.data.render import render_prompt
from whetstone.errors import WhetstoneError
from whetstone.overwrite import refuse_existing, refuse_input_as_output

SENTINEL = "\x00whetstone-request\x00"


@dataclass(frozen=True)
class ReplayOptions:
    n: int = 400
    """Distinct requests to sample and answer; the records written are those answered within answer_tokens."""
    request_tokens: int = 48
    answer_tokens: int = 160
    temperature: float = 1.0
    """Sampling temperature of the requests."""
    answer_temperature: float = 0.0
    """Sampling temperature of the answers; 0 (greedy) measured better than 1.0 (docs/knowledge.md)."""
    batch_size: int = 16
    seed: int = 0
    min_words: int = 3
    max_words: int = 40
    max_rounds: int = 8
    """Sampling rounds of n requests each before giving up on reaching n."""
    starts: tuple[str, ...] = ()
    """Words each request begins with, taken in turn (e.g. "What", "Who"): they steer the kind of request
    the model writes, here short questions, where an unsteered model mostly writes long tasks."""


@dataclass
class ReplayReport:
    written: int = 0
    sampled: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: {"length": 0, "duplicate": 0, "unfinished_answer": 0})
    seconds: float = 0.0

    def render(self, path: str) -> str:
        dropped = ", ".join(f"{count} {why.replace('_', ' ')}" for why, count in self.dropped.items())
        return (f"wrote {self.written} self-replay records to {path} ({self.sampled} requests; "
                f"dropped: {dropped}) in {self.seconds:.0f} s")


def request_prefix(tokenizer) -> str:
    """The rendered text up to where a user's words begin: what the model continues to write a request."""
    rendered = render_prompt(tokenizer, [{"role": "user", "content": SENTINEL}])
    if SENTINEL not in rendered:
        raise WhetstoneError("data replay: the chat template dropped the user's words; it cannot open a user turn.")
    return rendered.split(SENTINEL)[0]


def _keep_request(text: str, options: ReplayOptions) -> bool:
    return options.min_words <= len(text.split()) <= options.max_words


def sample_requests(model, tokenizer, options: ReplayOptions, report: ReplayReport, progress) -> list[str]:
    """Up to options.n distinct user requests, written by the model itself."""
    from whetstone.models.inference import generate_from_prompts  # lazy: imports torch

    prefix = request_prefix(tokenizer)
    starts = options.starts or ("",)
    kept: list[str] = []
    seen: set[str] = set()
    for round_ in range(options.max_rounds):
        want = options.n - len(kept)
        if want <= 0:
            break
        for start in range(0, want, options.batch_size):
            size = min(options.batch_size, want - start)
            begins = [starts[(report.sampled + i) % len(starts)] for i in range(size)]
            texts = generate_from_prompts(model, tokenizer, [prefix + b for b in begins], options.request_tokens,
                                          temperature=options.temperature, batch_size=size,
                                          seed=options.seed + 1_000_003 * round_ + start, add_special_tokens=False,
                                          strip=False)
            report.sampled += size
            before = len(kept)
            for text in ((b + t).strip() for b, t in zip(begins, texts)):
                key = " ".join(text.lower().split())
                if not _keep_request(text, options):
                    report.dropped["length"] += 1
                elif key in seen:
                    report.dropped["duplicate"] += 1
                else:
                    seen.add(key)
                    kept.append(text)
            progress.update(len(kept) - before)
    return kept[: options.n]


def answer_requests(model, tokenizer, requests: list[str], options: ReplayOptions, report: ReplayReport,
                    progress) -> list[dict]:
    """Chat records of each request and the model's answer (greedy, or sampled); answers cut short are dropped."""
    from whetstone.models.inference import generate_answers  # lazy: imports torch

    records = []
    for start in range(0, len(requests), options.batch_size):
        batch = requests[start : start + options.batch_size]
        ended: list[bool] = []
        answers = generate_answers(model, tokenizer, [[{"role": "user", "content": r}] for r in batch],
                                   max_new_tokens=options.answer_tokens, temperature=options.answer_temperature,
                                   batch_size=len(batch), seed=options.seed + start, ended=ended)
        for request, answer, done in zip(batch, answers, ended):
            if not (answer and done):
                report.dropped["unfinished_answer"] += 1
                continue
            records.append({"messages": [{"role": "user", "content": request},
                                         {"role": "assistant", "content": answer}]})
        progress.update(len(batch))
    return records


def check_output(output: str, options: ReplayOptions, overwrite: bool, requests: str | None = None) -> Path:
    """Refuse a bad OUT or -n before any model is loaded."""
    path = Path(output)
    if path.suffix != ".jsonl":
        raise WhetstoneError(f"data replay: write to a .jsonl file, got {output}.")
    refuse_input_as_output(requests, output, "data replay")
    refuse_existing(output, overwrite)
    if options.n < 1:
        raise WhetstoneError(f"data replay: -n must be at least 1, got {options.n}.")
    return path


def read_requests(path: str) -> list[str]:
    """The first user turn of each chat record in `path` (any format `whetstone data check` reads as chat)."""
    from whetstone.data.formats import load_records

    loaded = load_records(path)
    requests = [next((m.content for m in r.messages if m.role == "user"), "") for r in loaded.records
                if r.kind == "chat"]
    requests = [r for r in requests if r.strip()]
    if not requests:
        raise WhetstoneError(f"data replay --requests {path}: no chat record with a user turn; give chat records, "
                             f"e.g. {{\"messages\": [{{\"role\": \"user\", \"content\": ...}}]}}.")
    return requests


def write_self_replay(model, tokenizer, output: str, options: ReplayOptions, overwrite: bool = False,
                      requests: list[str] | None = None) -> ReplayReport:
    """Sample and answer options.n requests; write those answered in full as chat records to `output`, atomically."""
    from tqdm.auto import tqdm

    path = check_output(output, options, overwrite)
    report = ReplayReport()
    began = time.perf_counter()
    if requests is None:
        with tqdm(total=options.n, desc="requests", unit="req") as progress:
            requests = sample_requests(model, tokenizer, options, report, progress)
    else:  # the user's own requests, the first n of them
        requests = requests[: options.n]
        report.sampled = len(requests)
    with tqdm(total=len(requests), desc="answers", unit="ans") as progress:
        records = answer_requests(model, tokenizer, requests, options, report, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(partial, path)
    report.written = len(records)
    report.seconds = time.perf_counter() - began
    return report
