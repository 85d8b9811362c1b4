"""`whetstone data clean`: write a cleaned copy of a data file, and say what changed.

The input is never modified. Each row goes through, in order: ``--strip``
(trim every string value), ``--redact-pii`` (typed placeholders in every
string value), validation (``--drop-invalid``, otherwise an invalid row stops
the run), ``--dedup`` (exact), the token-length filters, and ``--near-dedup``.
Each filter sees only what the previous ones kept, and duplicates are decided
on the cleaned content, with the same hashing as ``check``, so that ``check``
on the output finds none of what was cleaned. Of each duplicate group the
first record is kept.

Near-dedup needs the whole file before it can decide, so it reads the input
twice; everything else is one streaming pass. The output is written to a
temporary file and renamed into place only when complete, next to a report
(``OUT.report.jsonl``) with one line per dropped or changed record.
"""

from __future__ import annotations

import csv
import functools
import gzip
import io
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from whetstone.data.check import count_tokens
from whetstone.data.dedup import (
    DEFAULT_THRESHOLD,
    ExactIndex,
    NearDuplicateIndex,
    content_hash,
    record_content,
    similarity_text,
)
from whetstone.data.formats import Parsed, RecordStream, parse_row
from whetstone.data.pii import redact
from whetstone.data.readers import FILE_KINDS, Row
from whetstone.data.records import Record
from whetstone.errors import DataError, Problem, WhetstoneError
from whetstone.overwrite import refuse_existing, refuse_input_as_output


@dataclass
class CleanOptions:
    dedup: bool = False
    near_dedup: bool = False
    redact_pii: bool = False
    drop_invalid: bool = False
    strip: bool = False
    min_tokens: int | None = None
    max_tokens: int | None = None
    overwrite: bool = False
    format: str = "auto"
    threshold: float = DEFAULT_THRESHOLD
    tokenizer: Any = None  # needed by min_tokens / max_tokens


@dataclass
class CleanSummary:
    source: str
    output: str
    report: str
    read: int = 0
    written: int = 0
    dropped: Counter = field(default_factory=Counter)  # by reason kind
    changed: int = 0
    redacted: Counter = field(default_factory=Counter)  # by PII kind
    stripped: int = 0

    def render(self) -> str:
        lines = [f"read {self.read} rows from {self.source}; wrote {self.written} to {self.output}"]
        if self.dropped:
            lines.append("dropped: " + ", ".join(f"{n} {why}" for why, n in self.dropped.most_common()))
        if self.changed:
            details = []
            if self.redacted:
                details.append("redacted " + ", ".join(f"{k} {n}" for k, n in self.redacted.most_common()))
            if self.stripped:
                details.append(f"stripped {self.stripped}")
            lines.append(f"changed: {self.changed} records ({'; '.join(details)})")
        lines.append(f"every dropped or changed record is listed in {self.report}")
        return "\n".join(lines)


def report_path(output: str) -> str:
    return output + ".report.jsonl"


def clean_file(source: str, output: str, options: CleanOptions) -> CleanSummary:
    """Write the cleaned rows of ``source`` to ``output``; see the module docstring."""
    _check_paths(source, output, options.overwrite)
    if (options.min_tokens is not None or options.max_tokens is not None) and options.tokenizer is None:
        raise WhetstoneError("--min-tokens and --max-tokens need --model: token counts depend on the tokenizer.")
    summary = CleanSummary(source, output, report_path(output))
    token_drops: dict[int, str] = {}
    near_drops = _near_duplicates(source, options, token_drops) if options.near_dedup else {}
    writer = writer_for(output)
    report = open(summary.report + ".tmp", "w", encoding="utf-8")
    try:
        _clean_pass(source, options, summary, writer, report, near_drops, token_drops)
    except BaseException:
        writer.abort()
        report.close()
        os.unlink(summary.report + ".tmp")
        raise
    writer.close()
    report.close()
    os.replace(summary.report + ".tmp", summary.report)
    return summary


def _check_paths(source: str, output: str, overwrite: bool) -> None:
    refuse_input_as_output(source, output, "clean")
    for path in (output, report_path(output)):
        refuse_existing(path, overwrite)
    parent = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(parent):
        raise WhetstoneError(f"the output directory {parent} does not exist; create it first.")


@dataclass
class _Cleaned:
    """One row after the string transforms: its data, its record, and what changed."""

    parsed: Parsed
    data: dict | None = None
    record: Record | None = None
    problems: list[Problem] = field(default_factory=list)
    redacted: Counter = field(default_factory=Counter)
    stripped: bool = False


def _cleaned_rows(stream: RecordStream, options: CleanOptions) -> Iterator[_Cleaned]:
    for parsed in stream:
        item = _Cleaned(parsed)
        if parsed.row is None:
            item.problems = parsed.problems
            yield item
            continue
        data = parsed.row.data
        if options.strip:
            data = _map_strings(data, str.strip)
            item.stripped = data != parsed.row.data
        if options.redact_pii:
            data = _map_strings(data, functools.partial(_redact_fully, counts=item.redacted))
        item.data = data
        if data is parsed.row.data:
            result: Record | list = parsed.record or parsed.problems
        else:
            row = Row(parsed.row.origin, parsed.row.line, data, parsed.row.untyped)
            result = parse_row(row, stream.format, task=None)
        if isinstance(result, Record):
            item.record = result
        else:
            item.problems = result
        yield item


def _redact_fully(text: str, counts: Counter) -> str:
    # A second pass catches what the first pass's replacements brought together.
    for _ in range(3):
        text, found = redact(text)
        if not found:
            break
        counts.update(found)
    return text


def _map_strings(value: Any, fn) -> Any:
    """``value`` with ``fn`` applied to every string inside it (keys excepted)."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {k: _map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_strings(v, fn) for v in value]
    return value


def _token_reason(record: Record, options: CleanOptions) -> str | None:
    if options.min_tokens is None and options.max_tokens is None:
        return None
    n, _, _ = count_tokens(record, options.tokenizer)
    if options.min_tokens is not None and n < options.min_tokens:
        return f"too short: {n} tokens < --min-tokens {options.min_tokens}"
    if options.max_tokens is not None and n > options.max_tokens:
        return f"too long: {n} tokens > --max-tokens {options.max_tokens}"
    return None


def _near_duplicates(source: str, options: CleanOptions, token_drops: dict[int, str]) -> dict[int, int]:
    """First pass: {line: first line of its near-duplicate group} for every line to drop.

    Only rows that survive every earlier filter take part, exactly as in the
    writing pass. Token-filter verdicts are kept so the second pass need not
    tokenize again.
    """
    exact = ExactIndex()
    near = NearDuplicateIndex(options.threshold)
    for item in _cleaned_rows(RecordStream(source, options.format), options):
        record, line = item.record, item.parsed.line
        if record is None:
            continue
        if options.dedup and exact.add(content_hash(record_content(record)), line) is not None:
            continue
        reason = _token_reason(record, options)
        if reason:
            token_drops[line] = reason
            continue
        near.add(similarity_text(record), line)
    return {line: group[0] for group in near.clusters() for line in group[1:]}


def _clean_pass(
    source: str,
    options: CleanOptions,
    summary: CleanSummary,
    writer: RowWriter,
    report,
    near_drops: dict[int, int],
    token_drops: dict[int, str],
) -> None:
    exact = ExactIndex()
    invalid: list[Problem] = []
    stream = RecordStream(source, options.format)
    unit = stream.source.unit

    def log(origin: str, action: str, reason: str, **details: Any) -> None:
        report.write(
            json.dumps({"origin": origin, "action": action, "reason": reason, **details}, ensure_ascii=False) + "\n"
        )

    for item in _cleaned_rows(stream, options):
        summary.read += 1
        origin, line = item.parsed.origin, item.parsed.line
        if item.record is None:
            if options.drop_invalid:
                summary.dropped["invalid"] += 1
                log(origin, "dropped", "invalid: " + "; ".join(_reason(p) for p in item.problems))
            else:
                invalid.extend(item.problems)  # keep going, to list them all
            continue
        record = item.record
        if options.dedup:
            first = exact.add(content_hash(record_content(record)), line)
            if first is not None:
                summary.dropped["exact duplicates"] += 1
                log(origin, "dropped", f"exact duplicate of {unit} {first}")
                continue
        reason = token_drops.get(line) if options.near_dedup else _token_reason(record, options)
        if reason:
            summary.dropped["too short" if reason.startswith("too short") else "too long"] += 1
            log(origin, "dropped", reason)
            continue
        if line in near_drops:
            summary.dropped["near duplicates"] += 1
            log(origin, "dropped", f"near duplicate of {unit} {near_drops[line]} (Jaccard >= {options.threshold})")
            continue
        if invalid:
            continue  # nothing will be written
        writer.write(item.data)
        summary.written += 1
        if item.redacted or item.stripped:
            summary.changed += 1
            summary.redacted.update(item.redacted)
            summary.stripped += item.stripped
            what = " and ".join(
                w for w, on in (("stripped whitespace", item.stripped), ("redacted PII", item.redacted)) if on
            )
            details = {"redacted": dict(item.redacted)} if item.redacted else {}
            log(origin, "changed", what, output_record=summary.written, **details)
    if invalid:
        raise InvalidRecords(source, invalid)


def _reason(problem: Problem) -> str:
    return f"field '{problem.field}': {problem.reason}" if problem.field else problem.reason


class InvalidRecords(DataError):
    """Clean found invalid records and was not told to drop them."""

    def __init__(self, source: str, problems: list[Problem]):
        super().__init__(problems, header=f"{source} has invalid records, so nothing was written",
                         fix="Fix these records, or pass --drop-invalid to drop them.")


# ---------------------------------------------------------------------------
# Writers: the output format follows the output file's extension.


class RowWriter:
    """Writes rows to ``path + ".tmp"``; ``close`` renames it into place."""

    def __init__(self, path: str, kind: str):
        self.path, self.kind = path, kind
        self.temp = path + ".tmp"
        raw = open(self.temp, "wb")
        self._binary = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if path.endswith(".gz") else raw
        self._raw = raw
        self._text = io.TextIOWrapper(self._binary, encoding="utf-8", newline="")
        self._rows: list[dict] = []  # parquet only: written at close
        self._csv: csv.DictWriter | None = None
        self._count = 0

    def write(self, data: dict) -> None:
        self._count += 1
        if self.kind == "parquet":
            self._rows.append(data)
        elif self.kind in ("jsonl", "json"):
            if self.kind == "json":
                self._text.write("[\n" if self._count == 1 else ",\n")
            try:
                self._text.write(json.dumps(data, ensure_ascii=False))
            except UnicodeEncodeError:  # a lone surrogate (from a "\\ud800" escape) stays escaped
                self._text.write(json.dumps(data, ensure_ascii=True))
            if self.kind == "jsonl":
                self._text.write("\n")
        else:
            self._write_delimited(data)

    def _write_delimited(self, data: dict) -> None:
        if self._csv is None:
            dialect = "excel-tab" if self.kind == "tsv" else "excel"
            self._csv = csv.DictWriter(self._text, fieldnames=list(data), dialect=dialect)
            self._csv.writeheader()
        extra = set(data) - set(self._csv.fieldnames)
        if extra:
            raise WhetstoneError(
                f"cannot write {self.path}: a row has fields {sorted(extra)} that the first row lacks, and a "
                f"{self.kind.upper()} header is fixed; write JSON Lines (.jsonl) instead."
            )
        # Lists and objects become JSON text, which the reader decodes again.
        self._csv.writerow({k: _cell(v) for k, v in data.items()})

    def close(self) -> None:
        if self.kind == "json":
            self._text.write("[]\n" if self._count == 0 else "\n]\n")
        if self.kind == "parquet":
            self._write_parquet()
        self._text.close()
        os.replace(self.temp, self.path)

    def _write_parquet(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._text.flush()
        try:
            table = pa.Table.from_pylist(self._rows)
        except (pa.ArrowException, TypeError) as exc:
            raise WhetstoneError(
                f"cannot write {self.path}: the rows do not fit one Parquet schema ({exc}); write .jsonl instead."
            ) from exc
        pq.write_table(table, self._binary)

    def abort(self) -> None:
        self._text.close()
        if os.path.exists(self.temp):
            os.unlink(self.temp)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def writer_for(path: str) -> RowWriter:
    base = path[:-3] if path.endswith(".gz") else path
    kind = FILE_KINDS.get(os.path.splitext(base)[1].lower())
    if kind is None:
        raise WhetstoneError(
            f"cannot tell the output format of {path}; end its name with one of {', '.join(sorted(FILE_KINDS))}."
        )
    return RowWriter(path, kind)
