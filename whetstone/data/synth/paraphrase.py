"""More wordings of a question, and `whetstone data paraphrase`: the same augmentation for the user's own Q&A data.

A question's wordings are: the question itself, then the teacher's rewordings that keep its names and most of
its content words (teacher.parse_paraphrases), then, where the teacher gave fewer, the template floor: the
question inside a different frame ("Question: ...", "I'd like to know: ..."). The answer never changes.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from whetstone.data.records import Record
from whetstone.data.synth.teacher import PARAPHRASE_TOKENS, Teacher, paraphrase_prompt, parse_paraphrases
from whetstone.errors import WhetstoneError
from whetstone.overwrite import refuse_existing, refuse_input_as_output

FRAMES = ("{q}", "Question: {q}", "I'd like to know: {q}", "Please answer this: {q}", "Here is my question. {q}",
          "Can you help me? {q}", "Quick question: {q}", "Answer briefly: {q}")
MAX_WORDINGS = len(FRAMES)


def check_wordings(n: int) -> None:
    if not 1 <= n <= MAX_WORDINGS:
        raise WhetstoneError(f"--wordings must be between 1 and {MAX_WORDINGS} (1: the question as it is), got {n}.")


def reword(questions: list[str], n: int, teacher: Teacher | None) -> list[tuple[list[tuple[str, str]], int]]:
    """For each question, (``n`` wordings as (text, origin), teacher lines dropped as unusable).

    The origins are "original" for the question itself, first, then "teacher", then "template"."""
    if n == 1 or not questions:
        return [([(q, "original")], 0) for q in questions]
    replies = [""] * len(questions)
    if teacher is not None:
        replies = teacher.complete([paraphrase_prompt(q, n - 1) for q in questions], PARAPHRASE_TOKENS)
    out = []
    for question, reply in zip(questions, replies):
        kept, dropped = parse_paraphrases(reply, question) if teacher is not None else ([], 0)
        kept = kept[: n - 1]
        framed = [frame.format(q=question) for frame in FRAMES[1:]][: n - 1 - len(kept)]
        out.append(([(question, "original"), *((k, "teacher") for k in kept), *((f, "template") for f in framed)],
                    dropped))
    return out


def count_wordings(counts: Counter, worded: list[tuple[str, str]], dropped: int) -> None:
    """Add one question's rewordings, by origin, and the teacher lines dropped, to ``counts``."""
    for _, origin in worded[1:]:
        counts[f"wordings_{origin}"] += 1
    counts["paraphrase_lines_dropped"] += dropped


@dataclass
class ParaphraseReport:
    records_in: int = 0
    records_out: int = 0
    skipped: int = 0  # records that are not one question and its answer
    counts: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def render(self, path: str) -> str:
        c = self.counts
        return (f"wrote {self.records_out} records to {path}: {self.records_in - self.skipped} questions x "
                f"their wordings (teacher {c['wordings_teacher']}, template {c['wordings_template']}; "
                f"{c['paraphrase_lines_dropped']} teacher lines dropped as unusable); {self.skipped} records that "
                f"are not a single question and answer were left out; {self.seconds:.1f} s")


def _question_answer(record: Record) -> tuple[list[dict], str, str] | None:
    """(system turns, question, answer) of a single-turn Q&A record; None for anything else."""
    turns = list(record.messages)
    system = [{"role": m.role, "content": m.content} for m in turns if m.role == "system"]
    rest = [m for m in turns if m.role != "system"]
    if record.kind != "chat" or [m.role for m in rest] != ["user", "assistant"] or rest[1].tool_calls:
        return None
    return system, rest[0].content, rest[1].content


def paraphrase_file(source: str, output: str, n: int, teacher: Teacher | None, overwrite: bool = False,
                    batch_size: int = 8) -> ParaphraseReport:
    """Write ``n`` wordings of every Q&A record of ``source`` to ``output`` (JSONL), atomically."""
    from tqdm.auto import tqdm

    from whetstone.data.formats import load_records

    check_wordings(n)
    if Path(output).suffix != ".jsonl":
        raise WhetstoneError(f"data paraphrase: write to a .jsonl file, got {output}.")
    refuse_input_as_output(source, output, "data paraphrase")
    refuse_existing(output, overwrite)
    records = load_records(source).records
    report, began = ParaphraseReport(records_in=len(records)), time.perf_counter()
    pairs = [(r, qa) for r in records if (qa := _question_answer(r)) is not None]
    report.skipped = len(records) - len(pairs)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    partial = Path(output + ".partial")
    with partial.open("w", encoding="utf-8") as handle, tqdm(total=len(pairs), desc="questions", unit="q") as bar:
        for i in range(0, len(pairs), batch_size):
            batch = pairs[i: i + batch_size]
            worded = reword([qa[1] for _, qa in batch], n, teacher)
            for (record, (system, _, answer)), (wordings, dropped) in zip(batch, worded):
                count_wordings(report.counts, wordings, dropped)
                for k, (question, origin) in enumerate(wordings):
                    row = {"messages": [*system, {"role": "user", "content": question},
                                        {"role": "assistant", "content": answer}], **record.extra,
                           "paraphrase": {"of": record.origin, "wording": k, "origin": origin}}
                    if record.task is not None:
                        row["task"] = record.task
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                    report.records_out += 1
            bar.update(len(batch))
    os.replace(partial, output)
    report.seconds = time.perf_counter() - began
    return report
