"""`whetstone data synth DOCS... -o OUT.jsonl`: checked question-answer pairs from documents, resumably.

For each chunk (chunks.py) that bears facts, candidate pairs come from two sources: the structured floor
(extract.py: answers verbatim from the chunk) and the teacher (one question and answer per chunk, teacher.py).
A pair is kept only when its answer is grounded in its chunk (grounding.py) and, for the teacher, when its
question shares at least half its content words with the chunk; so no question reaches the data that the chunk
cannot answer. A question that an earlier chunk already asked is not asked again (the same boilerplate in
every page of a manual would otherwise be trained on as many times). Each kept pair is written in ``wordings``
wordings (extraction: templates; teacher: its own rewordings, then the template frames of paraphrase.py) as chat
records with their provenance under "source".

Resuming: OUT grows one finished chunk at a time, and ``OUT.synth-state.json`` records the finished chunks' ids
(a hash of file, section and text), OUT's length after the last one, and the counts so far. A rerun with the same
options truncates OUT to that length (dropping a chunk half-written when the process was killed) and skips the
finished chunks; the questions already asked are read back from OUT.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from whetstone.data.synth.chunks import MAX_CHARS, Chunk, list_documents, read_chunks
from whetstone.data.synth.extract import Fact, extract_facts, wordings
from whetstone.data.synth.grounding import THRESHOLD, content_words, support
from whetstone.data.synth.paraphrase import check_wordings, count_wordings, reword
from whetstone.data.synth.teacher import QA_TOKENS, Teacher, parse_qa, qa_prompt
from whetstone.errors import WhetstoneError
from whetstone.overwrite import refuse_existing, refuse_input_as_output

DEFAULT_WORDINGS = 5  # docs/knowledge.md: 5 training wordings per fact learnt more than 3 (variants A/A5, B/C)
QUESTION_SUPPORT = 0.5  # a teacher's question must share this much of its content words with the chunk
STATE_VERSION = 1
_STATEMENT = re.compile(r"[A-Za-z][^.!?\n]{20,}[.!?](\s|$)")


@dataclass(frozen=True)
class SynthOptions:
    wordings: int = DEFAULT_WORDINGS
    threshold: float = THRESHOLD
    """The share of an answer's content words its chunk must contain (grounding.py has the measurement)."""
    text_field: str = "text"
    max_chars: int = MAX_CHARS
    batch_size: int = 8
    """Chunks per teacher call: a resumed run redoes at most this many."""
    limit: int | None = None
    """Only the first N chunks of the documents (a rerun with a larger limit goes on from there)."""


@dataclass
class SynthReport:
    teacher: str
    documents: int = 0
    chunks: int = 0
    resumed: int = 0  # chunks finished by an earlier run
    processed: int = 0  # chunks finished by this run
    seconds: float = 0.0  # this run
    counts: Counter = field(default_factory=Counter)  # over all runs of this output (the state file keeps them)

    @property
    def grounded_share(self) -> float:
        kept = self.counts["pairs_extraction"] + self.counts["pairs_teacher"]
        candidates = kept + self.counts["dropped_ungrounded"] + self.counts["dropped_off_topic"]
        return kept / candidates if candidates else 0.0

    def render(self, path: str) -> str:
        c = self.counts
        rate = self.processed / (self.seconds / 60) if self.seconds > 0 else 0.0
        return "\n".join([
            f"whetstone data synth: {path}: {self.chunks} chunks from {self.documents} documents "
            f"({self.resumed} finished by an earlier run), {c['fact_bearing']} fact-bearing, "
            f"{c['with_pair']} of them with at least one checked pair",
            f"pairs: {c['pairs_extraction']} from extraction, {c['pairs_teacher']} from the teacher ({self.teacher})",
            f"dropped: {c['dropped_ungrounded']} with an answer its chunk does not support, {c['dropped_off_topic']} "
            f"teacher questions about something else, {c['dropped_malformed']} teacher replies not in the asked "
            f"form, {c['dropped_duplicate']} teacher questions already asked, {c['dropped_repeated']} extracted "
            f"questions an earlier section already asked",
            f"grounded: {100 * self.grounded_share:.1f}% of the candidate pairs",
            f"records: {c['records']} (wordings: {c['wordings_template']} from templates, {c['wordings_teacher']} "
            f"from the teacher, {c['paraphrase_lines_dropped']} teacher rewordings dropped)",
            f"this run: {self.processed} chunks in {self.seconds:.1f} s ({rate:.1f} chunks per minute)",
        ])


@dataclass
class _State:
    path: Path
    options: dict
    done: set[str] = field(default_factory=set)
    size: int = 0  # OUT's length in bytes after the last finished chunk
    counts: Counter = field(default_factory=Counter)

    def save(self) -> None:
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps({"version": STATE_VERSION, "options": self.options, "done": sorted(self.done),
                                       "size": self.size, "counts": dict(self.counts)}))
        os.replace(partial, self.path)


def state_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".synth-state.json")


def _open_state(output: Path, options: dict, overwrite: bool) -> _State:
    """A fresh state, or the one an earlier run with the same options left; OUT cut back to its last chunk."""
    path = state_path(output)
    if overwrite or not path.exists():
        refuse_existing(output, overwrite)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(b"")
        return _State(path, options)
    try:
        saved = json.loads(path.read_text())
        done, size, counts = set(saved["done"]), int(saved["size"]), Counter(saved["counts"])
    except (ValueError, KeyError, TypeError) as exc:
        raise WhetstoneError(f"{path} is not a data synth state ({exc}); pass --overwrite to start again.") from exc
    if saved.get("options") != options:
        changed = ", ".join(f"{k} {saved.get('options', {}).get(k)!r} -> {v!r}" for k, v in options.items()
                            if saved.get("options", {}).get(k) != v)
        raise WhetstoneError(f"{output} was begun with other options ({changed}); rerun with the same ones to "
                             f"resume, or pass --overwrite to start again.")
    if not output.exists() or output.stat().st_size < size:
        raise WhetstoneError(f"{output} is shorter than {path} says it was; it was changed after the last run. "
                             f"Pass --overwrite to start again.")
    os.truncate(output, size)  # a chunk that was being written when the run stopped
    return _State(path, options, done, size, counts)


def synthesize(paths: list[str], output: str, teacher: Teacher | None, options: SynthOptions = SynthOptions(),
               overwrite: bool = False, progress: bool = True) -> SynthReport:
    """Write the checked pairs of every chunk of ``paths`` to ``output``, going on from where a killed run stopped."""
    from tqdm.auto import tqdm

    check_wordings(options.wordings)
    if Path(output).suffix != ".jsonl":
        raise WhetstoneError(f"data synth: write to a .jsonl file (-o OUT.jsonl), got {output}.")
    documents = list_documents(paths)
    for document in documents:
        refuse_input_as_output(document, output, "data synth")
    teacher_name = "none" if teacher is None else teacher.name
    report = SynthReport(teacher_name, documents=len(documents))
    chunks = list({c.id: c for d in documents for c in read_chunks(d, options.text_field, options.max_chars)}
                  .values())[: options.limit]
    kept = {k: v for k, v in asdict(options).items() if k not in ("limit", "batch_size")}
    state = _open_state(Path(output), {**kept, "teacher": teacher_name}, overwrite)
    todo = [c for c in chunks if c.id not in state.done]
    asked = _asked(Path(output))
    report.chunks, report.resumed = len(chunks), len(chunks) - len(todo)
    began = time.perf_counter()
    with open(output, "ab") as handle, tqdm(total=len(chunks), initial=report.resumed, desc="chunks", unit="chunk",
                                            disable=not progress) as bar:
        for i in range(0, len(todo), options.batch_size):
            group = todo[i: i + options.batch_size]
            for chunk, (records, counts) in zip(group, _records(group, teacher, options, asked)):
                handle.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode())
                handle.flush()
                os.fsync(handle.fileno())
                state.done.add(chunk.id)
                state.size = handle.tell()
                state.counts.update(counts)
                state.save()
                report.processed += 1
                bar.update(1)
    report.seconds = time.perf_counter() - began
    report.counts = state.counts
    return report


def is_fact_bearing(chunk: Chunk, facts: list[Fact]) -> bool:
    """Whether a chunk states something to ask about: a fact the rules find, or a sentence with content."""
    return bool(facts) or (len(content_words(chunk.text)) >= 8 and _STATEMENT.search(chunk.text) is not None)


@dataclass(frozen=True)
class _Pair:
    question: str
    answer: str
    origin: str  # extraction | teacher
    support: float
    rule: str = ""  # extraction: which rule found it
    fact: Fact | None = None


def _asked(output: Path) -> set[str]:
    """The questions (normalised, first wording) that the finished chunks of ``output`` already ask."""
    asked = set()
    with output.open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            if record["source"]["wording"] == 0:
                asked.add(_normal(record["messages"][0]["content"]))
    return asked


def _records(group: list[Chunk], teacher: Teacher | None, options: SynthOptions,
             asked: set[str]) -> list[tuple[list[dict], Counter]]:
    """The records of each chunk of ``group``, in order, with what was kept and dropped there, and why.

    ``asked`` holds the questions of the chunks before, and grows by this group's: a question asked once is not
    asked again (a manual's boilerplate, "What is License GPLv3+?", would otherwise come from every page)."""
    facts = [extract_facts(c) for c in group]
    bearing = [is_fact_bearing(c, f) for c, f in zip(group, facts)]
    to_ask = [c for c, b in zip(group, bearing) if b]
    replies = iter(teacher.complete([qa_prompt(c) for c in to_ask], QA_TOKENS) if teacher and to_ask else [])
    counts = [Counter() for _ in group]
    pairs_per_chunk = []
    for chunk, chunk_facts, fact_bearing, tally in zip(group, facts, bearing, counts):
        tally["fact_bearing"] += fact_bearing
        pairs = _extraction_pairs(chunk, chunk_facts, options, tally, asked)
        if teacher is not None and fact_bearing:
            tally["teacher_calls"] += 1
            pair = _teacher_pair(chunk, next(replies), options, tally, asked)
            pairs += [pair] if pair else []
        tally["with_pair"] += fact_bearing and bool(pairs)
        pairs_per_chunk.append(pairs)
    teacher_pairs = [p for pairs in pairs_per_chunk for p in pairs if p.origin == "teacher"]
    worded = iter(reword([p.question for p in teacher_pairs], options.wordings, teacher))
    out = []
    for chunk, pairs, tally in zip(group, pairs_per_chunk, counts):
        records = []
        for pair in pairs:
            if pair.fact is not None:
                texts = [(q, "template") for q in wordings(pair.fact, options.wordings)]
                count_wordings(tally, texts, 0)
            else:
                texts, dropped = next(worded)
                count_wordings(tally, texts, dropped)
            records += [_record(chunk, pair, k, q) for k, (q, _) in enumerate(texts)]
        tally["records"] += len(records)
        out.append((records, tally))
    return out


def _extraction_pairs(chunk: Chunk, facts: list[Fact], options: SynthOptions, counts: Counter,
                      asked: set[str]) -> list[_Pair]:
    pairs = []
    for fact in facts:
        share = support(fact.answer, chunk.text)
        if share < options.threshold:
            counts["dropped_ungrounded"] += 1
            continue
        question = wordings(fact, 1)[0]
        if _normal(question) in asked:
            counts["dropped_repeated"] += 1
            continue
        asked.add(_normal(question))
        counts["pairs_extraction"] += 1
        pairs.append(_Pair(question, fact.answer, "extraction", share, fact.rule, fact))
    return pairs


def _teacher_pair(chunk: Chunk, reply: str, options: SynthOptions, counts: Counter, asked: set[str]) -> _Pair | None:
    parsed = parse_qa(reply)
    if parsed is None:
        counts["dropped_malformed"] += 1
        return None
    question, answer = parsed
    share = support(answer, chunk.text)
    if share < options.threshold:
        counts["dropped_ungrounded"] += 1
        return None
    if support(question, chunk.text) < QUESTION_SUPPORT:
        counts["dropped_off_topic"] += 1
        return None
    if _normal(question) in asked:
        counts["dropped_duplicate"] += 1
        return None
    asked.add(_normal(question))
    counts["pairs_teacher"] += 1
    return _Pair(question, answer, "teacher", share)


def _record(chunk: Chunk, pair: _Pair, wording: int, question: str) -> dict:
    source = {"file": chunk.source, "lines": [chunk.line_start, chunk.line_end], "chunk": chunk.id,
              "heading": chunk.heading, "origin": pair.origin, "wording": wording, "support": round(pair.support, 3)}
    if pair.rule:
        source["rule"] = pair.rule
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": pair.answer}],
            "source": source}


def _normal(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())
