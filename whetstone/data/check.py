"""`whetstone data check`: one streaming pass that finds everything wrong with a data file.

The pass reports every bad record (origin, field, reason), counts records by
kind, task and label, counts tool use and reasoning (and warns about tool
calls in records that give no ``tools``: the chat template then cannot show
the model the functions it may call), finds exact and near duplicates (with the line numbers
of every cluster), train/eval overlap, and PII (by kind, with line numbers
and masked previews, never the values). With a tokenizer it also measures
token lengths under the model's chat template and what ``max_length`` would
cut off.

Memory stays bounded by the size of the findings, not of the file: a record
is dropped as soon as it has been counted, hashed and signed (see ``dedup``
for the ~256 bytes per record that near-duplicate detection keeps). Torch and
transformers are imported only when a tokenizer is given.
"""

from __future__ import annotations

import json
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from whetstone.data.dedup import (
    DEFAULT_THRESHOLD,
    ExactIndex,
    NearDuplicateIndex,
    content_hash,
    record_content,
    similarity_text,
)
from whetstone.data.formats import RecordStream
from whetstone.data.pii import KINDS, find_pii
from whetstone.data.records import Record
from whetstone.errors import Problem, WhetstoneError

LINES_KEPT = 10_000  # line numbers kept per PII kind; the count is always exact
PREVIEWS_KEPT = 3
SHOWN = 20  # items per section in the text rendering; --json has them all


@dataclass
class PiiStats:
    count: int = 0  # findings, not records
    lines: list[int] = field(default_factory=list)
    previews: list[str] = field(default_factory=list)


@dataclass
class TokenStats:
    count: int
    min: int
    p50: int
    p90: int
    p99: int
    max: int
    max_length: int | None
    truncated: int  # records longer than max_length
    lost_supervision: int  # records whose supervised tokens all fall past max_length


@dataclass
class CheckReport:
    path: str
    unit: str  # what cluster numbers count: "line", "item" or "row"
    format: str
    explanation: str
    rows: int = 0  # rows read, valid or not
    valid: int = 0
    problems: list[Problem] = field(default_factory=list)
    fatal: str | None = None  # an error that stopped reading the file part-way
    kinds: Counter = field(default_factory=Counter)
    tasks: Counter = field(default_factory=Counter)
    labels: Counter = field(default_factory=Counter)
    exact_duplicates: list[list[int]] = field(default_factory=list)
    near_duplicates: list[list[int]] | None = None  # None: near-dedup was not run
    threshold: float = DEFAULT_THRESHOLD
    pii: dict[str, PiiStats] = field(default_factory=dict)
    tool_use: Counter = field(default_factory=Counter)  # records with "tools", "tool_calls", "reasoning"; "calls"
    calls_without_tools: list[int] = field(default_factory=list)  # numbers of records that call but give no tools
    tokens: TokenStats | None = None
    eval_path: str | None = None
    eval_unit: str = "line"
    overlap_exact: list[tuple[int, int]] = field(default_factory=list)  # (eval number, train number)
    overlap_near: list[tuple[int, list[int]]] = field(default_factory=list)
    strict: bool = False

    @property
    def leaks(self) -> int:
        return len(self.overlap_exact) + len(self.overlap_near)

    @property
    def duplicates(self) -> int:
        """Redundant records: every member of a duplicate group but its first."""
        near = sum(len(c) - 1 for c in self.near_duplicates or [])
        return sum(len(c) - 1 for c in self.exact_duplicates) + near

    @property
    def warnings(self) -> int:
        """Duplicates, PII and tool calls without tools: worth fixing, not always wrong."""
        return self.duplicates + sum(s.count for s in self.pii.values()) + len(self.calls_without_tools)

    @property
    def has_errors(self) -> bool:
        """Bad records, an unreadable file or train/eval leaks; with ``strict``, any warning too."""
        errors = bool(self.problems) or self.fatal is not None or self.leaks > 0 or self.valid == 0
        return errors or (self.strict and self.warnings > 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "explanation": self.explanation,
            "rows": self.rows,
            "valid": self.valid,
            "has_errors": self.has_errors,
            "fatal": self.fatal,
            "problems": [{"origin": p.origin, "field": p.field, "reason": p.reason} for p in self.problems],
            "kinds": dict(self.kinds),
            "tasks": {"(none)" if k is None else k: v for k, v in self.tasks.items()},
            "labels": {str(k): v for k, v in self.labels.items()},
            "unit": self.unit,
            "exact_duplicates": self.exact_duplicates,
            "near_duplicates": self.near_duplicates,
            "near_threshold": self.threshold,
            "pii": {k: {"count": s.count, "lines": s.lines, "previews": s.previews} for k, s in self.pii.items()},
            "tool_use": {
                "records_with_tools": self.tool_use["tools"],
                "records_with_tool_calls": self.tool_use["tool_calls"],
                "tool_calls": self.tool_use["calls"],
                "records_with_reasoning": self.tool_use["reasoning"],
                "calls_without_tools": self.calls_without_tools,
            },
            "tokens": None if self.tokens is None else vars(self.tokens),
            "eval": None
            if self.eval_path is None
            else {
                "path": self.eval_path,
                "unit": self.eval_unit,
                "overlap_exact": [{"eval": e, "train": t} for e, t in self.overlap_exact],
                "overlap_near": [{"eval": e, "train": t} for e, t in self.overlap_near],
            },
        }

    def render(self) -> str:
        """A readable summary; ``to_dict`` has every item."""
        return "\n".join(_render(self))


def check_file(
    path: str,
    eval_path: str | None = None,
    format: str = "auto",
    tokenizer: Any = None,
    max_length: int | None = None,
    near_dedup: bool = True,
    threshold: float = DEFAULT_THRESHOLD,
    labels: list[str] | None = None,
    strict: bool = False,
) -> CheckReport:
    """Check ``path`` (and its overlap with ``eval_path``) in one streaming pass each."""
    if max_length is not None and tokenizer is None:
        raise WhetstoneError("--max-length needs --model: token lengths depend on the model's tokenizer.")
    if max_length is not None and max_length < 1:
        raise WhetstoneError(f"--max-length must be a positive number of tokens, got {max_length}.")
    near = NearDuplicateIndex(threshold) if near_dedup else None
    eval_first: dict[int, int] = {}
    eval_unit, eval_problems, eval_fatal = "line", [], None
    if eval_path is not None:
        eval_stream = RecordStream(eval_path, format, labels)
        eval_unit = eval_stream.source.unit
        eval_problems, eval_fatal = _index_eval(eval_stream, eval_first, near)

    stream = RecordStream(path, format, labels)
    report = CheckReport(
        path, stream.source.unit, stream.format, stream.explanation, threshold=threshold, strict=strict
    )
    report.eval_path, report.eval_unit = eval_path, eval_unit
    exact = ExactIndex()
    lengths = array("I")
    token_counts = Counter()
    try:
        for parsed in stream:
            report.rows += 1
            if parsed.record is None:
                report.problems.extend(parsed.problems)
                continue
            record, line = parsed.record, parsed.line
            report.valid += 1
            _count(report, record)
            _count_tool_use(report, record, line)
            digest = content_hash(record_content(record))
            if exact.add(digest, line) is None:
                if near is not None:
                    near.add(similarity_text(record), line, source=0)
                if digest in eval_first:
                    report.overlap_exact.append((eval_first[digest], line))
            _scan_pii(report.pii, record, line)
            if tokenizer is not None:
                _measure_tokens(record, tokenizer, max_length, lengths, token_counts)
    except WhetstoneError as exc:
        report.fatal = str(exc)
    report.problems += eval_problems
    if eval_fatal:
        report.fatal = f"{report.fatal}\n{eval_fatal}" if report.fatal else eval_fatal
    report.exact_duplicates = exact.clusters()
    if near is not None:
        report.near_duplicates = near.clusters(source=0)
        leaked = {e for e, _ in report.overlap_exact}
        report.overlap_near = [(e, t) for e, t in near.cross_matches().items() if e not in leaked]
    report.overlap_exact.sort()
    if tokenizer is not None and lengths:
        report.tokens = _token_stats(lengths, max_length, token_counts)
    return report


def _index_eval(
    stream: RecordStream, first: dict[int, int], near: NearDuplicateIndex | None
) -> tuple[list[Problem], str | None]:
    """Hash (and sign) every eval record, so the train pass can look for leaks."""
    problems: list[Problem] = []
    try:
        for parsed in stream:
            if parsed.record is None:
                problems.extend(parsed.problems)
                continue
            digest = content_hash(record_content(parsed.record))
            if first.setdefault(digest, parsed.line) == parsed.line and near is not None:
                near.add(similarity_text(parsed.record), parsed.line, source=1)
    except WhetstoneError as exc:
        return problems, str(exc)
    return problems, None


def _count(report: CheckReport, record: Record) -> None:
    report.kinds[record.kind] += 1
    report.tasks[record.task] += 1
    if record.kind == "classification":
        report.labels[record.label] += 1
    elif record.kind == "feedback":
        report.labels["desirable" if record.label else "undesirable"] += 1


def _count_tool_use(report: CheckReport, record: Record, line: int) -> None:
    turns = (*record.messages, *record.chosen, *record.rejected, *record.completion)
    calls = sum(len(m.tool_calls) for m in turns)
    report.tool_use["tools"] += bool(record.tools)
    report.tool_use["tool_calls"] += calls > 0
    report.tool_use["calls"] += calls
    report.tool_use["reasoning"] += any(m.reasoning for m in turns)
    if calls and not record.tools and len(report.calls_without_tools) < LINES_KEPT:
        report.calls_without_tools.append(line)


def record_texts(record: Record) -> list[str]:
    """Every free-text string of a record: what PII scanning and redaction look at."""
    turns = (*record.messages, *record.chosen, *record.rejected, *record.completion)
    texts = [m.content for m in turns]
    texts += [m.reasoning for m in turns if m.reasoning]
    texts += [json.dumps(c.arguments, ensure_ascii=False) for m in turns for c in m.tool_calls]
    if record.text is not None:
        texts.append(record.text)
    if record.reference is not None:
        texts.append(record.reference)
    return texts


def _scan_pii(pii: dict[str, PiiStats], record: Record, line: int) -> None:
    # One scan of all the record's strings: no pattern can span the blank line
    # that joins them, and one call costs half of two.
    for finding in find_pii("\n\n".join(record_texts(record))):
        stats = pii.get(finding.kind)
        if stats is None:
            stats = pii[finding.kind] = PiiStats()
        stats.count += 1
        if (not stats.lines or stats.lines[-1] != line) and len(stats.lines) < LINES_KEPT:
            stats.lines.append(line)
        if len(stats.previews) < PREVIEWS_KEPT:
            stats.previews.append(finding.preview)


def sft_views(record: Record) -> list[Record]:
    """The text/chat records a model would actually be trained on for ``record``."""
    if record.kind in ("text", "chat"):
        return [record]
    if record.kind == "classification":
        return [Record(kind="text", origin=record.origin, text=record.text)]
    if record.kind == "preference":
        return [
            Record(kind="chat", origin=record.origin, messages=record.messages + record.chosen),
            Record(kind="chat", origin=record.origin, messages=record.messages + record.rejected),
        ]
    if record.kind == "feedback":
        return [Record(kind="chat", origin=record.origin, messages=record.messages + record.completion)]
    return [Record(kind="chat", origin=record.origin, messages=record.messages)]  # prompt-only


def count_tokens(record: Record, tokenizer: Any, max_length: int | None = None) -> tuple[int, bool, bool]:
    """(tokens before truncation, truncated, lost all supervised tokens) for ``record``.

    A pair (preference) counts its longer side, and is truncated if either side is.
    """
    from whetstone.data.render import render_record  # lazy: pulls in transformers

    longest, truncated, lost = 0, False, False
    for view in sft_views(record):
        rendered = render_record(view, tokenizer, max_length)
        longest = max(longest, rendered.n_full_tokens)
        truncated |= rendered.truncated
        supervised = record.kind != "prompt"
        lost |= supervised and rendered.truncated and rendered.n_supervised == 0
    return longest, truncated, lost


def _measure_tokens(record: Record, tokenizer: Any, max_length: int | None, lengths: array, counts: Counter) -> None:
    n, truncated, lost = count_tokens(record, tokenizer, max_length)
    lengths.append(n)
    counts["truncated"] += truncated
    counts["lost"] += lost


def _token_stats(lengths: array, max_length: int | None, counts: Counter) -> TokenStats:
    import numpy as np

    values = np.sort(np.frombuffer(lengths, dtype=np.uint32))

    def pct(q: float) -> int:
        return int(values[min(len(values) - 1, int(q * len(values)))])

    return TokenStats(
        count=len(values),
        min=int(values[0]),
        p50=pct(0.50),
        p90=pct(0.90),
        p99=pct(0.99),
        max=int(values[-1]),
        max_length=max_length,
        truncated=counts["truncated"],
        lost_supervision=counts["lost"],
    )


# ---------------------------------------------------------------------------
# Text rendering.


def _n(count: int, noun: str) -> str:
    """ "1 record", "3 records"."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _numbers(values: list[int], unit: str) -> str:
    shown = ", ".join(str(v) for v in values[:SHOWN])
    more = f", ... ({len(values) - SHOWN} more)" if len(values) > SHOWN else ""
    return f"{unit}s {shown}{more}"


def _tally(counter: Counter, none: str = "(none)") -> str:
    total = sum(counter.values())
    return ", ".join(f"{none if k is None else k} {v} ({100 * v / total:.1f}%)" for k, v in counter.most_common())


def _render(r: CheckReport) -> list[str]:
    out = [f"whetstone data check: {r.path}", f"format: {r.format} ({r.explanation})"]
    bad = r.rows - r.valid
    out.append(f"records: {r.rows} read, {r.valid} valid, {bad} with problems")
    if r.kinds:
        out.append(f"kinds: {_tally(r.kinds)}")
    if set(r.tasks) != {None}:
        out.append(f"tasks: {_tally(r.tasks)}")
    if r.labels:
        out.append(f"labels: {_tally(r.labels)}")
    if r.tool_use["tools"] or r.tool_use["tool_calls"] or r.tool_use["reasoning"]:
        u = r.tool_use
        out.append(
            f"tool use: tools in {_n(u['tools'], 'record')}, tool calls in {_n(u['tool_calls'], 'record')} "
            f"({_n(u['calls'], 'call')}), reasoning in {_n(u['reasoning'], 'record')}"
        )
    if r.fatal:
        out += ["", "reading stopped early:", *(f"  {line}" for line in r.fatal.splitlines())]
    if r.problems:
        out += ["", f"problems ({len(r.problems)}):"]
        out += [f"  {p}" for p in r.problems[:SHOWN]]
        if len(r.problems) > SHOWN:
            out.append(f"  ... and {len(r.problems) - SHOWN} more (--json lists all)")
    if r.tokens is not None:
        t = r.tokens
        out += [
            "",
            f"tokens per record: min {t.min}, p50 {t.p50}, p90 {t.p90}, p99 {t.p99}, max {t.max} ({t.count} records)",
        ]
        if t.max_length is not None:
            out.append(
                f"  max_length {t.max_length} truncates {t.truncated} records; "
                f"{t.lost_supervision} of them lose every supervised token"
            )
    out += _render_duplicates(r)
    if r.calls_without_tools:
        n = len(r.calls_without_tools)
        out += [
            "",
            f"tool calls without tools in {_n(n, 'record')}: with no 'tools' given, the chat template cannot show "
            f"the model the functions it may call; add a 'tools' list to each",
            f"  {_numbers(r.calls_without_tools, r.unit)}",
        ]
    if r.eval_path is not None:
        out += ["", f"train/eval overlap with {r.eval_path}: {len(r.overlap_exact)} exact, {len(r.overlap_near)} near"]
        for e, t in r.overlap_exact[:SHOWN]:
            out.append(f"  eval {r.eval_unit} {e} = train {r.unit} {t}")
        for e, ts in r.overlap_near[:SHOWN]:
            out.append(f"  eval {r.eval_unit} {e} ~ train {_numbers(ts, r.unit)}")
    if r.pii:
        out += ["", "PII (values never shown):"]
        for kind in KINDS:
            if kind in r.pii:
                s = r.pii[kind]
                out.append(f"  {kind} {s.count} in {_numbers(s.lines, r.unit)} (e.g. {', '.join(s.previews)})")
    out += ["", _verdict(r)]
    return out


def _render_duplicates(r: CheckReport) -> list[str]:
    out = []
    if r.exact_duplicates:
        extra = sum(len(c) - 1 for c in r.exact_duplicates)
        out += ["", f"exact duplicates: {_n(len(r.exact_duplicates), 'group')}, {_n(extra, 'redundant record')}"]
        out += [f"  {_numbers(c, r.unit)}" for c in r.exact_duplicates[:SHOWN]]
    if r.near_duplicates:
        extra = sum(len(c) - 1 for c in r.near_duplicates)
        groups = _n(len(r.near_duplicates), "group")
        out += ["", f"near duplicates (Jaccard >= {r.threshold}): {groups}, {_n(extra, 'redundant record')}"]
        out += [f"  {_numbers(c, r.unit)}" for c in r.near_duplicates[:SHOWN]]
    return out


def _verdict(r: CheckReport) -> str:
    errors, fixes = [], []
    if r.fatal:
        errors.append("the file could not be read to the end")
        fixes.append("re-create the file")
    if r.problems:
        errors.append(f"{_n(len(r.problems), 'problem')} in {_n(r.rows - r.valid, 'record')}")
        fixes.append("fix the records listed, or drop them with `whetstone data clean --drop-invalid`")
    if r.valid == 0 and not r.fatal:
        errors.append("no valid records")
    if r.leaks:
        errors.append(f"{_n(r.leaks, 'eval record')} also in train")
        fixes.append("remove those records from the eval file (or from train)")
    untooled = len(r.calls_without_tools)
    counts = (("duplicates", r.duplicates), ("PII", r.warnings - r.duplicates - untooled),
              ("tool calls without tools", untooled))
    kinds = ", ".join(k for k, n in counts if n)
    warnings = f"{_n(r.warnings, 'warning')} ({kinds})" if r.warnings else ""
    if errors:
        plus = f"; plus {warnings}" if warnings else ""
        return "result: ERRORS: " + "; ".join(errors) + plus + (". To fix: " + "; ".join(fixes) + "." if fixes else ".")
    if warnings:
        status = "ERRORS (--strict):" if r.strict else "ok, with"
        cures = []
        if r.warnings > untooled:
            what = "the duplicates and PII" if untooled else "them"
            cures.append(f"`whetstone data clean --dedup --near-dedup --redact-pii` removes {what}")
        if untooled:
            cures.append("give the records that call tools their 'tools'")
        return f"result: {status} {warnings}; " + "; ".join(cures) + "."
    return "result: ok, no problems found."
